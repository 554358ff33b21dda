//! # Layer 0: the segment allocator (the "malloc" of the stack)
//!
//! **Takes from below:** whole pages from a [`PageSource`].
//!
//! **Gives above:** blocks of any size and alignment, for the requests layer
//! +2 does not serve (larger than 512 bytes, aligned above 16, or when it has
//! no arena to offer).
//!
//! ```text
//!   segments (sorted)                           large mappings (sorted)
//!   ┌──────────────┐ ┌────────┐ ┌──────┐       ┌─────────────────────┐
//!   │ LLA heap     │ │LLA heap│ │ LLA  │  …    │ own pages, ≥ 128 KiB│ …
//!   └──────────────┘ └────────┘ └──────┘       └─────────────────────┘
//! ```
//!
//! Ordinary requests are served first-fit by a `linked_list_allocator::Heap`
//! per *segment*. When no segment can serve one, the allocator asks the page
//! source for a new segment (at least [`Config::segment_min`] bytes); a new
//! segment that lands right after an existing one extends it instead. A
//! segment left empty is given back to the source, except one spare kept
//! against thrashing. Requests of at least [`Config::large_threshold`] bytes
//! (malloc's mmap threshold) get pages of their own, given back on free.
//!
//! **Bins.** In front of the first-fit heaps sit bounded LIFO bins for
//! blocks of up to [`BIN_MAX`] bytes aligned to at most 16, in steps of
//! [`BIN_GRANULE`] up to 4 KiB, 256 bytes up to 32 KiB and 2 KiB up to the
//! large threshold (glibc's tcache does the same in front of its bins): such a
//! request is rounded up to its bin's size, a freed block goes onto its bin
//! (at most [`BIN_DEPTH`] deep, and at most [`Config::bin_budget`] bytes in
//! all bins) and is reused in O(1). When the heaps and the
//! page source are exhausted, the bins are flushed back and the request
//! retried, so binned blocks never cause a failure.
//!
//! **Invariants:** segments are disjoint and sorted; each segment's heap
//! covers exactly its pages; at most one segment is empty; every large
//! mapping is in the large table. A pointer that is in no segment and no
//! large mapping is refused with [`DeallocateError::NotOwned`] — this layer
//! never hands `linked_list_allocator` a block it does not own.
//!
//! **Costs:** allocation tries the segment that served last, then the others
//! (at most `SEGMENTS`), each a first-fit walk of its holes; free finds
//! its segment by binary search, then walks that segment's hole list.

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

use linked_list_allocator::Heap;

use crate::source::{PAGE_SIZE, PageSource, PagesError};
use crate::sync::stat;

/// Default for the most segments the allocator keeps at once (the
/// `SEGMENTS` parameter).
pub const MAX_SEGMENTS: usize = 32;
/// Default for the most large mappings tracked at once (the `LARGE`
/// parameter); past that, large requests are served from segments.
pub const MAX_LARGE: usize = 64;

/// Largest request kept in a bin.
pub const BIN_MAX: usize = 128 << 10;
/// Size step between bins.
pub const BIN_GRANULE: usize = 16;
/// Number of bins.
pub const BINS: usize = 256 + 112 + 48;

/// The bin of a `size`-byte request (`1..=BIN_MAX`): 16-byte steps to 4 KiB,
/// 256-byte steps to 32 KiB, 2 KiB steps to 128 KiB (rounding costs at most
/// 1/16 of a block, 1/64 on average).
#[inline]
const fn bin_index(size: usize) -> usize {
    if size <= 4096 {
        (size.saturating_sub(1)) / 16
    } else if size <= 32 << 10 {
        256 + (size - 4097) / 256
    } else {
        368 + (size - (32 << 10) - 1) / 2048
    }
}

/// The block size of bin `bin`.
#[inline]
const fn bin_size(bin: usize) -> usize {
    if bin < 256 {
        (bin + 1) * 16
    } else if bin < 368 {
        4096 + (bin - 255) * 256
    } else {
        (32 << 10) + (bin - 367) * 2048
    }
}

const _: () = {
    let mut size = 1;
    while size <= BIN_MAX {
        let bin = bin_index(size);
        assert!(bin < BINS && bin_size(bin) >= size && (bin == 0 || bin_size(bin - 1) < size));
        size += 7;
    }
};
/// Most blocks kept in one bin.
pub const BIN_DEPTH: u32 = 16;

#[derive(Clone, Copy)]
struct Bin {
    head: *mut u8,
    len: u32,
}

/// Tunables of layer 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Smallest segment asked from the page source.
    pub segment_min: usize,
    /// Requests this large or larger get pages of their own.
    pub large_threshold: usize,
    /// Most bytes kept in bins.
    pub bin_budget: usize,
    /// Whether layer +2 takes its arenas from this layer instead of from the
    /// page source (on small heaps, so no page is split between the two).
    pub arenas_in_segments: bool,
}

impl Config {
    /// Tunables for a page source whose window is `window_len` bytes.
    ///
    /// From 1 MiB up: segments of 1/16 of the window (at most 1 MiB), a large
    /// threshold of 128 KiB (glibc's default mmap threshold), bins of 1/64 of
    /// the window (at most 8 MiB), arenas straight from the page source.
    ///
    /// Under 1 MiB (firmware heaps), pages are too coarse to share out: the
    /// first segment takes the whole window, there are no large mappings, and
    /// layer +2 takes its arenas from this layer, like CPython taking arenas
    /// from `malloc` where it has no `mmap`.
    pub const fn for_window(window_len: usize) -> Self {
        if window_len < 1 << 20 {
            return Self {
                segment_min: window_len,
                large_threshold: usize::MAX,
                bin_budget: 0,
                arenas_in_segments: true,
            };
        }
        let mut segment_min = (window_len / 16) & !(PAGE_SIZE - 1);
        if segment_min < PAGE_SIZE {
            segment_min = PAGE_SIZE;
        }
        if segment_min > 1 << 20 {
            segment_min = 1 << 20;
        }
        let mut large_threshold = window_len / 8;
        if large_threshold > 128 << 10 {
            large_threshold = 128 << 10;
        }
        if large_threshold < PAGE_SIZE {
            large_threshold = PAGE_SIZE;
        }
        // Bins may hold 1/16 of the window, between 1 KiB and 8 MiB.
        let mut bin_budget = window_len / 16;
        if bin_budget < 1024 {
            bin_budget = 1024;
        }
        if bin_budget > 8 << 20 {
            bin_budget = 8 << 20;
        }
        Self { segment_min, large_threshold, bin_budget, arenas_in_segments: false }
    }
}

/// Why layer 0 could not allocate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocateError {
    /// No segment has room and the page source has no more pages.
    OutOfMemory {
        /// The request.
        layout: Layout,
        /// What the page source said.
        source: PagesError,
    },
    /// The segment table is full and no segment has room.
    TooManySegments,
}

/// Why layer 0 refused a free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeallocateError {
    /// The pointer lies in no segment and no large mapping of this allocator.
    NotOwned {
        /// The pointer.
        ptr: usize,
    },
    /// A large mapping was freed with a size that does not match it.
    SizeMismatch {
        /// The pointer.
        ptr: usize,
        /// The mapping's size.
        mapped: usize,
        /// The size given.
        given: usize,
    },
}

impl fmt::Display for DeallocateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotOwned { ptr } => write!(f, "{ptr:#x} was not allocated by layer 0"),
            Self::SizeMismatch { ptr, mapped, given } => {
                write!(f, "{ptr:#x} maps {mapped} bytes but was freed as {given}")
            }
        }
    }
}

/// One run of pages served by its own first-fit heap.
struct Segment {
    start: usize,
    size: usize,
    heap: Heap,
}

#[derive(Clone, Copy)]
struct Large {
    start: usize,
    size: usize,
}

/// Counters of layer 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentStats {
    /// Segments held.
    pub segments: usize,
    /// Bytes of pages held in segments.
    pub segment_bytes: usize,
    /// Bytes allocated from segments (as `linked_list_allocator` counts them).
    pub segment_used: usize,
    /// Large mappings held.
    pub large: usize,
    /// Bytes of pages held by large mappings.
    pub large_bytes: usize,
    /// Segments given back to the page source so far.
    pub segments_released: usize,
    /// Segments grown in place by a following run of pages.
    pub segments_extended: usize,
    /// Blocks waiting in bins.
    pub binned_blocks: usize,
    /// Allocations served from a bin (an event counter: 0 without the
    /// `stats` feature).
    pub bin_hits: usize,
}

/// Layer 0: segments of first-fit heaps plus large mappings.
///
/// `SEGMENTS` and `LARGE` size its two tables (kept inline, as this layer
/// sits below the heap): the defaults suit firmware and host regions, where
/// adjacent runs coalesce; a kernel over a VMM, whose runs never coalesce,
/// wants more of both.
pub struct SegmentAllocator<const SEGMENTS: usize = MAX_SEGMENTS, const LARGE: usize = MAX_LARGE> {
    bins: [Bin; BINS],
    segments: [Segment; SEGMENTS],
    nsegments: usize,
    large: [Large; LARGE],
    nlarge: usize,
    current: usize,
    config: Config,
    released: usize,
    extended: usize,
    bin_hits: usize,
    binned_bytes: usize,
    /// The page source's granularity, to which large mappings are sized
    /// (known from the first large mapping on).
    granule: usize,
}

// SAFETY: the allocator owns the memory its raw pointers point to; it is
// moved between threads only as a whole (behind the front door's lock).
unsafe impl<const SEGMENTS: usize, const LARGE: usize> Send for SegmentAllocator<SEGMENTS, LARGE> {}

impl<const SEGMENTS: usize, const LARGE: usize> fmt::Debug for SegmentAllocator<SEGMENTS, LARGE> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentAllocator")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish()
    }
}

const EMPTY_SEGMENT: Segment = Segment { start: 0, size: 0, heap: Heap::empty() };
const EMPTY_LARGE: Large = Large { start: 0, size: 0 };

impl SegmentAllocator {
    /// An allocator with no segments yet and the default table sizes.
    pub const fn new(config: Config) -> Self {
        Self::with_tables(config)
    }
}

impl<const SEGMENTS: usize, const LARGE: usize> SegmentAllocator<SEGMENTS, LARGE> {
    /// An allocator with no segments yet, with room for `SEGMENTS` segments
    /// and `LARGE` large mappings.
    pub const fn with_tables(config: Config) -> Self {
        Self {
            bins: [Bin { head: core::ptr::null_mut(), len: 0 }; BINS],
            segments: [EMPTY_SEGMENT; SEGMENTS],
            nsegments: 0,
            large: [EMPTY_LARGE; LARGE],
            nlarge: 0,
            current: 0,
            config,
            released: 0,
            extended: 0,
            bin_hits: 0,
            binned_bytes: 0,
            granule: PAGE_SIZE,
        }
    }

    /// The tunables in force.
    pub fn config(&self) -> Config {
        self.config
    }

    /// The bin serving `layout`, if it is binned (never when the bin budget
    /// is 0).
    #[inline]
    fn bin_of(&self, layout: Layout) -> Option<usize> {
        // A bin's blocks must stay below the large threshold, or they would
        // become large mappings.
        if layout.size() > BIN_MAX || layout.align() > 16 || self.config.bin_budget == 0 {
            return None;
        }
        let bin = bin_index(layout.size());
        (bin_size(bin) < self.config.large_threshold).then_some(bin)
    }

    /// The layout actually asked of a segment heap for `layout`: binned
    /// requests are rounded up to their bin, so every block of a bin is
    /// interchangeable; every other request aligned to at most 16 is rounded
    /// to a multiple of 16 and aligned to 16.
    ///
    /// Keeping every block of the first-fit heaps 16-granular matters:
    /// `linked_list_allocator` rounds sizes to 8, and a 16-aligned request
    /// after an 8-aligned end leaves a 24-byte hole too small to use, one
    /// more for every such block, so its walks grow without bound.
    #[inline]
    fn effective(&self, layout: Layout) -> Layout {
        match self.bin_of(layout) {
            // SAFETY: bin sizes are multiples of 16 up to BIN_MAX; alignment 16 is valid.
            Some(bin) => unsafe { Layout::from_size_align_unchecked(bin_size(bin), 16) },
            None if layout.align() <= 16 => {
                Layout::from_size_align(layout.size().max(1).next_multiple_of(16), 16).unwrap_or(layout)
            }
            None => layout,
        }
    }

    /// The layout asked of the heaps for an over-aligned request (aligned
    /// above 16, below the large threshold): `size + align` bytes aligned to
    /// 16, the aligned block placed inside with the origin in the word just
    /// below it, as `aligned_alloc` is built on `malloc`. First fit never sees
    /// an alignment, so it never leaves unusable padding holes behind (4096
    /// requests of `Layout(1, 4096)` otherwise leave 4096 holes to walk).
    #[inline]
    fn padded(&self, layout: Layout) -> Option<Layout> {
        if layout.align() <= 16 || layout.size() >= self.config.large_threshold {
            return None;
        }
        let size = layout.size().checked_add(layout.align())?.checked_next_multiple_of(16)?;
        // The inner block must stay in a segment (its free reads the origin
        // word there), so it must stay below the large threshold too.
        if size >= self.config.large_threshold {
            return None;
        }
        Layout::from_size_align(size, 16).ok()
    }

    /// The size of a large mapping for `bytes`: whole granules of the page
    /// source (pages in the kernel, 16 bytes over a region).
    fn mapped_size(&self, bytes: usize) -> Option<usize> {
        bytes.checked_next_multiple_of(self.granule)
    }

    /// Allocates a block for `layout` that is expected to keep growing by
    /// realloc (a buffer being doubled): as a mapping of its own when the
    /// page source can grow allocations in place
    /// ([`PageSource::allocate_growable_pages`]: where it has the most room
    /// after it), so the next growths need no copy;
    /// otherwise, or when the large-mapping table is full, as
    /// [`allocate`](Self::allocate) would.
    pub fn allocate_growable(
        &mut self,
        layout: Layout,
        source: &mut impl PageSource,
    ) -> Result<NonNull<u8>, AllocateError> {
        self.granule = source.granularity();
        if self.nlarge < LARGE
            && let Some(size) = self.mapped_size(layout.size())
            && let Some(ptr) = source.allocate_growable_pages(size, layout.align().max(self.granule))
        {
            self.insert_large(ptr, size);
            return Ok(ptr);
        }
        self.allocate(layout, source)
    }

    /// Allocates a block for `layout`, growing from `source` when needed.
    #[inline]
    pub fn allocate(
        &mut self,
        layout: Layout,
        source: &mut impl PageSource,
    ) -> Result<NonNull<u8>, AllocateError> {
        let Some(inner) = self.padded(layout) else { return self.allocate_exact(layout, source) };
        let origin = self.allocate_exact(inner, source)?.as_ptr();
        let aligned = (origin as usize + 8).next_multiple_of(layout.align());
        // SAFETY: `origin` is 16-aligned, so `aligned - origin` is in
        // `16..=align` and `[aligned - 8, aligned + size)` lies in the
        // `size + align` bytes of the inner block.
        unsafe { (aligned as *mut usize).sub(1).write(origin as usize) };
        Ok(NonNull::new(aligned as *mut u8).expect("inside a live block"))
    }

    /// Allocates exactly `layout` from the heaps (no over-allocation for
    /// alignment): how layer +2 takes its size-aligned arenas on small heaps.
    #[inline]
    pub fn allocate_exact(
        &mut self,
        layout: Layout,
        source: &mut impl PageSource,
    ) -> Result<NonNull<u8>, AllocateError> {
        if let Some(bin) = self.bin_of(layout) {
            let b = &mut self.bins[bin];
            if let Some(block) = NonNull::new(b.head) {
                // SAFETY: binned blocks hold the next link in their first word.
                b.head = unsafe { *block.as_ptr().cast::<*mut u8>() };
                b.len -= 1;
                stat!(self.bin_hits += 1);
                self.binned_bytes -= bin_size(bin);
                return Ok(block);
            }
        }
        match self.allocate_slow(self.effective(layout), source) {
            Err(_) if self.flush_bins(source) > 0 => self.allocate_slow(self.effective(layout), source),
            result => result,
        }
    }

    fn allocate_slow(
        &mut self,
        layout: Layout,
        source: &mut impl PageSource,
    ) -> Result<NonNull<u8>, AllocateError> {
        if layout.size() >= self.config.large_threshold && self.nlarge < LARGE {
            // On failure, fall back to segments: a fragmented source may
            // still have room inside them.
            if let Ok(p) = self.allocate_large(layout, source) {
                return Ok(p);
            }
        }
        if let Some(p) = self.allocate_in_segments(layout) {
            return Ok(p);
        }
        self.grow(layout, source)?;
        let seg = &mut self.segments[self.current];
        seg.heap.allocate_first_fit(layout).map_err(|()| AllocateError::OutOfMemory {
            layout,
            source: PagesError::Exhausted { size: layout.size(), align: layout.align() },
        })
    }

    fn allocate_in_segments(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        if self.nsegments == 0 {
            return None;
        }
        if let Ok(p) = self.segments[self.current].heap.allocate_first_fit(layout) {
            return Some(p);
        }
        for i in 0..self.nsegments {
            if i == self.current || self.segments[i].heap.free() < layout.size() {
                continue;
            }
            if let Ok(p) = self.segments[i].heap.allocate_first_fit(layout) {
                self.current = i;
                return Some(p);
            }
        }
        None
    }

    fn allocate_large(
        &mut self,
        layout: Layout,
        source: &mut impl PageSource,
    ) -> Result<NonNull<u8>, PagesError> {
        let invalid = PagesError::InvalidRequest { size: layout.size(), align: layout.align() };
        self.granule = source.granularity();
        let size = self.mapped_size(layout.size()).ok_or(invalid)?;
        let ptr = source.allocate_pages(size, layout.align().max(self.granule))?;
        self.insert_large(ptr, size);
        Ok(ptr)
    }

    /// Records a new large mapping (the table has room).
    fn insert_large(&mut self, ptr: NonNull<u8>, size: usize) {
        let start = ptr.as_ptr() as usize;
        let i = self.large[..self.nlarge].partition_point(|l| l.start < start);
        self.large.copy_within(i..self.nlarge, i + 1);
        self.large[i] = Large { start, size };
        self.nlarge += 1;
    }

    /// Takes a new segment large enough for `layout` and makes it current.
    fn grow(&mut self, layout: Layout, source: &mut impl PageSource) -> Result<(), AllocateError> {
        // Room for the block, its worst-case alignment padding, and the
        // first-fit list's minimum hole on each side.
        let need = layout.size().saturating_add(layout.align()).saturating_add(64);
        let exhausted = |source| AllocateError::OutOfMemory { layout, source };
        let granule = source.granularity();
        let need = need
            .checked_next_multiple_of(granule)
            .ok_or(exhausted(PagesError::Exhausted { size: need, align: granule }))?;
        let want = need.max(self.config.segment_min & !(granule - 1));
        let (ptr, size) = match source.allocate_pages(want, granule) {
            Ok(p) => (p, want),
            Err(_) if want > need => (source.allocate_pages(need, granule).map_err(exhausted)?, need),
            Err(e) => return Err(exhausted(e)),
        };
        let start = ptr.as_ptr() as usize;
        // A run right after an existing segment extends it, where the source
        // takes adjacent runs back in one piece.
        let merge = source.coalesces();
        if let Some(i) = (0..self.nsegments).filter(|_| merge).find(|&i| {
            let s = &self.segments[i];
            s.start + s.size == start
        }) {
            let s = &mut self.segments[i];
            // SAFETY: the pages `[start, start + size)` were just handed to us
            // and directly follow the segment's top.
            unsafe { s.heap.extend(size) };
            s.size += size;
            self.current = i;
            self.extended += 1;
            return Ok(());
        }
        if self.nsegments == SEGMENTS {
            // SAFETY: the pages were just allocated from `source` with this size.
            unsafe { source.deallocate_pages(ptr, size) };
            return Err(AllocateError::TooManySegments);
        }
        let i = self.segments[..self.nsegments].partition_point(|s| s.start < start);
        // Shift the tail up by one, moving each heap (heaps are plain data and
        // hold no pointers into themselves).
        for j in (i..self.nsegments).rev() {
            self.segments.swap(j, j + 1);
        }
        // SAFETY: the pages are ours, writable, and used by nothing else.
        let heap = unsafe { Heap::new(ptr.as_ptr(), size) };
        self.segments[i] = Segment { start, size, heap };
        self.nsegments += 1;
        self.current = i;
        Ok(())
    }

    fn segment_of(&self, addr: usize) -> Option<usize> {
        let i = self.segments[..self.nsegments].partition_point(|s| s.start <= addr);
        (i > 0 && addr < self.segments[i - 1].start + self.segments[i - 1].size).then(|| i - 1)
    }

    fn large_of(&self, addr: usize) -> Option<usize> {
        let i = self.large[..self.nlarge].partition_point(|l| l.start < addr);
        (i < self.nlarge && self.large[i].start == addr).then_some(i)
    }

    /// Whether `ptr` lies in a segment or is the start of a large mapping.
    pub fn owns(&self, ptr: *const u8) -> bool {
        let addr = ptr as usize;
        self.segment_of(addr).is_some() || self.large_of(addr).is_some()
    }

    /// Whether `ptr` lies anywhere in memory layer 0 holds: a segment or a
    /// large mapping (from its first byte to its last).
    pub fn contains(&self, ptr: *const u8) -> bool {
        let addr = ptr as usize;
        let i = self.large[..self.nlarge].partition_point(|l| l.start <= addr);
        self.segment_of(addr).is_some() || (i > 0 && addr < self.large[i - 1].start + self.large[i - 1].size)
    }

    /// Whether the block at `ptr`, allocated with `old`, can be used as is
    /// for `new` (same alignment): a large mapping whose page count does not
    /// change, or a segment block whose reserved size does not change.
    pub fn fits_in_place(&self, ptr: *const u8, old: Layout, new: Layout) -> bool {
        if self.large_of(ptr as usize).is_some() {
            return self.mapped_size(old.size()) == self.mapped_size(new.size());
        }
        match (self.padded(old), self.padded(new)) {
            (Some(a), Some(b)) => return lla_size(self.effective(a)) == lla_size(self.effective(b)),
            (None, None) => {}
            _ => return false,
        }
        self.bin_of(old).is_some() == self.bin_of(new).is_some()
            && lla_size(self.effective(old)) == lla_size(self.effective(new))
    }

    /// Grows the large mapping at `ptr` in place for `new` (same alignment,
    /// more pages) when the page source has the pages right after it free
    /// ([`PageSource::grow_pages`]): returns whether it did.
    pub fn grow_in_place(&mut self, ptr: *const u8, new: Layout, source: &mut impl PageSource) -> bool {
        let Some(i) = self.large_of(ptr as usize) else { return false };
        let have = self.large[i].size;
        let Some(want) = self.mapped_size(new.size()).filter(|&w| w > have) else { return false };
        // SAFETY: a live mapping of ours from `source`, `have` bytes long.
        if unsafe { source.grow_pages(NonNull::new_unchecked(ptr as *mut u8), have, want) } {
            self.large[i].size = want;
            true
        } else {
            false
        }
    }

    /// Gives every binned block back to its segment heap. Returns how many.
    pub fn flush_bins(&mut self, source: &mut impl PageSource) -> usize {
        let mut flushed = 0;
        for bin in 0..BINS {
            // SAFETY: every block of a bin is `bin_size(bin)` bytes, aligned to 16.
            let layout = unsafe { Layout::from_size_align_unchecked(bin_size(bin), 16) };
            while let Some(block) = NonNull::new(self.bins[bin].head) {
                // SAFETY: binned blocks hold the link in their first word.
                self.bins[bin].head = unsafe { *block.as_ptr().cast::<*mut u8>() };
                self.bins[bin].len -= 1;
                self.binned_bytes -= layout.size();
                let i = self.segment_of(block.as_ptr() as usize).expect("binned blocks lie in segments");
                // SAFETY: the block is a free block of segment `i` with this layout.
                unsafe { self.segments[i].heap.deallocate(block, layout) };
                flushed += 1;
                if self.segments[i].heap.used() == 0 {
                    self.release_if_spare(i, source);
                }
            }
        }
        flushed
    }

    /// Frees a block returned by [`allocate`](Self::allocate) with `layout`.
    ///
    /// # Safety
    ///
    /// If `ptr` lies in this allocator's memory, it must be a live block
    /// allocated here with `layout`. Pointers outside it are refused safely.
    pub unsafe fn deallocate(
        &mut self,
        ptr: NonNull<u8>,
        layout: Layout,
        source: &mut impl PageSource,
    ) -> Result<(), DeallocateError> {
        let Some(inner) = self.padded(layout) else {
            // SAFETY: forwarded contract.
            return unsafe { self.deallocate_exact(ptr, layout, source) };
        };
        let addr = ptr.as_ptr() as usize;
        let refused = DeallocateError::NotOwned { ptr: addr };
        let Some(i) = self.segment_of(addr) else {
            // Not in a segment: a mapping of its own (a growing block that
            // moved there, see `allocate_growable`), or nothing of ours.
            // SAFETY: forwarded contract.
            return unsafe { self.deallocate_exact(ptr, layout, source) };
        };
        // SAFETY: a block of segment `i` allocated over-aligned has its origin
        // in the word below it, inside the same inner block.
        let origin = unsafe { (addr as *const usize).sub(1).read() };
        let (start, end) = (self.segments[i].start, self.segments[i].start + self.segments[i].size);
        if origin < start || origin >= end || origin >= addr || addr - origin > layout.align() {
            return Err(refused);
        }
        // SAFETY: `origin` is the inner block allocated with `inner`.
        unsafe { self.deallocate_exact(NonNull::new_unchecked(origin as *mut u8), inner, source) }
    }

    /// Frees a block returned by [`allocate_exact`](Self::allocate_exact).
    ///
    /// # Safety
    ///
    /// As for [`deallocate`](Self::deallocate), with `allocate_exact`.
    pub unsafe fn deallocate_exact(
        &mut self,
        ptr: NonNull<u8>,
        layout: Layout,
        source: &mut impl PageSource,
    ) -> Result<(), DeallocateError> {
        let addr = ptr.as_ptr() as usize;
        if let Some(i) = self.segment_of(addr) {
            if let Some(bin) = self.bin_of(layout) {
                let b = &mut self.bins[bin];
                let size = bin_size(bin);
                if b.len < BIN_DEPTH && self.binned_bytes + size <= self.config.bin_budget {
                    // SAFETY: the block is ours again and at least 16 bytes.
                    unsafe { *ptr.as_ptr().cast::<*mut u8>() = b.head };
                    b.head = ptr.as_ptr();
                    b.len += 1;
                    self.binned_bytes += size;
                    return Ok(());
                }
            }
            // SAFETY: the block lies in segment `i`, and the caller promises it
            // is live and was allocated with `layout` (so with `effective`).
            unsafe { self.segments[i].heap.deallocate(ptr, self.effective(layout)) };
            if self.segments[i].heap.used() == 0 {
                self.release_if_spare(i, source);
            }
            return Ok(());
        }
        if let Some(i) = self.large_of(addr) {
            let Large { start, size } = self.large[i];
            if self.mapped_size(layout.size()) != Some(size) {
                return Err(DeallocateError::SizeMismatch { ptr: addr, mapped: size, given: layout.size() });
            }
            self.large.copy_within(i + 1..self.nlarge, i);
            self.nlarge -= 1;
            // SAFETY: the mapping came from `source` with exactly this size,
            // and its only block is being freed.
            unsafe { source.deallocate_pages(NonNull::new_unchecked(start as *mut u8), size) };
            return Ok(());
        }
        Err(DeallocateError::NotOwned { ptr: addr })
    }

    /// Gives empty segment `i` back unless it is the only empty one.
    fn release_if_spare(&mut self, i: usize, source: &mut impl PageSource) {
        let other_empty = (0..self.nsegments).any(|j| j != i && self.segments[j].heap.used() == 0);
        if other_empty {
            self.remove_segment(i, source);
        }
    }

    /// Removes segment `i`, which has no live block, and gives its pages back.
    fn remove_segment(&mut self, i: usize, source: &mut impl PageSource) {
        let Segment { start, size, .. } = self.segments[i];
        for j in i..self.nsegments - 1 {
            self.segments.swap(j, j + 1);
        }
        self.nsegments -= 1;
        self.segments[self.nsegments] = EMPTY_SEGMENT;
        if self.current >= self.nsegments || self.current == i {
            self.current = 0;
        } else if self.current > i {
            self.current -= 1;
        }
        self.released += 1;
        // SAFETY: the segment's pages came from `source` with this size (or
        // were merged from runs that did, which the source coalesces), and no
        // block in it is live.
        unsafe { source.deallocate_pages(NonNull::new_unchecked(start as *mut u8), size) };
    }

    /// Gives every empty segment back, the spare included. Returns how many.
    pub fn trim(&mut self, source: &mut impl PageSource) -> usize {
        self.flush_bins(source);
        let mut freed = 0;
        let mut i = 0;
        while i < self.nsegments {
            if self.segments[i].heap.used() == 0 {
                self.remove_segment(i, source);
                freed += 1;
            } else {
                i += 1;
            }
        }
        freed
    }

    /// Current counters.
    pub fn stats(&self) -> SegmentStats {
        let segs = &self.segments[..self.nsegments];
        let large = &self.large[..self.nlarge];
        SegmentStats {
            segments: self.nsegments,
            segment_bytes: segs.iter().map(|s| s.size).sum(),
            segment_used: segs.iter().map(|s| s.heap.used()).sum(),
            large: self.nlarge,
            large_bytes: large.iter().map(|l| l.size).sum(),
            segments_released: self.released,
            segments_extended: self.extended,
            binned_blocks: self.bins.iter().map(|b| b.len as usize).sum(),
            bin_hits: self.bin_hits,
        }
    }

    /// Checks the tables, panicking on a broken invariant.
    pub fn check_invariants(&self) {
        let segs = &self.segments[..self.nsegments];
        for w in segs.windows(2) {
            assert!(w[0].start + w[0].size <= w[1].start, "segments overlap or are unsorted");
        }
        for s in segs {
            assert_eq!(s.heap.size(), s.size, "segment heap does not cover its pages");
            assert_eq!(s.heap.bottom() as usize, s.start, "segment heap moved");
        }
        let empty = segs.iter().filter(|s| s.heap.used() == 0).count();
        assert!(empty <= 1, "{empty} empty segments kept");
        for (bin, b) in self.bins.iter().enumerate() {
            let mut n = 0;
            let mut p = b.head;
            while !p.is_null() {
                assert!(
                    self.segment_of(p as usize).is_some(),
                    "bin {bin} holds a block outside every segment"
                );
                assert_eq!(p as usize % 16, 0, "binned block misaligned");
                n += 1;
                assert!(n <= b.len, "bin {bin} longer than its count (a cycle?)");
                // SAFETY: binned blocks hold the link in their first word.
                p = unsafe { *p.cast::<*mut u8>() };
            }
            assert_eq!(n, b.len, "bin {bin} count");
        }
        let large = &self.large[..self.nlarge];
        for w in large.windows(2) {
            assert!(w[0].start + w[0].size <= w[1].start, "large mappings overlap");
        }
        assert!(self.nsegments == 0 || self.current < self.nsegments);
    }
}

/// The size `linked_list_allocator` really reserves for `layout`.
fn lla_size(layout: Layout) -> usize {
    linked_list_allocator::hole::HoleList::align_layout(layout).map_or(layout.size(), |l| l.size())
}
