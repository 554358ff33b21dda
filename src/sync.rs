//! Locks and atomics shared by the layers.
//!
//! The default heap lock is a spin lock; with the `critical-section` feature
//! it is `CriticalSectionLock`, and atomics come from `portable-atomic`, so
//! that the crate builds for cores without compare-and-swap (thumbv6m).

/// A statistics update (an event counter bump) that exists only with the
/// `stats` feature: without it the fast paths do no counting at all, and the
/// event counters read 0.
macro_rules! stat {
    ($($update:tt)*) => {
        #[cfg(feature = "stats")]
        {
            $($update)*
        }
    };
}
pub(crate) use stat;

/// A value on cache lines of its own when threads or CPUs share it (`std`,
/// `cpu-caches`): what its holder writes does not evict what other threads
/// only read next to it. (128 bytes: two lines, as the adjacent-line
/// prefetcher of x86_64 pairs them.) Otherwise it is the bare value, at no
/// cost in RAM.
#[cfg_attr(feature = "caches", repr(align(128)))]
#[derive(Debug)]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> core::ops::Deref for Padded<T> {
    type Target = T;
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn deref(&self) -> &T {
        &self.0
    }
}

#[cfg(not(feature = "critical-section"))]
pub(crate) use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize};
#[cfg(feature = "critical-section")]
pub(crate) use portable_atomic::{AtomicBool, AtomicU32, AtomicUsize};

/// A lock held inside a critical section: for single-core microcontrollers,
/// where masking interrupts is what keeps an interrupt handler that allocates
/// from deadlocking against the code it interrupted.
///
/// Taking the lock enters a critical section (`critical_section::acquire`),
/// releasing it leaves it, restoring the interrupt state found on entry.
/// Re-entering the lock from inside (an allocation from within the
/// allocator) would be a bug, and panics.
#[cfg(feature = "critical-section")]
#[derive(Debug)]
pub struct CriticalSectionLock {
    locked: core::cell::Cell<bool>,
    restore: core::cell::Cell<critical_section::RestoreState>,
}

// SAFETY: both cells are only touched while the critical section is held,
// which excludes every other context.
#[cfg(feature = "critical-section")]
unsafe impl Sync for CriticalSectionLock {}

// SAFETY: `lock` returns inside a critical section with `locked` set; no other
// context can run until `unlock` leaves it, so there is one holder at a time.
#[cfg(feature = "critical-section")]
unsafe impl lock_api::RawMutex for CriticalSectionLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = Self {
        locked: core::cell::Cell::new(false),
        restore: core::cell::Cell::new(critical_section::RestoreState::invalid()),
    };

    // The critical section belongs to the context that entered it.
    type GuardMarker = lock_api::GuardNoSend;

    fn lock(&self) {
        assert!(self.try_lock(), "strata: heap lock re-entered from inside the allocator");
    }

    fn try_lock(&self) -> bool {
        // SAFETY: released in `unlock`, or right below when the lock is taken.
        let restore = unsafe { critical_section::acquire() };
        if self.locked.get() {
            // SAFETY: `restore` came from the `acquire` just above.
            unsafe { critical_section::release(restore) };
            return false;
        }
        self.locked.set(true);
        self.restore.set(restore);
        true
    }

    unsafe fn unlock(&self) {
        let restore = self.restore.get();
        self.locked.set(false);
        // SAFETY: the holder's `acquire` produced `restore`; critical sections
        // nest, so releasing restores the state found when the lock was taken.
        unsafe { critical_section::release(restore) };
    }

    fn is_locked(&self) -> bool {
        critical_section::with(|_| self.locked.get())
    }
}

/// A heap lock for host programs on Linux (feature `std`), what
/// `strata-malloc` uses: a futex mutex,
/// Drepper's three states (free, held, held with waiters). A waiter spins
/// briefly — a holder runs for a few hundred instructions — then sleeps in
/// the kernel until the holder wakes it. Where threads outnumber cores, a
/// spin lock whose waiters yield keeps the holder off the CPU (*Measured
/// choices* in `docs/DESIGN.md`).
#[cfg(all(feature = "std", target_os = "linux", not(feature = "critical-section")))]
#[derive(Debug)]
pub struct FutexLock(core::sync::atomic::AtomicU32);

#[cfg(all(feature = "std", target_os = "linux", not(feature = "critical-section")))]
mod futex {
    use core::sync::atomic::AtomicU32;
    use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};

    use super::FutexLock;

    const FREE: u32 = 0;
    const HELD: u32 = 1;
    const WAITED: u32 = 2;

    // SAFETY: a thread owns the lock from a successful compare-and-swap (or
    // swap from FREE) with Acquire until its Release swap in `unlock`.
    unsafe impl lock_api::RawMutex for FutexLock {
        #[allow(clippy::declare_interior_mutable_const)]
        const INIT: Self = Self(AtomicU32::new(FREE));
        type GuardMarker = lock_api::GuardSend;

        #[inline]
        fn lock(&self) {
            if !self.try_lock() {
                self.lock_contended();
            }
        }

        #[inline]
        fn try_lock(&self) -> bool {
            self.0.compare_exchange(FREE, HELD, Acquire, Relaxed).is_ok()
        }

        #[inline]
        unsafe fn unlock(&self) {
            if self.0.swap(FREE, Release) == WAITED {
                self.wake();
            }
        }

        #[inline]
        fn is_locked(&self) -> bool {
            self.0.load(Relaxed) != FREE
        }
    }

    impl FutexLock {
        /// Wakes one waiter (kept out of line: the common unlock is one
        /// exchange).
        #[cold]
        #[inline(never)]
        fn wake(&self) {
            // SAFETY: a futex wake on our own word.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    self.0.as_ptr(),
                    libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                    1,
                )
            };
        }

        #[cold]
        #[inline(never)]
        fn lock_contended(&self) {
            for _ in 0..64 {
                core::hint::spin_loop();
                if self.0.load(Relaxed) == FREE && lock_api::RawMutex::try_lock(self) {
                    return;
                }
            }
            // Sleep, marking the lock as waited for, until it is free.
            while self.0.swap(WAITED, Acquire) != FREE {
                // SAFETY: a futex wait on our own word, while it says WAITED.
                unsafe {
                    libc::syscall(
                        libc::SYS_futex,
                        self.0.as_ptr(),
                        libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                        WAITED,
                        core::ptr::null::<libc::timespec>(),
                    )
                };
            }
        }
    }
}
