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
//! **Heaps under 16 MiB.** Under [`FIRST_FIT_LIMIT`] a committed window is
//! served by first fit by address instead, with no header on blocks in use:
//! a header word and TLSF's 16-byte rounding cost 3 to 4 points of fill on
//! such heaps (*Fill sweep* in `docs/PERFORMANCE.md`), which first fit does
//! not pay. `segment/fit_tree.rs` keeps the free blocks in a tree by
//! address (O(log holes) per call, double frees refused); a build without
//! the `tlsf` feature uses `linked_list_allocator`'s list (O(holes) per call,
//! the smallest code, and blocks of 8 bytes on 32-bit targets).
//!
//! **Ownership.** One bit per slot of the window says whether a span covers
//! it, so `SegmentAllocator::owns` is O(1) and reads no memory. A free is
//! refused with a typed [`DeallocateError`] when no span holds the pointer,
//! when the block is not in use (a double free whose memory has not been
//! reused), or when its size does not fit the layout given; in the TLSF
//! engine those checks are O(1) reads of the block's header and its
//! neighbour's. Blocks of first fit carry no header to check: the tree
//! refuses a free that overlaps a free block (a double free, while the
//! memory is free), in O(log holes), but cannot see a wrong size that
//! overlaps none.
//!
//! **Invariants:** spans are disjoint, each covering whole slots (the
//! window's span excepted) and marked in the map exactly; at most one span is
//! wholly free in the page-mapping case; every chunk invariant of the TLSF engine
//! holds in every span.
//!
//! **Files.** Taking spans and allocating are here; `free` holds the O(1)
//! checks of a free or resize, the frees and resizes, and spans going back;
//! `tlsf` the chunk engine, `fit_tree` first fit by address for heaps under
//! 16 MiB, `span_map` the ownership map, `window` the
//! checks the thread caches make without the lock, `config` and `error`
//! the tunables and the refusals.

mod config;
mod error;
mod fit_tree;
mod free;
mod quick;
mod span_map;
mod tlsf;
mod window;

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

use crate::source::{PAGE_SIZE, PageSource, PagesError};
use fit_tree::FitTree;
pub(crate) use tlsf::GRANULE as CHUNK_GRANULE;
#[cfg(any(feature = "caches", not(feature = "debug")))]
pub(crate) use tlsf::WORD as CHUNK_WORD;
#[cfg(feature = "caches")]
pub(crate) use tlsf::chunk_size;
use tlsf::{GRANULE, MIN_CHUNK, MIN_SPAN, SPAN_OVERHEAD, Tlsf, WORD};

pub use config::{Config, ConfigError};
pub use error::{AllocateError, DeallocateError};
use free::discard_inside;
use span_map::SpanMap;
#[cfg(feature = "caches")]
pub(crate) use span_map::{SpanSlots, span_len_at};
pub use window::MEDIUM_MAX;
pub(crate) use window::payloads;
#[cfg(feature = "caches")]
pub(crate) use window::window_chunk;
pub(crate) use window::{WindowBlock, slack, window_block};

/// Committed windows smaller than this are served by first fit over the
/// whole window (where the pools of layer +2 are off too): the fill sweep's
/// mid-size heaps (1 to 4 MiB) are 2 to 4 points fuller than with TLSF.
pub const FIRST_FIT_LIMIT: usize = 16 << 20;

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

/// Counters of layer 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentStats {
    /// Whether first fit serves this heap (else TLSF).
    pub first_fit: bool,
    /// Spans held.
    pub spans: usize,
    /// Bytes of spans held.
    pub span_bytes: usize,
    /// Bytes in blocks in use (chunk sizes, headers included; arenas lent to
    /// layer +2 included).
    pub allocated_bytes: usize,
    /// Bytes in free chunks (TLSF: deferred ones among them, which wait
    /// unmerged for reuse).
    pub free_bytes: usize,
    /// Free chunks, deferred ones among them (0 for
    /// `linked_list_allocator`'s first fit, which does not count them).
    pub free_chunks: usize,
    /// The most bytes one more block aligned to at most 8 could get (TLSF:
    /// the largest free chunk less its header word; first fit: the largest
    /// free block; 0 for `linked_list_allocator`, which does not tell), as
    /// the free chunks stand: TLSF keeps a few freed chunks of up to
    /// 16 KiB whole for reuse, apart from their free neighbours, until a
    /// request that the lists cannot serve (or a `trim`) merges them, so
    /// after frees a request may get more than this says.
    pub largest_free: usize,
    /// Spans given back to the page source so far.
    pub spans_released: usize,
}

/// Which engine serves the spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    /// Not decided yet: no memory has been taken.
    Unset,
    /// `linked_list_allocator` over the whole window (builds without the
    /// `tlsf` feature).
    FirstFit,
    /// First fit by address over the whole window, free blocks in a tree.
    Tree,
    /// TLSF over spans.
    Tlsf,
}

/// Layer 0: one allocator over every span it holds.
///
/// The layer's engine, public for the layer tests and benchmarks and hidden
/// from the API: programs use it through [`Heap`](crate::Heap).
#[doc(hidden)]
pub struct SegmentAllocator {
    tlsf: Tlsf,
    tree: FitTree,
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
    /// While TLSF serves the window's span whole, the payloads of that
    /// span (`window::payloads`); else `(0, 0)`. Where the quick calls look
    /// for a block (`segment/quick.rs`).
    quick_window: (usize, usize),
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
        tree: FitTree::new(),
        first_fit: linked_list_allocator::Heap::empty(),
        engine: Engine::Unset,
        whole: false,
        map: SpanMap::EMPTY,
        config: Config { first_fit: false, span_min: 0, large_threshold: 0 },
        window_span: None,
        quick_window: (0, 0),
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
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn engine(&self) -> Engine {
        match self.engine {
            Engine::Tlsf | Engine::Tree if !tlsf::ON => Engine::Unset,
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
        self.engine = match (self.config.first_fit, tlsf::ON) {
            (_, false) => Engine::FirstFit,
            (true, true) if self.map.len <= fit_tree::MAX_WINDOW => Engine::Tree,
            (true, true) => Engine::FirstFit,
            (false, true) => Engine::Tlsf,
        };
        self.whole = S::COMMITTED;
        if self.whole && self.take_window(source) {
            if self.engine == Engine::Tlsf {
                // The window held for good: no free needs to see a span
                // fall wholly free, so frees may defer. (Not before the
                // window is taken: where it cannot be, spans go back, and
                // a deferred free would never see its span empty.)
                self.tlsf.defer_frees();
            }
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

    /// Takes the whole window of a committed source as one span — up to
    /// `isize::MAX` bytes, the most one object may span in Rust (2 GiB on
    /// 32-bit targets, where a larger window's rest stays unused: taken
    /// as spans of its own, it would leave about half of the window in
    /// the gaps between them).
    fn take_window(&mut self, source: &mut impl PageSource) -> bool {
        let granule = source.granularity().max(GRANULE);
        let len = self.map.len.min(isize::MAX as usize) & !(granule - 1);
        let min = if self.engine() == Engine::Tree { fit_tree::MIN_BLOCK } else { MIN_SPAN };
        if len < min || !self.map.lo.is_multiple_of(granule) {
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
        self.set_window_span(Some((start, len)));
        self.spans += 1;
        self.span_bytes += len;
        if self.engine() == Engine::Tlsf {
            // SAFETY: the span is ours, aligned, and at least MIN_SPAN long.
            unsafe { self.tlsf.add_span(start, len) };
        } else if self.engine() == Engine::Tree {
            // SAFETY: as above (GRANULE is a multiple of the tree's unit).
            unsafe { self.tree.init(start, len) };
        } else if self.engine() == Engine::FirstFit {
            // SAFETY: as above.
            unsafe { self.first_fit.init(start.as_ptr(), len) };
        }
        true
    }

    /// Holds (or, `None`, no longer holds) the window's span.
    fn set_window_span(&mut self, span: Option<(NonNull<u8>, usize)>) {
        self.window_span = span;
        self.quick_window = match span {
            Some((start, len)) if self.engine() == Engine::Tlsf => payloads((start.as_ptr() as usize, len)),
            _ => (0, 0),
        };
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
        let free = match self.engine() {
            Engine::FirstFit => self.first_fit.free(),
            Engine::Tree => self.tree.free_bytes(),
            _ => self.tlsf.free_bytes(),
        };
        self.whole && free < bytes
    }

    /// What this layer keeps of every arena it gives layer +2: TLSF keeps
    /// [`ARENA_TAIL`] bytes for the boundary tag of the chunk after it;
    /// first fit keeps nothing (a tail left free would be a hole in which
    /// layer 0 places blocks that lie in the arena's slot, which layer +2
    /// then takes for its own), so its arenas are whole.
    pub(crate) fn arena_tail(&self) -> usize {
        if matches!(self.engine(), Engine::FirstFit | Engine::Tree) { 0 } else { ARENA_TAIL }
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
            Engine::Tree => {
                if self.window_span.is_none() && !self.take_window(source) {
                    return Err(exhausted);
                }
                self.tree.allocate(layout).ok_or(exhausted)
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
        if self.engine() == Engine::Tree
            && self.window_span.is_some()
            && let Some(p) = self.tree.allocate_largest(layout)
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

    /// Gives every wholly free span back: the spare, or a committed
    /// source's whole window. Returns how many.
    ///
    /// # Safety
    ///
    /// `source` must be the page source this allocator has taken every span
    /// from: the same one on every call since [`new`](Self::new).
    pub unsafe fn trim(&mut self, source: &mut impl PageSource) -> usize {
        match self.engine() {
            Engine::FirstFit | Engine::Tree => match self.window_span {
                Some((start, len)) if self.stats().allocated_bytes == 0 => {
                    self.first_fit = linked_list_allocator::Heap::empty();
                    self.tree = FitTree::new();
                    self.set_window_span(None);
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
                self.tlsf.flush_deferred();
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
            Engine::Tree => SegmentStats {
                first_fit: true,
                spans: self.spans,
                span_bytes: self.span_bytes,
                // A tree of no window (before it is taken, after a trim)
                // counts nothing.
                allocated_bytes: self.tree.used_bytes(),
                free_bytes: self.tree.free_bytes(),
                free_chunks: self.tree.holes(),
                largest_free: self.tree.largest_free(),
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
            if self.engine() == Engine::Tree {
                self.tree.check();
            }
            return;
        }
        let (mut spans, mut bytes, mut free_bytes, mut free_chunks, mut wholly_free) = (0, 0, 0, 0, 0);
        let (mut deferred_bytes, mut deferred_chunks) = (0, 0);
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
            deferred_bytes += counts.deferred_bytes;
            deferred_chunks += counts.deferred_chunks;
        }
        let (_, deferred) = self.tlsf.check_deferred(|c| self.owns_addr(c as usize));
        assert_eq!((spans, bytes), (self.spans, self.span_bytes), "span counters");
        let listed = self.tlsf.check_lists(|c| self.owns_addr(c as usize));
        assert_eq!(
            (free_bytes, free_chunks, deferred_bytes, deferred_chunks),
            (
                self.tlsf.free_bytes() - self.tlsf.deferred_bytes(),
                listed,
                self.tlsf.deferred_bytes(),
                deferred
            ),
            "free and deferred chunks in the spans vs on the lists"
        );
        if !self.whole {
            assert!(wholly_free <= 1, "{wholly_free} wholly free spans kept");
        }
    }

    /// The depth of the first-fit tree (nodes on its longest path), from
    /// a walk of it, or `None` when the tree does not serve: for tests of
    /// its balance. O(holes).
    pub fn first_fit_depth(&self) -> Option<usize> {
        (self.engine() == Engine::Tree && self.spans == 1).then(|| self.tree.check().depth)
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

/// The size `linked_list_allocator` really reserves for `layout`.
fn first_fit_size(layout: Layout) -> usize {
    linked_list_allocator::hole::HoleList::align_layout(layout).map_or(layout.size(), |l| l.size())
}
