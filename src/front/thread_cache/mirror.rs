//! What a thread cache reads of its heap without the heap's lock: a copy
//! of layer +2's arena bitmap, of layer 0's committed window, and of the
//! slots layer 0's spans start in, each brought up to date under the lock
//! whenever it changes.

use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::object::{ARENA_SLOTS, KEY, TAGS, carries_free_tag};
use crate::segment;

/// A copy of layer +2's arena bitmap that threads read without the heap's
/// lock: one bit per arena slot of the window, written only under the lock.
pub(crate) struct ArenaMirror {
    bits: [AtomicU64; ARENA_SLOTS / 64],
    /// The +2 arena counters the copy was last made at (allocated,
    /// reclaimed), to tell when it must be made again.
    seen: [AtomicU64; 2],
    /// Layer 0's committed window while it holds it, as `(start, len)`
    /// (`len` 0 otherwise): where its medium blocks are.
    window: [AtomicUsize; 2],
    /// Over a page-mapping source, where the medium blocks are instead:
    /// one bit per slot of layer 0's span map that a span starts in ...
    spans: [AtomicU64; segment::MAP_WORDS],
    /// ... and the map's geometry: `[lo, base, shift, changes + 1]` (the
    /// last 0 until first recorded).
    span_geo: [AtomicUsize; 4],
}

impl ArenaMirror {
    pub(crate) const fn new() -> Self {
        Self {
            bits: [const { AtomicU64::new(0) }; ARENA_SLOTS / 64],
            seen: [const { AtomicU64::new(0) }; 2],
            window: [const { AtomicUsize::new(0) }; 2],
            spans: [const { AtomicU64::new(0) }; segment::MAP_WORDS],
            span_geo: [const { AtomicUsize::new(0) }; 4],
        }
    }

    /// Records where layer 0's spans lie, if they came or went since last
    /// time (call with the heap locked).
    #[inline]
    pub(crate) fn sync_spans(&self, spans: Option<segment::SpanSlots<'_>>) {
        let Some(map) = spans else { return };
        if self.span_geo[3].load(Ordering::Relaxed) == map.changes.wrapping_add(1) {
            return;
        }
        self.sync_spans_now(&map);
    }

    #[cold]
    #[inline(never)]
    fn sync_spans_now(&self, map: &segment::SpanSlots<'_>) {
        // The geometry first: a reader that sees a bit (acquire) sees it.
        let geo = [map.lo, map.base, map.shift as usize];
        for (word, value) in self.span_geo.iter().zip(geo) {
            word.store(value, Ordering::Relaxed);
        }
        for (word, &value) in self.spans.iter().zip(map.starts) {
            word.store(value, Ordering::Release);
        }
        self.span_geo[3].store(map.changes.wrapping_add(1), Ordering::Relaxed);
    }

    /// Memory of layer 0 around `addr` that is readable while the block
    /// at `addr`, if it is one, is live, as `(start, len)` (`len` 0 if
    /// none): the committed window, or else the span that holds `addr`, as
    /// last recorded — found by the nearest span start at or below `addr`'s
    /// slot (a scan of at most the map's words; the word of `addr`'s slot
    /// itself, where spans are slots or more apart) and that span's length.
    #[inline]
    pub(super) fn medium_window(&self, addr: usize) -> (usize, usize) {
        let window = self.window();
        if window.1 != 0 {
            return window;
        }
        let base = self.span_geo[1].load(Ordering::Relaxed);
        let shift = self.span_geo[2].load(Ordering::Relaxed) as u32;
        let slot = addr.wrapping_sub(base).checked_shr(shift).unwrap_or(usize::MAX);
        if slot >= segment::MAP_WORDS * 64 {
            return (0, 0);
        }
        let mut w = slot / 64;
        let mut bits = self.spans[w].load(Ordering::Acquire) & (u64::MAX >> (63 - slot % 64));
        while bits == 0 {
            if w == 0 {
                return (0, 0);
            }
            w -= 1;
            bits = self.spans[w].load(Ordering::Acquire);
        }
        let first = w * 64 + 63 - bits.leading_zeros() as usize;
        let start = (base + (first << shift)).max(self.span_geo[0].load(Ordering::Relaxed));
        // SAFETY: a start bit, read with acquire after the heap recorded
        // it, marks a span held then, which starts where its slot does (or
        // at the window's start); a span stays held while any block of it
        // is live, so only a free of a block already freed, racing with
        // the release of its span, could find it gone (and fault rather
        // than corrupt).
        let len = unsafe { segment::span_len_at(start) };
        if addr - start < len { (start, len) } else { (0, 0) }
    }

    /// Records layer 0's committed window (call with the heap locked).
    #[inline]
    pub(crate) fn sync_window(&self, window: Option<(usize, usize)>) {
        let (start, len) = window.unwrap_or((0, 0));
        if self.window[1].load(Ordering::Relaxed) != len || self.window[0].load(Ordering::Relaxed) != start {
            // Length last: a reader that sees it sees the start.
            self.window[1].store(0, Ordering::Release);
            self.window[0].store(start, Ordering::Release);
            self.window[1].store(len, Ordering::Release);
        }
    }

    /// Layer 0's committed window, as last recorded.
    #[inline]
    pub(super) fn window(&self) -> (usize, usize) {
        let len = self.window[1].load(Ordering::Acquire);
        (self.window[0].load(Ordering::Acquire), len)
    }

    /// Makes the copy again whatever the counters say (call with the heap
    /// locked): for caches that come on after a time off, when the copy was
    /// not kept.
    pub(crate) fn force_sync(
        &self,
        bitmap: impl FnOnce() -> [u64; ARENA_SLOTS / 64],
        counters: (usize, usize),
    ) {
        for (word, value) in self.bits.iter().zip(bitmap()) {
            // Release: a thread that sees the bit sees the arena's set-up.
            word.store(value, Ordering::Release);
        }
        self.seen[0].store(counters.0 as u64, Ordering::Relaxed);
        self.seen[1].store(counters.1 as u64, Ordering::Relaxed);
    }

    /// Makes the copy again if the arena counters moved (call with the
    /// heap locked).
    #[inline]
    pub(crate) fn sync(&self, counters: (usize, usize), bitmap: impl FnOnce() -> [u64; ARENA_SLOTS / 64]) {
        if self.seen[0].load(Ordering::Relaxed) != counters.0 as u64
            || self.seen[1].load(Ordering::Relaxed) != counters.1 as u64
        {
            self.force_sync(bitmap, counters);
        }
    }

    #[inline]
    pub(super) fn holds(&self, slot: usize) -> bool {
        slot < ARENA_SLOTS && self.bits[slot / 64].load(Ordering::Acquire) & (1 << (slot % 64)) != 0
    }
}

/// Whether a block the heap is asked to free or reallocate, with `layout`,
/// is in some thread's cache (or on the heap's stack of returned blocks):
/// its second word holds its tag. [`put`](super::put) and
/// [`realloc`](super::realloc) ask this of a
/// block they leave to the lock, so that a second free by a thread whose
/// cache serves another heap, or has none, is refused too. Reads only
/// layer 0's memory as last recorded in `mirror` (the committed window, or
/// the span that holds the block), and only blocks of at least two words.
#[inline]
pub(crate) fn cached_anywhere(mirror: &ArenaMirror, ptr: NonNull<u8>, layout: Layout) -> bool {
    cached_in(mirror.medium_window(ptr.as_ptr() as usize), ptr, layout)
}

/// [`cached_anywhere`] for a block whose memory of layer 0, `window`
/// (`(start, len)`, as [`ArenaMirror::medium_window`] gives it), the
/// caller has found already.
#[inline]
pub(crate) fn cached_in(window: (usize, usize), ptr: NonNull<u8>, layout: Layout) -> bool {
    const WORD: usize = size_of::<usize>();
    let (start, len) = window;
    let off = (ptr.as_ptr() as usize).wrapping_sub(start);
    if !TAGS
        || KEY.load(Ordering::Relaxed) == 0
        || layout.size() <= WORD
        || off >= len
        || len - off < 2 * WORD
    {
        return false;
    }
    if !(ptr.as_ptr() as usize).is_multiple_of(WORD) {
        return false;
    }
    // SAFETY: a word-aligned pair of words inside layer 0's memory as last
    // recorded, which stays readable while the heap holds it.
    unsafe { carries_free_tag(crate::source::reach(ptr)) }
}
