//! # Layer 0: the segment allocator (the "malloc" of the stack)
//!
//! **Takes from below:** *spans* — runs of pages — from a [`PageSource`].
//!
//! **Gives above:** blocks of any size and alignment, for the requests layer
//! +2 does not serve (larger than its threshold, aligned above 16, or when it
//! has no arena to offer), and layer +2's arenas themselves where the page
//! source is a region of memory that is already there.
//!
//! ```text
//!   committed source (a region):        page-mapping source (the VMM):
//!   ┌──────────────────────────────┐    ┌────────┐ G ┌──────────────┐ G …
//!   │ one span: the whole window   │    │ span   │   │ span         │
//!   │ ┌─────┬──────┬──────┬──────┐ │    └────────┘   └──────────────┘
//!   │ │chunk│arena │chunk │ free │ │     spans taken in whole slots,
//!   │ └─────┴──────┴──────┴──────┘ │     given back once wholly free
//!   └──────────────────────────────┘
//! ```
//!
//! Inside the spans, one TLSF engine (`segment/tlsf.rs`) serves every block: chunks
//! with one header word, free chunks in segregated lists found through a
//! bitmap in O(1), immediate coalescing, resizing in place when the next
//! chunk is free. Nothing here has a fixed number of entries: a span is only
//! the unit in which pages are taken and given back.
//!
//! **Two kinds of page source.** A source whose memory is already there
//! ([`PageSource::COMMITTED`], e.g. a [`RegionSource`](crate::RegionSource)
//! over a static region) is taken whole, as one span, the first time
//! memory is needed: free space never splits between two allocators, and
//! layer +2 takes its arenas from this layer as aligned blocks. A source that
//! maps pages on demand (the kernel's VMM) is asked for spans of whole
//! *slots* (1/4096 of its window, at least [`Config::span_min`]); a span
//! that becomes wholly free goes back, except one spare kept against
//! thrashing, which an allocation that would otherwise fail gives back too
//! before asking again.
//!
//! **Small heaps.** Under [`FIRST_FIT_LIMIT`] (firmware heaps) the engine is
//! `linked_list_allocator`'s first fit over the whole window instead: it
//! keeps no header at all, so on heaps this small it fills best, and its
//! walks stay short.
//!
//! **Ownership.** One bit per slot of the window says whether a span covers
//! it, so `SegmentAllocator::owns` is O(1) and reads no memory. A free is
//! refused with a typed [`DeallocateError`] when no span holds the pointer,
//! when the block is not in use (a double free whose memory has not been
//! reused), or when its size does not fit the layout given; in the TLSF
//! engine those checks are O(1) reads of the block's header and its
//! neighbour's. Blocks of the first-fit engine carry no header to check.
//!
//! **Invariants:** spans are disjoint, each covering whole slots (the
//! window's span excepted) and marked in the map exactly; at most one span is
//! wholly free in the page-mapping case; every chunk invariant of the TLSF engine
//! holds in every span.

mod tlsf;

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

use crate::source::{PAGE_SIZE, PageSource, PagesError, reach};
use tlsf::{GRANULE, MIN_CHUNK, MIN_SPAN, SPAN_OVERHEAD, Tlsf, WORD};
#[cfg(feature = "caches")]
pub(crate) use tlsf::{GRANULE as CHUNK_GRANULE, WORD as CHUNK_WORD, chunk_size};

/// Windows smaller than this are served by first fit over the whole window.
pub const FIRST_FIT_LIMIT: usize = 1 << 20;

/// The default [`Config::large_threshold`]: glibc's default mmap threshold.
pub const LARGE_THRESHOLD: usize = 128 << 10;

/// What layer 0 keeps of every arena it gives layer +2: the last
/// `ARENA_TAIL` bytes hold the boundary tag of the chunk after it, so that
/// arenas can sit next to each other. Layer +2 never uses them.
pub(crate) const ARENA_TAIL: usize = GRANULE;

/// Whether layer 0's TLSF engine is built (the `tlsf` feature).
pub(crate) const TLSF: bool = tlsf::ON;

/// Slots in the ownership map.
const SLOTS: usize = 4096;
/// Words of each ownership bitmap as stored: none without the TLSF engine,
/// which alone takes spans of a page-mapping source.
pub(crate) const MAP_WORDS: usize = if tlsf::ON { SLOTS / 64 } else { 0 };

/// Tunables of layer 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Serve every block by first fit over the whole window
    /// (`linked_list_allocator`) instead of TLSF.
    pub first_fit: bool,
    /// Smallest span asked of a page source that is not
    /// [committed](PageSource::COMMITTED).
    pub span_min: usize,
    /// From a page source that is not committed, requests of this many
    /// bytes or more (aligned to at most 16) get a span of their own, given
    /// back as soon as they are freed (malloc's mmap threshold; in the
    /// kernel, an overflow past one hits the guard page after it).
    pub large_threshold: usize,
}

impl Config {
    /// Tunables for a page source whose window is `window_len` bytes: first
    /// fit under [`FIRST_FIT_LIMIT`] (and at every size in a build without
    /// the `tlsf` feature), spans of at least 1/16 of the window
    /// (between a page and 1 MiB), spans of their own from
    /// [`LARGE_THRESHOLD`].
    pub const fn for_window(window_len: usize) -> Self {
        let mut span_min = (window_len / 16) & !(PAGE_SIZE - 1);
        if span_min < PAGE_SIZE {
            span_min = PAGE_SIZE;
        }
        if span_min > 1 << 20 {
            span_min = 1 << 20;
        }
        Self {
            first_fit: window_len < FIRST_FIT_LIMIT || !tlsf::ON,
            span_min,
            large_threshold: LARGE_THRESHOLD,
        }
    }

    /// Checks that these tunables can serve: `span_min` is a whole number
    /// of pages, at most 1 TiB; TLSF only where it is built. Every
    /// [`for_window`](Self::for_window) passes.
    pub const fn validate(self) -> Result<Self, ConfigError> {
        if !self.first_fit && !tlsf::ON {
            return Err(ConfigError::TlsfNotBuilt);
        }
        if self.span_min == 0 || !self.span_min.is_multiple_of(PAGE_SIZE) || self.span_min > MAX_SPAN_MIN {
            return Err(ConfigError::SpanMin(self.span_min));
        }
        Ok(self)
    }
}

/// Largest [`Config::span_min`].
const MAX_SPAN_MIN: usize = if usize::BITS > 40 { 1 << 40 } else { 1 << (usize::BITS - 2) };

/// Why a [`Config`] cannot serve (see [`Config::validate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// `span_min` is zero, not a whole number of pages, or over 1 TiB.
    SpanMin(usize),
    /// TLSF asked for (`first_fit` false) in a build without the `tlsf`
    /// feature.
    TlsfNotBuilt,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SpanMin(n) => write!(f, "span_min {n} is not a whole number of pages up to 1 TiB"),
            Self::TlsfNotBuilt => f.write_str("layer 0's TLSF engine is not built (feature `tlsf`)"),
        }
    }
}

impl core::error::Error for ConfigError {}

/// Why layer 0 could not allocate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocateError {
    /// No free chunk holds the request and the page source has no span for
    /// it.
    OutOfMemory {
        /// The request.
        layout: Layout,
        /// What the page source said (or `Exhausted` when it was not asked:
        /// a committed source is held whole already).
        source: PagesError,
    },
}

impl fmt::Display for AllocateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfMemory { layout, source } => write!(
                f,
                "layer 0 has no room for {} bytes aligned to {}: {source}",
                layout.size(),
                layout.align()
            ),
        }
    }
}

impl core::error::Error for AllocateError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::OutOfMemory { source, .. } => Some(source),
        }
    }
}

/// Why layer 0 refused a free. Nothing was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeallocateError {
    /// The pointer lies in no span of this allocator (nor in an arena of
    /// layer +2, when the front door says so).
    NotOwned {
        /// The pointer.
        ptr: usize,
    },
    /// The pointer lies in a span but is not a block in use: freed already
    /// (a double free), or not the start of a block.
    NotAllocated {
        /// The pointer.
        ptr: usize,
    },
    /// The block is in use, but its size does not fit the layout given.
    SizeMismatch {
        /// The pointer.
        ptr: usize,
        /// Bytes the block holds.
        block: usize,
        /// The size given.
        given: usize,
    },
    /// A free or size query without a layout, of a block of the first-fit
    /// engine (heaps under [`FIRST_FIT_LIMIT`]), which keeps no block sizes.
    SizeUnknown {
        /// The pointer.
        ptr: usize,
    },
}

impl fmt::Display for DeallocateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotOwned { ptr } => write!(f, "{ptr:#x} was not allocated by this heap"),
            Self::NotAllocated { ptr } => {
                write!(f, "{ptr:#x} is not a block in use (freed twice, or not a block's start)")
            }
            Self::SizeMismatch { ptr, block, given } => {
                write!(f, "{ptr:#x} holds {block} bytes but was freed as {given}")
            }
            Self::SizeUnknown { ptr } => {
                write!(
                    f,
                    "{ptr:#x} lies in a first-fit heap, which keeps no block sizes: free it with its layout"
                )
            }
        }
    }
}

impl core::error::Error for DeallocateError {}

/// Counters of layer 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentStats {
    /// Whether the first-fit engine serves this heap (else TLSF).
    pub first_fit: bool,
    /// Spans held.
    pub spans: usize,
    /// Bytes of spans held.
    pub span_bytes: usize,
    /// Bytes in blocks in use (chunk sizes, headers included; arenas lent to
    /// layer +2 included).
    pub allocated_bytes: usize,
    /// Bytes in free chunks.
    pub free_bytes: usize,
    /// Free chunks (TLSF; 0 for first fit).
    pub free_chunks: usize,
    /// The most bytes one more block could get (TLSF: the largest free
    /// chunk less its header word; 0 for first fit, which does not tell).
    pub largest_free: usize,
    /// Spans given back to the page source so far.
    pub spans_released: usize,
}

/// Which engine serves the spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    /// Not decided yet: no memory has been taken.
    Unset,
    /// `linked_list_allocator` over the whole window.
    FirstFit,
    /// TLSF over spans.
    Tlsf,
}

/// Where the spans of a page-mapping source lie: one bit per slot of the
/// window for the slots a span covers whole, one for the slots a span
/// starts in. Spans start on slot boundaries, so a slot holds at most one
/// span's start and at most one span's partial end; the span's length, in
/// its first word, settles the partial end.
struct SpanMap {
    /// The window.
    lo: usize,
    len: usize,
    /// The window's start rounded down to a slot.
    base: usize,
    shift: u32,
    full: [u64; MAP_WORDS],
    start: [u64; MAP_WORDS],
}

impl SpanMap {
    /// The map of no window (all zeros).
    const EMPTY: Self =
        Self { lo: 0, len: 0, base: 0, shift: 0, full: [0; MAP_WORDS], start: [0; MAP_WORDS] };

    const fn new(window: (usize, usize)) -> Self {
        let mut map = Self::EMPTY;
        map.set_window(window);
        map
    }

    /// Covers `window` with the slots, changing no bit (written field by
    /// field: the bitmaps are never a temporary on the stack; inlined even
    /// at opt-level 0, for `init`'s stack on a microcontroller).
    #[inline(always)]
    const fn set_window(&mut self, window: (usize, usize)) {
        let (lo, len) = window;
        self.lo = lo;
        self.len = lo.saturating_add(len) - lo;
        // The slots serve the TLSF engine's spans only.
        if tlsf::ON {
            self.set_slots();
        }
    }

    /// The smallest slots that cover the window in [`SLOTS`].
    const fn set_slots(&mut self) {
        let (lo, end) = (self.lo, self.lo + self.len);
        let mut shift = GRANULE.trailing_zeros();
        while shift < usize::BITS - 1 && ((end - (lo & !((1 << shift) - 1))) >> shift) >= SLOTS {
            shift += 1;
        }
        self.base = lo & !((1 << shift) - 1);
        self.shift = shift;
    }

    fn slot_size(&self) -> usize {
        1 << self.shift
    }

    fn bit(map: &[u64; MAP_WORDS], slot: usize) -> bool {
        map[slot / 64] & (1 << (slot % 64)) != 0
    }

    fn put(map: &mut [u64; MAP_WORDS], slot: usize, on: bool) {
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
    fn owns(&self, addr: usize) -> bool {
        let slot = (addr - self.base) >> self.shift;
        Self::bit(&self.full, slot) || self.owns_partial(addr, slot)
    }

    #[cold]
    fn owns_partial(&self, addr: usize, slot: usize) -> bool {
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
    fn slot_start(&self, slot: usize) -> usize {
        (self.base + (slot << self.shift)).max(self.lo)
    }

    /// Marks (or clears) the span `[start, start + len)`.
    fn set(&mut self, start: usize, len: usize, present: bool) {
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
    fn span_starts(&self) -> impl Iterator<Item = usize> + '_ {
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

/// Layer 0: one allocator over every span it holds.
///
/// The layer's engine, public for the layer tests and benchmarks and hidden
/// from the API: programs use it through [`Heap`](crate::Heap).
#[doc(hidden)]
pub struct SegmentAllocator {
    tlsf: Tlsf,
    first_fit: linked_list_allocator::Heap,
    engine: Engine,
    /// The source is committed: the whole window is (or will be) one span,
    /// and layer +2's arenas come from here.
    whole: bool,
    map: SpanMap,
    config: Config,
    /// Pointer provenance for the whole window's span, and its length, while
    /// it is held.
    window_span: Option<(NonNull<u8>, usize)>,
    /// A wholly free span kept against thrashing (page-mapping sources).
    spare: Option<NonNull<u8>>,
    /// Requests from this size take the slow path: a span of their own
    /// from a page-mapping source (the configured threshold); never for a
    /// committed source held whole; every request (0) while no engine is
    /// chosen or when first fit serves.
    large: usize,
    spans: usize,
    span_bytes: usize,
    released: usize,
}

// SAFETY: the allocator owns the memory its raw pointers point to; it is
// moved between threads only as a whole (behind the front door's lock).
unsafe impl Send for SegmentAllocator {}

impl fmt::Debug for SegmentAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentAllocator")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl SegmentAllocator {
    /// An allocator with no span yet, for a page source whose window is
    /// `window` (as [`PageSource::window`] reports it), or why `config`
    /// cannot serve ([`Config::validate`]).
    pub const fn new(config: Config, window: (usize, usize)) -> Result<Self, ConfigError> {
        match config.validate() {
            Ok(config) => Ok(Self::with_valid(config, window)),
            Err(e) => Err(e),
        }
    }

    /// [`new`](Self::new) with tunables that passed [`Config::validate`].
    const fn with_valid(config: Config, window: (usize, usize)) -> Self {
        Self { map: SpanMap::new(window), config, ..Self::UNSET }
    }

    /// An allocator of no window, all zeros (so that a heap static lies in
    /// `.bss`): it serves nothing until [`set_window`](Self::set_window).
    pub(crate) const UNSET: Self = Self {
        tlsf: Tlsf::new(),
        first_fit: linked_list_allocator::Heap::empty(),
        engine: Engine::Unset,
        whole: false,
        map: SpanMap::EMPTY,
        config: Config { first_fit: false, span_min: 0, large_threshold: 0 },
        window_span: None,
        spare: None,
        large: 0,
        spans: 0,
        span_bytes: 0,
        released: 0,
    };

    /// Gives an allocator that has never held a span the window of its page
    /// source and tunables that passed [`Config::validate`], in place.
    ///
    /// # Panics
    ///
    /// If it holds or has held a span.
    pub(crate) const fn set_window(&mut self, config: Config, window: (usize, usize)) {
        assert!(self.spans == 0 && self.released == 0, "layer 0 has held memory");
        self.map.set_window(window);
        self.config = config;
        self.engine = Engine::Unset;
        self.whole = false;
        self.large = 0;
    }

    /// The engine serving the spans; never TLSF in a build without it, so
    /// that its code is left out.
    #[inline(always)]
    fn engine(&self) -> Engine {
        match self.engine {
            Engine::Tlsf if !tlsf::ON => Engine::Unset,
            engine => engine,
        }
    }

    /// The tunables in force.
    pub fn config(&self) -> Config {
        self.config
    }

    /// Decides, on first use, how the source is managed: whole or by spans,
    /// first fit or TLSF. Takes the whole window of a committed source.
    pub(crate) fn prepare<S: PageSource>(&mut self, source: &mut S) {
        // Nothing to decide before there is a window.
        if self.engine != Engine::Unset || self.map.len == 0 {
            return;
        }
        self.engine = if self.config.first_fit || !tlsf::ON { Engine::FirstFit } else { Engine::Tlsf };
        self.whole = S::COMMITTED;
        if self.whole && self.take_window(source) {
            self.large = if self.engine() == Engine::Tlsf { usize::MAX } else { 0 };
            return;
        }
        // A source that maps pages on demand, or a committed one that gave
        // part of its window away before the heap took it: spans, by TLSF
        // (in a build without it, first fit, which then has no memory).
        if !tlsf::ON {
            return;
        }
        self.engine = Engine::Tlsf;
        self.whole = false;
        self.large = self.config.large_threshold;
    }

    /// Takes the whole window of a committed source as one span.
    fn take_window(&mut self, source: &mut impl PageSource) -> bool {
        let granule = source.granularity().max(GRANULE);
        let len = self.map.len & !(granule - 1);
        if len < MIN_SPAN || !self.map.lo.is_multiple_of(granule) {
            return false;
        }
        let Ok(start) = source.allocate_pages(len, granule) else { return false };
        if start.as_ptr() as usize != self.map.lo {
            // SAFETY: just allocated from `source` with this size.
            unsafe { source.deallocate_pages(start, len) };
            return false;
        }
        // Blocks are reached through the window's provenance (`reach`).
        let _ = start.as_ptr().expose_provenance();
        self.window_span = Some((start, len));
        self.spans += 1;
        self.span_bytes += len;
        if self.engine() == Engine::Tlsf {
            // SAFETY: the span is ours, aligned, and at least MIN_SPAN long.
            unsafe { self.tlsf.add_span(start, len) };
        } else if self.engine() == Engine::FirstFit {
            // SAFETY: as above.
            unsafe { self.first_fit.init(start.as_ptr(), len) };
        }
        true
    }

    /// Whether layer +2 takes its arenas from this layer (a committed
    /// source, held whole) rather than from the page source. Fixed on first
    /// use.
    ///
    /// # Safety
    ///
    /// `source` must be the page source this allocator has taken every span
    /// from: the same one on every call since [`new`](Self::new).
    pub unsafe fn serves_arenas(&mut self, source: &mut impl PageSource) -> bool {
        self.prepare(source);
        self.whole
    }

    /// Allocates a block for `layout`, taking a span from `source` when
    /// needed.
    ///
    /// # Safety
    ///
    /// `source` must be the page source this allocator has taken every span
    /// from: the same one on every call since [`new`](Self::new).
    #[inline]
    pub unsafe fn allocate(
        &mut self,
        layout: Layout,
        source: &mut impl PageSource,
    ) -> Result<NonNull<u8>, AllocateError> {
        // `large` is 0 unless TLSF serves: one test for the engine and the
        // large-block path.
        if tlsf::ON
            && layout.size() < self.large
            && let Some(p) = self.tlsf.allocate(layout.size(), layout.align())
        {
            return Ok(p);
        }
        self.allocate_slow(layout, source)
    }

    /// Whether this layer holds its source's whole window and has fewer
    /// than `bytes` free in it.
    pub(crate) fn holds_less_than(&self, bytes: usize) -> bool {
        let free =
            if self.engine() == Engine::FirstFit { self.first_fit.free() } else { self.tlsf.free_bytes() };
        self.whole && free < bytes
    }

    /// What this layer keeps of every arena it gives layer +2: TLSF keeps
    /// [`ARENA_TAIL`] bytes for the boundary tag of the chunk after it;
    /// first fit keeps nothing (a tail left free would be a hole in which
    /// layer 0 places blocks that lie in the arena's slot, which layer +2
    /// then takes for its own), so its arenas are whole.
    pub(crate) fn arena_tail(&self) -> usize {
        if self.engine() == Engine::FirstFit { 0 } else { ARENA_TAIL }
    }

    /// Allocates a long-lived block (an arena of layer +2) for `layout`: as
    /// [`allocate`](Self::allocate), but as high as it fits in the chunk
    /// TLSF chooses, so that the space below stays one free chunk for
    /// blocks to be placed in and grow into.
    ///
    /// # Safety
    ///
    /// As for [`allocate`](Self::allocate).
    pub(crate) unsafe fn allocate_high(
        &mut self,
        layout: Layout,
        source: &mut impl PageSource,
    ) -> Result<NonNull<u8>, AllocateError> {
        if self.engine() == Engine::Tlsf
            && self.whole
            && let Some(p) = self.tlsf.allocate_high(layout.size(), layout.align())
        {
            return Ok(p);
        }
        // SAFETY: the caller's promise.
        unsafe { self.allocate(layout, source) }
    }

    #[cold]
    #[inline(never)]
    fn allocate_slow(
        &mut self,
        layout: Layout,
        source: &mut impl PageSource,
    ) -> Result<NonNull<u8>, AllocateError> {
        self.prepare(source);
        let oom = |source| AllocateError::OutOfMemory { layout, source };
        let exhausted = oom(PagesError::Exhausted { size: layout.size(), align: layout.align() });
        match self.engine() {
            Engine::Unset => Err(exhausted),
            Engine::FirstFit => {
                if self.window_span.is_none() && !self.take_window(source) {
                    return Err(exhausted);
                }
                self.first_fit.allocate_first_fit(layout).map_err(|()| exhausted)
            }
            Engine::Tlsf => {
                if layout.size() >= self.large && layout.align() <= GRANULE {
                    let span = self.take_span(layout, 0, source).map_err(oom)?;
                    // SAFETY: a fresh span, one free chunk big enough.
                    return Ok(unsafe { self.tlsf.allocate_whole_span(span) });
                }
                if let Some(p) = self.tlsf.allocate(layout.size(), layout.align()) {
                    return Ok(p);
                }
                if self.whole {
                    if self.window_span.is_some() || !self.take_window(source) {
                        return Err(exhausted);
                    }
                } else {
                    self.take_span(layout, self.config.span_min, source).map_err(oom)?;
                }
                self.tlsf.allocate(layout.size(), layout.align()).ok_or(exhausted)
            }
        }
    }

    /// Takes a span from a page-mapping source big enough for `layout`, and
    /// of at least `min` bytes if the source has them: whole granules of the
    /// source, starting on a slot boundary.
    fn take_span(
        &mut self,
        layout: Layout,
        min: usize,
        source: &mut impl PageSource,
    ) -> Result<NonNull<u8>, PagesError> {
        let granule = source.granularity().max(GRANULE);
        let align = self.map.slot_size().max(granule);
        let invalid = PagesError::InvalidRequest { size: layout.size(), align: layout.align() };
        let pad = if layout.align() > GRANULE { layout.align() + MIN_CHUNK } else { 0 };
        let need = tlsf::chunk_size(layout.size())
            .and_then(|c| c.checked_add(pad + SPAN_OVERHEAD))
            .and_then(|n| n.max(MIN_SPAN).checked_next_multiple_of(granule))
            .ok_or(invalid)?;
        let want = need.max(min.next_multiple_of(granule));
        let first = if want > need { source.allocate_pages(want, align).ok() } else { None };
        let (start, len) = match first {
            Some(p) => (p, want),
            None => (self.allocate_pages_retrying(need, align, source)?, need),
        };
        let addr = start.as_ptr() as usize;
        if !self.fits_map(addr, len) {
            // SAFETY: just allocated from `source` with this size.
            unsafe { source.deallocate_pages(start, len) };
            return Err(PagesError::Exhausted { size: len, align });
        }
        // SAFETY: the span is ours, slot-aligned (so GRANULE-aligned), a
        // multiple of GRANULE, and at least MIN_SPAN long.
        unsafe { self.tlsf.add_span(start, len) };
        // The map reads the span's length through its address.
        let _ = start.as_ptr().expose_provenance();
        self.map.set(addr, len, true);
        self.spans += 1;
        self.span_bytes += len;
        Ok(start)
    }

    /// `allocate_pages`, after giving the spare back if the first try fails
    /// (the source may then have a longer run).
    fn allocate_pages_retrying(
        &mut self,
        len: usize,
        align: usize,
        source: &mut impl PageSource,
    ) -> Result<NonNull<u8>, PagesError> {
        match source.allocate_pages(len, align) {
            Ok(p) => Ok(p),
            Err(e) => {
                // SAFETY: `source` is the one of the public caller's
                // contract (every private path takes it from there).
                if unsafe { self.release_spare(source) } { source.allocate_pages(len, align) } else { Err(e) }
            }
        }
    }

    /// Whether a span at `[addr, addr + len)` lies in the window, starting
    /// on a slot boundary (as the ownership map needs).
    fn fits_map(&self, addr: usize, len: usize) -> bool {
        addr >= self.map.lo
            && addr.checked_add(len).is_some_and(|end| end <= self.map.lo + self.map.len)
            && addr.is_multiple_of(self.map.slot_size())
    }

    /// Allocates a block for `layout` that is expected to keep growing by
    /// realloc (a buffer being doubled): at the start of the largest free
    /// chunk, so that the next growths happen in place.
    ///
    /// # Safety
    ///
    /// `source` must be the page source this allocator has taken every span
    /// from: the same one on every call since [`new`](Self::new).
    pub unsafe fn allocate_growable(
        &mut self,
        layout: Layout,
        source: &mut impl PageSource,
    ) -> Result<NonNull<u8>, AllocateError> {
        if self.engine() == Engine::Tlsf
            && let Some(p) = self.tlsf.allocate_largest(layout.size(), layout.align())
        {
            return Ok(p);
        }
        // SAFETY: the caller's promise about `source`.
        unsafe { self.allocate(layout, source) }
    }

    /// The committed window's span, as `(start, len)`, while the TLSF
    /// engine holds it: where [`window_block`] may look without the lock.
    #[cfg(feature = "caches")]
    #[cfg_attr(feature = "debug", allow(dead_code))]
    #[inline]
    pub(crate) fn committed_window(&self) -> Option<(usize, usize)> {
        self.window_span.filter(|_| self.engine() == Engine::Tlsf).map(|(s, len)| (s.as_ptr() as usize, len))
    }

    /// Where the spans of a page-mapping source lie, for the thread
    /// caches' lock-free copy (`None` for a committed window, whose span
    /// [`committed_window`](Self::committed_window) gives).
    #[cfg(feature = "caches")]
    #[cfg_attr(feature = "debug", allow(dead_code))]
    #[inline]
    pub(crate) fn span_slots(&self) -> Option<SpanSlots<'_>> {
        (!self.whole && self.engine() == Engine::Tlsf).then_some(SpanSlots {
            lo: self.map.lo,
            base: self.map.base,
            shift: self.map.shift,
            starts: &self.map.start,
            // Moves whenever a span comes (`spans` up) or goes (`spans`
            // down, `released` up).
            changes: self.spans + 2 * self.released,
        })
    }

    /// Whether `ptr` lies in a span of this allocator. O(1): bounds and a
    /// bitmap; a pointer in the last, partial slot of a span also reads that
    /// span's length.
    #[inline]
    pub fn owns(&self, ptr: *const u8) -> bool {
        self.owns_addr(ptr as usize)
    }

    #[inline]
    fn owns_addr(&self, addr: usize) -> bool {
        if addr.wrapping_sub(self.map.lo) >= self.map.len {
            return false;
        }
        match self.window_span {
            Some((start, len)) => addr.wrapping_sub(start.as_ptr() as usize) < len,
            None => !self.whole && self.engine() == Engine::Tlsf && self.map.owns(addr),
        }
    }

    /// Checks that `ptr` is a TLSF block in use that fits `layout`,
    /// returning its chunk size: the O(1) refusal of bad frees. A block fits
    /// when its chunk is what `layout` needs, plus less than [`slack`] (a
    /// rest too small to split off, or a thread cache's spacing), or when it
    /// fills a span of its own.
    #[inline(always)]
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
    #[inline(always)]
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
            if let Some(span) = unsafe { self.tlsf.free(ptr) } {
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
        if self.engine() == Engine::FirstFit && self.owns_addr(ptr.as_ptr() as usize) {
            // SAFETY: the caller's promise: a live block of this heap.
            unsafe { self.first_fit.deallocate(ptr, layout) };
            return Ok(());
        }
        Err(DeallocateError::NotOwned { ptr: ptr.as_ptr() as usize })
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
    fn release_span(&mut self, span: NonNull<u8>, source: &mut impl PageSource) {
        // SAFETY: the caller passes a live, wholly free span.
        let len = unsafe { self.tlsf.remove_span(span) };
        if self.spare == Some(span) {
            self.spare = None;
        }
        if self.window_span.is_some_and(|(s, _)| s == span) {
            self.window_span = None;
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
    #[inline(always)]
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
    #[inline(always)]
    pub unsafe fn grow_backward(
        &mut self,
        ptr: NonNull<u8>,
        layout: Layout,
        new_size: usize,
        keep: usize,
    ) -> Option<NonNull<u8>> {
        let ptr = reach(ptr);
        if self.engine() != Engine::Tlsf || layout.align() > GRANULE {
            return None;
        }
        // SAFETY: the caller's promise: a checked block in use.
        unsafe { self.tlsf.grow_backward(ptr, new_size, keep) }
    }

    /// Gives every wholly free span back: the spare, or a committed
    /// source's whole window. Returns how many.
    ///
    /// # Safety
    ///
    /// `source` must be the page source this allocator has taken every span
    /// from: the same one on every call since [`new`](Self::new).
    pub unsafe fn trim(&mut self, source: &mut impl PageSource) -> usize {
        match self.engine() {
            Engine::FirstFit => match self.window_span {
                Some((start, len)) if self.first_fit.used() == 0 => {
                    self.first_fit = linked_list_allocator::Heap::empty();
                    self.window_span = None;
                    self.spans -= 1;
                    self.span_bytes -= len;
                    self.released += 1;
                    // SAFETY: the window's span came from `source` with this
                    // length, and no block in it is live.
                    unsafe { source.deallocate_pages(start, len) };
                    1
                }
                _ => 0,
            },
            Engine::Tlsf => {
                let released = match self.window_span {
                    // SAFETY: the window's span is a live span of the engine.
                    Some((start, _)) if unsafe { self.tlsf.span_is_free(start) } => {
                        self.release_span(start, source);
                        1
                    }
                    Some(_) => 0,
                    // SAFETY: the caller's promise about `source`.
                    None => usize::from(unsafe { self.release_spare(source) }),
                };
                // What stays: the pages inside free chunks go back too, where
                // the source takes them (`malloc_trim`).
                if source.discard_from() != usize::MAX {
                    self.tlsf.each_free_chunk(|c, size| {
                        if size >= 2 * PAGE_SIZE {
                            // SAFETY: a free chunk of a live span of `source`;
                            // its payload starts two words in.
                            unsafe { discard_inside(NonNull::new_unchecked(c.add(2 * WORD)), size, source) };
                        }
                    });
                }
                released
            }
            Engine::Unset => 0,
        }
    }

    /// Current counters.
    pub fn stats(&self) -> SegmentStats {
        match self.engine() {
            Engine::FirstFit => SegmentStats {
                first_fit: true,
                spans: self.spans,
                span_bytes: self.span_bytes,
                allocated_bytes: self.first_fit.used(),
                free_bytes: self.first_fit.free(),
                free_chunks: 0,
                largest_free: 0,
                spans_released: self.released,
            },
            _ => SegmentStats {
                first_fit: false,
                spans: self.spans,
                span_bytes: self.span_bytes,
                allocated_bytes: self.span_bytes - self.spans * SPAN_OVERHEAD - self.tlsf.free_bytes(),
                free_bytes: self.tlsf.free_bytes(),
                free_chunks: self.tlsf.free_chunks(),
                largest_free: self.tlsf.largest_free().saturating_sub(WORD),
                spans_released: self.released,
            },
        }
    }

    /// Walks every span, checking the engine's invariants and the map,
    /// panicking on a broken one. O(chunks): for tests and debug builds.
    pub fn check_invariants(&self) {
        if self.engine() != Engine::Tlsf {
            assert!(self.spans <= 1, "first fit holds at most the window");
            return;
        }
        let (mut spans, mut bytes, mut free_bytes, mut free_chunks, mut wholly_free) = (0, 0, 0, 0, 0);
        let mut last_end = 0;
        let window = self.window_span.map(|(s, _)| s);
        let mapped = self.map.span_starts().map(|a| NonNull::new(core::ptr::with_exposed_provenance_mut(a)));
        for ptr in window.into_iter().map(Some).chain(mapped) {
            let ptr = ptr.expect("spans are not at address 0");
            let start = ptr.as_ptr() as usize;
            let len = self.span_len(ptr);
            // SAFETY: a live span.
            assert_eq!(unsafe { Tlsf::span_len(ptr) }, len, "span {start:#x}: recorded length");
            assert!(start >= last_end, "spans overlap");
            last_end = start + len;
            for a in (start..start + len).step_by(GRANULE.max(len / 64)).chain([start + len - 1]) {
                assert!(self.owns_addr(a), "span byte {a:#x} not owned");
            }
            if !(start + len).is_multiple_of(self.map.slot_size()) {
                // Mid-slot: no other span can start there.
                assert!(!self.owns_addr(start + len), "the byte past span {start:#x} is owned");
            }
            // SAFETY: a live span of the engine, `len` bytes long.
            let counts = unsafe { self.tlsf.check_span(ptr, len) };
            if counts.used_blocks == 0 {
                wholly_free += 1;
            }
            spans += 1;
            bytes += len;
            free_bytes += counts.free_bytes;
            free_chunks += counts.free_chunks;
        }
        assert_eq!((spans, bytes), (self.spans, self.span_bytes), "span counters");
        let listed = self.tlsf.check_lists(|c| self.owns_addr(c as usize));
        assert_eq!(
            (free_bytes, free_chunks),
            (self.tlsf.free_bytes(), listed),
            "free chunks in the spans vs on the lists"
        );
        if !self.whole {
            assert!(wholly_free <= 1, "{wholly_free} wholly free spans kept");
        }
    }

    /// The length of the span at `start`, from a walk of its chunks.
    fn span_len(&self, start: NonNull<u8>) -> usize {
        let mut c = start.as_ptr();
        loop {
            // SAFETY: `c` is a chunk of a live span (the walk stops at the
            // sentinel, whose size is 0).
            let size = unsafe { c.add(WORD).cast::<usize>().read() } & !(GRANULE - 1);
            if size == 0 {
                return c as usize + 2 * WORD - start.as_ptr() as usize;
            }
            // SAFETY: as above.
            c = unsafe { c.add(size) };
        }
    }
}

/// Requests of up to this many bytes may be served a chunk up to a quarter
/// larger than they need, and freed with their own layout: the spacing of
/// the thread caches' medium bins.
pub const MEDIUM_MAX: usize = 4096;

/// How much larger than `need` (a [`chunk_size`]) a block's chunk may be
/// and still fit the layout it is freed with: less than the smallest chunk
/// (a rest too small to split off), or, up to [`MEDIUM_MAX`], a quarter of
/// the need (a thread cache serves a request from a bin of chunks up to two
/// eighth-of-a-power-of-two steps larger).
#[inline(always)]
pub(crate) const fn slack(need: usize) -> usize {
    if need <= MEDIUM_MAX + GRANULE && need / 4 > MIN_CHUNK { need / 4 } else { MIN_CHUNK }
}

/// What [`window_block`] found at a pointer.
pub(crate) enum WindowBlock {
    /// A block in use whose chunk (this many bytes) fits the layout.
    Fits(usize),
    /// Not in the window at all.
    Outside,
    /// A chunk in use that is no tight fit for the layout: a whole span's
    /// block, a size mismatch, or (if not `in_span`) no block at all.
    Loose { chunk: usize, first: bool, in_span: bool },
    /// Not a block in use.
    Refused,
}

/// Whether `ptr` is a TLSF block in use, in the committed window's span
/// `window` (`(start, len)`), that fits `layout` with at most [`slack`]
/// to spare. Reads only chunk header words, which are read and written
/// atomically, so that threads can run this check without the heap's lock
/// (the thread caches do) as long as the block, if it is one, is theirs.
///
/// # Safety
///
/// `window` must be the span of a committed window, readable for as long
/// as the call runs.
#[inline(always)]
pub(crate) unsafe fn window_block(window: (usize, usize), ptr: NonNull<u8>, layout: Layout) -> WindowBlock {
    let (start, len) = window;
    let addr = ptr.as_ptr() as usize;
    let off = addr.wrapping_sub(start);
    if off >= len {
        return WindowBlock::Outside;
    }
    // What the layout needs, known before any memory is read.
    let need = tlsf::chunk_size(layout.size()).unwrap_or(usize::MAX);
    // A payload is GRANULE-aligned, after its chunk's two words, and the
    // chunk (at least `need` bytes) ends where the span's sentinel starts
    // at the latest: `chunk <= len - off`, the next chunk's header (at
    // `addr + chunk - WORD`) then lying in the span.
    let room = len - off;
    if off < 2 * WORD || !addr.is_multiple_of(GRANULE) || need > room {
        return WindowBlock::Refused;
    }
    // SAFETY: `ptr` is aligned and its header word lies in the span.
    let Ok((chunk, first)) = (unsafe { Tlsf::in_use_chunk(ptr) }) else { return WindowBlock::Refused };
    if chunk.wrapping_sub(need) >= slack(need) || chunk > room {
        return WindowBlock::Loose { chunk, first, in_span: chunk <= room };
    }
    // SAFETY: the next header lies in the span (`chunk <= room`).
    if !unsafe { Tlsf::next_head(ptr, chunk) }.0 {
        return WindowBlock::Refused;
    }
    WindowBlock::Fits(chunk)
}

/// The chunk of the TLSF block in use at `ptr`, in the committed window's
/// span `window`, found without a layout: [`window_block`]'s checks but
/// the fit. `None` if `ptr` is no block in use there.
///
/// # Safety
///
/// As [`window_block`].
#[cfg(feature = "caches")]
pub(crate) unsafe fn window_chunk(window: (usize, usize), ptr: NonNull<u8>) -> Option<usize> {
    let (start, len) = window;
    let addr = ptr.as_ptr() as usize;
    let off = addr.wrapping_sub(start);
    if off >= len || off < 2 * WORD || !addr.is_multiple_of(GRANULE) {
        return None;
    }
    // SAFETY: `ptr` is aligned and its header word lies in the span.
    let (chunk, _) = unsafe { Tlsf::in_use_chunk(ptr) }.ok()?;
    // The next chunk's header, at `addr + chunk - WORD`, lies in the span.
    if chunk < MIN_CHUNK || chunk > len - off {
        return None;
    }
    // SAFETY: as just checked.
    unsafe { Tlsf::next_head(ptr, chunk) }.0.then_some(chunk)
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
unsafe fn discard_inside(ptr: NonNull<u8>, chunk: usize, source: &mut impl PageSource) {
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

/// The size `linked_list_allocator` really reserves for `layout`.
fn first_fit_size(layout: Layout) -> usize {
    linked_list_allocator::hole::HoleList::align_layout(layout).map_or(layout.size(), |l| l.size())
}
