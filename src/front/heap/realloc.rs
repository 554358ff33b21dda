//! [`Heap`]'s realloc: in place when the block can stay, grown into its
//! free neighbours, or moved — and the quick forms of it that the front's
//! quick paths make (`reallocate_quick`), which take the same decisions.

use core::alloc::Layout;
use core::ptr::{self, NonNull};

use super::{ArenaPages, Heap, moving_layout, usable_layout};
use crate::front::{AllocateError, DeallocateError, GROWING_THRESHOLD, PROMOTING_STREAK, hooks};
use crate::object::{ALIGNMENT, SMALL_REQUEST_THRESHOLD};
use crate::segment::CHUNK_GRANULE;
use crate::source::{PageSource, reach};
use crate::sync::stat;

impl<S: PageSource> Heap<S> {
    /// Resizes a block without its layout (C's `realloc`), as
    /// [`reallocate`](Self::reallocate) with its
    /// [`usable_layout`](Self::usable_layout), refusing what that refuses.
    /// The result is aligned to 16, as C's `malloc` promises: a block whose
    /// usable layout is aligned to less asks for a multiple of 16 bytes,
    /// which a block it moves to is aligned to, near exhaustion too; and
    /// for an 8-aligned block (of Rust's) to a small size, a 16-aligned
    /// block is secured first, for it to move to should it stay where it
    /// is. Without one that realloc fails, the block untouched. (On 32-bit
    /// targets, whose layer 0 aligns its blocks to 8 only, every size asked
    /// is a multiple of 16, a block that moves asks 16, and one that grows
    /// backward keeps its address modulo 16: an 8-aligned block there may
    /// stay so past 512 bytes.) Free the result without a layout too
    /// ([`deallocate_unsized`](Self::deallocate_unsized)), or with its
    /// [`usable_layout`](Self::usable_layout): a layout of `new_size` bytes
    /// may not fit the rounded block. A `new_size` of 0 is served a block
    /// of the smallest size: the block shrinks to it in place or moves to
    /// one. (C's `realloc(p, 0)` frees the block instead; for 0
    /// [`LockedHeap::realloc_unsized`](crate::LockedHeap::realloc_unsized)
    /// returns null, the block untouched, and leaves that to its caller.)
    ///
    /// # Safety
    ///
    /// As [`deallocate_unsized`](Self::deallocate_unsized); on success the
    /// old block is not used again.
    pub unsafe fn reallocate_unsized(
        &mut self,
        ptr: NonNull<u8>,
        new_size: usize,
    ) -> Result<NonNull<u8>, AllocateError> {
        let layout = self.usable_layout(ptr).map_err(AllocateError::Refused)?;
        // (C's alignment, as `LockedHeap::realloc_unsized` gives it.)
        let asked = hooks::malloc_size(layout, new_size);
        if !hooks::may_stay_8_aligned(ptr, asked) {
            // SAFETY: forwarded contract; the layout is the block's own.
            return unsafe { self.reallocate(ptr, layout, asked) };
        }
        let aligned = Layout::from_size_align(asked, ALIGNMENT).expect("a small size");
        let r = self.allocate(aligned)?;
        // SAFETY: forwarded contract; the layout is the block's own. `r`
        // was just allocated with `aligned` and is freed once, here or as
        // the new place of `q` (live and `asked` bytes long under the
        // realloc's layout, freed once after the copy).
        unsafe {
            let q = match self.reallocate(ptr, layout, asked) {
                Ok(q) if !q.as_ptr().addr().is_multiple_of(ALIGNMENT) => q,
                result => {
                    let freed = self.deallocate(r, aligned);
                    debug_assert!(freed.is_ok(), "a block just allocated was refused");
                    return result;
                }
            };
            ptr::copy_nonoverlapping(q.as_ptr(), r.as_ptr(), asked);
            let freed = self.deallocate(q, Layout::from_size_align_unchecked(asked, layout.align()));
            debug_assert!(freed.is_ok(), "the realloc's own block was refused");
        }
        Ok(r)
    }

    /// Resizes a block to `new_size` bytes (same alignment), in place when it
    /// can, keeping the first `min(old, new)` bytes.
    ///
    /// A pointer no layer owns, or (in layer 0) a block that is not in use
    /// or does not fit `layout`, is refused with [`AllocateError::Refused`]
    /// before anything is allocated.
    ///
    /// # Safety
    ///
    /// If any layer owns `ptr`, it must be a live block allocated by this
    /// heap with `layout`.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub unsafe fn reallocate(
        &mut self,
        ptr: NonNull<u8>,
        layout: Layout,
        new_size: usize,
    ) -> Result<NonNull<u8>, AllocateError> {
        let align = layout.align();
        if new_size > isize::MAX as usize - (align - 1) {
            return Err(AllocateError::InvalidLayout { size: new_size, align });
        }
        // SAFETY: `align` is a layout's alignment, and the size was just
        // checked not to overflow `isize` once rounded up to it.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, align) };
        // A block doubling past GROWING_THRESHOLD for the third time in a
        // row, in place or not, is a buffer being grown (a `Vec`): when it
        // has to move, it moves to the start of layer 0's largest free
        // chunk, where later growths happen in place. (Doing so for every
        // large growth scatters blocks over the free space and fragments it:
        // talc's random-realloc fill lost 11 points that way with large
        // mappings, 3 at the second doubling, none at the third.)
        let doubling = new_size >= GROWING_THRESHOLD && new_size / 2 >= layout.size();
        let growth = if doubling { Some(self.doubling_streak(ptr)) } else { None };
        // Two functions, not one: unoptimised (a firmware's dev profile),
        // each keeps a frame of its own and a call takes only the one it
        // goes through; optimised, both are inlined here as before.
        if self.object.owns(ptr.as_ptr()) {
            // SAFETY: forwarded contract; an arena of ours holds `ptr`.
            unsafe { self.reallocate_object_block(ptr, layout, new_layout, growth) }
        } else {
            // SAFETY: forwarded contract.
            unsafe { self.reallocate_layer_0_block(ptr, layout, new_layout, growth) }
        }
    }

    /// [`reallocate`](Self::reallocate) of a pointer into an arena of
    /// layer +2, `growth` being its doubling streak if the call doubles it.
    ///
    /// # Safety
    ///
    /// As [`reallocate`](Self::reallocate); `ptr` lies in an arena of ours.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    unsafe fn reallocate_object_block(
        &mut self,
        ptr: NonNull<u8>,
        layout: Layout,
        new_layout: Layout,
        growth: Option<(usize, u32)>,
    ) -> Result<NonNull<u8>, AllocateError> {
        let (new_size, keep) = (new_layout.size(), layout.size().min(new_layout.size()));
        // A block its pool has taken back (freed already), or a pointer
        // into a block: refused, as a free of it is.
        // SAFETY: a pointer into an arena of ours, checked to be a
        // block of its pool before `may_free` asks more.
        if !unsafe { self.object.is_block_start(ptr) && self.object.may_free(ptr) } {
            return Err(AllocateError::Refused(DeallocateError::NotAllocated { ptr: ptr.as_ptr() as usize }));
        }
        // SAFETY: a live +2 block (caller contract).
        let block = unsafe { self.object.block_size(ptr) };
        // A layout larger than the block is not the block's: refused, as
        // layer 0 refuses one (the move would copy past the block).
        if layout.size() > block {
            return Err(AllocateError::Refused(DeallocateError::SizeMismatch {
                ptr: ptr.as_ptr() as usize,
                block,
                given: layout.size(),
            }));
        }
        if new_size <= block && (new_size > block / 2 || block <= ALIGNMENT) {
            stat!(self.stats.realloc_in_place += 1);
            return Ok(reach(ptr));
        }
        let new = self.allocate_moving(new_layout, growth)?;
        let mut pages = ArenaPages { segment: &mut self.segment, source: &mut self.source };
        // SAFETY: both blocks are live, distinct, and at least `keep`
        // bytes long; the old one is a live +2 block, freed once.
        unsafe {
            move_data(ptr, new, keep);
            let freed = self.object.deallocate(ptr, &mut pages);
            debug_assert!(freed, "a live +2 block was refused");
        }
        self.realloc_done(new, growth, false);
        Ok(new)
    }

    /// [`reallocate`](Self::reallocate) of a pointer no arena holds: a
    /// block of layer 0, which refuses what is not its block in use.
    ///
    /// # Safety
    ///
    /// As [`reallocate`](Self::reallocate).
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    unsafe fn reallocate_layer_0_block(
        &mut self,
        ptr: NonNull<u8>,
        layout: Layout,
        new_layout: Layout,
        growth: Option<(usize, u32)>,
    ) -> Result<NonNull<u8>, AllocateError> {
        let keep = layout.size().min(new_layout.size());
        let (old_small, new_small) = (self.is_small(layout), self.is_small(new_layout));
        let (old, new) = (self.layer_0_layout(layout), self.layer_0_layout(new_layout));
        // The third doubling in a row of a buffer being grown: it moves
        // now, while small, to the start of layer 0's largest free
        // chunk, where the doublings to come happen in place (left
        // where it is, it would grow in place until its neighbour
        // stops it, and then be copied at its largest).
        let promote = !new_small && matches!(growth, Some((_, streak)) if streak == PROMOTING_STREAK);
        // A promoted block is only checked, not resized (it stays as it
        // was, every usable byte, unless it moves), and the block it
        // moves to is found first. Where none is (memory runs out), it
        // grows where it is if it can, or fails so.
        let promoted = if promote {
            self.segment.check_in_use(ptr, old).map_err(AllocateError::Refused)?;
            Some(self.allocate_moving(new_layout, growth))
        } else {
            None
        };
        let moves = matches!(promoted, Some(Ok(_)));
        // SAFETY: forwarded contract; layer 0 refuses what is not its
        // block in use.
        let in_place = !moves
            && unsafe { self.segment.resize_in_place(ptr, old, new.size(), &mut self.source) }
                .map_err(AllocateError::Refused)?;
        let backward = if in_place {
            Some(ptr)
        } else if moves {
            None
        } else {
            // SAFETY: a layer 0 block, checked just above; `keep` fits
            // both sizes.
            unsafe { self.segment.grow_backward(ptr, old, new.size(), keep) }
        };
        let kept = backward.is_some();
        let moved = match backward {
            Some(q) => q,
            None => {
                let q = match promoted {
                    Some(found) => found?,
                    None => self.allocate_moving(new_layout, growth)?,
                };
                // SAFETY: both blocks are live, distinct, and at least
                // `keep` bytes long; the old one was checked above and
                // is freed once.
                unsafe {
                    move_data(ptr, q, keep);
                    self.segment.deallocate_checked(ptr, old, &mut self.source);
                }
                q
            }
        };
        // Counted in layer 0: the old block goes; a block kept there
        // (resized or grown backward) comes back under its new size
        // (`allocate` counts the blocks it places itself).
        if old_small {
            self.note_small_in_layer_0(layout, false);
        }
        if kept && new_small {
            self.note_small_in_layer_0(new_layout, true);
        }
        if in_place {
            self.realloc_done(ptr, growth, true);
            return Ok(reach(ptr));
        }
        self.realloc_done(moved, growth, false);
        Ok(moved)
    }

    /// [`reallocate`](Self::reallocate) to a size layer 0 serves as given
    /// (above every geometry's threshold), through layer 0's quick calls
    /// (`segment/quick.rs`), of a block of layer +2 or of layer 0: the same
    /// result, or `None`, having changed nothing, where they decline — and
    /// for the doubling that promotes a block, the move of a block promoted
    /// already, and every refusal.
    ///
    /// # Safety
    ///
    /// As [`reallocate`](Self::reallocate).
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    #[cfg_attr(feature = "debug", allow(dead_code))]
    pub(in crate::front) unsafe fn reallocate_quick(
        &mut self,
        ptr: NonNull<u8>,
        layout: Layout,
        new_size: usize,
    ) -> Option<NonNull<u8>> {
        let align = layout.align();
        if new_size <= SMALL_REQUEST_THRESHOLD || new_size > isize::MAX as usize - (align - 1) {
            return None;
        }
        // SAFETY: `align` and `new_size` passed the overflow check above.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, align) };
        let ptr = reach(ptr);
        // A block of layer 0's header words, as its check read them; none
        // for a +2 block.
        let heads = if self.object.owns(ptr.as_ptr()) {
            // It cannot stay: its class is below `new_size`.
            self.live_object_block(ptr, layout)?;
            None
        } else {
            let old = self.quick_layer_0_layout(layout);
            Some(self.segment.quick_heads(ptr, old, self.source.discard_from())?)
        };
        // The doubling streak, as `reallocate` keeps it. A block on the
        // streak was found in the table (which then did not change): on the
        // doubling that promotes it, it goes the full way; past it, it is a
        // buffer growing on ([`grow_on_quick`](Self::grow_on_quick)).
        let doubling = new_size >= GROWING_THRESHOLD && new_size / 2 >= layout.size();
        let next = self.growing_next;
        let growth = if doubling { Some(self.doubling_streak(ptr)) } else { None };
        if matches!(growth, Some((_, streak)) if streak >= PROMOTING_STREAK) {
            // (Out of line, from the arguments: the common realloc's frame
            // holds none of it.)
            // SAFETY: forwarded contract.
            return unsafe { self.grow_on_quick(ptr, layout, new_size) };
        }
        let keep = layout.size().min(new_size);
        let moved = if let Some(heads) = heads {
            // SAFETY: a block of layer 0 just checked by `quick_heads`,
            // under the lock held since.
            let resized = unsafe { self.segment.resize_quick(ptr, new_size, heads) };
            let moved = if resized {
                ptr
            } else {
                // SAFETY: as above, `keep` at most both sizes.
                match unsafe { self.move_quick(ptr, new_layout, keep) } {
                    Some(q) => q,
                    None => {
                        self.growing_next = next;
                        return None;
                    }
                }
            };
            // A small block of layer 0 goes (counted as `reallocate` does).
            if layout.size() <= SMALL_REQUEST_THRESHOLD {
                self.note_small_in_layer_0(layout, false);
            }
            if resized {
                self.realloc_done(ptr, growth, true);
                return Some(ptr);
            }
            moved
        } else {
            let Some(q) = self.segment.allocate_quick_aligned(quick_moving_layout(new_layout)) else {
                self.growing_next = next;
                return None;
            };
            // SAFETY: both blocks are live, distinct, and at least `keep`
            // bytes long; the old one is a live +2 block (checked).
            unsafe { self.move_object_block(ptr, q, keep) };
            q
        };
        self.realloc_done(moved, growth, false);
        Some(moved)
    }

    /// [`reallocate`](Self::reallocate) of a block of layer +2 to a size
    /// its pools serve (at most [`SMALL_REQUEST_THRESHOLD`] bytes): in
    /// place, or moved to a block of the new class's head pool, or of layer
    /// 0 for a cold class. The same result, or `None`, having changed
    /// nothing, where the full path would do more (a new pool, a span from
    /// the source) — and for every refusal.
    ///
    /// `checked`: the size of the block if it is one of layer +2 that
    /// [`live_object_block`](Self::live_object_block) has accepted already
    /// (with any layout it fits); `None` to check it here.
    ///
    /// # Safety
    ///
    /// As [`reallocate`](Self::reallocate).
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    #[cfg_attr(feature = "debug", allow(dead_code))]
    pub(in crate::front) unsafe fn reallocate_small_quick(
        &mut self,
        ptr: NonNull<u8>,
        layout: Layout,
        new_size: usize,
        checked: Option<usize>,
    ) -> Option<NonNull<u8>> {
        let align = layout.align();
        // (`is_small` bounds the size and the alignment: no overflow.)
        let new_layout = Layout::from_size_align(new_size, align).ok()?;
        let ptr = reach(ptr);
        if !self.is_small(new_layout) {
            return None;
        }
        let block = match checked {
            Some(block) => block,
            None if !self.object.owns(ptr.as_ptr()) => {
                // SAFETY: forwarded contract.
                return unsafe { self.shrink_in_layer_0_quick(ptr, layout, new_layout) };
            }
            None => self.live_object_block(ptr, layout)?,
        };
        // As `reallocate`: the streak first, then the block stays if it can.
        let doubling = new_size >= GROWING_THRESHOLD && new_size / 2 >= layout.size();
        let next = self.growing_next;
        let growth = if doubling { Some(self.doubling_streak(ptr)) } else { None };
        if new_size <= block && (new_size > block / 2 || block <= ALIGNMENT) {
            stat!(self.stats.realloc_in_place += 1);
            return Some(ptr);
        }
        // (A small block is never promoted: `allocate_moving` allocates,
        // from the class's head pool, else from layer 0 for a cold class.)
        let moving = quick_moving_layout(new_layout);
        let Some(q) = self
            .object
            .allocate_from_pools(new_size, moving.align())
            .or_else(|| self.allocate_in_layer_0_quick(moving))
        else {
            self.growing_next = next;
            return None;
        };
        // SAFETY: both blocks are live, distinct, and at least as long as
        // the bytes kept; the old one is a live +2 block (checked).
        unsafe { self.move_object_block(ptr, q, layout.size().min(new_size)) };
        self.realloc_done(q, growth, false);
        Some(q)
    }

    /// [`reallocate`](Self::reallocate) of a block of layer 0 to a small
    /// size (`new_layout`) that its chunk holds: shrunk in place, where it
    /// stays under the new size's layout in layer 0 (the tail given back),
    /// counted as the full path counts it. `None`, having changed nothing,
    /// for anything else: a growth, a block layer 0's quick calls do not
    /// take, every refusal.
    ///
    /// # Safety
    ///
    /// As [`reallocate`](Self::reallocate), `ptr` reached through the
    /// window's provenance (`reach`) and owned by no arena.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    #[cfg_attr(feature = "debug", allow(dead_code))]
    unsafe fn shrink_in_layer_0_quick(
        &mut self,
        ptr: NonNull<u8>,
        layout: Layout,
        new_layout: Layout,
    ) -> Option<NonNull<u8>> {
        let old = self.quick_layer_0_layout(layout);
        let new = self.layer_0_layout(new_layout);
        // A shrink, so no doubling and no streak.
        // SAFETY: forwarded contract.
        if !unsafe { self.segment.shrink_quick(ptr, old, new.size(), self.source.discard_from()) } {
            return None;
        }
        self.note_small_in_layer_0(layout, false);
        self.note_small_in_layer_0(new_layout, true);
        self.realloc_done(ptr, None, true);
        Some(ptr)
    }

    /// The layout layer 0 sees for a block's own `layout` on the quick
    /// paths: a small one rounded to its class
    /// ([`layer_0_layout`](Self::layer_0_layout)); a size past every
    /// geometry's threshold as given, found with one comparison with a
    /// constant.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    #[cfg_attr(feature = "debug", allow(dead_code))]
    fn quick_layer_0_layout(&self, layout: Layout) -> Layout {
        if layout.size() > SMALL_REQUEST_THRESHOLD { layout } else { self.layer_0_layout(layout) }
    }

    /// Copies the first `keep` bytes of +2 block `ptr` to `q` and frees it:
    /// by the common case if it serves, else in full.
    ///
    /// # Safety
    ///
    /// `ptr` must be a live +2 block that [`live_object_block`](Self::live_object_block)
    /// accepted, and `q` a live block of another pool or layer; both at
    /// least `keep` bytes long. `ptr` is not used afterwards.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    #[cfg_attr(feature = "debug", allow(dead_code))]
    unsafe fn move_object_block(&mut self, ptr: NonNull<u8>, q: NonNull<u8>, keep: usize) {
        // SAFETY: the caller's promise (`may_free` still holds: taking `q`
        // changed another pool); the old block is freed once.
        unsafe {
            move_data(ptr, q, keep);
            if !self.object.deallocate_quick_live(ptr) {
                let mut pages = ArenaPages { segment: &mut self.segment, source: &mut self.source };
                let freed = self.object.deallocate(ptr, &mut pages);
                debug_assert!(freed, "a live +2 block was refused");
            }
        }
    }

    /// The size of the block of layer +2 at `ptr` (a pointer into one of
    /// its arenas) if [`reallocate`](Self::reallocate) takes it with
    /// `layout`: a block in use, at least `layout.size()` bytes long;
    /// `None` for what it refuses.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    #[cfg_attr(feature = "debug", allow(dead_code))]
    fn live_object_block(&self, ptr: NonNull<u8>, layout: Layout) -> Option<usize> {
        // SAFETY: a pointer into an arena of ours (the caller's promise),
        // checked to be a block of its pool before `may_free` asks more;
        // then a live +2 block.
        unsafe { self.object.is_block_start(ptr) && self.object.may_free(ptr) }
            // SAFETY: as above.
            .then(|| unsafe { self.object.block_size(ptr) })
            .filter(|&block| layout.size() <= block)
    }

    /// [`reallocate_unsized`](Self::reallocate_unsized) through
    /// [`reallocate_quick`](Self::reallocate_quick) or, to a small size,
    /// [`reallocate_small_quick`](Self::reallocate_small_quick), with the
    /// layout [`usable_layout`](Self::usable_layout) gives the block and the
    /// size C's alignment asks; `None`, having changed nothing, where they
    /// decline, and for an 8-aligned block that may stay where it is (the
    /// full path secures a 16-aligned block first).
    ///
    /// # Safety
    ///
    /// As [`reallocate_unsized`](Self::reallocate_unsized).
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    #[cfg_attr(feature = "debug", allow(dead_code))]
    pub(in crate::front) unsafe fn reallocate_unsized_quick(
        &mut self,
        ptr: NonNull<u8>,
        new_size: usize,
    ) -> Option<NonNull<u8>> {
        let ptr = reach(ptr);
        // A +2 block is checked once, for its usable layout and for the
        // realloc to a small size (as `usable_layout` and then
        // `reallocate_small_quick` would check it).
        let object_block = if self.object.owns(ptr.as_ptr()) {
            Some(self.live_object_block(ptr, Layout::new::<u8>())?)
        } else {
            None
        };
        let layout = match object_block {
            Some(block) => usable_layout(ptr, block),
            None => self.usable_layout(ptr).ok()?,
        };
        let asked = hooks::malloc_size(layout, new_size);
        if hooks::may_stay_8_aligned(ptr, asked) {
            return None;
        }
        // SAFETY: forwarded contract, with the block's own layout.
        unsafe {
            if asked > SMALL_REQUEST_THRESHOLD {
                self.reallocate_quick(ptr, layout, asked)
            } else {
                self.reallocate_small_quick(ptr, layout, asked, object_block)
            }
        }
    }

    /// [`reallocate_quick`](Self::reallocate_quick) of a block on its
    /// [`PROMOTING_STREAK`]th doubling in a row or past it. Past it, a block
    /// of layer 0 is a buffer growing on, whose move
    /// [`reallocate`](Self::reallocate) makes to the start of layer 0's
    /// largest free chunk: here it is resized in place or grown backward,
    /// as `reallocate` would do first. `None`, having changed nothing, for
    /// the rest: the doubling that promotes a block, a move, a +2 block,
    /// every refusal.
    ///
    /// # Safety
    ///
    /// As [`reallocate`](Self::reallocate).
    #[cold]
    #[inline(never)]
    #[cfg_attr(feature = "debug", allow(dead_code))]
    unsafe fn grow_on_quick(
        &mut self,
        ptr: NonNull<u8>,
        layout: Layout,
        new_size: usize,
    ) -> Option<NonNull<u8>> {
        // (Called past `reallocate_quick`'s checks of the sizes: a doubling
        // to more than SMALL_REQUEST_THRESHOLD bytes.)
        let ptr = reach(ptr);
        if self.object.owns(ptr.as_ptr()) {
            return None;
        }
        let old = self.quick_layer_0_layout(layout);
        let heads = self.segment.quick_heads(ptr, old, self.source.discard_from())?;
        // (The table is left as it is.)
        let (slot, streak) = self.streak_in_table(ptr)?;
        if streak <= PROMOTING_STREAK {
            return None;
        }
        // SAFETY: a block of layer 0 just checked by `quick_heads`, under
        // the lock held since.
        let resized = unsafe { self.segment.resize_quick(ptr, new_size, heads) };
        let q = if resized {
            ptr
        } else {
            // (As in `move_quick`; all of the block is kept: it grows.)
            // SAFETY: as above.
            unsafe { self.segment.grow_backward_quick(ptr, layout.align(), new_size, layout.size()) }?
        };
        if layout.size() <= SMALL_REQUEST_THRESHOLD {
            self.note_small_in_layer_0(layout, false);
        }
        self.realloc_done(q, Some((slot, streak)), resized);
        Some(q)
    }

    /// The end of [`reallocate_quick`](Self::reallocate_quick) for a block
    /// of layer 0 that cannot resize in place: grown backward into the free
    /// chunk before it, or moved to a new block of layer 0's lists, as
    /// [`reallocate`](Self::reallocate) would; `None` (nothing changed)
    /// where that needs the full path.
    ///
    /// # Safety
    ///
    /// `ptr` must be a block that layer 0's `quick_heads` accepted, with
    /// `keep` at most its size and `new_layout.size()`.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    #[cfg_attr(feature = "debug", allow(dead_code))]
    unsafe fn move_quick(
        &mut self,
        ptr: NonNull<u8>,
        new_layout: Layout,
        keep: usize,
    ) -> Option<NonNull<u8>> {
        // SAFETY: the caller's promise.
        let backward =
            unsafe { self.segment.grow_backward_quick(ptr, new_layout.align(), new_layout.size(), keep) };
        if let Some(q) = backward {
            return Some(q);
        }
        let q = self.segment.allocate_quick_aligned(quick_moving_layout(new_layout))?;
        // SAFETY: both blocks are live, distinct, and at least `keep` bytes
        // long; the old one was checked and is freed once.
        unsafe {
            move_data(ptr, q, keep);
            self.segment.free_moved_block(ptr);
        }
        Some(q)
    }

    /// Counts a realloc that kept its block in place (in layer 0) or moved
    /// it to `at`, and keeps `at` in the slot of its doubling streak, if it
    /// is on one ([`doubling_streak`](Self::doubling_streak)): the same
    /// bookkeeping on the full path and the quick one.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    #[cfg_attr(not(feature = "stats"), allow(unused_variables))]
    fn realloc_done(&mut self, at: NonNull<u8>, growth: Option<(usize, u32)>, in_place: bool) {
        stat!(if in_place { self.stats.realloc_in_place += 1 } else { self.stats.realloc_moved += 1 });
        if let Some((slot, streak)) = growth {
            self.growing[slot] = (at.as_ptr() as usize, streak);
        }
    }

    /// The slot in the table of growing blocks for a doubling realloc of
    /// `ptr`, and how many doublings in a row it has had with this one
    /// (saturating: a block shrunk and doubled where it is, over and over,
    /// stays on its streak).
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn doubling_streak(&mut self, ptr: NonNull<u8>) -> (usize, u32) {
        match self.streak_in_table(ptr) {
            Some(found) => found,
            None => {
                let next = self.growing_next;
                self.growing_next = (next + 1) % self.growing.len();
                (next, 1)
            }
        }
    }

    /// [`doubling_streak`](Self::doubling_streak) for a block in the table
    /// of growing blocks: its slot and its streak with this doubling.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn streak_in_table(&self, ptr: NonNull<u8>) -> Option<(usize, u32)> {
        let slot = self.growing.iter().position(|g| g.0 == ptr.as_ptr() as usize)?;
        Some((slot, self.growing[slot].1.saturating_add(1)))
    }

    /// The new block of a realloc that moves: at the start of layer 0's
    /// largest free chunk for a block on its [`PROMOTING_STREAK`]th
    /// doubling in a row, else an ordinary allocation, aligned as
    /// [`moving_layout`] says.
    #[inline]
    fn allocate_moving(
        &mut self,
        layout: Layout,
        growth: Option<(usize, u32)>,
    ) -> Result<NonNull<u8>, AllocateError> {
        let layout = moving_layout(layout);
        match growth {
            // Small blocks are never promoted: they belong to their size
            // class (in layer +2, or in layer 0 under the class's layout,
            // which every later free and resize of theirs assumes). A small
            // size aligned past 16 is promoted in layer 0 under the layout
            // it has there, rounded to its class's granules as well.
            Some((_, streak)) if streak >= PROMOTING_STREAK && !self.is_small(layout) => {
                let layout = self.layer_0_layout(layout);
                // SAFETY: as in `allocate`.
                unsafe { self.segment.allocate_growable(layout, &mut self.source) }
                    .map_err(AllocateError::Segment)
            }
            _ => self.allocate(layout),
        }
    }
}

/// The layout the quick paths ask a realloc's new block for: the
/// [`moving_layout`] the full path asks (`allocate_moving`) where that
/// changes where the block lands — on 32-bit targets, whose layer 0 aligns
/// its blocks to 8 only (its granule), so that a block moved to a size of a
/// multiple of 16 is 16-aligned there too, as on the full path. Elsewhere
/// layer 0 and the pools place a block aligned to 8 where they place one
/// aligned to 16, and `layout` is kept (no instruction added).
#[cfg_attr(not(strata_unoptimized), inline(always))]
#[cfg_attr(feature = "debug", allow(dead_code))]
fn quick_moving_layout(layout: Layout) -> Layout {
    if CHUNK_GRANULE < ALIGNMENT { moving_layout(layout) } else { layout }
}

/// Copies `len` bytes of a block that moves by realloc from `src` to `dst`.
///
/// A large copy whose destination lies just after its source modulo 4 KiB
/// is copied from the end: copied from the start, each load would follow a
/// store to an address the CPU cannot tell apart from it (4K aliasing), and
/// the string copy of the C library slows down several times (*Measured
/// choices* in `docs/DESIGN.md`).
///
/// # Safety
///
/// `src` and `dst` must be valid for `len` bytes and not overlap.
#[inline]
unsafe fn move_data(src: NonNull<u8>, dst: NonNull<u8>, len: usize) {
    let (s, d) = (src.as_ptr(), dst.as_ptr());
    if len < 4096 || (d as usize).wrapping_sub(s as usize) % 4096 >= 256 {
        // SAFETY: the caller's promise.
        unsafe { ptr::copy_nonoverlapping(s, d, len) };
        return;
    }
    // From the end, in pieces: each piece's loads come before the stores
    // that alias them.
    let mut left = len;
    while left > 0 {
        let piece = left.min(256);
        left -= piece;
        // SAFETY: `[left, left + piece)` lies in both blocks.
        unsafe { ptr::copy_nonoverlapping(s.add(left), d.add(left), piece) };
    }
}
