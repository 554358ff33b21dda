//! Frees and in-place resizes of the TLSF engine: a block given back,
//! coalesced with its free neighbours and filed on its list; a block
//! resized in place, or grown backward into the free chunk before it.

use core::ptr::{self, NonNull};

use super::{
    BACKWARD_ALIGN, DEFERRED, FIRST, GRANULE, Heads, IN_USE, MAX_SHIFT, MIN_CHUNK, PREV_IN_USE, Tlsf, WORD,
    chunk_size, head, is_deferred, set_foot, set_head, size_of_head,
};

impl Tlsf {
    /// Frees block `payload`, coalescing it with free neighbours. Returns
    /// the span start if the span is now wholly free.
    ///
    /// # Safety
    ///
    /// `payload` must be a block in use of this engine.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub unsafe fn free(&mut self, payload: NonNull<u8>) -> Option<NonNull<u8>> {
        // SAFETY: the caller's promise.
        unsafe {
            if self.defer(payload) {
                return None;
            }
            self.free_now(payload)
        }
    }

    /// [`free`](Self::free) that merges the block at once, deferring
    /// nothing: for the old block of a realloc that moved, whose room its
    /// neighbours may grow into (a buffer that grew seldom comes back at
    /// its old size).
    ///
    /// # Safety
    ///
    /// As [`free`](Self::free).
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub unsafe fn free_now(&mut self, payload: NonNull<u8>) -> Option<NonNull<u8>> {
        // SAFETY: the caller's promise.
        let (c, size, flags) = unsafe { self.free_merged(payload) };
        // SAFETY: the chunk after the merged free chunk (or the sentinel)
        // lies in its span.
        let whole = flags & FIRST != 0 && unsafe { size_of_head(head(c.add(size))) } == 0;
        // SAFETY: `c` is a chunk, not null.
        whole.then(|| unsafe { NonNull::new_unchecked(c) })
    }

    /// [`free`](Self::free) of a block of a span held whole for good (the
    /// committed window), which never goes back: whether it is now wholly
    /// free is not asked.
    ///
    /// # Safety
    ///
    /// As [`free`](Self::free).
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub unsafe fn free_held(&mut self, payload: NonNull<u8>) {
        // SAFETY: the caller's promise.
        unsafe {
            if !self.defer(payload) {
                self.free_merged(payload);
            }
        }
    }

    /// [`free_held`](Self::free_held) that merges at once, as
    /// [`free_now`](Self::free_now).
    ///
    /// # Safety
    ///
    /// As [`free`](Self::free).
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub unsafe fn free_held_now(&mut self, payload: NonNull<u8>) {
        // SAFETY: the caller's promise.
        unsafe { self.free_merged(payload) };
    }

    /// The work of [`free`](Self::free): the merged free chunk, filed on
    /// its list, as `(chunk, size, flags)`.
    ///
    /// # Safety
    ///
    /// As [`free`](Self::free).
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    unsafe fn free_merged(&mut self, payload: NonNull<u8>) -> (*mut u8, usize, usize) {
        // SAFETY: the caller's promise: the block's header and the next
        // chunk's lie in its span.
        unsafe {
            let c = payload.as_ptr().sub(2 * WORD);
            let h = head(c);
            self.merge_free(c, Heads { head: h, next: head(c.add(size_of_head(h))) })
        }
    }

    /// [`free_held`](Self::free_held) of a block whose [`Heads`] a check
    /// just read (under the heap's lock, so that they still hold).
    ///
    /// # Safety
    ///
    /// As [`free`](Self::free), with `heads` the block's.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub(crate) unsafe fn free_held_with(&mut self, payload: NonNull<u8>, heads: Heads) {
        // SAFETY: the caller's promise.
        unsafe {
            if !self.defer_with(payload, heads.head) {
                self.merge_free(payload.as_ptr().sub(2 * WORD), heads);
            }
        }
    }

    /// The work of [`free`](Self::free) on chunk `c`, whose header words
    /// and the next chunk's are `heads`.
    ///
    /// # Safety
    ///
    /// As [`free`](Self::free), with `heads` chunk `c`'s.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub(super) unsafe fn merge_free(&mut self, c: *mut u8, heads: Heads) -> (*mut u8, usize, usize) {
        let Heads { head: h, next: nh } = heads;
        // SAFETY: the caller's promise: `c` is a chunk in use, its
        // neighbours are chunks of the same span (or its sentinel), and a
        // free neighbour's footer and links are valid.
        unsafe {
            let mut c = c;
            // Clear the in-use bit where it stands even if the chunk merges
            // into its predecessor, so that a second free of this block is
            // refused while its memory has not been reused.
            set_head(c, h & !IN_USE);
            // Before the links below may overwrite a thread cache's tag in
            // the block: a thread checking a free without the lock reads
            // the tag, then this header (see `Heap::deallocate_cached`).
            #[cfg(feature = "caches")]
            core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
            let mut size = size_of_head(h);
            let mut flags = h & (PREV_IN_USE | FIRST);
            let n = c.add(size);
            if nh & IN_USE == 0 {
                let nsize = size_of_head(nh);
                self.unlink(n, nsize);
                size += nsize;
            } else {
                set_head(n, nh & !PREV_IN_USE);
            }
            if flags & PREV_IN_USE == 0 {
                let psize = c.cast::<usize>().read();
                let p = c.sub(psize);
                self.unlink(p, psize);
                flags = head(p) & (PREV_IN_USE | FIRST);
                c = p;
                size += psize;
            }
            set_head(c, size | flags);
            set_foot(c, size);
            self.insert(c, size);
            (c, size, flags)
        }
    }

    /// Resizes block `payload` in place to serve `size` bytes: shrinking
    /// gives the tail back (coalesced with a free next chunk), growing takes
    /// from a free next chunk. Returns whether the block now serves `size`
    /// bytes; on `false` nothing changed.
    ///
    /// # Safety
    ///
    /// `payload` must be a block in use of this engine.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub unsafe fn resize(&mut self, payload: NonNull<u8>, size: usize) -> bool {
        // SAFETY: the caller's promise: the block's header and the next
        // chunk's lie in its span.
        unsafe {
            let h = head(payload.as_ptr().sub(2 * WORD));
            let next = head(payload.as_ptr().sub(2 * WORD).add(size_of_head(h)));
            self.resize_with(payload, size, Heads { head: h, next })
        }
    }

    /// [`resize`](Self::resize) of a block whose [`Heads`] a check just
    /// read (under the heap's lock, so that they still hold).
    ///
    /// # Safety
    ///
    /// As [`resize`](Self::resize), with `heads` the block's.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub(crate) unsafe fn resize_with(&mut self, payload: NonNull<u8>, size: usize, heads: Heads) -> bool {
        let Some(need) = chunk_size(size) else { return false };
        let Heads { head: h, next: nh } = heads;
        // SAFETY: the caller's promise: `c` is a chunk in use and the chunk
        // after it belongs to the same span.
        unsafe {
            let c = payload.as_ptr().sub(2 * WORD);
            let have = size_of_head(h);
            let n = c.add(have);
            let next_free = nh & IN_USE == 0;
            let nsize = if next_free { size_of_head(nh) } else { 0 };
            if need == have || (need < have && !next_free && have - need < MIN_CHUNK) {
                // Nothing worth giving back.
                return true;
            }
            if need > have && (!next_free || have + nsize < need) {
                // No room to grow into, unless the next chunk is a deferred
                // one: then it is freed (merged) for the block to grow into.
                return is_deferred(nh) && self.grow_into_deferred(c, have, need, nh);
            }
            if next_free {
                self.unlink(n, nsize);
            } else {
                // The tail given back becomes the next chunk's free
                // predecessor.
                set_head(n, nh & !PREV_IN_USE);
            }
            self.use_chunk(c, have + nsize, need);
            true
        }
    }

    /// The end of [`resize_with`](Self::resize_with) when the chunk after
    /// block `c` (`have` bytes, growing to `need`) is deferred, its header
    /// `nh`: if that chunk and a free one after it make room, it leaves its
    /// deferred list, merges as a free of it would, and the block grows
    /// into it. `false`, having changed nothing, if they do not.
    ///
    /// # Safety
    ///
    /// `c` must be a chunk in use of this engine, followed by a deferred
    /// chunk whose header is `nh`.
    #[cold]
    #[inline(never)]
    unsafe fn grow_into_deferred(&mut self, c: *mut u8, have: usize, need: usize, nh: usize) -> bool {
        // SAFETY: the caller's promise: the deferred chunk and the chunk
        // after it (or the sentinel) lie in the span.
        unsafe {
            let n = c.add(have);
            let nsize = size_of_head(nh);
            let after = head(n.add(nsize));
            let beyond = if after & IN_USE == 0 { size_of_head(after) } else { 0 };
            if have + nsize + beyond < need {
                return false;
            }
            self.undefer(n, nh);
            self.merge_free(n, Heads { head: nh & !DEFERRED, next: after });
            let free = size_of_head(head(n));
            self.unlink(n, free);
            self.use_chunk(c, have + free, need);
            true
        }
    }

    /// Grows block `payload` to serve `size` bytes into the free chunk
    /// before it (and the one after it, if free), moving its first `keep`
    /// bytes down to the new start: what realloc does when the block cannot
    /// grow forward, before it takes memory elsewhere. Returns the new
    /// payload, or `None` (nothing changed) when the neighbours are too
    /// small.
    ///
    /// # Safety
    ///
    /// `payload` must be a block in use of this engine, aligned to what its
    /// owner needs at most [`BACKWARD_ALIGN`], with `keep` at most its
    /// usable size.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub unsafe fn grow_backward(
        &mut self,
        payload: NonNull<u8>,
        size: usize,
        keep: usize,
    ) -> Option<NonNull<u8>> {
        // SAFETY: the caller's promise: a block in use, whose header is
        // readable; most blocks follow one in use, so this is checked first.
        if unsafe { head(payload.as_ptr().sub(2 * WORD)) } & PREV_IN_USE != 0 {
            return None;
        }
        // SAFETY: forwarded contract.
        unsafe { self.grow_backward_into_free(payload, size, keep) }
    }

    /// [`grow_backward`](Self::grow_backward) once the previous chunk is
    /// known to be free.
    ///
    /// # Safety
    ///
    /// As [`grow_backward`](Self::grow_backward).
    #[inline(never)]
    unsafe fn grow_backward_into_free(
        &mut self,
        payload: NonNull<u8>,
        size: usize,
        keep: usize,
    ) -> Option<NonNull<u8>> {
        let need = chunk_size(size)?;
        // SAFETY: the caller's promise: `c` is a chunk in use, and its free
        // neighbours (if any) are chunks of the same span with valid
        // headers, footers and links. The data moves before any header is
        // written over it: the previous chunk's header lies below the old
        // payload, the next chunk's above its end, and the rest split off
        // lies above the moved data (`need >= keep + WORD`).
        unsafe {
            let c = payload.as_ptr().sub(2 * WORD);
            let h = head(c);
            if h & PREV_IN_USE != 0 {
                return None;
            }
            let have = size_of_head(h);
            let psize = c.cast::<usize>().read();
            let p = c.sub(psize);
            let n = c.add(have);
            let nh = head(n);
            let nsize = if nh & IN_USE == 0 { size_of_head(nh) } else { 0 };
            let total = psize + have + nsize;
            // Moving much data down is slow (*Measured choices* in
            // `docs/DESIGN.md`): only small blocks grow backward. And on
            // 32-bit targets, whose chunks start 8 bytes apart, only by a
            // multiple of 16 bytes: a block keeps its address modulo
            // BACKWARD_ALIGN, so that one aligned to 16 (as C's `realloc`
            // promises a block of `malloc`'s) stays so.
            if total < need || keep > MAX_SHIFT || (GRANULE < BACKWARD_ALIGN && psize % BACKWARD_ALIGN != 0) {
                return None;
            }
            self.unlink(p, psize);
            if nsize > 0 {
                self.unlink(n, nsize);
            } else {
                set_head(n, nh & !PREV_IN_USE);
            }
            // The old header goes out of use where it stands, as a free
            // leaves it, so that the old pointer is refused (while the moved
            // data or a later block has not written over it).
            set_head(c, h & !IN_USE);
            let moved = p.add(2 * WORD);
            ptr::copy(payload.as_ptr(), moved, keep);
            set_head(p, total | (head(p) & (PREV_IN_USE | FIRST)));
            Some(self.use_chunk(p, total, need))
        }
    }
}
