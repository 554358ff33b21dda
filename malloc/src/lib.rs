//! strata as the `malloc` of C programs.
//!
//! Built as a shared library (`libstrata_malloc.so`, for `LD_PRELOAD`) and a
//! static one (`libstrata_malloc.a`, linked before the C library), it
//! exports the C allocation API — `malloc`, `free`, `calloc`, `realloc`,
//! `reallocarray`, `posix_memalign`, `aligned_alloc`, `memalign`, `valloc`,
//! `pvalloc`, `malloc_usable_size` — over one [`strata::LockedHeap`] whose
//! page source is a window of the address space ([`OsSource`]): the heap
//! grows from the OS with no size chosen up front, and freed blocks of a
//! megabyte or more give their pages back.
//!
//! **No header per block.** `free(p)` and `malloc_usable_size(p)` find the
//! block's size in O(1) from what strata keeps anyway (layer +2's pool
//! header, layer 0's chunk header: `LockedHeap::dealloc_unsized`), and
//! refuse a pointer strata does not own instead of corrupting the heap
//! (counted; `STRATA_MALLOC_STATS=1` prints the heap's report at exit).
//!
//! **C semantics, as glibc has them.** Failure returns null with `errno`
//! `ENOMEM`; `calloc` and `reallocarray` check their multiplication;
//! `malloc(0)` returns a unique pointer; `free(NULL)` does nothing;
//! `realloc(NULL, n)` is `malloc(n)`, `realloc(p, 0)` frees `p` and returns
//! null; `posix_memalign` returns `EINVAL` for an alignment that is not a
//! power of two multiple of `sizeof(void *)`, `aligned_alloc` sets it for
//! one that is not a power of two; `memalign` rounds the alignment up to a
//! power of two; every block is 16-aligned.
//!
//! **Threads and `fork`.** Thread caches are on as soon as two threads
//! meet at the heap (strata's default with `std`); a thread's exit gives its
//! cache back. `fork()` is safe from any thread: `pthread_atfork` handlers
//! hold the heap and every cache across it, and the child takes back the
//! blocks of the threads it did not inherit.
//!
//! **No allocation of its own.** The heap is a `static`, its window an
//! `mmap`; nothing here calls Rust's `alloc`. A thread's first use of its
//! cache registers an exit handler, which in glibc calls `calloc`: that call
//! comes back here and is served through the lock.

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks, missing_docs)]

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::{c_int, c_void};
use core::ptr;
use core::sync::atomic::{AtomicU8, Ordering};

use strata::LockedHeap;
use strata::source::OsSource;

/// What `malloc` promises every block: `alignof(max_align_t)` on x86_64 and
/// aarch64 Linux.
const MIN_ALIGN: usize = 16;

/// The process's heap: no window until the first call.
static HEAP: LockedHeap<OsSource> = LockedHeap::new(OsSource::unreserved(), (0, 0));

/// [`HEAP`]'s state: not yet set up, being set up, ready.
static STATE: AtomicU8 = AtomicU8::new(UNSET);
const UNSET: u8 = 0;
const SETTING: u8 = 1;
const READY: u8 = 2;

/// The heap, its window reserved on the first call of any thread.
#[inline(always)]
fn heap() -> &'static LockedHeap<OsSource> {
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
                HEAP.init_with(source);
            }
            STATE.store(READY, Ordering::Release);
            // SAFETY: plain functions of this library, which lives as long
            // as the process.
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

extern "C" fn fork_prepare() {
    heap().fork_prepare();
}

extern "C" fn fork_parent() {
    // SAFETY: after `fork_prepare`, on the forking thread.
    unsafe { heap().fork_parent() };
}

extern "C" fn fork_child() {
    // SAFETY: as above, in the child.
    unsafe { heap().fork_child() };
}

/// Writes the heap's report to standard error, through a buffer on the
/// stack (no allocation at exit).
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

fn set_errno(e: c_int) {
    // SAFETY: this thread's errno.
    unsafe { *libc::__errno_location() = e };
}

/// A block of `size` bytes aligned to `align` (a power of two), or null
/// with `ENOMEM`.
#[inline(always)]
fn allocate(size: usize, align: usize) -> *mut c_void {
    let Ok(layout) = Layout::from_size_align(size.max(1), align.max(MIN_ALIGN)) else {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    };
    // SAFETY: a layout of non-zero size.
    let p = unsafe { heap().alloc(layout) };
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p.cast()
}

/// C's `malloc`.
#[unsafe(no_mangle)]
pub extern "C" fn malloc(size: usize) -> *mut c_void {
    allocate(size, MIN_ALIGN)
}

/// C's `free`.
///
/// # Safety
///
/// `p` is null or a block of this `malloc`, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free(p: *mut c_void) {
    if !p.is_null() {
        // SAFETY: the caller's promise; a pointer strata does not own is
        // refused.
        unsafe { heap().dealloc_unsized(p.cast()) };
    }
}

/// C's `cfree`, an old name for `free`.
///
/// # Safety
///
/// As [`free`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cfree(p: *mut c_void) {
    // SAFETY: forwarded contract.
    unsafe { free(p) }
}

/// C's `calloc`: `n * size` zeroed bytes, null with `ENOMEM` if the product
/// overflows.
#[unsafe(no_mangle)]
pub extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    let Some(bytes) = n.checked_mul(size) else {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    };
    let Ok(layout) = Layout::from_size_align(bytes.max(1), MIN_ALIGN) else {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    };
    // SAFETY: a layout of non-zero size.
    let p = unsafe { heap().alloc_zeroed(layout) };
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p.cast()
}

/// C's `realloc`, as glibc's: `realloc(NULL, n)` is `malloc(n)`,
/// `realloc(p, 0)` frees `p` and returns null; on failure, null with
/// `ENOMEM` and `p` unchanged.
///
/// # Safety
///
/// `p` is null or a live block of this `malloc`; on success it is not used
/// again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    if p.is_null() {
        return malloc(size);
    }
    if size == 0 {
        // SAFETY: forwarded contract.
        unsafe { free(p) };
        return ptr::null_mut();
    }
    // SAFETY: forwarded contract.
    let q = unsafe { heap().realloc_unsized(p.cast(), size) };
    if q.is_null() {
        set_errno(libc::ENOMEM);
    }
    q.cast()
}

/// C's `reallocarray`: `realloc(p, n * size)`, refusing (null with
/// `ENOMEM`, `p` unchanged) a product that overflows.
///
/// # Safety
///
/// As [`realloc`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: forwarded contract.
        Some(bytes) => unsafe { realloc(p, bytes) },
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// C's `posix_memalign`: `EINVAL` for an alignment that is not a power of
/// two multiple of `sizeof(void *)`, `ENOMEM` when memory runs out (`*out`
/// untouched on failure, `errno` unchanged).
///
/// # Safety
///
/// `out` must be valid for a pointer's write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if !align.is_power_of_two() || !align.is_multiple_of(size_of::<*mut c_void>()) {
        return libc::EINVAL;
    }
    let saved = errno();
    let p = allocate(size, align);
    if p.is_null() {
        set_errno(saved);
        return libc::ENOMEM;
    }
    // SAFETY: the caller's promise.
    unsafe { out.write(p) };
    0
}

fn errno() -> c_int {
    // SAFETY: this thread's errno.
    unsafe { *libc::__errno_location() }
}

/// C11's `aligned_alloc`: null with `EINVAL` for an alignment that is not a
/// power of two.
#[unsafe(no_mangle)]
pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    allocate(size, align)
}

/// The obsolete `memalign`: an alignment that is not a power of two is
/// rounded up to one, as glibc does.
#[unsafe(no_mangle)]
pub extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    match align.checked_next_power_of_two() {
        Some(align) => allocate(size, align),
        None => {
            set_errno(libc::EINVAL);
            ptr::null_mut()
        }
    }
}

/// The obsolete `valloc`: page-aligned.
#[unsafe(no_mangle)]
pub extern "C" fn valloc(size: usize) -> *mut c_void {
    allocate(size, page_size())
}

/// The obsolete `pvalloc`: page-aligned, the size rounded up to whole
/// pages (one page for 0).
#[unsafe(no_mangle)]
pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let page = page_size();
    match size.max(1).checked_next_multiple_of(page) {
        Some(size) => allocate(size, page),
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

fn page_size() -> usize {
    static CACHED: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
    let page = CACHED.load(Ordering::Relaxed);
    if page != 0 {
        return page;
    }
    // SAFETY: a plain query.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(4096);
    CACHED.store(page, Ordering::Relaxed);
    page
}

/// `malloc_usable_size`: the bytes block `p` may use, at least what was
/// asked for; 0 for null or a pointer that is not a live block of this
/// `malloc`.
///
/// # Safety
///
/// `p` is null or a block of this `malloc`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    // SAFETY: forwarded contract.
    unsafe { heap().usable_size(p.cast()) }.unwrap_or(0)
}

/// How many frees and reallocs strata has refused so far — pointers it does
/// not own, double frees it caught — instead of corrupting the heap.
#[unsafe(no_mangle)]
pub extern "C" fn strata_malloc_refused() -> usize {
    heap().stats().front.refused_frees
}
