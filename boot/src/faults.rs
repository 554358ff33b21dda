//! Faults and panics nobody handled: the report, then the hook the running
//! program installed (the test framework installs its own, which may expect
//! them), or QEMU's exit with failure.
//!
//! The exception dispatcher ([`interrupts`](crate::interrupts)) and the
//! panic handler call here; they know nothing of what runs above them.

use core::panic::PanicInfo;

use spin::Once;
use strata::vmm::AddressInfo;
use x86_64::VirtAddr;

use crate::println;

/// What the fault handler knows of an exception it could not resolve.
#[derive(Clone, Copy, Debug)]
pub struct Fault {
    /// Exception vector.
    pub vector: u64,
    /// Error code pushed by the CPU, or 0.
    pub error_code: u64,
    /// Faulting instruction.
    pub rip: u64,
    /// CR2, for page faults and double faults.
    pub address: Option<VirtAddr>,
    /// What the VMM knows of `address`, when it could be asked.
    pub info: Option<AddressInfo>,
    /// Which sampled allocation `address` hit, if it lies in the sampling pool.
    pub sample: Option<crate::sampling::Hit>,
}

/// What a program does with a fault or a panic after its report: a fault
/// never returns; after a panic hook returns, the kernel reports the panic
/// and exits with failure.
#[derive(Clone, Copy, Debug)]
pub struct Hooks {
    /// Called with an unresolved exception, after its report.
    pub on_fault: fn(&Fault) -> !,
    /// Called first on a panic.
    pub on_panic: fn(&PanicInfo<'_>),
}

static HOOKS: Once<Hooks> = Once::new();

/// Installs the program's hooks (once; later calls keep the first).
pub fn install(hooks: Hooks) {
    HOOKS.call_once(|| hooks);
}

/// An exception the dispatcher could not resolve: report, then the hook.
///
/// The hooks run on the boot CPU only: a test framework abandons the case
/// running there. A fault on another CPU ends the run after its report.
pub(crate) fn unresolved(fault: &Fault) -> ! {
    crate::serial::force_unlock();
    report(fault);
    match HOOKS.get() {
        Some(hooks) if crate::smp::current().index() == 0 => (hooks.on_fault)(fault),
        _ => crate::exit_failure(),
    }
}

/// The panic handler's body: the hook, then the report and a failed exit.
/// (As for faults, the hook runs on the boot CPU only.)
pub(crate) fn panicked(info: &PanicInfo<'_>) -> ! {
    crate::serial::force_unlock();
    let cpu = crate::smp::current().index();
    if let Some(hooks) = HOOKS.get()
        && cpu == 0
    {
        (hooks.on_panic)(info);
    }
    println!("\n!!! KERNEL PANIC on CPU {cpu}: {info}");
    crate::exit_failure()
}

/// Name of an exception vector.
pub fn vector_name(vector: u64) -> &'static str {
    match vector {
        0 => "divide error",
        1 => "debug",
        2 => "non-maskable interrupt",
        3 => "breakpoint",
        4 => "overflow",
        5 => "bound range exceeded",
        6 => "invalid opcode",
        7 => "device not available",
        8 => "double fault",
        10 => "invalid TSS",
        11 => "segment not present",
        12 => "stack-segment fault",
        13 => "general protection fault",
        14 => "page fault",
        16 => "x87 floating-point",
        17 => "alignment check",
        18 => "machine check",
        19 => "SIMD floating-point",
        _ => "unknown",
    }
}

/// Prints the report of an unresolved exception.
pub fn report(fault: &Fault) {
    println!(
        "\n!!! EXCEPTION on CPU {}: {} (vector {}), error code {:#x}, rip={:#x}",
        crate::smp::current().index(),
        vector_name(fault.vector),
        fault.vector,
        fault.error_code,
        fault.rip
    );
    if fault.vector == 14 {
        let e = fault.error_code;
        println!(
            "    {} access, {}{}",
            if e & 0x10 != 0 {
                "instruction fetch"
            } else if e & 2 != 0 {
                "write"
            } else {
                "read"
            },
            if e & 1 != 0 { "protection violation" } else { "page not present" },
            if e & 8 != 0 { ", reserved bit set" } else { "" }
        );
    }
    if let Some(addr) = fault.address {
        match fault.info {
            Some(info) => println!("    address {:#x}: {info}", addr.as_u64()),
            None => println!("    address {:#x} (VMM unavailable)", addr.as_u64()),
        }
    }
    if let Some(hit) = fault.sample {
        println!("    sampling: {hit}");
    }
}
