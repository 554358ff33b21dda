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
//! **Invariants:** segments are disjoint and sorted; each segment's heap
//! covers exactly its pages; at most one segment is empty; every large
//! mapping is in the large table. A pointer that is in no segment and no
//! large mapping is refused with [`DeallocateError::NotOwned`] — this layer
//! never hands `linked_list_allocator` a block it does not own.
//!
//! **Costs:** allocation tries the segment that served last, then the others
//! (at most [`MAX_SEGMENTS`]), each a first-fit walk of its holes; free finds
//! its segment by binary search, then walks that segment's hole list.

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

use linked_list_allocator::Heap;

use crate::source::{PAGE_SIZE, PageSource, PagesError};

/// Most segments the allocator keeps at once.
pub const MAX_SEGMENTS: usize = 32;
/// Most large mappings tracked at once; past that, large requests are served
/// from segments.
pub const MAX_LARGE: usize = 64;

/// Tunables of layer 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Smallest segment asked from the page source.
    pub segment_min: usize,
    /// Requests this large or larger get pages of their own.
    pub large_threshold: usize,
}

impl Config {
    /// Tunables for a page source whose window is `window_len` bytes: segments
    /// of 1/16 of the window (4 KiB to 1 MiB), and a large threshold of
    /// 128 KiB (glibc's default mmap threshold) or 1/8 of the window on small
    /// heaps.
    pub const fn for_window(window_len: usize) -> Self {
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
        Self {
            segment_min,
            large_threshold,
        }
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
}

/// Layer 0: segments of first-fit heaps plus large mappings.
pub struct SegmentAllocator {
    segments: [Segment; MAX_SEGMENTS],
    nsegments: usize,
    large: [Large; MAX_LARGE],
    nlarge: usize,
    current: usize,
    config: Config,
    released: usize,
    extended: usize,
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

const EMPTY_SEGMENT: Segment = Segment {
    start: 0,
    size: 0,
    heap: Heap::empty(),
};
const EMPTY_LARGE: Large = Large { start: 0, size: 0 };

fn pages_for(bytes: usize) -> Option<usize> {
    bytes.checked_next_multiple_of(PAGE_SIZE)
}

impl SegmentAllocator {
    /// An allocator with no segments yet.
    pub const fn new(config: Config) -> Self {
        Self {
            segments: [EMPTY_SEGMENT; MAX_SEGMENTS],
            nsegments: 0,
            large: [EMPTY_LARGE; MAX_LARGE],
            nlarge: 0,
            current: 0,
            config,
            released: 0,
            extended: 0,
        }
    }

    /// The tunables in force.
    pub fn config(&self) -> Config {
        self.config
    }

    /// Allocates a block for `layout`, growing from `source` when needed.
    pub fn allocate(
        &mut self,
        layout: Layout,
        source: &mut impl PageSource,
    ) -> Result<NonNull<u8>, AllocateError> {
        if layout.size() >= self.config.large_threshold && self.nlarge < MAX_LARGE {
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
        seg.heap
            .allocate_first_fit(layout)
            .map_err(|()| AllocateError::OutOfMemory {
                layout,
                source: PagesError::Exhausted {
                    size: layout.size(),
                    align: layout.align(),
                },
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
        let invalid = PagesError::InvalidRequest {
            size: layout.size(),
            align: layout.align(),
        };
        let size = pages_for(layout.size()).ok_or(invalid)?;
        let ptr = source.allocate_pages(size, layout.align().max(PAGE_SIZE))?;
        let start = ptr.as_ptr() as usize;
        let i = self.large[..self.nlarge].partition_point(|l| l.start < start);
        self.large.copy_within(i..self.nlarge, i + 1);
        self.large[i] = Large { start, size };
        self.nlarge += 1;
        Ok(ptr)
    }

    /// Takes a new segment large enough for `layout` and makes it current.
    fn grow(&mut self, layout: Layout, source: &mut impl PageSource) -> Result<(), AllocateError> {
        // Room for the block, its worst-case alignment padding, and the
        // first-fit list's minimum hole on each side.
        let need = layout
            .size()
            .saturating_add(layout.align())
            .saturating_add(64);
        let exhausted = |source| AllocateError::OutOfMemory { layout, source };
        let need = pages_for(need).ok_or(exhausted(PagesError::Exhausted {
            size: need,
            align: PAGE_SIZE,
        }))?;
        let want = need.max(self.config.segment_min);
        let (ptr, size) = match source.allocate_pages(want, PAGE_SIZE) {
            Ok(p) => (p, want),
            Err(_) if want > need => (
                source.allocate_pages(need, PAGE_SIZE).map_err(exhausted)?,
                need,
            ),
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
        if self.nsegments == MAX_SEGMENTS {
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

    /// Whether the block at `ptr`, allocated with `old`, can be used as is
    /// for `new` (same alignment): a large mapping whose page count does not
    /// change, or a segment block whose reserved size does not change.
    pub fn fits_in_place(&self, ptr: *const u8, old: Layout, new: Layout) -> bool {
        if self.large_of(ptr as usize).is_some() {
            return pages_for(old.size()) == pages_for(new.size());
        }
        lla_size(old) == lla_size(new)
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
        let addr = ptr.as_ptr() as usize;
        if let Some(i) = self.segment_of(addr) {
            // SAFETY: the block lies in segment `i`, and the caller promises it
            // is live and was allocated with `layout`.
            unsafe { self.segments[i].heap.deallocate(ptr, layout) };
            if self.segments[i].heap.used() == 0 {
                self.release_if_spare(i, source);
            }
            return Ok(());
        }
        if let Some(i) = self.large_of(addr) {
            let Large { start, size } = self.large[i];
            if pages_for(layout.size()) != Some(size) {
                return Err(DeallocateError::SizeMismatch {
                    ptr: addr,
                    mapped: size,
                    given: layout.size(),
                });
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
        }
    }

    /// Checks the tables, panicking on a broken invariant.
    pub fn check_invariants(&self) {
        let segs = &self.segments[..self.nsegments];
        for w in segs.windows(2) {
            assert!(
                w[0].start + w[0].size <= w[1].start,
                "segments overlap or are unsorted"
            );
        }
        for s in segs {
            assert_eq!(
                s.heap.size(),
                s.size,
                "segment heap does not cover its pages"
            );
            assert_eq!(s.heap.bottom() as usize, s.start, "segment heap moved");
        }
        let empty = segs.iter().filter(|s| s.heap.used() == 0).count();
        assert!(empty <= 1, "{empty} empty segments kept");
        let large = &self.large[..self.nlarge];
        for w in large.windows(2) {
            assert!(
                w[0].start + w[0].size <= w[1].start,
                "large mappings overlap"
            );
        }
        assert!(self.nsegments == 0 || self.current < self.nsegments);
    }
}

/// The size `linked_list_allocator` really reserves for `layout`.
fn lla_size(layout: Layout) -> usize {
    linked_list_allocator::hole::HoleList::align_layout(layout).map_or(layout.size(), |l| l.size())
}
