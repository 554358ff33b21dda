//! The quick paths and the locked paths of a [`LockedHeap`](super::LockedHeap)
//! without debug checks, and [`Quick`], the hooks that use just these (no
//! thread caches: builds without `std`).
//!
//! **The common call.** `alloc` and `dealloc` first try, under `try_lock`,
//! the call most programs make most: a small block from the head pool of its
//! class, or the free of a +2 block whose pool stays on its lists. That much
//! fits in a few registers; everything else — pools changing state, a held
//! lock — goes to an out-of-line locked path, so the common call pays for no
//! large stack frame. The quick path makes the choice
//! [`Heap::allocate`](super::Heap::allocate) makes, so it changes no block's placement.
//!
//! **Layer 0's common call.** A request past the small sizes (above 512
//! bytes, so layer 0's in every geometry) tries layer 0's quick calls in a
//! frame of its own (`segment/quick.rs`): an allocation from TLSF's lists
//! in O(1), the free of a block of a committed window that its header and
//! its neighbour's say is in use and of that size, a realloc in place,
//! backward or to a new block, all with the checks of the full path.
//! Requests aligned past 16 (layer 0's at every size) take the same calls
//! in a frame of their own, whose allocation looks for an aligned fit (in
//! the common call's frame, that lookup made it larger than it saved). They
//! make the full path's choices or decline untouched, and a declined call
//! takes the lock again on the full path: a few instructions, against the
//! full path's frame on every call. The frees and reallocs among them take
//! an `allowed` check that the hooks answer with the lock held: with
//! thread caches, whether they are still off (they come on under the lock),
//! so that no quick call frees a block a cache may hold — which only the
//! caches' own checks would see.

use core::alloc::Layout;
use core::ptr::NonNull;

#[cfg(not(feature = "caches"))]
use super::Domain;
#[cfg(not(feature = "caches"))]
use super::hooks::{Guard, no_unwind, realloc_own_layout};
use super::hooks::{Hooks, Lock};
use crate::object::{ALIGNMENT, SMALL_REQUEST_THRESHOLD};
use crate::segment::{CHUNK_GRANULE, CHUNK_WORD};
use crate::source::{PageSource, reach};

/// Whether `layout` could be small in any geometry: at most
/// [`SMALL_REQUEST_THRESHOLD`] bytes, aligned to at most [`ALIGNMENT`]. The
/// small quick paths try the lock only for these.
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(super) const fn may_be_small(layout: Layout) -> bool {
    layout.size().wrapping_sub(1) < SMALL_REQUEST_THRESHOLD && layout.align() <= ALIGNMENT
}

/// Whether `layout` is larger than a small request in every geometry: what
/// layer 0 serves as given. The quick paths try layer 0's quick calls for
/// these (`segment/quick.rs`), out of line from the small request's path
/// (which then keeps its few registers).
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(super) const fn beyond_small(layout: Layout) -> bool {
    layout.size() > SMALL_REQUEST_THRESHOLD
}

/// Whether an allocation [`beyond_small`] is aligned past layer 0's
/// granule: it takes layer 0's aligned quick call, in the frame of the
/// requests [`small_aligned`].
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(super) const fn aligned_past_granule(layout: Layout) -> bool {
    layout.align() > CHUNK_GRANULE
}

/// Whether `layout` is a small size aligned past [`ALIGNMENT`] (not 0):
/// layer 0's in every geometry, under the layout [`Heap::allocate`](super::Heap::allocate)
/// rounds it to. The quick paths try layer 0's quick calls for these in a
/// frame of their own (`ALIGNED`), apart from the requests [`beyond_small`].
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(super) const fn small_aligned(layout: Layout) -> bool {
    layout.align() > ALIGNMENT && layout.size().wrapping_sub(1) < SMALL_REQUEST_THRESHOLD
}

/// The common allocation of a request [`beyond_small`] (or, `ALIGNED`, one
/// [`small_aligned`] or [`aligned_past_granule`]): from layer 0's lists in
/// O(1), if the lock is free.
/// `None`: nothing was done.
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(super) fn alloc_quick_layer_0<const ALIGNED: bool, S: PageSource, L: lock_api::RawMutex>(
    heap: &Lock<S, L>,
    layout: Layout,
) -> Option<NonNull<u8>> {
    let mut heap = heap.try_lock()?;
    if ALIGNED {
        let layout = heap.layer_0_layout(layout);
        return heap.segment.allocate_quick_aligned(layout);
    }
    heap.segment.allocate_quick(layout)
}

/// The common free of a block whose layout is [`beyond_small`] (or,
/// `ALIGNED`, [`small_aligned`]): a block of
/// layer 0's committed window, checked as the full path checks it, if the
/// lock is free. `false`: nothing was done.
///
/// `allowed` is asked with the lock held (see the module docs).
///
/// # Safety
///
/// As [`Heap::deallocate`](super::Heap::deallocate).
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(super) unsafe fn free_quick_layer_0<const ALIGNED: bool, S: PageSource, L: lock_api::RawMutex>(
    heap: &Lock<S, L>,
    ptr: NonNull<u8>,
    layout: Layout,
    allowed: impl Fn() -> bool,
) -> bool {
    let Some(mut heap) = heap.try_lock() else { return false };
    if !allowed() {
        return false;
    }
    let discard_from = heap.source.discard_from();
    let layout = if ALIGNED { heap.layer_0_layout(layout) } else { layout };
    // A pointer into an arena is no block of layer 0 (the full path
    // refuses it); others are layer 0's to check.
    // SAFETY: forwarded contract.
    !heap.object.owns(ptr.as_ptr()) && unsafe { heap.segment.deallocate_quick(ptr, layout, discard_from) }
}

/// The common allocation: a small request served from the head pool of its
/// class, if the lock is free. `None`: nothing was done.
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(super) fn alloc_quick<S: PageSource, L: lock_api::RawMutex>(
    heap: &Lock<S, L>,
    layout: Layout,
) -> Option<NonNull<u8>> {
    if !may_be_small(layout) {
        return None;
    }
    let mut heap = heap.try_lock()?;
    if !heap.is_small(layout) {
        return None;
    }
    heap.object.allocate_from_pools(layout.size(), layout.align())
}

/// The common free: a block of layer +2 whose pool stays on its lists, if
/// the lock is free. `false`: nothing was done.
///
/// # Safety
///
/// As [`Heap::deallocate`](super::Heap::deallocate).
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(super) unsafe fn free_quick<S: PageSource, L: lock_api::RawMutex>(
    heap: &Lock<S, L>,
    ptr: NonNull<u8>,
    layout: Layout,
) -> bool {
    // A +2 block's layout is small: others go straight to the locked path.
    if !may_be_small(layout) {
        return false;
    }
    let Some(mut heap) = heap.try_lock() else { return false };
    // SAFETY: a block of an arena of ours is, by the caller's contract, a
    // live +2 block.
    heap.object.owns(ptr.as_ptr()) && unsafe { heap.object.deallocate_quick(ptr) }
}

/// The common realloc, if the lock is free: to a size layer 0 serves as
/// given, through layer 0's quick calls ([`Heap::reallocate_quick`](super::Heap::reallocate_quick)),
/// or of a +2 block to a small size, through layer +2's
/// ([`Heap::reallocate_small_quick`](super::Heap::reallocate_small_quick)).
/// `None`: nothing was done.
///
/// `allowed` is asked with the lock held (see the module docs).
///
/// # Safety
///
/// As [`Heap::reallocate`](super::Heap::reallocate).
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(super) unsafe fn realloc_quick<S: PageSource, L: lock_api::RawMutex>(
    heap: &Lock<S, L>,
    ptr: NonNull<u8>,
    layout: Layout,
    new_size: usize,
    allowed: impl Fn() -> bool,
) -> Option<NonNull<u8>> {
    let mut heap = heap.try_lock()?;
    if !allowed() {
        return None;
    }
    // SAFETY: forwarded contract.
    unsafe {
        if new_size > SMALL_REQUEST_THRESHOLD {
            heap.reallocate_quick(ptr, layout, new_size)
        } else {
            heap.reallocate_small_quick(ptr, layout, new_size, None)
        }
    }
}

/// [`realloc_quick`] without a layout (C's `realloc`), if the lock is free
/// ([`Heap::reallocate_unsized_quick`](super::Heap::reallocate_unsized_quick)).
/// `None`: nothing was done.
///
/// `allowed` is asked with the lock held (see the module docs).
///
/// # Safety
///
/// As [`Heap::reallocate_unsized`](super::Heap::reallocate_unsized).
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(super) unsafe fn realloc_unsized_quick<S: PageSource, L: lock_api::RawMutex>(
    heap: &Lock<S, L>,
    ptr: NonNull<u8>,
    new_size: usize,
    allowed: impl Fn() -> bool,
) -> Option<NonNull<u8>> {
    let mut heap = heap.try_lock()?;
    // SAFETY: forwarded contract.
    allowed().then(|| unsafe { heap.reallocate_unsized_quick(ptr, new_size) }).flatten()
}

/// [`free_quick`] for a free without a layout (C's `free`): a +2 block
/// must also start where a block of its pool does; a block of layer 0 is
/// freed by its quick calls when its size is past the small sizes, as
/// [`Heap::deallocate_unsized`](super::Heap::deallocate_unsized) frees it
/// with the layout its chunk gives.
///
/// `allowed` is asked with the lock held (see the module docs).
///
/// # Safety
///
/// As [`Heap::deallocate_unsized`](super::Heap::deallocate_unsized).
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(super) unsafe fn free_quick_unsized<S: PageSource, L: lock_api::RawMutex>(
    heap: &Lock<S, L>,
    ptr: NonNull<u8>,
    allowed: impl Fn() -> bool,
) -> bool {
    let Some(mut heap) = heap.try_lock() else { return false };
    if !allowed() {
        return false;
    }
    let ptr = reach(ptr);
    if heap.object.owns(ptr.as_ptr()) {
        // SAFETY: a pointer into an arena of ours, checked to be a block of
        // its pool, is by the caller's contract a live +2 block.
        return unsafe { heap.object.is_block_start(ptr) && heap.object.deallocate_quick(ptr) };
    }
    let discard_from = heap.source.discard_from();
    match heap.segment.quick_chunk(ptr, discard_from) {
        Some(chunk) if chunk - CHUNK_WORD > SMALL_REQUEST_THRESHOLD => {
            // SAFETY: a block of layer 0 in use, just checked, freed once.
            unsafe { heap.segment.free_quick_block(ptr) };
            true
        }
        _ => false,
    }
}

/// The block of an allocation's `result`, or null, counted: a failure goes
/// to [`Hooks::failed`], which may take blocks back and try `again`.
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(super) fn block_or_null<H: Hooks, S: PageSource>(
    hooks: &H,
    heap: &mut super::Heap<S>,
    result: Result<NonNull<u8>, super::AllocateError>,
    again: impl FnOnce(&mut super::Heap<S>) -> Result<NonNull<u8>, super::AllocateError>,
) -> *mut u8 {
    match result {
        Ok(p) => p.as_ptr(),
        Err(e) => hooks.failed(heap, e, again),
    }
}

/// Allocates through `hooks`' lock.
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(super) fn alloc_locked<H: Hooks, S: PageSource, L: lock_api::RawMutex>(
    hooks: &H,
    heap: &Lock<S, L>,
    layout: Layout,
) -> *mut u8 {
    let mut h = hooks.lock(heap);
    let result = h.allocate(layout);
    let p = block_or_null(hooks, &mut h, result, |h| h.allocate(layout));
    hooks.settle(h);
    p
}

/// Frees `ptr` through `hooks`' lock, counting a refusal in `refused_frees`.
///
/// # Safety
///
/// As [`Heap::deallocate`](super::Heap::deallocate).
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(super) unsafe fn free_locked<H: Hooks, S: PageSource, L: lock_api::RawMutex>(
    hooks: &H,
    heap: &Lock<S, L>,
    ptr: NonNull<u8>,
    layout: Layout,
) {
    let mut h = hooks.lock(heap);
    // SAFETY: forwarded contract.
    if unsafe { h.deallocate(ptr, layout) }.is_err() {
        h.stats.refused_frees += 1;
    }
    hooks.settle(h);
}

/// Frees `ptr` without its layout through `hooks`' lock, counting a refusal.
///
/// # Safety
///
/// As [`Heap::deallocate_unsized`](super::Heap::deallocate_unsized).
pub(super) unsafe fn free_unsized_locked<H: Hooks, S: PageSource, L: lock_api::RawMutex>(
    hooks: &H,
    heap: &Lock<S, L>,
    ptr: NonNull<u8>,
) {
    let mut h = hooks.lock(heap);
    // SAFETY: forwarded contract.
    if unsafe { h.deallocate_unsized(ptr) }.is_err() {
        h.stats.refused_frees += 1;
    }
    hooks.settle(h);
}

/// Reallocates through `hooks`' lock.
///
/// # Safety
///
/// As [`Heap::reallocate`](super::Heap::reallocate).
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(super) unsafe fn realloc_locked<H: Hooks, S: PageSource, L: lock_api::RawMutex>(
    hooks: &H,
    heap: &Lock<S, L>,
    p: NonNull<u8>,
    layout: Layout,
    new_size: usize,
) -> *mut u8 {
    let mut h = hooks.lock(heap);
    // SAFETY: forwarded contract.
    let result = unsafe { h.reallocate(p, layout, new_size) };
    // SAFETY: as above: a failed realloc left the block as it was.
    let p = block_or_null(hooks, &mut h, result, |h| unsafe { h.reallocate(p, layout, new_size) });
    hooks.settle(h);
    p
}

/// The layout live block `p` answers to ([`Heap::usable_layout`](super::Heap::usable_layout)), under
/// `hooks`' lock.
pub(super) fn usable_layout_locked<H: Hooks, S: PageSource, L: lock_api::RawMutex>(
    hooks: &H,
    heap: &Lock<S, L>,
    p: NonNull<u8>,
) -> Option<Layout> {
    let h = hooks.lock(heap);
    let layout = h.usable_layout(p).ok();
    hooks.settle(h);
    layout
}

/// The hooks of a build without `std` or `debug`: the quick path, then the
/// lock.
#[cfg(not(feature = "caches"))]
#[derive(Debug)]
pub(super) struct Quick;

#[cfg(not(feature = "caches"))]
impl Hooks for Quick {
    const NEW: Self = Quick;

    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn lock<'a, S: PageSource, L: lock_api::RawMutex>(&self, heap: &'a Lock<S, L>) -> Guard<'a, S, L> {
        heap.lock()
    }

    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn settle<S: PageSource, L: lock_api::RawMutex>(&self, heap: Guard<'_, S, L>) {
        drop(heap);
    }

    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn alloc<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        layout: Layout,
        _: Domain,
    ) -> *mut u8 {
        if beyond_small(layout) {
            if aligned_past_granule(layout) {
                return self.alloc_beyond_small::<true, _, _>(layout, heap);
            }
            return self.alloc_beyond_small::<false, _, _>(layout, heap);
        } else if small_aligned(layout) {
            return self.alloc_beyond_small::<true, _, _>(layout, heap);
        }
        match no_unwind(|| alloc_quick(heap, layout)) {
            Some(p) => p.as_ptr(),
            None => self.alloc_rest(layout, heap),
        }
    }

    #[cfg_attr(not(strata_unoptimized), inline(always))]
    unsafe fn dealloc<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        p: NonNull<u8>,
        layout: Layout,
        _: Domain,
    ) {
        if beyond_small(layout) {
            // SAFETY: forwarded contract.
            return unsafe { self.dealloc_beyond_small::<false, _, _>(p, layout, heap) };
        } else if small_aligned(layout) {
            // SAFETY: forwarded contract.
            return unsafe { self.dealloc_beyond_small::<true, _, _>(p, layout, heap) };
        }
        // SAFETY: forwarded contract.
        if !no_unwind(|| unsafe { free_quick(heap, p, layout) }) {
            // SAFETY: as above; the quick path left the block as it was.
            unsafe { self.dealloc_rest(p, layout, heap) }
        }
    }

    unsafe fn realloc<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        p: NonNull<u8>,
        layout: Layout,
        new_size: usize,
    ) -> *mut u8 {
        // SAFETY: forwarded contract; the quick path left the block as it
        // was if it declined.
        no_unwind(|| unsafe {
            match realloc_quick(heap, p, layout, new_size, || true) {
                Some(q) => q.as_ptr(),
                None => realloc_locked(self, heap, p, layout, new_size),
            }
        })
    }

    unsafe fn realloc_declined<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        p: NonNull<u8>,
        layout: Layout,
        new_size: usize,
    ) -> *mut u8 {
        // SAFETY: forwarded contract.
        no_unwind(|| unsafe { realloc_locked(self, heap, p, layout, new_size) })
    }

    unsafe fn realloc_unsized<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        p: NonNull<u8>,
        new_size: usize,
    ) -> *mut u8 {
        // SAFETY: forwarded contract.
        if let Some(q) = no_unwind(|| unsafe { realloc_unsized_quick(heap, p, new_size, || true) }) {
            return q.as_ptr();
        }
        // SAFETY: as above; the quick path left the block as it was.
        unsafe { realloc_own_layout(self, heap, p, new_size) }
    }

    unsafe fn dealloc_unsized<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        p: NonNull<u8>,
    ) {
        // SAFETY: forwarded contract; the quick path left the block as it
        // was if it declined.
        no_unwind(|| unsafe {
            if !free_quick_unsized(heap, p, || true) {
                free_unsized_locked(self, heap, p);
            }
        })
    }

    unsafe fn usable_layout<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        p: NonNull<u8>,
    ) -> Option<Layout> {
        usable_layout_locked(self, heap, p)
    }
}

#[cfg(not(feature = "caches"))]
impl Quick {
    /// Every allocation the quick path leaves (the arguments in the order
    /// the caller holds them: the quick path moves no register for it).
    #[inline(never)]
    fn alloc_rest<S: PageSource, L: lock_api::RawMutex>(&self, layout: Layout, heap: &Lock<S, L>) -> *mut u8 {
        no_unwind(|| alloc_locked(self, heap, layout))
    }

    /// An allocation [`beyond_small`]: layer 0's quick call, else the
    /// lock.
    #[inline(never)]
    fn alloc_beyond_small<const ALIGNED: bool, S: PageSource, L: lock_api::RawMutex>(
        &self,
        layout: Layout,
        heap: &Lock<S, L>,
    ) -> *mut u8 {
        match no_unwind(|| alloc_quick_layer_0::<ALIGNED, _, _>(heap, layout)) {
            Some(p) => p.as_ptr(),
            None => self.alloc_rest(layout, heap),
        }
    }

    /// A free [`beyond_small`]: layer 0's quick call, else the lock.
    ///
    /// # Safety
    ///
    /// As [`Heap::deallocate`](super::Heap::deallocate).
    #[inline(never)]
    unsafe fn dealloc_beyond_small<const ALIGNED: bool, S: PageSource, L: lock_api::RawMutex>(
        &self,
        p: NonNull<u8>,
        layout: Layout,
        heap: &Lock<S, L>,
    ) {
        // SAFETY: forwarded contract; the quick call left the block as it
        // was if it declined.
        if !no_unwind(|| unsafe { free_quick_layer_0::<ALIGNED, _, _>(heap, p, layout, || true) }) {
            // SAFETY: as above.
            unsafe { self.dealloc_rest(p, layout, heap) }
        }
    }

    /// Every free the quick path leaves.
    ///
    /// # Safety
    ///
    /// As [`Heap::deallocate`](super::Heap::deallocate).
    #[inline(never)]
    unsafe fn dealloc_rest<S: PageSource, L: lock_api::RawMutex>(
        &self,
        p: NonNull<u8>,
        layout: Layout,
        heap: &Lock<S, L>,
    ) {
        // SAFETY: forwarded contract.
        no_unwind(|| unsafe { free_locked(self, heap, p, layout) })
    }
}
