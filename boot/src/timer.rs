//! The PIT timer on IRQ 0 (vector 32) through the 8259 PICs, and a handler
//! that can allocate: the proof that the heap's lock is interrupt-safe.

use alloc::vec::Vec;
use core::alloc::Layout;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use pic8259::ChainedPics;
use x86_64::instructions::interrupts;
use x86_64::instructions::port::Port;

use crate::heap::{TASKS, Task, TaskState};
use crate::sync::IrqMutex;

/// Vector of IRQ 0 after the PICs are remapped.
pub const TIMER_VECTOR: u8 = 32;
const PIT_HZ: u32 = 1_193_182;

// SAFETY: 32..48 are free vectors (exceptions end at 31).
static PICS: IrqMutex<ChainedPics> = IrqMutex::new(unsafe { ChainedPics::new(32, 40) });
crate::abandonable_lock!("PICs", PICS, acquire);

/// Timer ticks so far.
pub static TICKS: AtomicU64 = AtomicU64::new(0);
/// When set, every tick allocates and frees through the whole stack.
pub static ALLOCATE_IN_HANDLER: AtomicBool = AtomicBool::new(false);
/// Allocations made by the tick handler.
pub static HANDLER_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Allocations by the tick handler that returned null.
pub static HANDLER_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Remaps the PICs to vectors 32..48 and masks every line. Called at boot:
/// left at the BIOS mapping, IRQ 0 would arrive as vector 8, a "double fault".
pub fn init() {
    let mut pics = PICS.lock();
    // SAFETY: the PICs are at their standard ports; with every line masked,
    // no IRQ reaches the CPU until `start`.
    unsafe {
        pics.initialize();
        pics.write_masks(0xff, 0xff);
    }
}

/// Starts the PIT at `hz` ticks per second and enables interrupts.
pub fn start(hz: u32) {
    let divisor = (PIT_HZ / hz).clamp(1, 65535) as u16;
    {
        let mut pics = PICS.lock();
        // SAFETY: only IRQ 0 is unmasked, and vector 32 has a handler (see
        // `interrupts`).
        unsafe { pics.write_masks(0xfe, 0xff) };
        // SAFETY: PIT command and channel-0 data ports; mode 2 (rate
        // generator), low byte then high byte of the divisor.
        unsafe {
            Port::<u8>::new(0x43).write(0x34);
            Port::<u8>::new(0x40).write(divisor as u8);
            Port::<u8>::new(0x40).write((divisor >> 8) as u8);
        }
    }
    interrupts::enable();
}

/// Masks the timer and disables interrupts.
pub fn stop() {
    interrupts::disable();
    // SAFETY: masking every IRQ line has no other effect.
    unsafe { PICS.lock().write_masks(0xff, 0xff) };
}

/// Stops the timer after the test framework abandoned a case, which may
/// have been running it, or handling its interrupt, or holding the PICs'
/// lock: the handler stops allocating, interrupts are disabled, every IRQ
/// line is masked and the master PIC is told that the interrupt in service
/// (if any) has ended, so that the next [`start`] gets ticks again. Through
/// the ports directly, not the lock: called before the abandoned locks are
/// released, so that no tick can arrive while they are.
pub fn reset() {
    ALLOCATE_IN_HANDLER.store(false, Ordering::SeqCst);
    interrupts::disable();
    // SAFETY: the 8259s' data ports (mask every line) and the master's
    // command port (a non-specific EOI, ignored with no interrupt in
    // service); the only other user of these ports, the holder of `PICS`,
    // never runs again.
    unsafe {
        Port::<u8>::new(0x21).write(0xff);
        Port::<u8>::new(0xa1).write(0xff);
        Port::<u8>::new(0x20).write(0x20);
    }
}

/// Runs `f` with the timer ticking at `hz` and the handler allocating.
pub fn with_allocating_timer<R>(hz: u32, f: impl FnOnce() -> R) -> R {
    ALLOCATE_IN_HANDLER.store(true, Ordering::SeqCst);
    start(hz);
    let r = f();
    stop();
    ALLOCATE_IN_HANDLER.store(false, Ordering::SeqCst);
    r
}

/// Called by the interrupt dispatcher for vector 32.
pub(crate) fn on_tick() {
    let tick = TICKS.fetch_add(1, Ordering::Relaxed);
    if ALLOCATE_IN_HANDLER.load(Ordering::Relaxed) {
        allocate_in_handler(tick);
    }
    // SAFETY: acknowledges the interrupt being handled.
    unsafe { PICS.lock().notify_end_of_interrupt(TIMER_VECTOR) };
}

/// Allocates and frees through every layer: a small box (+2), a vector that
/// grows past 512 bytes (layer 0), and a task from the typed cache (+3).
fn allocate_in_handler(tick: u64) {
    let mut made = 0;
    let mut failed = 0;
    let layout = Layout::new::<[u64; 6]>();
    // SAFETY: a non-zero-sized layout; the block is written, then freed with
    // the same layout.
    unsafe {
        let p = alloc::alloc::alloc(layout).cast::<[u64; 6]>();
        if p.is_null() {
            failed += 1;
        } else {
            p.write([tick; 6]);
            core::hint::black_box(&*p);
            alloc::alloc::dealloc(p.cast(), layout);
            made += 1;
        }
    }
    let mut v: Vec<u64> = Vec::new();
    match v.try_reserve(64 + (tick % 256) as usize) {
        Ok(()) => {
            made += 1;
            v.extend((0..64).map(|i| i ^ tick));
            core::hint::black_box(&v);
        }
        Err(_) => failed += 1,
    }
    match TASKS.boxed(Task { id: tick, state: TaskState::Blocked, ..Task::default() }) {
        Ok(t) => {
            made += 1;
            core::hint::black_box(&t);
        }
        Err(_) => failed += 1,
    }
    HANDLER_ALLOCATIONS.fetch_add(made, Ordering::Relaxed);
    HANDLER_FAILURES.fetch_add(failed, Ordering::Relaxed);
}
