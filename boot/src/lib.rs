//! # strata-boot: strata's own x86_64 kernel
//!
//! A tiny kernel booted by `qemu-system-x86_64 -kernel` through a PVH ELF
//! note, on stable Rust. It owns the bottom of strata's stack — layer −2
//! ([`strata::frame`]) over the boot memory map and layer −1
//! ([`strata::vmm`]) over the live page tables — and the in-kernel test
//! framework ([`test`]).
//!
//! Boot order, in [`start`]: serial console, GDT/TSS/IDT, the boot CPU's
//! per-CPU data, memory map, frame allocator, VMM, the other CPUs
//! ([`smp`]), a guarded kernel stack from the VMM, then the binary's `main`
//! on that stack.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

extern crate alloc;

pub mod apic;
pub mod entry;
pub mod faults;
pub mod heap;
pub mod interrupts;
pub mod memory;
pub mod report;
pub mod sampling;
pub mod serial;
pub mod smp;
pub mod sync;
pub mod test;
pub mod timer;

#[doc(hidden)]
pub use linkme;
pub use memory::BootInfo;

use qemu_exit::QEMUExit;
use spin::Once;
use x86_64::VirtAddr;

static MAIN: Once<fn(&'static BootInfo) -> !> = Once::new();

/// The QEMU `isa-debug-exit` device: success is exit status 33,
/// which the runner script maps to 0.
// SAFETY: port 0xf4 is the isa-debug-exit device that the runner attaches.
const EXIT: qemu_exit::X86 = unsafe { qemu_exit::X86::new(0xf4, 33) };

/// Exits QEMU with success.
pub fn exit_success() -> ! {
    EXIT.exit_success()
}

/// Exits QEMU with failure.
pub fn exit_failure() -> ! {
    EXIT.exit_failure()
}

/// Boots the kernel and calls `main` (used by [`entry_point!`]).
pub fn start(start_info: u32, main: fn(&'static BootInfo) -> !) -> ! {
    serial::init();
    interrupts::init();
    smp::init_boot_cpu();
    timer::init();
    // SAFETY: called once, at boot, with the loader's pointer, on the boot
    // identity map.
    let boot = match unsafe { memory::init(start_info) } {
        Ok(boot) => boot,
        Err(e) => {
            println!("strata: cannot set up memory: {e}");
            exit_failure()
        }
    };
    // SAFETY: once, on the boot CPU, with the heap and layers −2 and −1 up;
    // the first MiB is the kernel's.
    match unsafe { smp::init(boot.rsdp) } {
        Ok(_) => {}
        Err(smp::SmpError::NoRsdp) => println!("strata: no ACPI tables: running on the boot CPU alone"),
        Err(e) => {
            println!("strata: cannot start the other CPUs: {e}");
            exit_failure()
        }
    }
    MAIN.call_once(|| main);
    // SAFETY: the kernel stack is mapped, writable, guarded, and unused.
    unsafe { switch_stack(boot.kernel_stack_top(), run_main) }
}

extern "C" fn run_main() -> ! {
    let main = MAIN.get().expect("set by start");
    main(memory::boot_info())
}

/// Switches to the stack whose top is `top` and calls `f` there.
///
/// # Safety
///
/// `top` must be the 16-byte aligned top of a mapped, writable stack that
/// nothing else uses; nothing on the current stack is used again.
pub unsafe fn switch_stack(top: VirtAddr, f: extern "C" fn() -> !) -> ! {
    // SAFETY: the caller provides a valid stack; `f` never returns, so the
    // abandoned stack is never popped.
    unsafe {
        core::arch::asm!(
            "mov rsp, {top}",
            "xor ebp, ebp",
            "call {f}",
            top = in(reg) top.as_u64(),
            f = in(reg) f,
            options(noreturn)
        )
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    faults::panicked(info)
}
