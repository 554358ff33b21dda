//! The thread caches around `fork()` (`pthread_atfork`'s three calls):
//! the child inherits no cache half-changed, and the caches of the
//! threads that did not follow it into the child go back to their heaps.

use core::ptr;
use core::sync::atomic::Ordering;

use super::{DRAINING, IDLE, REGISTRY, ThreadCache, home};

/// Before `fork()` (`pthread_atfork`'s *prepare*, with the lock of every
/// heap that has caches held): takes the registry's lock and every other
/// thread's cache, waiting for a thread in the middle of using its own, so
/// that the child inherits no cache half-changed. Ended by [`fork_parent`]
/// or [`fork_child`].
pub(crate) fn fork_prepare() {
    let mine = home::with(|c| c as *const ThreadCache).unwrap_or(ptr::null());
    let registry = REGISTRY.lock();
    let mut c = registry.caches;
    while !c.is_null() {
        // SAFETY: a cache on the list, live while it is (registry lock).
        let cache = unsafe { &*c };
        while c != mine
            && cache.state.compare_exchange(IDLE, DRAINING, Ordering::Acquire, Ordering::Relaxed).is_err()
        {
            home::keep_waiting(&mut 0);
        }
        c = cache.next.get();
    }
    // Held until the fork is over.
    core::mem::forget(registry);
}

/// After `fork()`, in the parent: gives back what [`fork_prepare`] took.
///
/// # Safety
///
/// After a [`fork_prepare`] by this thread, once.
pub(crate) unsafe fn fork_parent() {
    // SAFETY: this thread holds the lock since `fork_prepare`.
    let registry = unsafe { &*REGISTRY.as_mut_ptr() };
    let mine = home::with(|c| c as *const ThreadCache).unwrap_or(ptr::null());
    let mut c = registry.caches;
    while !c.is_null() {
        // SAFETY: as in `fork_prepare`.
        let cache = unsafe { &*c };
        if c != mine {
            cache.state.store(IDLE, Ordering::Release);
        }
        c = cache.next.get();
    }
    // SAFETY: the guard was forgotten in `fork_prepare`, by this thread.
    unsafe { REGISTRY.force_unlock() };
}

/// After `fork()`, in the child, where only this thread lives on: the
/// caches of the others are retired as if their threads had exited —
/// their blocks go back to their heaps (freed at the heaps' next lock),
/// they leave the registry, and their slots go back for the child's
/// threads to take.
///
/// # Safety
///
/// As [`fork_parent`], in the child.
pub(crate) unsafe fn fork_child() {
    // SAFETY: as in `fork_parent` (the child inherited the lock held).
    let registry = unsafe { &mut *REGISTRY.as_mut_ptr() };
    let mine = home::with(|c| c as *const ThreadCache).unwrap_or(ptr::null());
    let mut c = registry.caches;
    while !c.is_null() {
        // SAFETY: as in `fork_prepare`; taken in state DRAINING there, so
        // its bins are ours.
        let cache = unsafe { &*c };
        let next = cache.next.get();
        if c != mine {
            cache.exit_locked(registry);
            // SAFETY: off the list, its bins given back, and its thread is
            // not in this process.
            unsafe { home::release(cache) };
        }
        c = next;
    }
    // SAFETY: as in `fork_parent`.
    unsafe { REGISTRY.force_unlock() };
}
