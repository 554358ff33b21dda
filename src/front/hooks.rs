//! How a [`LockedHeap`](super::LockedHeap) serves its calls around the
//! heap's lock: the [`Hooks`] contract, and [`Selected`], the one type the
//! cargo features choose to fulfil it.
//!
//! | features | hooks | what a call goes through |
//! |---|---|---|
//! | `debug` (with or without `std`) | [`Checked`](super::debug::Checked) | the lock and the debug checks, every call |
//! | `std`, not `debug` | [`Cached`](super::cached::Cached) | the quick path until two threads meet, then the thread caches, then the lock |
//! | neither | [`Quick`](super::quick::Quick) | the quick path, then the lock |
//!
//! `debug` wins over `std` by rule, not by accident: every block must pass
//! through the debug checks, so no thread keeps blocks of its own and no
//! quick path skips the checks (stated in the README's feature table).
//! [`LockedHeap`](super::LockedHeap) itself carries no `cfg` on these paths.

use core::alloc::Layout;
use core::ptr::NonNull;

use super::{AllocateError, Domain, Heap, HeapStats};
use crate::object::{ALIGNMENT, SMALL_REQUEST_THRESHOLD};
use crate::segment::CHUNK_GRANULE;
use crate::source::PageSource;

/// The heap's lock, as the hooks are handed it.
pub(super) type Lock<S, L> = lock_api::Mutex<L, Heap<S>>;
/// The heap, locked.
pub(super) type Guard<'a, S, L> = lock_api::MutexGuard<'a, L, Heap<S>>;

/// The hooks the features select: with `debug`, the checks.
#[cfg(feature = "debug")]
pub(super) type Selected = super::debug::Checked;
/// The hooks the features select: with `std` (or `cpu-caches`), the
/// thread (or CPU) caches.
#[cfg(all(feature = "caches", not(feature = "debug")))]
pub(super) type Selected = super::cached::Cached;
/// The hooks the features select: the quick paths and the lock.
#[cfg(not(any(feature = "caches", feature = "debug")))]
pub(super) type Selected = super::quick::Quick;

/// What a [`LockedHeap`](super::LockedHeap) does on each of its calls. The
/// implementations keep `GlobalAlloc`'s contract: blocks aligned and long
/// enough, disjoint while live, null on failure (counted), and a free that
/// no layer owns refused (counted in `refused_frees`), never passed on.
pub(super) trait Hooks: Sized {
    /// The hooks' state in a heap just made.
    const NEW: Self;

    /// Whether [`realloc_layout`](Self::realloc_layout) gives the layout a
    /// block was allocated with (the debug hooks record it), rather than
    /// the layout of what it can hold: then a realloc without a layout
    /// asks for exactly the new size (see [`realloc_own_layout`]).
    const RECORDS_LAYOUTS: bool = false;

    /// Takes the heap's lock (with thread caches, first frees what exiting
    /// threads gave back).
    fn lock<'a, S: PageSource, L: lock_api::RawMutex>(&self, heap: &'a Lock<S, L>) -> Guard<'a, S, L>;

    /// Releases the lock, after the bookkeeping done with it held; acts on a
    /// debug violation once it is released.
    fn settle<S: PageSource, L: lock_api::RawMutex>(&self, heap: Guard<'_, S, L>);

    /// `GlobalAlloc::alloc` through `domain`.
    fn alloc<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        layout: Layout,
        domain: Domain,
    ) -> *mut u8;

    /// `GlobalAlloc::alloc_zeroed`: by default the block `alloc` finds,
    /// zeroed outside the lock.
    fn alloc_zeroed<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        layout: Layout,
    ) -> *mut u8 {
        let p = self.alloc(heap, layout, Domain::HEAP);
        if !p.is_null() {
            // SAFETY: a fresh block at least `layout.size()` long.
            unsafe { core::ptr::write_bytes(p, 0, layout.size()) };
        }
        p
    }

    /// `GlobalAlloc::dealloc` through `domain`.
    ///
    /// # Safety
    ///
    /// If the heap owns `p`, it is a live block of it allocated with
    /// `layout` (through `domain`), not used after this call.
    unsafe fn dealloc<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        p: NonNull<u8>,
        layout: Layout,
        domain: Domain,
    );

    /// `GlobalAlloc::realloc` of a non-null block.
    ///
    /// # Safety
    ///
    /// As [`dealloc`](Self::dealloc) through [`Domain::HEAP`]; `new_size`
    /// is not zero.
    unsafe fn realloc<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        p: NonNull<u8>,
        layout: Layout,
        new_size: usize,
    ) -> *mut u8;

    /// [`realloc`](Self::realloc) once the quick calls have declined it
    /// (C's `realloc` of a block they did not serve): by default `realloc`
    /// itself; hooks with quick paths go straight to the full path.
    ///
    /// # Safety
    ///
    /// As [`realloc`](Self::realloc).
    unsafe fn realloc_declined<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        p: NonNull<u8>,
        layout: Layout,
        new_size: usize,
    ) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { self.realloc(heap, p, layout, new_size) }
    }

    /// A free without a layout (C's `free`).
    ///
    /// # Safety
    ///
    /// If the heap owns `p`, it is a live block of it, not used after this
    /// call.
    unsafe fn dealloc_unsized<S: PageSource, L: lock_api::RawMutex>(&self, heap: &Lock<S, L>, p: NonNull<u8>);

    /// The layout live block `p` answers to, if the heap can tell.
    ///
    /// # Safety
    ///
    /// If the heap owns `p`, it is a live block of it.
    unsafe fn usable_layout<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        p: NonNull<u8>,
    ) -> Option<Layout>;

    /// The layout a realloc without one hands on with block `p`: by
    /// default [`usable_layout`](Self::usable_layout)'s.
    ///
    /// # Safety
    ///
    /// As [`usable_layout`](Self::usable_layout).
    unsafe fn realloc_layout<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        p: NonNull<u8>,
    ) -> Option<Layout> {
        // SAFETY: forwarded contract.
        unsafe { self.usable_layout(heap, p) }
    }

    /// C's `realloc` of a non-null block without its layout: by default
    /// [`realloc`](Self::realloc) with [`realloc_layout`](Self::realloc_layout)'s
    /// layout, a block that has none refused (null, counted).
    ///
    /// # Safety
    ///
    /// As [`dealloc_unsized`](Self::dealloc_unsized); `new_size` is not
    /// zero.
    unsafe fn realloc_unsized<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        p: NonNull<u8>,
        new_size: usize,
    ) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { realloc_own_layout(self, heap, p, new_size) }
    }

    /// An allocation failed with `e` (the lock held): by default null,
    /// counted; hooks that hold blocks outside the heap take them back and
    /// try `again` first. (The debug hooks hold none, and never ask.)
    #[cfg_attr(feature = "debug", allow(dead_code))]
    fn failed<S: PageSource>(
        &self,
        heap: &mut Heap<S>,
        e: AllocateError,
        again: impl FnOnce(&mut Heap<S>) -> Result<NonNull<u8>, AllocateError>,
    ) -> *mut u8 {
        let _ = again;
        heap.or_null(Err(e))
    }

    /// Before a trim (the lock held): every block the hooks hold goes back
    /// to the heap.
    fn reclaim<S: PageSource>(&self, heap: &mut Heap<S>) {
        let _ = heap;
    }

    /// Adds what the hooks counted without the lock to the heap's counters.
    fn add_counts(&self, stats: &mut HeapStats) {
        let _ = stats;
    }

    /// Switches thread caches on or off for good, if the hooks have any.
    #[cfg(feature = "caches")]
    fn set_thread_caches<S: PageSource>(&self, heap: &mut Heap<S>, on: bool) {
        let _ = (heap, on);
    }

    /// Whether threads cache the heap's blocks now.
    #[cfg(feature = "caches")]
    fn thread_caches_on(&self) -> bool {
        false
    }

    /// Before `fork()`, the heap's lock held: the hooks' own state is
    /// made safe to inherit.
    #[cfg(feature = "std")]
    fn fork_prepare(&self) {}

    /// After `fork()`, in the parent.
    ///
    /// # Safety
    ///
    /// Once after each [`fork_prepare`](Self::fork_prepare), on its thread.
    #[cfg(feature = "std")]
    unsafe fn fork_parent(&self) {}

    /// After `fork()`, in the child.
    ///
    /// # Safety
    ///
    /// As [`fork_parent`](Self::fork_parent), in the child.
    #[cfg(feature = "std")]
    unsafe fn fork_child(&self) {}

    /// Counts a refused free (or realloc) found before the heap was asked.
    #[cold]
    fn refuse<S: PageSource, L: lock_api::RawMutex>(&self, heap: &Lock<S, L>) {
        let mut h = self.lock(heap);
        h.stats.refused_frees += 1;
        self.settle(h);
    }
}

/// [`Hooks::realloc_unsized`]'s default, and the rest of the hooks' own
/// after their quick calls: `hooks`' realloc of `p`
/// ([`Hooks::realloc_declined`]) with the layout [`Hooks::realloc_layout`]
/// gives it, or null, refused and counted, when it has none.
///
/// # Safety
///
/// As [`Hooks::realloc_unsized`].
pub(super) unsafe fn realloc_own_layout<H: Hooks, S: PageSource, L: lock_api::RawMutex>(
    hooks: &H,
    heap: &Lock<S, L>,
    p: NonNull<u8>,
    new_size: usize,
) -> *mut u8 {
    // SAFETY: forwarded contract.
    let Some(layout) = (unsafe { hooks.realloc_layout(heap, p) }) else {
        hooks.refuse(heap);
        return core::ptr::null_mut();
    };
    // C's `realloc` answers with `malloc`'s alignment. A block whose usable
    // size gives it less (8: a size of 8 mod 16) asks for a multiple of 16
    // bytes, which every class serves 16-aligned (its blocks lie a multiple
    // of 16 apart from a 16-aligned start), as layer 0 serves every size.
    // (A recorded layout is `malloc`'s own, aligned to 16, for a block of
    // C's: its size is kept exact.)
    let asked = if H::RECORDS_LAYOUTS { new_size } else { malloc_size(layout, new_size) };
    if !may_stay_8_aligned(p, asked) {
        // SAFETY: forwarded contract; the layout is the block's own.
        return unsafe { hooks.realloc_declined(heap, p, layout, asked) };
    }
    // An 8-aligned block (of Rust's) may stay where it is: a 16-aligned
    // block is secured first, for the result to move to then. Without one
    // the realloc fails (null, the block untouched), as C's may when
    // memory runs out.
    let aligned = Layout::from_size_align(asked, ALIGNMENT).expect("a small size");
    let r = hooks.alloc(heap, aligned, Domain::HEAP);
    if r.is_null() {
        return r;
    }
    // SAFETY: forwarded contract; the layout is the block's own.
    let q = unsafe { hooks.realloc_declined(heap, p, layout, asked) };
    // SAFETY: `r` was just allocated with `aligned`, and is freed once,
    // either here or as `q`'s new place (`q`, live and `asked` bytes long
    // under the realloc's layout, is freed once after the copy).
    unsafe {
        if q.is_null() || q.addr().is_multiple_of(ALIGNMENT) {
            hooks.dealloc(heap, NonNull::new_unchecked(r), aligned, Domain::HEAP);
            return q;
        }
        core::ptr::copy_nonoverlapping(q, r, asked);
        let moved = Layout::from_size_align_unchecked(asked, layout.align());
        hooks.dealloc(heap, NonNull::new_unchecked(q), moved, Domain::HEAP);
    }
    r
}

/// Whether a realloc without a layout of block `p` to `asked` bytes may
/// be served 8-aligned: `p` is (a block of Rust's, allocated aligned to 8)
/// and may stay where it is, the size being small (layer 0 aligns every
/// larger block to 16). A block that moves is 16-aligned: its size is a
/// multiple of 16 ([`malloc_size`]), which every class serves 16-aligned,
/// and which a realloc's new block asks alignment 16 for
/// ([`moving_layout`](super::heap::moving_layout)), so that a block lent
/// near exhaustion is too.
#[inline]
pub(super) fn may_stay_8_aligned(p: NonNull<u8>, asked: usize) -> bool {
    !p.addr().get().is_multiple_of(ALIGNMENT) && asked <= SMALL_REQUEST_THRESHOLD
}

/// The size a realloc without a layout asks for: `new_size`, rounded up to
/// a multiple of [`ALIGNMENT`] if the block's own `layout` is aligned to
/// less (see [`realloc_own_layout`]) and the size is small — or, on 32-bit
/// targets, whose layer 0 aligns its blocks to 8 only, whatever the size,
/// so that a realloc's new block is asked for 16-aligned
/// ([`moving_layout`](super::heap::moving_layout)) wherever it lands.
#[inline]
pub(super) fn malloc_size(layout: Layout, new_size: usize) -> usize {
    if layout.align() < ALIGNMENT && (new_size <= SMALL_REQUEST_THRESHOLD || CHUNK_GRANULE < ALIGNMENT) {
        // (A size that overflows so is refused as it is.)
        new_size.checked_next_multiple_of(ALIGNMENT).unwrap_or(new_size)
    } else {
        new_size
    }
}

/// Runs an allocator entry point so that a panic inside it aborts the
/// program instead of unwinding out of it (undefined behaviour under
/// `GlobalAlloc`'s contract): for instance `linked_list_allocator`'s own
/// check of a double free on a first-fit heap. Free on the normal path; with
/// `panic = "abort"` (the kernel, firmware) the guard never runs.
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(super) fn no_unwind<R>(f: impl FnOnce() -> R) -> R {
    /// Dropped only while a panic unwinds through the entry point: its own
    /// panic is a panic during unwinding, which aborts.
    struct Abort;
    impl Drop for Abort {
        fn drop(&mut self) {
            panic!("strata: a panic inside the allocator cannot unwind out of GlobalAlloc; aborting");
        }
    }
    let guard = Abort;
    let r = f();
    core::mem::forget(guard);
    r
}
