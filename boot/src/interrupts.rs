//! CPU exceptions: GDT with a TSS (an IST stack for double faults), an IDT
//! whose entries are naked-function trampolines (stable Rust, no
//! `abi_x86_interrupt`), and one dispatcher that reports faults.
//!
//! A breakpoint is counted, reported and resumed, a timer tick goes to the
//! timer. Any other exception becomes a [`Fault`] — vector, error code,
//! instruction pointer, and for a page fault the address from CR2, what the
//! VMM knows of it and which sampled allocation it hit — for
//! [`faults`](crate::faults) to report and hand over. With `-no-reboot`,
//! even a triple fault ends the run instead of looping.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

use spin::LazyLock as Lazy;

use crate::faults::Fault;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::registers::control::Cr2;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::idt::InterruptDescriptorTable;
use x86_64::structures::tss::TaskStateSegment;

/// IST slot used by the double-fault handler.
pub const DOUBLE_FAULT_IST: u16 = 0;
const DF_STACK_SIZE: usize = 16 * 1024;

#[repr(C, align(16))]
struct Stack([u8; DF_STACK_SIZE]);

static mut DOUBLE_FAULT_STACK: Stack = Stack([0; DF_STACK_SIZE]);

static TSS: Lazy<TaskStateSegment> = Lazy::new(|| {
    let bottom = VirtAddr::from_ptr(&raw const DOUBLE_FAULT_STACK);
    tss_with_stack(bottom + DF_STACK_SIZE as u64)
});

/// A TSS whose double-fault IST slot is the stack ending at `top`.
fn tss_with_stack(top: VirtAddr) -> TaskStateSegment {
    let mut tss = TaskStateSegment::new();
    tss.interrupt_stack_table[DOUBLE_FAULT_IST as usize] = top;
    tss
}

/// A CPU's GDT and the selectors in it. Each CPU has its own: a TSS
/// descriptor is marked busy when loaded, so two CPUs cannot share one.
struct Gdt {
    table: GlobalDescriptorTable,
    code: SegmentSelector,
    data: SegmentSelector,
    tss: SegmentSelector,
}

impl Gdt {
    fn new(tss: &'static TaskStateSegment) -> Self {
        let mut table = GlobalDescriptorTable::new();
        // Null, code 0x08, data 0x10, then the TSS: `iretq` reloads SS, so
        // the data selector must stay at 0x10, never on the TSS descriptor.
        let code = table.append(Descriptor::kernel_code_segment());
        let data = table.append(Descriptor::kernel_data_segment());
        let tss = table.append(Descriptor::tss_segment(tss));
        Gdt { table, code, data, tss }
    }
}

/// The boot CPU's GDT.
static GDT: Lazy<Gdt> = Lazy::new(|| Gdt::new(&TSS));

/// Registers pushed by the trampolines, then the CPU's interrupt frame.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    rdi: u64,
    rsi: u64,
    rdx: u64,
    rcx: u64,
    rax: u64,
    /// Exception vector.
    pub vector: u64,
    /// Error code (0 for exceptions that push none).
    pub error_code: u64,
    /// Instruction pointer.
    pub rip: u64,
    cs: u64,
    rflags: u64,
    /// Stack pointer at the time of the exception.
    pub rsp: u64,
    ss: u64,
}

/// Breakpoints handled so far.
pub static BREAKPOINTS: AtomicUsize = AtomicUsize::new(0);

macro_rules! trampoline {
    ($name:ident, $vector:literal) => {
        #[unsafe(naked)]
        extern "C" fn $name() {
            core::arch::naked_asm!(
                "push 0",
                concat!("push ", $vector),
                "jmp {common}",
                common = sym trap_common,
            );
        }
    };
    ($name:ident, $vector:literal, error_code) => {
        #[unsafe(naked)]
        extern "C" fn $name() {
            core::arch::naked_asm!(
                concat!("push ", $vector),
                "jmp {common}",
                common = sym trap_common,
            );
        }
    };
}

/// Saves the scratch registers, calls [`trap_dispatch`] with RSP 16-byte
/// aligned, restores and returns with `iretq`.
#[unsafe(naked)]
extern "C" fn trap_common() {
    core::arch::naked_asm!(
        "push rax",
        "push rcx",
        "push rdx",
        "push rsi",
        "push rdi",
        "push r8",
        "push r9",
        "push r10",
        "push r11",
        "mov rdi, rsp",
        "cld",
        "call {dispatch}",
        "pop r11",
        "pop r10",
        "pop r9",
        "pop r8",
        "pop rdi",
        "pop rsi",
        "pop rdx",
        "pop rcx",
        "pop rax",
        "add rsp, 16",
        "iretq",
        dispatch = sym trap_dispatch,
    );
}

trampoline!(divide_error, 0);
trampoline!(debug, 1);
trampoline!(nmi, 2);
trampoline!(breakpoint, 3);
trampoline!(overflow, 4);
trampoline!(bound_range, 5);
trampoline!(invalid_opcode, 6);
trampoline!(device_not_available, 7);
trampoline!(double_fault, 8, error_code);
trampoline!(invalid_tss, 10, error_code);
trampoline!(segment_not_present, 11, error_code);
trampoline!(stack_segment, 12, error_code);
trampoline!(general_protection, 13, error_code);
trampoline!(page_fault, 14, error_code);
trampoline!(x87_floating_point, 16);
trampoline!(alignment_check, 17, error_code);
trampoline!(machine_check, 18);
trampoline!(simd_floating_point, 19);
trampoline!(timer_irq, 32);
trampoline!(wake_ipi, 0xF0);
trampoline!(apic_timer, 0xEF);
trampoline!(spurious, 0xFF);

static IDT: Lazy<InterruptDescriptorTable> = Lazy::new(|| {
    let mut idt = InterruptDescriptorTable::new();
    let addr = |f: extern "C" fn()| VirtAddr::new(f as usize as u64);
    // SAFETY: each address is a trampoline that saves what it clobbers,
    // matches its vector's error-code convention and ends in `iretq`; the
    // double-fault IST slot is set in the TSS loaded by `init`.
    unsafe {
        idt.divide_error.set_handler_addr(addr(divide_error));
        idt.debug.set_handler_addr(addr(debug));
        idt.non_maskable_interrupt.set_handler_addr(addr(nmi));
        idt.breakpoint.set_handler_addr(addr(breakpoint));
        idt.overflow.set_handler_addr(addr(overflow));
        idt.bound_range_exceeded.set_handler_addr(addr(bound_range));
        idt.invalid_opcode.set_handler_addr(addr(invalid_opcode));
        idt.device_not_available.set_handler_addr(addr(device_not_available));
        idt.double_fault.set_handler_addr(addr(double_fault)).set_stack_index(DOUBLE_FAULT_IST);
        idt.invalid_tss.set_handler_addr(addr(invalid_tss));
        idt.segment_not_present.set_handler_addr(addr(segment_not_present));
        idt.stack_segment_fault.set_handler_addr(addr(stack_segment));
        idt.general_protection_fault.set_handler_addr(addr(general_protection));
        idt.page_fault.set_handler_addr(addr(page_fault));
        idt.x87_floating_point.set_handler_addr(addr(x87_floating_point));
        idt.alignment_check.set_handler_addr(addr(alignment_check));
        idt.machine_check.set_handler_addr(addr(machine_check));
        idt.simd_floating_point.set_handler_addr(addr(simd_floating_point));
        idt[crate::timer::TIMER_VECTOR].set_handler_addr(addr(timer_irq));
        idt[crate::smp::WAKE_VECTOR].set_handler_addr(addr(wake_ipi));
        idt[crate::apic::TIMER_VECTOR].set_handler_addr(addr(apic_timer));
        idt[crate::apic::SPURIOUS_VECTOR].set_handler_addr(addr(spurious));
    }
    idt
});

/// Loads the boot CPU's GDT and TSS, and the IDT.
pub fn init() {
    load(&GDT);
}

/// Loads the GDT, the TSS (with a double-fault stack of its own) and the
/// IDT of an application processor, made on the heap and kept for good.
pub fn init_ap() {
    let stack: &'static mut [u128] = Vec::leak(alloc::vec![0u128; DF_STACK_SIZE / 16]);
    let top = VirtAddr::from_ptr(stack.as_ptr_range().end);
    let tss: &'static TaskStateSegment = Box::leak(Box::new(tss_with_stack(top)));
    load(Box::leak(Box::new(Gdt::new(tss))));
}

fn load(gdt: &'static Gdt) {
    gdt.table.load();
    // SAFETY: the selectors index the GDT loaded just above, whose code and
    // data descriptors are the flat 64-bit kernel segments, and whose TSS
    // descriptor is this CPU's alone.
    unsafe {
        CS::set_reg(gdt.code);
        SS::set_reg(gdt.data);
        DS::set_reg(gdt.data);
        ES::set_reg(gdt.data);
        load_tss(gdt.tss);
    }
    IDT.load();
}

extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    if frame.vector == u64::from(crate::timer::TIMER_VECTOR) {
        crate::timer::on_tick();
        return;
    }
    if frame.vector == u64::from(crate::smp::WAKE_VECTOR) {
        crate::smp::on_wake_ipi();
        return;
    }
    if frame.vector == u64::from(crate::apic::TIMER_VECTOR) {
        crate::smp::on_timer();
        return;
    }
    if frame.vector == u64::from(crate::apic::SPURIOUS_VECTOR) {
        return;
    }
    if frame.vector == 3 {
        BREAKPOINTS.fetch_add(1, Ordering::Relaxed);
        crate::println!("#BP breakpoint at rip={:#x}, resuming", frame.rip);
        return;
    }
    let address = matches!(frame.vector, 8 | 14).then(Cr2::read_raw).map(VirtAddr::new_truncate);
    let info = address.and_then(crate::memory::lookup);
    let sample = address.and_then(|a| crate::sampling::describe(a.as_u64()));
    let fault =
        Fault { vector: frame.vector, error_code: frame.error_code, rip: frame.rip, address, info, sample };
    crate::faults::unresolved(&fault)
}
