//! The free path of layer 0: the O(1) checks that refuse a bad free or
//! resize, frees and resizes in place, and spans going back to the source.

use core::alloc::Layout;
use core::ptr::NonNull;

use super::fit_tree::{self, Located, Refusal};
use super::tlsf::{self, GRANULE, MIN_CHUNK, Tlsf, WORD};
use super::{DeallocateError, Engine, SegmentAllocator, WindowBlock, first_fit_size, slack, window_block};
use crate::source::{PAGE_SIZE, PageSource, reach};

impl SegmentAllocator {
    /// Checks that `ptr` is a TLSF block in use that fits `layout`,
    /// returning its chunk size: the O(1) refusal of bad frees. A block fits
    /// when its chunk is what `layout` needs, plus less than [`slack`] (a
    /// rest too small to split off, or a thread cache's spacing), or when it
    /// fills a span of its own.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn check_block(&self, ptr: NonNull<u8>, layout: Layout) -> Result<usize, DeallocateError> {
        let Some((start, len)) = self.window_span else { return self.check_block_in_spans(ptr, layout) };
        // SAFETY: the window's span is live while it is held.
        match unsafe { window_block((start.as_ptr() as usize, len), ptr, layout) } {
            WindowBlock::Fits(chunk) => Ok(chunk),
            WindowBlock::Outside => Err(DeallocateError::NotOwned { ptr: ptr.as_ptr() as usize }),
            WindowBlock::Loose { chunk, first, in_span } => {
                self.check_loose(ptr, layout, chunk, first, in_span)
            }
            WindowBlock::Refused => Err(self.refusal(ptr, layout)),
        }
    }

    /// Why a block that failed the checks is refused (a cold path: what
    /// the checks did not say is worked out here).
    #[cold]
    fn refusal(&self, ptr: NonNull<u8>, layout: Layout) -> DeallocateError {
        self.check_block_in_spans(ptr, layout)
            .err()
            .unwrap_or(DeallocateError::NotAllocated { ptr: ptr.as_ptr() as usize })
    }

    /// The rest of the checks for a block whose chunk is not a tight fit
    /// for `layout`: it passes only if it fills a span of its own.
    #[cold]
    fn check_loose(
        &self,
        ptr: NonNull<u8>,
        layout: Layout,
        chunk: usize,
        first: bool,
        in_span: bool,
    ) -> Result<usize, DeallocateError> {
        if chunk < MIN_CHUNK || !in_span {
            return Err(self.refusal(ptr, layout));
        }
        self.check_fit(ptr, layout, chunk, first)
    }

    /// [`check_block`](Self::check_block) over spans of a page-mapping
    /// source, and the exact reason for a refusal over a committed one.
    #[cold]
    fn check_block_in_spans(&self, ptr: NonNull<u8>, layout: Layout) -> Result<usize, DeallocateError> {
        let (chunk, first) = self.chunk_in_use(ptr)?;
        self.check_fit(ptr, layout, chunk, first)
    }

    /// The first half of the checks, for any pointer: it lies in a span, is
    /// a payload's address, its chunk says in use and ends inside the span.
    /// Returns the chunk's size and whether it is its span's first.
    fn chunk_in_use(&self, ptr: NonNull<u8>) -> Result<(usize, bool), DeallocateError> {
        let addr = ptr.as_ptr() as usize;
        let not_allocated = DeallocateError::NotAllocated { ptr: addr };
        if !self.owns_addr(addr) {
            return Err(DeallocateError::NotOwned { ptr: addr });
        }
        if !addr.is_multiple_of(GRANULE) || !self.owns_addr(addr.wrapping_sub(WORD)) {
            return Err(not_allocated);
        }
        // SAFETY: `ptr` is aligned and its header word lies in a span.
        let (chunk, first) = unsafe { Tlsf::in_use_chunk(ptr) }.map_err(|_| not_allocated)?;
        let next_head = (addr - WORD).checked_add(chunk).ok_or(not_allocated)?;
        if chunk < MIN_CHUNK || !self.owns_addr(next_head) {
            return Err(not_allocated);
        }
        Ok((chunk, first))
    }

    /// The bytes a caller may use of the block in use at `ptr` — at least
    /// the size it was allocated with — found without its layout, with the
    /// checks [`deallocate`](Self::deallocate) makes of a pointer (O(1),
    /// header words only): the size C's `malloc_usable_size` reports, and
    /// the size a free without a layout frees. The first-fit engine keeps
    /// no sizes, so its blocks are [`DeallocateError::SizeUnknown`].
    pub fn block_size(&self, ptr: NonNull<u8>) -> Result<usize, DeallocateError> {
        let ptr = reach(ptr);
        let addr = ptr.as_ptr() as usize;
        if self.engine() != Engine::Tlsf {
            return Err(if self.owns_addr(addr) {
                DeallocateError::SizeUnknown { ptr: addr }
            } else {
                DeallocateError::NotOwned { ptr: addr }
            });
        }
        let (chunk, _) = self.chunk_in_use(ptr)?;
        // SAFETY: `chunk_in_use` checked that the next header lies in the span.
        if !unsafe { Tlsf::next_head(ptr, chunk) }.0 {
            return Err(DeallocateError::NotAllocated { ptr: addr });
        }
        Ok(chunk - WORD)
    }

    /// The second half of the checks: the next chunk says this one is in
    /// use, and the chunk fits `layout`.
    #[inline]
    fn check_fit(
        &self,
        ptr: NonNull<u8>,
        layout: Layout,
        chunk: usize,
        first: bool,
    ) -> Result<usize, DeallocateError> {
        let addr = ptr.as_ptr() as usize;
        // SAFETY: the caller checked that the next header lies in a span.
        let (agrees, sentinel) = unsafe { Tlsf::next_head(ptr, chunk) };
        if !agrees {
            return Err(DeallocateError::NotAllocated { ptr: addr });
        }
        let mismatch = DeallocateError::SizeMismatch { ptr: addr, block: chunk - WORD, given: layout.size() };
        let need = tlsf::chunk_size(layout.size()).ok_or(mismatch)?;
        if chunk < need || (chunk - need >= slack(need) && !(first && sentinel)) {
            return Err(mismatch);
        }
        Ok(chunk)
    }

    /// Frees a block returned by [`allocate`](Self::allocate) with `layout`.
    ///
    /// # Safety
    ///
    /// If `ptr` lies in this allocator's spans, it must be a block allocated
    /// here with `layout`, not used after this call. Pointers outside the
    /// spans are refused safely; in the TLSF engine, so are blocks not in use
    /// (while their memory has not been reused) and layouts that do not fit.
    /// `source` must be the page source of every call (see
    /// [`allocate`](Self::allocate)).
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub unsafe fn deallocate(
        &mut self,
        ptr: NonNull<u8>,
        layout: Layout,
        source: &mut impl PageSource,
    ) -> Result<(), DeallocateError> {
        let ptr = reach(ptr);
        if self.engine() != Engine::Tlsf {
            // SAFETY: forwarded contract.
            return unsafe { self.deallocate_first_fit(ptr, layout) };
        }
        let chunk = self.check_block(ptr, layout)?;
        if chunk >= source.discard_from() {
            // SAFETY: a block in use of `chunk` bytes, checked.
            unsafe { discard_inside(ptr, chunk, source) };
        }
        // SAFETY: checked to be a block in use of the engine.
        if let Some(span) = unsafe { self.tlsf.free(ptr) } {
            self.span_freed(span, source);
        }
        Ok(())
    }

    /// Frees a block that [`resize_in_place`](Self::resize_in_place) has
    /// just checked (and kept), without checking it again: the end of a
    /// realloc that moved.
    ///
    /// # Safety
    ///
    /// `ptr` must be a block in use of this allocator with `layout`, as
    /// `resize_in_place` found it, not used after this call; `source` the
    /// page source of every call (see [`allocate`](Self::allocate)).
    pub unsafe fn deallocate_checked(
        &mut self,
        ptr: NonNull<u8>,
        layout: Layout,
        source: &mut impl PageSource,
    ) {
        let ptr = reach(ptr);
        if self.engine() == Engine::Tlsf {
            if layout.size() >= source.discard_from() {
                // SAFETY: the caller's promise: a checked block in use,
                // whose chunk holds `layout`.
                unsafe { discard_inside(ptr, tlsf::chunk_size(layout.size()).unwrap_or(0), source) };
            }
            // SAFETY: the caller's promise: a checked block in use.
            if let Some(span) = unsafe { self.tlsf.free_now(ptr) } {
                self.span_freed(span, source);
            }
        } else {
            // SAFETY: forwarded contract.
            let freed = unsafe { self.deallocate_first_fit(ptr, layout) };
            debug_assert!(freed.is_ok());
        }
    }

    /// [`deallocate`](Self::deallocate) when TLSF does not serve.
    ///
    /// # Safety
    ///
    /// As [`deallocate`](Self::deallocate).
    #[cold]
    unsafe fn deallocate_first_fit(
        &mut self,
        ptr: NonNull<u8>,
        layout: Layout,
    ) -> Result<(), DeallocateError> {
        if self.engine() == Engine::Tree {
            let block = self.tree_block(ptr, layout)?;
            // SAFETY: the caller's promise: a live block of this heap,
            // checked just now.
            unsafe { self.tree.free(block) };
            return Ok(());
        }
        if self.engine() == Engine::FirstFit && self.owns_addr(ptr.as_ptr() as usize) {
            // SAFETY: the caller's promise: a live block of this heap.
            unsafe { self.first_fit.deallocate(ptr, layout) };
            return Ok(());
        }
        Err(DeallocateError::NotOwned { ptr: ptr.as_ptr() as usize })
    }

    /// Checks that `ptr` could be a block of the first-fit tree in use
    /// with `layout`: in the window, aligned, overlapping no free block.
    fn tree_block(&self, ptr: NonNull<u8>, layout: Layout) -> Result<Located, DeallocateError> {
        let addr = ptr.as_ptr() as usize;
        match self.tree.check_block(ptr, layout.size()) {
            Ok(_) if !addr.is_multiple_of(layout.align()) => Err(DeallocateError::NotAllocated { ptr: addr }),
            Ok(block) => Ok(block),
            Err(Refusal::Outside) => Err(DeallocateError::NotOwned { ptr: addr }),
            Err(Refusal::NotAllocated) => Err(DeallocateError::NotAllocated { ptr: addr }),
        }
    }

    /// Span `span` has just become wholly free: it goes back, unless it is
    /// no larger than [`Config::span_min`] (the rest of a large block's span
    /// is not worth keeping) and no other spare is kept.
    #[cold]
    fn span_freed(&mut self, span: NonNull<u8>, source: &mut impl PageSource) {
        if self.whole {
            return;
        }
        // SAFETY: a live span whose first chunk is free and alone.
        let len = unsafe { self.tlsf.span_len_if_free(span) };
        let small = len <= self.config.span_min.next_multiple_of(source.granularity().max(GRANULE));
        match self.spare {
            Some(spare) if spare == span => {}
            // SAFETY: the spare is a live span of the engine.
            Some(spare) if unsafe { self.tlsf.span_is_free(spare) } => self.release_span(span, source),
            _ if small => self.spare = Some(span),
            _ => self.release_span(span, source),
        }
    }

    /// Gives wholly free span `span` back to the source.
    pub(super) fn release_span(&mut self, span: NonNull<u8>, source: &mut impl PageSource) {
        // SAFETY: the caller passes a live, wholly free span.
        let len = unsafe { self.tlsf.remove_span(span) };
        if self.spare == Some(span) {
            self.spare = None;
        }
        if self.window_span.is_some_and(|(s, _)| s == span) {
            self.set_window_span(None);
        } else {
            self.map.set(span.as_ptr() as usize, len, false);
        }
        self.spans -= 1;
        self.span_bytes -= len;
        self.released += 1;
        // SAFETY: the span came from `source` with this length, and no block
        // in it is live.
        unsafe { source.deallocate_pages(span, len) };
    }

    /// Gives the spare span back, if there is one and it is still wholly
    /// free. Returns whether it did.
    ///
    /// # Safety
    ///
    /// `source` must be the page source this allocator has taken every span
    /// from: the same one on every call since [`new`](Self::new).
    pub unsafe fn release_spare(&mut self, source: &mut impl PageSource) -> bool {
        match self.spare.take() {
            // SAFETY: the spare is a live span of the engine.
            Some(spare) if unsafe { self.tlsf.span_is_free(spare) } => {
                self.release_span(spare, source);
                true
            }
            _ => false,
        }
    }

    /// Checks the block at `ptr` (allocated with `layout`) as
    /// [`resize_in_place`](Self::resize_in_place) does, changing nothing:
    /// the reason it is refused, if it is.
    pub fn check_in_use(&self, ptr: NonNull<u8>, layout: Layout) -> Result<(), DeallocateError> {
        let ptr = reach(ptr);
        match self.engine() {
            Engine::Tlsf => self.check_block(ptr, layout).map(drop),
            Engine::Tree => self.tree_block(ptr, layout).map(drop),
            Engine::FirstFit if self.owns_addr(ptr.as_ptr() as usize) => Ok(()),
            _ => Err(DeallocateError::NotOwned { ptr: ptr.as_ptr() as usize }),
        }
    }

    /// Resizes the block at `ptr` (allocated with `layout`) in place to
    /// `new_size` bytes, same alignment: the tail goes back when it shrinks,
    /// the free chunk after it is taken when it grows. Returns whether the
    /// block now serves `new_size` bytes (on `false` nothing changed), or the
    /// reason the block is refused, as [`deallocate`](Self::deallocate)
    /// would refuse it.
    ///
    /// # Safety
    ///
    /// As [`deallocate`](Self::deallocate).
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub unsafe fn resize_in_place(
        &mut self,
        ptr: NonNull<u8>,
        layout: Layout,
        new_size: usize,
        source: &mut impl PageSource,
    ) -> Result<bool, DeallocateError> {
        let ptr = reach(ptr);
        match self.engine() {
            Engine::Tlsf => {
                let chunk = self.check_block(ptr, layout)?;
                // SAFETY: checked to be a block in use.
                let resized = unsafe { self.tlsf.resize(ptr, new_size) };
                // A shrink gives its tail back: discarded as a freed block
                // of that size would be (past the new chunk's end).
                let kept = tlsf::chunk_size(new_size).unwrap_or(usize::MAX);
                if resized && chunk > kept && chunk - kept >= source.discard_from() {
                    // SAFETY: the tail is a free chunk now, of `chunk - kept`
                    // bytes after the block's new chunk.
                    unsafe { discard_inside(ptr.add(kept), chunk - kept, source) };
                }
                Ok(resized)
            }
            Engine::Tree => {
                let block = self.tree_block(ptr, layout)?;
                // SAFETY: the caller's promise: a live block, checked.
                Ok(unsafe { self.tree.resize(block, new_size, layout.align()) })
            }
            Engine::FirstFit if self.owns_addr(ptr.as_ptr() as usize) => {
                Ok(Layout::from_size_align(new_size, layout.align())
                    .is_ok_and(|new| first_fit_size(layout) == first_fit_size(new)))
            }
            _ => Err(DeallocateError::NotOwned { ptr: ptr.as_ptr() as usize }),
        }
    }

    /// When the block at `ptr` (allocated with `layout`) cannot grow in
    /// place to `new_size` bytes: grows it into the free chunk before it
    /// (and after it), moving its first `keep` bytes down, so that a growing
    /// block reuses its free neighbours before taking memory elsewhere.
    /// Returns the new address, or `None` (nothing changed) when the
    /// neighbours are too small or the block is aligned above 16.
    ///
    /// # Safety
    ///
    /// `ptr` must be a block of this allocator with `layout`, checked by a
    /// [`resize_in_place`](Self::resize_in_place) that returned `Ok`, and
    /// `keep` at most `layout.size()` and `new_size`.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub unsafe fn grow_backward(
        &mut self,
        ptr: NonNull<u8>,
        layout: Layout,
        new_size: usize,
        keep: usize,
    ) -> Option<NonNull<u8>> {
        let ptr = reach(ptr);
        if self.engine() == Engine::Tree && layout.align() <= fit_tree::UNIT {
            let block = self.tree_block(ptr, layout).ok()?;
            // SAFETY: the caller's promise: a checked block in use.
            return unsafe { self.tree.grow_backward(block, new_size, keep) };
        }
        if self.engine() != Engine::Tlsf || layout.align() > tlsf::BACKWARD_ALIGN {
            return None;
        }
        // SAFETY: the caller's promise: a checked block in use.
        unsafe { self.tlsf.grow_backward(ptr, new_size, keep) }
    }
}

/// Discards the whole pages inside block `ptr` (of a `chunk`-byte chunk)
/// that is about to be freed, or that a shrink has just given back: all of
/// it but what a free writes — the chunk's header and free-list links at
/// its start, its footer at its end.
///
/// # Safety
///
/// `ptr` must be the payload of a chunk of at least `chunk` bytes in a TLSF
/// span taken from `source`, in use and about to be freed, or free.
#[cold]
pub(super) unsafe fn discard_inside(ptr: NonNull<u8>, chunk: usize, source: &mut impl PageSource) {
    const KEEP: usize = 64;
    let start = (ptr.as_ptr() as usize + KEEP).next_multiple_of(PAGE_SIZE);
    let end = (ptr.as_ptr() as usize + chunk).saturating_sub(KEEP) & !(PAGE_SIZE - 1);
    if start < end {
        // SAFETY: whole pages inside the block, which the free does not
        // write and which nobody reads before they are allocated again.
        unsafe {
            source.discard(reach(ptr).with_addr(core::num::NonZeroUsize::new(start).unwrap()), end - start)
        };
    }
}
