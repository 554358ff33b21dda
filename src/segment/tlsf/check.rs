//! The TLSF engine's invariant checks: a walk of a span's chunks and a
//! walk of the free lists against the bitmaps (`check_invariants`, the
//! property tests after every step).

use core::ptr::NonNull;

use super::{
    BINS, BITS, FIRST, GRANULE, IN_USE, MIN_CHUNK, PREV_IN_USE, Tlsf, WORD, WORDS, bin_of, head, head_tag,
    is_deferred, links, size_of_head,
};

impl Tlsf {
    /// Walks the chunks of the span at `start` (`len` bytes), checking its
    /// invariants, and returns `(bytes in use, blocks in use, free bytes,
    /// free chunks)`. Panics on a broken invariant.
    ///
    /// # Safety
    ///
    /// `start` and `len` must be those of a live span of this engine.
    pub unsafe fn check_span(&self, start: NonNull<u8>, len: usize) -> SpanCounts {
        let base = start.as_ptr();
        let end = base as usize + len;
        let mut c = base;
        let mut counts = SpanCounts::default();
        let mut prev_in_use = true;
        let mut first = true;
        loop {
            // SAFETY: `c` stays inside the span: every step adds a chunk
            // size checked to end before the sentinel.
            let h = unsafe { head(c) };
            let size = size_of_head(h);
            assert_eq!(h & PREV_IN_USE != 0, prev_in_use, "chunk {c:p}: prev-in-use flag is wrong");
            assert_eq!(h & FIRST != 0, first, "chunk {c:p}: first-chunk flag is wrong");
            if size == 0 {
                assert!(h & IN_USE != 0, "sentinel not marked in use");
                assert_eq!(c as usize + 2 * WORD, end, "sentinel not at the span's end");
                break;
            }
            assert!(size >= MIN_CHUNK && size.is_multiple_of(GRANULE), "chunk {c:p}: bad size {size}");
            assert!(c as usize + size + 2 * WORD <= end, "chunk {c:p} runs past its span");
            if is_deferred(h) {
                assert!(h & IN_USE != 0, "chunk {c:p}: deferred but not in use");
                counts.deferred_bytes += size;
                counts.deferred_chunks += 1;
            } else if h & IN_USE != 0 {
                counts.used_bytes += size;
                counts.used_blocks += 1;
            } else {
                assert!(prev_in_use, "two free chunks in a row at {c:p}");
                // SAFETY: a free chunk's footer lies in the span.
                let foot = unsafe { c.add(size).cast::<usize>().read() };
                assert_eq!(foot, size, "chunk {c:p}: footer disagrees with its size");
                counts.free_bytes += size;
                counts.free_chunks += 1;
            }
            prev_in_use = h & IN_USE != 0;
            first = false;
            // SAFETY: checked above to stay in the span.
            c = unsafe { c.add(size) };
        }
        counts
    }

    /// Calls `f` with the start and size of every free chunk.
    pub fn each_free_chunk(&self, mut f: impl FnMut(*mut u8, usize)) {
        for bin in 0..BINS {
            let mut c = self.heads[bin];
            while !c.is_null() {
                // SAFETY: chunks on lists are free chunks of live spans.
                let (h, (next, _)) = unsafe { (head(c), links(c)) };
                f(c, size_of_head(h));
                // SAFETY: as above.
                c = unsafe { next.read() };
            }
        }
    }

    /// Checks the lists against the bitmaps: every listed chunk lies in a
    /// span (`in_span`), is free, filed under its size, linked both ways;
    /// the free bytes add up. Returns how many chunks are listed: when the
    /// span walks find as many free chunks, every free chunk is on its list
    /// exactly once. Panics on a broken invariant.
    pub fn check_lists(&self, in_span: impl Fn(*mut u8) -> bool) -> usize {
        let (mut bytes, mut chunks) = (0, 0);
        for bin in 0..BINS {
            let marked = self.bitmap[bin / BITS] & (1 << (bin % BITS)) != 0;
            assert_eq!(marked, !self.heads[bin].is_null(), "bitmap bit of list {bin}");
            let mut prev = head_tag(bin);
            let mut c = self.heads[bin];
            while !c.is_null() {
                assert!(in_span(c), "list {bin} holds {c:p}, outside every span");
                // SAFETY: chunks on lists are free chunks of live spans.
                let (h, (next, back)) = unsafe { (head(c), links(c)) };
                assert_eq!(h & IN_USE, 0, "chunk {c:p} on a free list is in use");
                assert_eq!(bin_of(size_of_head(h)), bin, "chunk {c:p} on the wrong list");
                // SAFETY: as above.
                assert_eq!(unsafe { back.read() }, prev, "list {bin}: broken back link");
                bytes += size_of_head(h);
                chunks += 1;
                assert!(bytes <= self.free_bytes, "free lists longer than the free bytes (a cycle?)");
                prev = c;
                // SAFETY: as above.
                c = unsafe { next.read() };
            }
        }
        for w in 0..WORDS {
            assert_eq!(self.summary & (1 << w) != 0, self.bitmap[w] != 0, "summary bit {w}");
        }
        assert_eq!(bytes, self.free_bytes, "free bytes");
        chunks
    }
}

/// What a span walk counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpanCounts {
    /// Bytes of chunks in use.
    pub used_bytes: usize,
    /// Chunks in use.
    pub used_blocks: usize,
    /// Bytes of free chunks.
    pub free_bytes: usize,
    /// Free chunks.
    pub free_chunks: usize,
    /// Bytes of deferred chunks (freed, kept whole: `deferred.rs`).
    pub deferred_bytes: usize,
    /// Deferred chunks.
    pub deferred_chunks: usize,
}
