//! The heap of C firmware: the region given to [`strata_init`], behind a
//! critical section.

use core::ffi::{c_int, c_void};

// The critical section the heap's lock takes (interrupts masked, single
// core) comes from here.
use cortex_m as _;

use strata::front::Heap;
use strata::object::Geometry;
use strata::segment::Config;
use strata::{LockedHeap, PageSource, RegionSource};

static HEAP: LockedHeap = LockedHeap::empty();

#[inline(always)]
pub(crate) fn heap() -> &'static LockedHeap {
    &HEAP
}

/// Gives the heap its memory, `[region, region + len)`: call once, before
/// the first allocation (until then every allocation fails with `ENOMEM`).
/// Returns 0, or `EINVAL` for a second call or a null region, leaving the
/// heap as it was.
///
/// The heap is TLSF at every size (not the first fit strata uses under
/// 1 MiB, which keeps no block sizes): C's `free` has no size to give.
///
/// # Safety
///
/// The region must be valid for reads and writes, and used by nothing else
/// for the rest of the program.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn strata_init(region: *mut c_void, len: usize) -> c_int {
    if region.is_null() || HEAP.with(|h| h.source().window().1 != 0) {
        return super::EINVAL;
    }
    // SAFETY: the caller's promise.
    let source = unsafe { RegionSource::new(region.cast(), len) };
    let window = source.window().1;
    let config = Config { first_fit: false, ..Config::for_window(window) };
    match Heap::with_geometry(source, Geometry::for_region(window), config) {
        Ok(heap) => {
            HEAP.init_heap(heap);
            0
        }
        Err(_) => super::EINVAL,
    }
}

// picolibc's `errno` is thread-local (`-ftls-model=local-exec`, the thread
// pointer from `__aeabi_read_tp`), which stable Rust cannot name: the
// store is the three instructions GCC emits for `errno = e`.
#[cfg(target_arch = "arm")]
core::arch::global_asm!(
    ".section .text.__strata_malloc_set_errno,\"ax\",%progbits",
    ".global __strata_malloc_set_errno",
    ".p2align 2",
    ".thumb_func",
    ".type __strata_malloc_set_errno, %function",
    "__strata_malloc_set_errno:",
    "    push {{r4, lr}}",
    "    mov r4, r0",
    "    bl __aeabi_read_tp",
    "    ldr r3, 1f",
    "    str r4, [r3, r0]",
    "    pop {{r4, pc}}",
    "    .p2align 2",
    "1:  .word errno(tpoff)",
    ".size __strata_malloc_set_errno, . - __strata_malloc_set_errno",
);

unsafe extern "C" {
    /// Sets picolibc's `errno` (above).
    fn __strata_malloc_set_errno(e: c_int);
}

pub(crate) fn set_errno(e: c_int) {
    // SAFETY: stores to this thread's `errno`, nothing else.
    unsafe { __strata_malloc_set_errno(e) };
}

/// No pages on a microcontroller: `valloc` aligns to 4 KiB.
pub(crate) fn page_size() -> usize {
    4096
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    // An allocator panic is a broken heap: stop here, in the debugger's
    // sight, rather than return into it.
    loop {
        core::hint::spin_loop();
    }
}
