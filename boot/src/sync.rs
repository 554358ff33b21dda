//! The kernel's lock: a spin lock that masks interrupts while held.
//!
//! Every lock an interrupt handler may take (the heap, the VMM, the frame
//! allocator) is an [`IrqMutex`]: taking it saves the interrupt flag and
//! clears it, releasing it restores the saved flag. An interrupt can
//! therefore never arrive while its own CPU holds the lock, so a handler that
//! allocates cannot deadlock against the code it interrupted. Nested locks
//! restore the flag in reverse order, as guards drop.

use core::hint::spin_loop;
use core::sync::atomic::{AtomicBool, Ordering};

use x86_64::instructions::interrupts;

/// A spin lock that keeps interrupts masked while held.
#[derive(Debug)]
pub struct IrqSpinLock {
    locked: AtomicBool,
    /// Whether interrupts were enabled when the holder took the lock.
    saved_if: AtomicBool,
}

// SAFETY: `lock` returns only once `locked` went from false to true with
// Acquire, and `unlock` stores false with Release: one holder at a time, and
// the holder's writes are visible to the next.
unsafe impl lock_api::RawMutex for IrqSpinLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = Self { locked: AtomicBool::new(false), saved_if: AtomicBool::new(false) };

    // Interrupt state is per CPU: the guard must be dropped where it was taken.
    type GuardMarker = lock_api::GuardNoSend;

    fn lock(&self) {
        let enabled = interrupts::are_enabled();
        interrupts::disable();
        while self.locked.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            spin_loop();
        }
        self.saved_if.store(enabled, Ordering::Relaxed);
    }

    fn try_lock(&self) -> bool {
        let enabled = interrupts::are_enabled();
        interrupts::disable();
        if self.locked.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            self.saved_if.store(enabled, Ordering::Relaxed);
            true
        } else {
            if enabled {
                interrupts::enable();
            }
            false
        }
    }

    unsafe fn unlock(&self) {
        let enabled = self.saved_if.load(Ordering::Relaxed);
        self.locked.store(false, Ordering::Release);
        if enabled {
            interrupts::enable();
        }
    }

    fn is_locked(&self) -> bool {
        self.locked.load(Ordering::Relaxed)
    }
}

/// A mutex whose lock masks interrupts while held.
pub type IrqMutex<T> = lock_api::Mutex<IrqSpinLock, T>;
