//! The heap of a host process: a window of address space from the OS,
//! reserved on the first call, with `fork` handlers and the exit report.

use core::ffi::c_int;
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use strata::object::Geometry;
use strata::segment::Config;
use strata::source::{OsSource, PageSource};
use strata::sync::FutexLock;
use strata::{Heap, LockedHeap};

/// The process's heap: no window until the first call. Its lock is a
/// futex mutex: C programs' threads outnumber cores and meet at the lock.
static HEAP: LockedHeap<OsSource, FutexLock> = LockedHeap::new(OsSource::unreserved(), (0, 0));

/// [`HEAP`]'s state: not yet set up, being set up, ready.
static STATE: AtomicU8 = AtomicU8::new(UNSET);
const UNSET: u8 = 0;
const SETTING: u8 = 1;
const READY: u8 = 2;

/// The heap, its window reserved on the first call of any thread.
#[inline(always)]
pub(crate) fn heap() -> &'static LockedHeap<OsSource, FutexLock> {
    if STATE.load(Ordering::Acquire) != READY {
        set_up();
    }
    &HEAP
}

/// Reserves the heap's window (a heap without one fails every request,
/// with `ENOMEM`), then registers the `fork` handlers and the exit report.
/// A call made meanwhile by the thread setting up (the C library may
/// allocate while registering) finds the heap ready.
#[cold]
fn set_up() {
    match STATE.compare_exchange(UNSET, SETTING, Ordering::Acquire, Ordering::Acquire) {
        Ok(_) => {
            if let Ok(source) = OsSource::reserve_default() {
                // TLSF at every size, as in firmware: a window under 16 MiB
                // (a small `ulimit -v`) would otherwise get layer 0's first
                // fit, which keeps no block sizes, and C's `free` and
                // `realloc` give none.
                let window = source.window().1;
                let config = Config { first_fit: false, ..Config::for_window(window) };
                // (Every window validates; a heap without one fails every
                // request with `ENOMEM`.)
                if let Ok(heap) = Heap::with_geometry(source, Geometry::for_region(window), config) {
                    HEAP.init_heap(heap);
                }
            }
            STATE.store(READY, Ordering::Release);
            // SAFETY: plain functions of this library, which lives as long
            // as the process; `getenv` returns null or a C string.
            unsafe {
                libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child));
                let stats = libc::getenv(c"STRATA_MALLOC_STATS".as_ptr());
                if !stats.is_null() && *stats != 0 && *stats != b'0' as libc::c_char {
                    libc::atexit(print_report);
                }
            }
        }
        // Another thread is setting up: wait for it.
        Err(_) => {
            while STATE.load(Ordering::Acquire) != READY {
                core::hint::spin_loop();
            }
        }
    }
}

/// The thread (its `pthread_self`) between the heap's `fork` handlers,
/// which holds the heap; 0 outside them.
static FORKER: AtomicUsize = AtomicUsize::new(0);

fn this_thread() -> usize {
    // SAFETY: a plain query.
    unsafe { libc::pthread_self() as usize }
}

extern "C" fn fork_prepare() {
    heap().fork_prepare();
    FORKER.store(this_thread(), Ordering::Relaxed);
}

extern "C" fn fork_parent() {
    FORKER.store(0, Ordering::Relaxed);
    // SAFETY: after `fork_prepare`, on the forking thread.
    unsafe { heap().fork_parent() };
}

extern "C" fn fork_child() {
    FORKER.store(0, Ordering::Relaxed);
    // SAFETY: as above, in the child.
    unsafe { heap().fork_child() };
}

/// Whether this thread holds the heap for `fork()`: it runs a
/// `pthread_atfork` handler registered before the heap's own (which the
/// heap registers at the process's first call), between the heap's
/// *prepare* and its *parent* or *child*. Its calls then go to the heap it
/// holds ([`held`]) instead of waiting for its own lock. One relaxed load
/// on every call outside a fork.
#[inline(always)]
pub(crate) fn holds_for_fork() -> bool {
    let forker = FORKER.load(Ordering::Relaxed);
    forker != 0 && forker == this_thread()
}

/// The C calls of a thread that [holds the heap for `fork()`](holds_for_fork):
/// the heap's own calls, as its locked path makes them, without the lock
/// and the thread caches.
pub(crate) mod held {
    use core::alloc::Layout;
    use core::ffi::c_void;
    use core::ptr::{self, NonNull};

    use super::heap;

    /// A block for `layout`, zeroed if `zeroed`, or null.
    pub(crate) fn alloc(layout: Layout, zeroed: bool) -> *mut c_void {
        // SAFETY: the caller checked that this thread holds the heap.
        let r = unsafe {
            heap().with_held_for_fork(|h| if zeroed { h.allocate_zeroed(layout) } else { h.allocate(layout) })
        };
        r.map_or(ptr::null_mut(), |p| p.as_ptr().cast())
    }

    /// C's `free` (a refused pointer is left alone).
    ///
    /// # Safety
    ///
    /// As [`crate::free`], on a thread that holds the heap.
    pub(crate) unsafe fn free(p: NonNull<c_void>) {
        // SAFETY: the caller's promises.
        let _ = unsafe { heap().with_held_for_fork(|h| h.deallocate_unsized(p.cast())) };
    }

    /// C's `realloc` for a non-zero size: the new block, or null.
    ///
    /// # Safety
    ///
    /// As [`crate::realloc`], on a thread that holds the heap.
    pub(crate) unsafe fn realloc(p: NonNull<c_void>, size: usize) -> *mut c_void {
        // SAFETY: the caller's promises.
        let r = unsafe { heap().with_held_for_fork(|h| h.reallocate_unsized(p.cast(), size)) };
        r.map_or(ptr::null_mut(), |q| q.as_ptr().cast())
    }

    /// [`crate::strata_malloc_refused`].
    pub(crate) fn refused() -> usize {
        // SAFETY: the caller checked that this thread holds the heap.
        unsafe { heap().with_held_for_fork(|h| h.stats().front.refused_frees) }
    }

    /// C's `malloc_usable_size` of a non-null pointer.
    pub(crate) fn usable_size(p: NonNull<c_void>) -> usize {
        // SAFETY: the caller checked that this thread holds the heap.
        unsafe { heap().with_held_for_fork(|h| h.usable_size(p.cast())) }.unwrap_or(0)
    }
}

/// Writes the heap's report to standard error (no allocation at exit).
extern "C" fn print_report() {
    struct Stderr;
    impl core::fmt::Write for Stderr {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            // SAFETY: writing bytes of a live string to fd 2.
            unsafe { libc::write(2, s.as_ptr().cast(), s.len()) };
            Ok(())
        }
    }
    let report = heap().with(|h| h.report());
    let _ = core::fmt::write(&mut Stderr, format_args!("strata-malloc:\n{report}"));
}

pub(crate) fn set_errno(e: c_int) {
    // SAFETY: this thread's errno.
    unsafe { *libc::__errno_location() = e };
}

pub(crate) fn page_size() -> usize {
    static CACHED: AtomicUsize = AtomicUsize::new(0);
    let page = CACHED.load(Ordering::Relaxed);
    if page != 0 {
        return page;
    }
    // SAFETY: a plain query.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(4096);
    CACHED.store(page, Ordering::Relaxed);
    page
}
