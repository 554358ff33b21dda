//! Where a thread finds its cache (`std`): a thread-local, given back
//! when the thread exits.

extern crate std;

use super::ThreadCache;

/// How the registry's waiters pass time.
pub(super) type Relax = spin::Yield;

/// Gives this thread's cache back when the thread exits (its destructor
/// is registered when the cache first attaches to a heap).
struct ExitGuard;

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let _ = CACHE.try_with(ThreadCache::exit);
    }
}

std::thread_local! {
    /// The cache itself has no destructor (see [`ThreadCache::exit`](super::ThreadCache::exit)).
    static CACHE: ThreadCache = const { ThreadCache::new() };
    static EXIT: ExitGuard = const { ExitGuard };
}

/// Runs `f` on this thread's cache; `Err` while the thread is going.
#[inline(always)]
pub(super) fn with<R>(f: impl FnOnce(&ThreadCache) -> R) -> Result<R, ()> {
    CACHE.try_with(f).map_err(|_| ())
}

/// Registers the guard that gives the cache back when the thread exits.
pub(super) fn guard_exit() -> bool {
    EXIT.try_with(|_| ()).is_ok()
}

/// A turn of a wait for another thread in the middle of using its
/// cache; always worth waiting for (a preempted thread runs again).
pub(super) fn keep_waiting(_turns: &mut u32) -> bool {
    std::thread::yield_now();
    true
}
