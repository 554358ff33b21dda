//! Layer 0's quick calls: the common allocation, free and resize of a TLSF
//! block, for the front door's quick path (`front/quick.rs`), which makes
//! them under `try_lock` in a small stack frame and falls back to the full
//! call on anything else.
//!
//! Each makes the choice its full call would make —
//! [`allocate`](SegmentAllocator::allocate),
//! [`deallocate`](SegmentAllocator::deallocate),
//! [`resize_in_place`](SegmentAllocator::resize_in_place),
//! [`grow_backward`](SegmentAllocator::grow_backward) — with the same
//! checks, or declines having changed nothing: no block is placed
//! differently, and nothing the full call refuses gets through. They
//! decline whatever needs more than a list lookup or the block's own
//! headers: a span from the source, the exhaustive search before a
//! failure, an alignment above [`GRANULE`] in
//! [`allocate_quick`](SegmentAllocator::allocate_quick) (the front calls
//! [`allocate_quick_aligned`](SegmentAllocator::allocate_quick_aligned)
//! for those), pages to discard, the first-fit engines, the spans of a
//! page-mapping source, and every refusal (the full call then says why).

use core::alloc::Layout;
use core::ptr::NonNull;

use super::SegmentAllocator;
use super::tlsf::{self, GRANULE, Heads};
use super::window::{payload_fit, window_chunk};
use crate::source::reach;

// (The debug hooks take the full path on every call.)
#[cfg_attr(feature = "debug", allow(dead_code))]
impl SegmentAllocator {
    /// [`allocate`](Self::allocate) when TLSF's lists serve `layout` in
    /// O(1): the same block, or `None`, having changed nothing.
    /// (Aligned to at most [`GRANULE`]: the common allocation's frame stays
    /// small; [`allocate_quick_aligned`](Self::allocate_quick_aligned)
    /// serves any alignment.)
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub(crate) fn allocate_quick(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        // `large` is 0 unless TLSF serves (see `allocate`).
        if !tlsf::ON || layout.size() >= self.large || layout.align() > GRANULE {
            return None;
        }
        self.tlsf.allocate_quick(layout.size())
    }

    /// [`allocate_quick`](Self::allocate_quick) at any alignment.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub(crate) fn allocate_quick_aligned(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        if !tlsf::ON || layout.size() >= self.large {
            return None;
        }
        if layout.align() > GRANULE {
            return self.tlsf.allocate_aligned_quick(layout.size(), layout.align());
        }
        self.tlsf.allocate_quick(layout.size())
    }

    /// The chunk size of `ptr`, a TLSF block in use in the committed
    /// window, as [`deallocate`](Self::deallocate) checks it but for the
    /// fit to a layout; `None` for anything else — every refusal, and
    /// chunks of at least `discard_from` bytes (the source's
    /// [`discard_from`](crate::PageSource::discard_from)), whose free
    /// discards pages — which the full path then checks and serves or
    /// refuses.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub(crate) fn quick_chunk(&self, ptr: NonNull<u8>, discard_from: usize) -> Option<usize> {
        // SAFETY: `quick_window` holds the payloads of the committed
        // window's span TLSF holds, or none, in which case no pointer lies
        // in it and nothing is read.
        unsafe { window_chunk(self.quick_window, ptr) }.filter(|&chunk| chunk < discard_from)
    }

    /// [`quick_chunk`](Self::quick_chunk) of a block whose chunk also fits
    /// `layout` within its [`slack`](super::window::slack) (as
    /// [`deallocate`](Self::deallocate) checks it), with the block's
    /// [`Heads`] as read.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub(crate) fn quick_heads(&self, ptr: NonNull<u8>, layout: Layout, discard_from: usize) -> Option<Heads> {
        // SAFETY: as in `quick_chunk`.
        unsafe { payload_fit(self.quick_window, ptr, tlsf::layout_chunk(layout)) }
            .filter(|heads| heads.chunk() < discard_from)
    }

    /// [`deallocate`](Self::deallocate) of a block [`quick_heads`](Self::quick_heads)
    /// accepts: `true` once freed, or `false`, having changed nothing.
    ///
    /// # Safety
    ///
    /// As [`deallocate`](Self::deallocate).
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub(crate) unsafe fn deallocate_quick(
        &mut self,
        ptr: NonNull<u8>,
        layout: Layout,
        discard_from: usize,
    ) -> bool {
        let ptr = reach(ptr);
        let Some(heads) = self.quick_heads(ptr, layout, discard_from) else { return false };
        debug_assert!(self.whole, "the quick window is a committed source's, held whole");
        // SAFETY: checked to be a block in use of the engine, its heads
        // read under the lock held since.
        unsafe { self.tlsf.free_held_with(ptr, heads) };
        true
    }

    /// Frees a block [`quick_chunk`](Self::quick_chunk) or
    /// [`quick_heads`](Self::quick_heads) accepted. The
    /// window is held whole, so no span goes back.
    ///
    /// # Safety
    ///
    /// `ptr` must be such a block, reached through the window's provenance
    /// (`reach`), not used after this call.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub(crate) unsafe fn free_quick_block(&mut self, ptr: NonNull<u8>) {
        debug_assert!(self.whole, "the quick window is a committed source's, held whole");
        // SAFETY: the caller's promise.
        unsafe { self.tlsf.free_held(ptr) };
    }

    /// [`free_quick_block`](Self::free_quick_block) of the old block of a
    /// realloc that moved: merged at once, as
    /// [`deallocate_checked`](Self::deallocate_checked) frees it.
    ///
    /// # Safety
    ///
    /// As [`free_quick_block`](Self::free_quick_block).
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub(crate) unsafe fn free_moved_block(&mut self, ptr: NonNull<u8>) {
        debug_assert!(self.whole, "the quick window is a committed source's, held whole");
        // SAFETY: the caller's promise.
        unsafe { self.tlsf.free_held_now(ptr) };
    }

    /// [`resize_in_place`](Self::resize_in_place) of a block
    /// [`quick_heads`](Self::quick_heads) accepted, with the `heads` it
    /// read: whether it now serves `new_size` bytes (on `false` nothing
    /// changed).
    ///
    /// # Safety
    ///
    /// As for [`free_quick_block`](Self::free_quick_block), the block kept
    /// and the heap's lock held since the check.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub(crate) unsafe fn resize_quick(&mut self, ptr: NonNull<u8>, new_size: usize, heads: Heads) -> bool {
        // SAFETY: the caller's promise. (A tail given back is shorter than
        // the chunk, which is below `discard_from`: no page to discard.)
        unsafe { self.tlsf.resize_with(ptr, new_size, heads) }
    }

    /// [`resize_in_place`](Self::resize_in_place) of a block
    /// [`quick_heads`](Self::quick_heads) accepts (with `layout`) to
    /// `new_size` bytes that its chunk holds: the tail given back. `false`,
    /// having changed nothing, for anything else (a growth among them).
    ///
    /// # Safety
    ///
    /// As [`deallocate`](Self::deallocate), the block kept.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub(crate) unsafe fn shrink_quick(
        &mut self,
        ptr: NonNull<u8>,
        layout: Layout,
        new_size: usize,
        discard_from: usize,
    ) -> bool {
        let ptr = reach(ptr);
        let Some(heads) = self.quick_heads(ptr, layout, discard_from) else { return false };
        if tlsf::chunk_size(new_size).is_none_or(|need| need > heads.chunk()) {
            return false;
        }
        // SAFETY: a block in use just checked; the new size fits its chunk,
        // so the resize only gives a tail back.
        unsafe { self.resize_quick(ptr, new_size, heads) }
    }

    /// [`grow_backward`](Self::grow_backward) of a block
    /// [`quick_heads`](Self::quick_heads) accepted, aligned to `align`:
    /// `None` for a block aligned past [`BACKWARD_ALIGN`](tlsf::BACKWARD_ALIGN)
    /// (16 bytes), which the chunk before it, starting on a granule only,
    /// would leave misaligned.
    ///
    /// # Safety
    ///
    /// As for [`resize_quick`](Self::resize_quick), with `keep` at most
    /// the block's size and `new_size`.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub(crate) unsafe fn grow_backward_quick(
        &mut self,
        ptr: NonNull<u8>,
        align: usize,
        new_size: usize,
        keep: usize,
    ) -> Option<NonNull<u8>> {
        if align > tlsf::BACKWARD_ALIGN {
            return None;
        }
        // SAFETY: the caller's promise.
        unsafe { self.tlsf.grow_backward(ptr, new_size, keep) }
    }
}
