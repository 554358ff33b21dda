//! The kernel's lock: a spin lock that masks interrupts while held.
//!
//! Every lock an interrupt handler may take (the heap, the VMM, the frame
//! allocator) is an [`IrqMutex`]: taking it saves the interrupt flag and
//! clears it, releasing it restores the saved flag. An interrupt can
//! therefore never arrive while its own CPU holds the lock, so a handler that
//! allocates cannot deadlock against the code it interrupted. Nested locks
//! restore the flag in reverse order, as guards drop.

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
            // The holder may be waiting for this CPU to flush its TLB.
            crate::smp::spin_wait();
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

/// Takes `lock` if it comes free within a bounded wait, for the fault
/// handler: another CPU may hold it for a moment (wait for it), or the
/// fault may have interrupted this CPU's own holder (give up: `None`).
pub fn lock_soon<T>(lock: &IrqMutex<T>) -> Option<lock_api::MutexGuard<'_, IrqSpinLock, T>> {
    for _ in 0..100_000 {
        if let Some(guard) = lock.try_lock() {
            return Some(guard);
        }
        crate::smp::spin_wait();
    }
    None
}

/// How a kernel spin-wait passes a turn: it first answers a pending TLB
/// shootdown ([`smp::spin_wait`](crate::smp::spin_wait)). A CPU waiting with
/// interrupts masked must wait this way, or the CPU it waits for may be
/// waiting for it to flush.
#[derive(Debug)]
pub struct Shootdown;

impl spin::RelaxStrategy for Shootdown {
    #[inline]
    fn relax() {
        crate::smp::spin_wait();
    }
}

/// A spin lock for what no interrupt handler takes (the console, test
/// state shared between CPUs), whose waiters answer shootdowns.
pub type SpinMutex<T> = spin::mutex::SpinMutex<T, Shootdown>;

/// A lock that code abandoned by the test framework may hold, and how to
/// release it: registered with [`abandonable_lock!`](crate::abandonable_lock).
#[derive(Debug)]
pub struct AbandonableLock {
    /// What the lock guards, for the runner's report.
    pub name: &'static str,
    /// Releases the lock if it is held; returns whether it was.
    ///
    /// # Safety
    ///
    /// The holder must never resume.
    pub release: unsafe fn() -> bool,
    /// Whether the lock is held.
    pub is_locked: fn() -> bool,
    /// For tests of the recovery: takes the lock and never gives it back
    /// (`None` for a lock that is taken only inside its owner's methods).
    pub acquire: Option<fn()>,
}

/// Every lock a test case can hold: the test framework releases each after
/// it abandons a case (a panic or a fault), before the next case runs.
#[linkme::distributed_slice]
pub static ABANDONABLE_LOCKS: [AbandonableLock];

/// Registers a static lock (anything with `is_locked` and an `unsafe
/// force_unlock`) in [`ABANDONABLE_LOCKS`]; `acquire` when it has a public
/// `lock` (a mutex).
#[macro_export]
macro_rules! abandonable_lock {
    ($name:literal, $lock:path, acquire) => {
        $crate::abandonable_lock!(@entry $name, $lock, Some(|| core::mem::forget($lock.lock())));
    };
    ($name:literal, $lock:path) => {
        $crate::abandonable_lock!(@entry $name, $lock, None);
    };
    (@entry $name:literal, $lock:path, $acquire:expr) => {
        const _: () = {
            /// # Safety
            ///
            /// The lock's holder never resumes.
            unsafe fn release() -> bool {
                if !$lock.is_locked() {
                    return false;
                }
                // SAFETY: the caller's promise: the holder never resumes.
                unsafe { $lock.force_unlock() };
                true
            }
            #[$crate::linkme::distributed_slice($crate::sync::ABANDONABLE_LOCKS)]
            #[linkme(crate = $crate::linkme)]
            static LOCK: $crate::sync::AbandonableLock =
                $crate::sync::AbandonableLock {
                    name: $name,
                    release,
                    is_locked: || $lock.is_locked(),
                    acquire: $acquire,
                };
        };
    };
}

/// Releases every registered lock that is held, calling `report` with the
/// name of each.
///
/// # Safety
///
/// Every holder of a registered lock must never resume: the one running
/// context is the caller's (one CPU, the abandoned case's stack dropped).
pub unsafe fn release_abandoned_locks(mut report: impl FnMut(&'static str)) {
    for lock in ABANDONABLE_LOCKS.iter() {
        // SAFETY: the caller's promise.
        if unsafe { (lock.release)() } {
            report(lock.name);
        }
    }
}
