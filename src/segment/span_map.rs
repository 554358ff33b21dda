//! Where the spans of a page-mapping source lie: the map that makes
//! ownership O(1), and the copy of it the thread caches read.

use core::ptr::NonNull;

use super::tlsf::{self, GRANULE, Tlsf};
use super::{MAP_WORDS, SLOTS};

/// Where the spans of a page-mapping source lie: one bit per slot of the
/// window for the slots a span covers whole, one for the slots a span
/// starts in. Spans start on slot boundaries, so a slot holds at most one
/// span's start and at most one span's partial end; the span's length, in
/// its first word, settles the partial end.
pub(super) struct SpanMap {
    /// The window.
    pub(super) lo: usize,
    pub(super) len: usize,
    /// The window's start rounded down to a slot.
    pub(super) base: usize,
    pub(super) shift: u32,
    pub(super) full: [u64; MAP_WORDS],
    pub(super) start: [u64; MAP_WORDS],
}

impl SpanMap {
    /// The map of no window (all zeros).
    pub(super) const EMPTY: Self =
        Self { lo: 0, len: 0, base: 0, shift: 0, full: [0; MAP_WORDS], start: [0; MAP_WORDS] };

    pub(super) const fn new(window: (usize, usize)) -> Self {
        let mut map = Self::EMPTY;
        map.set_window(window);
        map
    }

    /// Covers `window` with the slots, changing no bit (written field by
    /// field: the bitmaps are never a temporary on the stack; inlined even
    /// at opt-level 0, for `init`'s stack on a microcontroller).
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub(super) const fn set_window(&mut self, window: (usize, usize)) {
        let (lo, len) = window;
        self.lo = lo;
        self.len = lo.saturating_add(len) - lo;
        // The slots serve the TLSF engine's spans only.
        if tlsf::ON {
            self.set_slots();
        }
    }

    /// The smallest slots that cover the window in [`SLOTS`].
    pub(super) const fn set_slots(&mut self) {
        let (lo, end) = (self.lo, self.lo + self.len);
        let mut shift = GRANULE.trailing_zeros();
        while shift < usize::BITS - 1 && ((end - (lo & !((1 << shift) - 1))) >> shift) >= SLOTS {
            shift += 1;
        }
        self.base = lo & !((1 << shift) - 1);
        self.shift = shift;
    }

    pub(super) fn slot_size(&self) -> usize {
        1 << self.shift
    }

    pub(super) fn bit(map: &[u64; MAP_WORDS], slot: usize) -> bool {
        map[slot / 64] & (1 << (slot % 64)) != 0
    }

    pub(super) fn put(map: &mut [u64; MAP_WORDS], slot: usize, on: bool) {
        if on {
            map[slot / 64] |= 1 << (slot % 64);
        } else {
            map[slot / 64] &= !(1 << (slot % 64));
        }
    }

    /// Whether a span holds `addr` (in the window). O(1) for the slots a
    /// span covers whole; for the rest, a scan of the start bits below
    /// (at most `SLOTS / 64` words) and one read of that span's length.
    #[inline]
    pub(super) fn owns(&self, addr: usize) -> bool {
        let slot = (addr - self.base) >> self.shift;
        Self::bit(&self.full, slot) || self.owns_partial(addr, slot)
    }

    #[cold]
    pub(super) fn owns_partial(&self, addr: usize, slot: usize) -> bool {
        // The nearest span start at or below `slot`.
        let mut w = slot / 64;
        let mut bits = self.start[w] & (u64::MAX >> (63 - slot % 64));
        while bits == 0 {
            if w == 0 {
                return false;
            }
            w -= 1;
            bits = self.start[w];
        }
        let first = w * 64 + 63 - bits.leading_zeros() as usize;
        let start = self.slot_start(first);
        let span = core::ptr::with_exposed_provenance::<u8>(start);
        // SAFETY: a start bit marks a live span, whose first word holds its
        // length (`Tlsf::add_span`); its address was exposed when it was
        // taken.
        let len = unsafe { Tlsf::span_len(NonNull::new_unchecked(span.cast_mut())) };
        addr - start < len
    }

    /// The first address of slot `slot` in the window.
    pub(super) fn slot_start(&self, slot: usize) -> usize {
        (self.base + (slot << self.shift)).max(self.lo)
    }

    /// Marks (or clears) the span `[start, start + len)`.
    pub(super) fn set(&mut self, start: usize, len: usize, present: bool) {
        let end = start + len;
        let first = (start - self.base) >> self.shift;
        let last = (end - 1 - self.base) >> self.shift;
        for slot in first..=last {
            let slot_end = (self.base + ((slot + 1) << self.shift)).min(self.lo + self.len);
            let whole = self.slot_start(slot) >= start && slot_end <= end;
            Self::put(&mut self.full, slot, present && whole);
        }
        Self::put(&mut self.start, first, present);
    }

    /// The start addresses of the spans, in address order.
    pub(super) fn span_starts(&self) -> impl Iterator<Item = usize> + '_ {
        (0..MAP_WORDS * 64).filter(|&s| Self::bit(&self.start, s)).map(|s| self.slot_start(s))
    }
}

/// Layer 0's map of spans as [`SegmentAllocator::span_slots`] shows it:
/// the window from `lo`, its slots (`1 << shift` bytes from `base`), the
/// slots spans start in (a span starts where its slot does, or at `lo`,
/// and holds its length in its first word: [`span_len_at`]), and a count
/// that changes whenever a span comes or goes.
#[cfg(feature = "caches")]
pub(crate) struct SpanSlots<'a> {
    pub(crate) lo: usize,
    pub(crate) base: usize,
    pub(crate) shift: u32,
    pub(crate) starts: &'a [u64; MAP_WORDS],
    pub(crate) changes: usize,
}

/// The length of the span of layer 0 that starts at `addr`.
///
/// # Safety
///
/// A span must start at `addr` and stay held for the call (its address
/// was exposed when it was taken).
#[cfg(feature = "caches")]
#[inline]
pub(crate) unsafe fn span_len_at(addr: usize) -> usize {
    let span = core::ptr::with_exposed_provenance_mut::<u8>(addr);
    // SAFETY: the caller's promise; a span's address is never null.
    unsafe { Tlsf::span_len(NonNull::new_unchecked(span)) }
}
