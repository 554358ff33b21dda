//! The local APIC in xAPIC mode (memory-mapped at `0xFEE0_0000`; x2APIC is
//! not offered by QEMU's TCG): this CPU's APIC ID, end of interrupt, its
//! timer, and inter-processor interrupts — INIT and start-up IPIs to bring
//! an application processor up, fixed IPIs to wake one.
//!
//! Every CPU sees its own local APIC at the same physical address, which the
//! boot stub's identity map covers (2 MiB pages below 4 GiB).

use core::sync::atomic::{AtomicU64, Ordering};

/// Physical (= virtual, identity-mapped) base of the local APIC registers,
/// as the MADT reports it.
static BASE: AtomicU64 = AtomicU64::new(0xFEE0_0000);

const ID: usize = 0x20;
const EOI: usize = 0xB0;
/// The in-service register: eight 32-bit words, 16 bytes apart.
const ISR: usize = 0x100;
const SPURIOUS: usize = 0xF0;
const ICR_LOW: usize = 0x300;
const ICR_HIGH: usize = 0x310;
const LVT_TIMER: usize = 0x320;
const TIMER_INITIAL: usize = 0x380;
const TIMER_DIVIDE: usize = 0x3E0;
/// LVT: the entry is masked.
const MASKED: u32 = 1 << 16;
/// LVT timer mode: periodic.
const PERIODIC: u32 = 1 << 17;

/// ICR delivery status: the last IPI is still being sent.
const DELIVERY_PENDING: u32 = 1 << 12;
/// ICR level: assert (every IPI but INIT de-assert).
const ASSERT: u32 = 1 << 14;
/// ICR delivery modes.
const FIXED: u32 = 0;
const INIT: u32 = 5 << 8;
const STARTUP: u32 = 6 << 8;

/// Vector of spurious interrupts (its handler sends no EOI).
pub const SPURIOUS_VECTOR: u8 = 0xFF;
/// Vector of every CPU's local APIC timer.
pub const TIMER_VECTOR: u8 = 0xEF;

/// Sets where the registers are (the MADT's local APIC address).
pub fn set_base(phys: u64) {
    BASE.store(phys, Ordering::Relaxed);
}

fn reg(offset: usize) -> *mut u32 {
    (BASE.load(Ordering::Relaxed) as usize + offset) as *mut u32
}

fn read(offset: usize) -> u32 {
    // SAFETY: a local APIC register, identity-mapped; 32-bit accesses as
    // the xAPIC requires.
    unsafe { reg(offset).read_volatile() }
}

fn write(offset: usize, value: u32) {
    // SAFETY: as in `read`.
    unsafe { reg(offset).write_volatile(value) }
}

/// This CPU's local APIC ID.
pub fn id() -> u32 {
    read(ID) >> 24
}

/// Enables this CPU's local APIC (software enable in the spurious-interrupt
/// register), so that it accepts fixed IPIs.
pub fn enable() {
    write(SPURIOUS, (1 << 8) | u32::from(SPURIOUS_VECTOR));
}

/// Starts this CPU's local APIC timer: periodic, an interrupt on
/// [`TIMER_VECTOR`] every `count` ticks of the bus clock divided by 16.
pub fn start_timer(count: u32) {
    write(TIMER_DIVIDE, 0b0011);
    write(LVT_TIMER, PERIODIC | u32::from(TIMER_VECTOR));
    write(TIMER_INITIAL, count);
}

/// Stops this CPU's local APIC timer.
pub fn stop_timer() {
    write(LVT_TIMER, MASKED | u32::from(TIMER_VECTOR));
    write(TIMER_INITIAL, 0);
}

/// Signals the end of the interrupt being handled.
pub fn end_of_interrupt() {
    write(EOI, 0);
}

/// Ends every interrupt this CPU's local APIC has in service (after a
/// handler was abandoned before its end of interrupt): each EOI ends the
/// highest one, until none is left.
pub fn end_every_interrupt() {
    for _ in 0..256 {
        if (0..8).all(|i| read(ISR + 16 * i) == 0) {
            return;
        }
        end_of_interrupt();
    }
}

/// Sends `low` (mode, level, vector) to the CPU whose APIC ID is `apic_id`
/// and waits until the local APIC has sent it.
fn send(apic_id: u32, low: u32) {
    // With interrupts masked: a handler sending an IPI between the two
    // writes would send this one to its destination.
    x86_64::instructions::interrupts::without_interrupts(|| {
        write(ICR_HIGH, apic_id << 24);
        write(ICR_LOW, low);
        while read(ICR_LOW) & DELIVERY_PENDING != 0 {
            core::hint::spin_loop();
        }
    });
}

/// Sends the fixed interrupt `vector` to CPU `apic_id`.
pub fn send_ipi(apic_id: u32, vector: u8) {
    send(apic_id, FIXED | ASSERT | u32::from(vector));
}

/// INIT, then two start-up IPIs: CPU `apic_id` starts in real mode at
/// `page << 12` (the trampoline), as Intel's MP protocol prescribes.
/// `delay(µs)` waits.
pub fn start_cpu(apic_id: u32, page: u8, delay: impl Fn(u64)) {
    send(apic_id, INIT | ASSERT);
    delay(10_000);
    for _ in 0..2 {
        send(apic_id, STARTUP | ASSERT | u32::from(page));
        delay(200);
    }
}
