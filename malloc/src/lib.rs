//! strata as the `malloc` of C programs.
//!
//! Built as a shared library (`libstrata_malloc.so`, for `LD_PRELOAD`) and a
//! static one (`libstrata_malloc.a`, linked before the C library), it
//! exports the C allocation API — `malloc`, `free`, `calloc`, `realloc`,
//! `reallocarray`, `posix_memalign`, `aligned_alloc`, `memalign`, `valloc`,
//! `pvalloc`, `malloc_usable_size`, `malloc_trim` — over one
//! [`strata::LockedHeap`] whose page source is a window of the address
//! space (`strata::source::OsSource`): the heap grows from the OS with no
//! size chosen up front, and freed blocks of a megabyte or more give their
//! pages back. Layer 0 is TLSF whatever the window's size (strata would
//! serve a window under 16 MiB, as a small `ulimit -v` leaves, by first
//! fit, which keeps no block sizes for `free` to find).
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
//! blocks of the threads it did not inherit. strata registers them as the
//! library loads, before the program's constructors run, so that the
//! program's own handlers run outside that window (as around glibc's
//! locking inside `fork()`); handlers registered earlier still, by linked
//! libraries' constructors, may allocate in it: the forking thread's calls
//! go to the heap it holds, its frees wait for the end of the fork.
//!
//! **No allocation of its own.** The heap is a `static`, its window an
//! `mmap`; nothing here calls Rust's `alloc`. A thread's first use of its
//! cache registers an exit handler, which in glibc calls `calloc`: that call
//! comes back here and is served through the lock.
//!
//! **In C firmware** (built for a bare-metal target such as
//! `thumbv7em-none-eabihf`, as a static library that replaces picolibc's
//! `malloc`): the heap is the region the program gives `strata_init`
//! before its first allocation, behind a critical section (single core:
//! `malloc` from an interrupt handler is safe), served by TLSF at every size
//! so that `free` finds every block's size; `errno` is picolibc's.

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks, missing_docs)]

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::{c_int, c_void};
use core::ptr::{self, NonNull};

#[cfg(unix)]
mod host;
#[cfg(unix)]
use host::{heap, page_size, set_errno};

#[cfg(target_os = "none")]
mod firmware;
#[cfg(target_os = "none")]
pub use firmware::strata_init;
#[cfg(target_os = "none")]
use firmware::{heap, page_size, set_errno};

/// What `malloc` promises every block: `alignof(max_align_t)` on x86_64 and
/// aarch64 Linux, and more than any Cortex-M type needs.
const MIN_ALIGN: usize = 16;

/// `errno` values (the same on Linux and picolibc).
const ENOMEM: c_int = 12;
const EINVAL: c_int = 22;

/// A block of `size` bytes aligned to `align` (a power of two), or null
/// with `ENOMEM`.
#[inline(always)]
fn allocate(size: usize, align: usize) -> *mut c_void {
    let p = allocate_quietly(size, align);
    if p.is_null() {
        set_errno(ENOMEM);
    }
    p
}

/// [`allocate`] without touching `errno`.
#[inline(always)]
fn allocate_quietly(size: usize, align: usize) -> *mut c_void {
    let Ok(layout) = Layout::from_size_align(size.max(1), align.max(MIN_ALIGN)) else {
        return ptr::null_mut();
    };
    allocate_layout(layout, false)
}

/// A block for `layout` (of non-zero size), zeroed if `zeroed`, or null
/// (`errno` untouched): from the heap this thread holds if it runs a fork
/// handler inside the heap's fork window, else through the heap's calls.
#[inline(always)]
fn allocate_layout(layout: Layout, zeroed: bool) -> *mut c_void {
    #[cfg(unix)]
    if host::holds_for_fork() {
        return host::held::alloc(layout, zeroed);
    }
    // SAFETY: a layout of non-zero size (the caller's promise).
    unsafe { if zeroed { heap().alloc_zeroed(layout) } else { heap().alloc(layout) } }.cast()
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
    let Some(p) = NonNull::new(p) else { return };
    #[cfg(unix)]
    if host::holds_for_fork() {
        return host::held::free(p);
    }
    // SAFETY: the caller's promise; a pointer strata does not own is
    // refused.
    unsafe { heap().dealloc_unsized(p.as_ptr().cast()) };
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
        set_errno(ENOMEM);
        return ptr::null_mut();
    };
    let Ok(layout) = Layout::from_size_align(bytes.max(1), MIN_ALIGN) else {
        set_errno(ENOMEM);
        return ptr::null_mut();
    };
    let p = allocate_layout(layout, true);
    if p.is_null() {
        set_errno(ENOMEM);
    }
    p
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
    // SAFETY: forwarded contract; `p` is not null.
    let q = unsafe { resize(NonNull::new_unchecked(p), size) };
    if q.is_null() {
        set_errno(ENOMEM);
    }
    q
}

/// [`realloc`] of a block to a non-zero size, without touching `errno`:
/// in the heap's fork window on the heap this thread holds, else through
/// the heap's calls.
///
/// # Safety
///
/// As [`realloc`].
#[inline(always)]
unsafe fn resize(p: NonNull<c_void>, size: usize) -> *mut c_void {
    #[cfg(unix)]
    if host::holds_for_fork() {
        // SAFETY: forwarded contract.
        return unsafe { host::held::realloc(p, size) };
    }
    // SAFETY: forwarded contract.
    unsafe { heap().realloc_unsized(p.as_ptr().cast(), size) }.cast()
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
            set_errno(ENOMEM);
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
        return EINVAL;
    }
    let p = allocate_quietly(size, align);
    if p.is_null() {
        return ENOMEM;
    }
    // SAFETY: the caller's promise.
    unsafe { out.write(p) };
    0
}

/// C11's `aligned_alloc`: null with `EINVAL` for an alignment that is not a
/// power of two.
#[unsafe(no_mangle)]
pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(EINVAL);
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
            set_errno(EINVAL);
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
            set_errno(ENOMEM);
            ptr::null_mut()
        }
    }
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
    #[cfg(unix)]
    if host::holds_for_fork() {
        return NonNull::new(p).map_or(0, host::held::usable_size);
    }
    // SAFETY: forwarded contract.
    unsafe { heap().usable_size(p.cast()) }.unwrap_or(0)
}

/// glibc's `malloc_trim`: gives the heap's free memory back to the OS —
/// wholly free arenas and spans, and the pages inside every free chunk
/// (freed blocks of a megabyte or more go back as they are freed). Returns
/// 1 if the heap had free memory to give back, 0 if not; `pad` is ignored.
#[unsafe(no_mangle)]
pub extern "C" fn malloc_trim(_pad: usize) -> c_int {
    // (Not while this thread holds the heap for `fork()`.)
    #[cfg(unix)]
    if host::holds_for_fork() {
        return 0;
    }
    let heap = heap();
    let (arenas, spans) = heap.trim();
    let free = heap.stats().segments.free_bytes;
    c_int::from(arenas + spans > 0 || free >= 2 * page_size())
}

/// How many frees and reallocs strata has refused so far — pointers it does
/// not own, double frees it caught — instead of corrupting the heap.
#[unsafe(no_mangle)]
pub extern "C" fn strata_malloc_refused() -> usize {
    #[cfg(unix)]
    if host::holds_for_fork() {
        return host::held::refused();
    }
    heap().stats().front.refused_frees
}
