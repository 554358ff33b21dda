//! Where a thread finds its cache (`std`): a slot of a static table, taken
//! at the thread's first cached call and given back when the thread exits.
//!
//! The caches live outside the threads' own storage so that the registry's
//! list never points into memory that goes with a thread. A thread's exit
//! is seen by a thread-local destructor and, on Unix, by a `pthread_key`
//! destructor, which runs after the thread-local ones (a thread whose
//! first allocation comes from another key's destructor still gives its
//! slot back). A thread whose exit goes unseen all the same (its first
//! call came after both: from the C library's own clean-up, or from the
//! last round of key destructors) keeps its slot: the blocks in it wait
//! for the next drain, but no other thread can be handed that slot while
//! it is on the list — as a cache in a reused thread stack would be,
//! making the list a cycle.

extern crate std;

use core::cell::Cell;
use core::mem::size_of;
use core::ptr;
use core::sync::atomic::{AtomicBool, Ordering};

use super::ThreadCache;

/// How the registry's waiters pass time.
pub(super) type Relax = spin::Yield;

/// Threads that can have a cache at once; later ones take the locked path
/// (a slot is given back when its thread exits).
pub const THREADS: usize = 256;

/// The slots.
struct Slots([ThreadCache; THREADS]);

// SAFETY: a thread uses only the slot it has taken (`TAKEN`), and its bins
// only in state OWNER; a slot's other fields are read and written under
// the registry's lock, as before, or by the one thread giving it back once
// it is off the registry's list.
unsafe impl Sync for Slots {}

static SLOTS: Slots = Slots([const { ThreadCache::new() }; THREADS]);
/// Which slots a thread holds.
static TAKEN: [AtomicBool; THREADS] = [const { AtomicBool::new(false) }; THREADS];

/// What `MINE` holds besides a slot: nothing yet, a slot being taken (an
/// allocation made meanwhile takes the locked path), or no slot ever again
/// (the thread is exiting, or found every slot taken).
const NONE: usize = 0;
const BUSY: usize = 1;
const GONE: usize = 2;

/// Gives this thread's slot back when the thread exits.
struct ExitGuard;

impl Drop for ExitGuard {
    fn drop(&mut self) {
        leave();
    }
}

std::thread_local! {
    /// This thread's slot, or `NONE`, `BUSY` or `GONE`.
    static MINE: Cell<*const ThreadCache> = const { Cell::new(ptr::null()) };
    static EXIT: ExitGuard = const { ExitGuard };
}

/// Runs `f` on this thread's cache; `Err` if the thread has none (it has
/// not attached to a heap yet, is going, or found no slot free).
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(super) fn with<R>(f: impl FnOnce(&ThreadCache) -> R) -> Result<R, ()> {
    let p = MINE.try_with(Cell::get).map_err(|_| ())?;
    if p.addr() > GONE {
        // SAFETY: a slot of `SLOTS` that this thread holds: static, and
        // this thread's until it gives it back (`MINE` is `GONE` then).
        return Ok(f(unsafe { &*p }));
    }
    Err(())
}

/// [`with`], taking a slot for this thread first if it has none: for the
/// calls that attach a cache to a heap, made without the heap's lock
/// (taking a slot may allocate, which takes that lock).
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(super) fn with_taking<R>(f: impl FnOnce(&ThreadCache) -> R) -> Result<R, ()> {
    if MINE.try_with(Cell::get).map_err(|_| ())?.addr() == NONE {
        return take().map(f).ok_or(());
    }
    with(f)
}

/// Takes a free slot for this thread, registering the hooks that give it
/// back first (registering may allocate: glibc's
/// `__cxa_thread_atexit_impl` and `pthread_setspecific` call `calloc`,
/// which, when strata is the C library's `malloc`, comes back here and
/// finds `BUSY`).
#[cold]
fn take() -> Option<&'static ThreadCache> {
    MINE.set(ptr::without_provenance(BUSY));
    let hooked = EXIT.try_with(|_| ()).is_ok();
    let slot = hooked.then(|| (0..THREADS).find(|&i| claim(i))).flatten();
    let Some(i) = slot else {
        MINE.set(ptr::without_provenance(GONE));
        return None;
    };
    #[cfg(unix)]
    key_hook();
    let cache = &SLOTS.0[i];
    MINE.set(cache);
    Some(cache)
}

/// Claims slot `i` if it is free.
fn claim(i: usize) -> bool {
    !TAKEN[i].load(Ordering::Relaxed)
        && TAKEN[i].compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok()
}

/// The thread is exiting: its cache gives its blocks back and leaves the
/// registry ([`ThreadCache::exit`]), and its slot goes back to the table.
/// Runs from whichever exit hook comes first; the other finds `GONE`.
fn leave() {
    let Ok(p) = MINE.try_with(|m| m.replace(ptr::without_provenance(GONE))) else { return };
    if p.addr() > GONE {
        // SAFETY: this thread's slot, which it no longer uses (`GONE`).
        let cache = unsafe { &*p };
        cache.exit();
        // SAFETY: off the registry's list now, and this thread's alone.
        unsafe { release(cache) };
    }
}

/// Gives a cache's slot back to the table, as new.
///
/// # Safety
///
/// The cache must be off the registry's list, its bins emptied, and its
/// thread gone or never to use it again.
pub(super) unsafe fn release(cache: &ThreadCache) {
    let i = (ptr::from_ref(cache).addr() - SLOTS.0.as_ptr().addr()) / size_of::<ThreadCache>();
    // SAFETY: the caller's promise.
    unsafe { cache.reset() };
    TAKEN[i].store(false, Ordering::Release);
}

/// Sets this thread's value of the exit key, so that its destructor runs
/// when the thread exits (after the thread-local destructors, and again
/// for a value set by another key's destructor).
#[cfg(unix)]
fn key_hook() {
    static KEY: std::sync::OnceLock<Option<libc::pthread_key_t>> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| {
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: `key` is written by the call; the destructor is a plain
        // function that lives as long as the program.
        (unsafe { libc::pthread_key_create(&mut key, Some(key_exit)) } == 0).then_some(key)
    });
    if let Some(key) = *key {
        // SAFETY: a key of ours; a non-null value makes its destructor run.
        unsafe { libc::pthread_setspecific(key, ptr::without_provenance(1)) };
    }
}

/// The exit key's destructor.
#[cfg(unix)]
extern "C" fn key_exit(_: *mut libc::c_void) {
    leave();
}

/// A turn of a wait for another thread in the middle of using its
/// cache; always worth waiting for (a preempted thread runs again).
pub(super) fn keep_waiting(_turns: &mut u32) -> bool {
    std::thread::yield_now();
    true
}
