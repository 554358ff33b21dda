//! The heap of a host process: a window of address space from the OS,
//! reserved as the library loads (or at the first call, if that comes
//! first), with `fork` handlers and the exit report.

use core::ffi::c_int;
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use strata::object::Geometry;
use strata::segment::Config;
use strata::source::{OsSource, PageSource};
use strata::sync::FutexLock;
use strata::{Heap, LockedHeap};

/// The process's heap: no window until it is set up ([`set_up_on_load`],
/// or the first call). Its lock is a futex mutex: C programs' threads
/// outnumber cores and meet at the lock.
static HEAP: LockedHeap<OsSource, FutexLock> = LockedHeap::new(OsSource::unreserved(), (0, 0));

/// [`HEAP`]'s state: not yet set up, being set up, ready.
static STATE: AtomicU8 = AtomicU8::new(UNSET);
const UNSET: u8 = 0;
const SETTING: u8 = 1;
const READY: u8 = 2;

/// The heap, its window reserved by whichever comes first: the library
/// loading, or a call.
#[inline(always)]
pub(crate) fn heap() -> &'static LockedHeap<OsSource, FutexLock> {
    if STATE.load(Ordering::Acquire) != READY {
        set_up();
    }
    &HEAP
}

/// Sets the heap up as the library is loaded, before the program's
/// constructors run (`.init_array` entries of priority 100 run before
/// those of priority 101 and up and before unprioritised ones), so that
/// its `fork` handlers are registered before a program's: then the heap's
/// *prepare* runs after theirs and its *parent* and *child* before theirs,
/// as glibc's malloc takes its locks inside `fork()` itself. A handler
/// that holds a lock of its own across `fork()` while another thread
/// allocates under it, or a *child* handler that starts a thread that
/// allocates, would otherwise wait for the heap forever. (Handlers
/// registered earlier still, by the constructors of the libraries the
/// program links, run while the heap is held: their own thread's calls are
/// served, see [`holds_for_fork`].)
#[used]
#[unsafe(link_section = ".init_array.00100")]
static SET_UP_ON_LOAD: extern "C" fn() = set_up_on_load;

extern "C" fn set_up_on_load() {
    let _ = heap();
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
    held::free_deferred();
}

extern "C" fn fork_child() {
    FORKER.store(0, Ordering::Relaxed);
    // SAFETY: as above, in the child.
    unsafe { heap().fork_child() };
    held::free_deferred();
}

/// Whether this thread holds the heap for `fork()`: it runs a
/// `pthread_atfork` handler registered before the heap's own (by a linked
/// library's constructor, which runs before this library's), between the
/// heap's *prepare* and its *parent* or *child*. Its calls then go to the heap it
/// holds ([`held`]) instead of waiting for its own lock. One relaxed load
/// on every call outside a fork.
#[inline(always)]
pub(crate) fn holds_for_fork() -> bool {
    let forker = FORKER.load(Ordering::Relaxed);
    forker != 0 && forker == this_thread()
}

/// The C calls of a thread that [holds the heap for `fork()`](holds_for_fork):
/// the heap's own calls, as its locked path makes them, without the lock
/// and the thread caches. Frees wait for the end of the fork, then take
/// the usual path with all its checks (only that path can tell a block
/// that a thread has cached, and so refuse a second free of it).
pub(crate) mod held {
    use core::alloc::Layout;
    use core::ffi::c_void;
    use core::ptr::{self, NonNull};
    use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

    use super::heap;

    /// Frees asked for inside the fork window, made when it is over. More
    /// than this many in one fork are left unfreed (leaked).
    const DEFERRED: usize = 256;
    static FREES: [AtomicPtr<c_void>; DEFERRED] = [const { AtomicPtr::new(ptr::null_mut()) }; DEFERRED];
    /// How many of [`FREES`] are taken (written by the forking thread only).
    static TAKEN: AtomicUsize = AtomicUsize::new(0);

    /// C's `free`, after the fork.
    pub(crate) fn free(p: NonNull<c_void>) {
        let n = TAKEN.load(Ordering::Relaxed);
        if n < DEFERRED {
            FREES[n].store(p.as_ptr(), Ordering::Relaxed);
            TAKEN.store(n + 1, Ordering::Relaxed);
        }
    }

    /// Makes the frees of the fork window, once it is over (in the parent
    /// and in the child, each on its own copy of the blocks).
    pub(crate) fn free_deferred() {
        for slot in &FREES[..TAKEN.swap(0, Ordering::Relaxed)] {
            // SAFETY: what C's `free` was given inside the window; a block
            // strata does not own, or freed already, is refused there.
            unsafe { crate::free(slot.swap(ptr::null_mut(), Ordering::Relaxed)) };
        }
    }

    /// A block for `layout`, zeroed if `zeroed`, or null.
    pub(crate) fn alloc(layout: Layout, zeroed: bool) -> *mut c_void {
        // SAFETY: the caller checked that this thread holds the heap.
        let r = unsafe {
            heap().with_held_for_fork(|h| if zeroed { h.allocate_zeroed(layout) } else { h.allocate(layout) })
        };
        r.map_or(ptr::null_mut(), |p| p.as_ptr().cast())
    }

    /// C's `realloc` for a non-zero size: a new block with the old one's
    /// first bytes, the old one freed after the fork; or null, the old one
    /// unchanged.
    ///
    /// # Safety
    ///
    /// As [`crate::realloc`], on a thread that holds the heap.
    pub(crate) unsafe fn realloc(p: NonNull<c_void>, size: usize) -> *mut c_void {
        let old = usable_size(p);
        let Ok(layout) = Layout::from_size_align(size, crate::MIN_ALIGN) else { return ptr::null_mut() };
        if old == 0 {
            return ptr::null_mut();
        }
        let q = alloc(layout, false);
        if !q.is_null() {
            // SAFETY: the old block holds `old` bytes (the caller's promise
            // that it is live), the new one `size`; they are distinct.
            unsafe { ptr::copy_nonoverlapping(p.as_ptr().cast::<u8>(), q.cast::<u8>(), old.min(size)) };
            free(p);
        }
        q
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
