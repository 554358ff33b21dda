//! # Page sources: where layers 0 and +2 take their memory
//!
//! The layers that need memory (0, the segment allocator, and +2, the object
//! allocator) declare what they need here: whole pages, with a requested
//! alignment, given back when they are done. The layer that has memory
//! implements it:
//!
//! - [`RegionSource`]: a caller's static region (firmware, the host, and
//!   [`LockedHeap::init`](crate::LockedHeap::init)), kept as a first-fit list
//!   of page runs (`linked_list_allocator` at page granularity);
//! - in the kernel, the VMM (layer −1): pages mapped on demand in the kernel
//!   heap range, with guard pages between them.
//!
//! Every page source also names a *window*, the address range all its pages
//! lie in. Layer +2 keeps one bit per arena slot of that window, which is how
//! it tells its own blocks from anyone else's in O(1) without reading memory.

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

/// Size of a page: the granularity of the VMM, and the default granularity
/// of every page source.
pub const PAGE_SIZE: usize = 4096;
/// The granularity of a [`RegionSource`]: a region has no page tables, so it
/// hands out any multiple of 16 bytes, and a small firmware heap loses
/// nothing to page rounding.
pub const REGION_GRANULE: usize = 16;

/// Why a page source could not provide pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagesError {
    /// The source has no run of this many pages at this alignment.
    Exhausted {
        /// Bytes asked for.
        size: usize,
        /// Alignment asked for.
        align: usize,
    },
    /// Not a whole number of pages, or an alignment that is not a power of
    /// two of at least a page.
    InvalidRequest {
        /// Bytes asked for.
        size: usize,
        /// Alignment asked for.
        align: usize,
    },
}

impl fmt::Display for PagesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exhausted { size, align } => {
                write!(f, "no {size} bytes of pages aligned to {align} left")
            }
            Self::InvalidRequest { size, align } => {
                write!(f, "invalid page request: {size} bytes aligned to {align}")
            }
        }
    }
}

/// A supplier of whole pages for layers 0 and +2.
///
/// # Safety
///
/// Implementers promise that [`allocate_pages`](Self::allocate_pages) returns
/// `size` bytes of readable, writable memory starting at an address aligned to
/// `align`, lying inside [`window`](Self::window), that nothing else uses until
/// they are given back with [`deallocate_pages`](Self::deallocate_pages), and
/// that [`coalesces`](Self::coalesces) returns `true` only if giving back the
/// union of adjacent allocations in one call is sound.
pub unsafe trait PageSource {
    /// The address range `[start, start + len)` all pages of this source lie in.
    fn window(&self) -> (usize, usize);

    /// The source's granularity: a power of two, at least 16. Requests are
    /// multiples of it and aligned to at least it. [`PAGE_SIZE`] by default.
    fn granularity(&self) -> usize {
        PAGE_SIZE
    }

    /// Reserves and maps `size` bytes (a multiple of the
    /// [`granularity`](Self::granularity)) aligned to `align` (a power of
    /// two, at least the granularity).
    fn allocate_pages(&mut self, size: usize, align: usize) -> Result<NonNull<u8>, PagesError>;

    /// Gives pages back to the source.
    ///
    /// # Safety
    ///
    /// `ptr` and `size` must be exactly those of one earlier
    /// [`allocate_pages`](Self::allocate_pages) call whose pages are no longer
    /// used.
    unsafe fn deallocate_pages(&mut self, ptr: NonNull<u8>, size: usize);

    /// Whether pages of adjacent allocations may be given back in one
    /// [`deallocate_pages`](Self::deallocate_pages) call (so that layer 0 may
    /// merge a new segment into the one it follows). `false` by default.
    fn coalesces(&self) -> bool {
        false
    }
}

fn check_request(size: usize, align: usize, granule: usize) -> Result<Layout, PagesError> {
    let invalid = PagesError::InvalidRequest { size, align };
    if size == 0 || !size.is_multiple_of(granule) || !align.is_power_of_two() || align < granule {
        return Err(invalid);
    }
    Layout::from_size_align(size, align).map_err(|_| invalid)
}

/// A page source over one caller-provided region of memory.
///
/// Free runs are kept sorted and coalesced in a first-fit list stored in the
/// free memory itself (`linked_list_allocator::Heap`), so the source needs no
/// memory of its own; allocation and free are O(free runs), which is fine for
/// the rare, coarse requests of segments and arenas. Its granularity is
/// [`REGION_GRANULE`], not a page: the region is used to its last 16 bytes.
pub struct RegionSource {
    pages: linked_list_allocator::Heap,
    window: (usize, usize),
    mapped: usize,
    high_water: usize,
}

// SAFETY: the source owns its region exclusively; moving it to another thread
// moves that ownership with it.
unsafe impl Send for RegionSource {}

impl fmt::Debug for RegionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegionSource")
            .field("window", &format_args!("{:#x}+{:#x}", self.window.0, self.window.1))
            .field("bytes_out", &self.mapped)
            .finish()
    }
}

impl RegionSource {
    /// A source with no memory: every request fails.
    pub const fn empty() -> Self {
        Self { pages: linked_list_allocator::Heap::empty(), window: (0, 0), mapped: 0, high_water: 0 }
    }

    /// A source over `[start, start + size)`, trimmed inwards to 16-byte
    /// boundaries.
    ///
    /// # Safety
    ///
    /// The region must be valid for reads and writes, and used by nothing
    /// else for as long as the source or any page taken from it lives.
    pub unsafe fn new(start: *mut u8, size: usize) -> Self {
        let addr = start as usize;
        let first = addr.next_multiple_of(REGION_GRANULE);
        let end = addr.saturating_add(size) & !(REGION_GRANULE - 1);
        if end <= first + REGION_GRANULE {
            return Self::empty();
        }
        // SAFETY: the caller gives us the region; `first..end` lies inside it.
        let pages =
            unsafe { linked_list_allocator::Heap::new(start.wrapping_add(first - addr), end - first) };
        Self { pages, window: (first, end - first), mapped: 0, high_water: 0 }
    }

    /// Bytes currently handed out.
    pub fn bytes_out(&self) -> usize {
        self.mapped
    }

    /// The most bytes ever handed out at once.
    pub fn high_water(&self) -> usize {
        self.high_water
    }
}

// SAFETY: pages come from the caller's region, which `new` requires to be
// valid and exclusively ours; the list never hands a byte out twice.
unsafe impl PageSource for RegionSource {
    fn window(&self) -> (usize, usize) {
        self.window
    }

    fn granularity(&self) -> usize {
        REGION_GRANULE
    }

    fn allocate_pages(&mut self, size: usize, align: usize) -> Result<NonNull<u8>, PagesError> {
        let layout = check_request(size, align, REGION_GRANULE)?;
        let ptr =
            self.pages.allocate_first_fit(layout).map_err(|()| PagesError::Exhausted { size, align })?;
        self.mapped += size;
        self.high_water = self.high_water.max(self.mapped);
        Ok(ptr)
    }

    fn coalesces(&self) -> bool {
        true
    }

    unsafe fn deallocate_pages(&mut self, ptr: NonNull<u8>, size: usize) {
        let layout = Layout::from_size_align(size, REGION_GRANULE).expect("a whole number of granules");
        // SAFETY: the caller returns memory from one earlier allocation of
        // this size; the free list needs only the size, not the alignment.
        unsafe { self.pages.deallocate(ptr, layout) };
        self.mapped -= size;
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;

    #[test]
    fn region_source_trims_aligns_and_reuses() {
        let mut buf = vec![0u8; 64 * PAGE_SIZE + 100];
        // SAFETY: the buffer outlives the source and is used by nothing else.
        let mut src = unsafe { RegionSource::new(buf.as_mut_ptr().wrapping_add(3), buf.len() - 3) };
        let (start, len) = src.window();
        assert_eq!(start % REGION_GRANULE, 0);
        assert!(len >= 64 * PAGE_SIZE + 100 - 3 - 2 * REGION_GRANULE, "more than the edges trimmed: {len}");
        let a = src.allocate_pages(PAGE_SIZE, PAGE_SIZE).unwrap();
        let b = src.allocate_pages(8 * PAGE_SIZE, 8 * PAGE_SIZE).unwrap();
        assert_eq!(b.as_ptr() as usize % (8 * PAGE_SIZE), 0, "alignment ignored");
        assert!(matches!(src.allocate_pages(100, PAGE_SIZE), Err(PagesError::InvalidRequest { .. })));
        assert!(matches!(src.allocate_pages(128 * PAGE_SIZE, PAGE_SIZE), Err(PagesError::Exhausted { .. })));
        assert_eq!(src.bytes_out(), 9 * PAGE_SIZE);
        // SAFETY: both came from this source with these sizes.
        unsafe {
            src.deallocate_pages(a, PAGE_SIZE);
            src.deallocate_pages(b, 8 * PAGE_SIZE);
        }
        assert_eq!(src.bytes_out(), 0);
        // Everything coalesced: the whole window is one run again.
        let all = src.allocate_pages(len, REGION_GRANULE).unwrap();
        assert_eq!(all.as_ptr() as usize, start);
    }
}
