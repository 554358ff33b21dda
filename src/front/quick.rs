//! The quick paths and the locked paths of a [`LockedHeap`](super::LockedHeap)
//! without debug checks, and [`Quick`], the hooks that use just these (no
//! thread caches: builds without `std`).
//!
//! **The common call.** `alloc` and `dealloc` first try, under `try_lock`,
//! the call most programs make most: a small block from the head pool of its
//! class, or the free of a +2 block whose pool stays on its lists. That much
//! fits in a few registers; everything else — layer 0, pools changing
//! state, a held lock — goes to an out-of-line locked path, so the common
//! call pays for no large stack frame. The quick path makes the choice
//! [`Heap::allocate`](super::Heap::allocate) makes, so it changes no block's placement.

use core::alloc::Layout;
use core::ptr::NonNull;

#[cfg(not(feature = "caches"))]
use super::Domain;
#[cfg(not(feature = "caches"))]
use super::hooks::{Guard, no_unwind};
use super::hooks::{Hooks, Lock};
use crate::object::{ALIGNMENT, SMALL_REQUEST_THRESHOLD};
use crate::source::{PageSource, reach};

/// Whether `layout` could be small in any geometry: at most
/// [`SMALL_REQUEST_THRESHOLD`] bytes, aligned to at most [`ALIGNMENT`]. The
/// quick paths try the lock only for these, so that a call bound for layer
/// 0 takes the lock once, not twice.
#[inline(always)]
const fn may_be_small(layout: Layout) -> bool {
    layout.size().wrapping_sub(1) < SMALL_REQUEST_THRESHOLD && layout.align() <= ALIGNMENT
}

/// The common allocation: a small request served from the head pool of its
/// class, if the lock is free. `None`: nothing was done.
#[inline(always)]
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
#[inline(always)]
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

/// [`free_quick`] for a free without a layout: the block must also start
/// where a block of its pool does.
///
/// # Safety
///
/// As [`Heap::deallocate_unsized`](super::Heap::deallocate_unsized).
#[inline(always)]
pub(super) unsafe fn free_quick_unsized<S: PageSource, L: lock_api::RawMutex>(
    heap: &Lock<S, L>,
    ptr: NonNull<u8>,
) -> bool {
    let Some(mut heap) = heap.try_lock() else { return false };
    let ptr = reach(ptr);
    // SAFETY: a pointer into an arena of ours, checked to be a block of its
    // pool, is by the caller's contract a live +2 block.
    heap.object.owns(ptr.as_ptr())
        && unsafe { heap.object.is_block_start(ptr) && heap.object.deallocate_quick(ptr) }
}

/// The block of an allocation's `result`, or null, counted: a failure goes
/// to [`Hooks::failed`], which may take blocks back and try `again`.
#[inline(always)]
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
#[inline(always)]
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
#[inline(always)]
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
#[inline(always)]
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

    #[inline(always)]
    fn lock<'a, S: PageSource, L: lock_api::RawMutex>(&self, heap: &'a Lock<S, L>) -> Guard<'a, S, L> {
        heap.lock()
    }

    #[inline(always)]
    fn settle<S: PageSource, L: lock_api::RawMutex>(&self, heap: Guard<'_, S, L>) {
        drop(heap);
    }

    #[inline(always)]
    fn alloc<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        layout: Layout,
        _: Domain,
    ) -> *mut u8 {
        match no_unwind(|| alloc_quick(heap, layout)) {
            Some(p) => p.as_ptr(),
            None => self.alloc_rest(layout, heap),
        }
    }

    #[inline(always)]
    unsafe fn dealloc<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        p: NonNull<u8>,
        layout: Layout,
        _: Domain,
    ) {
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
        // SAFETY: forwarded contract.
        no_unwind(|| unsafe { realloc_locked(self, heap, p, layout, new_size) })
    }

    unsafe fn dealloc_unsized<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        p: NonNull<u8>,
    ) {
        // SAFETY: forwarded contract; the quick path left the block as it
        // was if it declined.
        no_unwind(|| unsafe {
            if !free_quick_unsized(heap, p) {
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
