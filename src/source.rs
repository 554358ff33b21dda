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
//!   heap range, with guard pages between them;
//! - on a Unix host (feature `os`), [`OsSource`]: a window of the address
//!   space that the OS backs with memory as it is touched, whose freed large
//!   blocks go back to the OS — what a C program's `malloc` grows from.
//!
//! Every page source also names a *window*, the address range all its pages
//! lie in. Layer +2 keeps one bit per arena slot of that window, which is how
//! it tells its own blocks from anyone else's in O(1) without reading memory.

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

#[cfg(all(feature = "os", unix))]
pub mod os;
#[cfg(all(feature = "os", unix))]
pub use os::OsSource;

/// Size of a page: the granularity of the VMM, and the default granularity
/// of every page source.
pub const PAGE_SIZE: usize = 4096;
/// The granularity of a [`RegionSource`]: a region has no page tables, so it
/// hands out any multiple of two words (16 bytes on 64-bit targets, 8 on
/// 32-bit ones, as first fit and TLSF round blocks), and a small firmware
/// heap loses nothing to page rounding.
pub const REGION_GRANULE: usize = 2 * core::mem::size_of::<usize>();

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

impl core::error::Error for PagesError {}

/// `ptr`'s address, reached through the provenance of the pages the layers
/// hold — exposed when they took them from their page source — rather than
/// `ptr`'s own. A pointer handed back by a caller carries only its block's
/// provenance (a `Box`'s covers its object, not the header before it, and
/// not the rest of a size class), while layer 0 reads the header before a
/// block and the chunk after it, layer +2 the pool header at the start of
/// its pool, and a cached block serves later requests of its whole class.
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(crate) fn reach(ptr: NonNull<u8>) -> NonNull<u8> {
    // SAFETY: `ptr` is not null, so neither is its address.
    unsafe { NonNull::new_unchecked(core::ptr::with_exposed_provenance_mut(ptr.as_ptr().addr())) }
}

/// A supplier of whole pages for layers 0 and +2.
///
/// # Safety
///
/// Implementers promise that [`allocate_pages`](Self::allocate_pages) returns
/// `size` bytes of readable, writable memory starting at an address aligned to
/// `align`, lying inside [`window`](Self::window), that nothing else uses until
/// they are given back with [`deallocate_pages`](Self::deallocate_pages).
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

    /// Freed blocks of at least this many bytes have the whole pages
    /// inside them [discarded](Self::discard). `usize::MAX` (the default):
    /// never.
    fn discard_from(&self) -> usize {
        usize::MAX
    }

    /// Whole pages `[ptr, ptr + len)` of memory the layers took from this
    /// source are free and their contents no longer needed: the source may
    /// give the physical memory under them back (`madvise(MADV_DONTNEED)`).
    /// They stay readable and writable, reading as zeros or as before.
    /// Nothing by default.
    ///
    /// # Safety
    ///
    /// `[ptr, ptr + len)` must be page-aligned, inside memory taken from
    /// this source with [`allocate_pages`](Self::allocate_pages) and not
    /// given back, and hold nothing anyone reads before writing it again.
    unsafe fn discard(&mut self, ptr: NonNull<u8>, len: usize) {
        let _ = (ptr, len);
    }

    /// Whether the whole window is memory that is already there (a static
    /// region, or a reservation the OS commits lazily), so that taking all
    /// of it costs nothing: layer 0 then takes the whole window as one span
    /// on first use and manages it itself, layer +2's arenas included, and
    /// the heap's geometry is chosen for that ([`Geometry::for_region`]).
    /// `false` (the default) for sources that map pages when asked, such as
    /// the kernel's VMM: layer 0 then takes spans as it needs them and gives
    /// wholly free ones back.
    ///
    /// [`Geometry::for_region`]: crate::object::Geometry::for_region
    const COMMITTED: bool = false;
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
/// Free runs are kept in an address-ordered, coalesced list threaded through
/// the free memory itself (each run starts with its size and the next run),
/// so the source needs no memory of its own; allocation is first fit and
/// every operation is O(free runs). Its granularity is [`REGION_GRANULE`],
/// not a page: the region is used to its last granule. It is
/// [committed](PageSource::COMMITTED): a heap over it takes the whole region
/// at once and the list holds at most one run.
pub struct RegionSource {
    /// The first free run, or null.
    runs: *mut Run,
    window: (usize, usize),
    mapped: usize,
    high_water: usize,
}

/// The header of a free run, in its first bytes.
#[repr(C)]
struct Run {
    size: usize,
    next: *mut Run,
}

const _: () = assert!(core::mem::size_of::<Run>() <= REGION_GRANULE);

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
        Self { runs: core::ptr::null_mut(), window: (0, 0), mapped: 0, high_water: 0 }
    }

    /// A source over `[start, start + size)`, trimmed inwards to 16-byte
    /// boundaries. (A heap over it uses at most `isize::MAX` bytes of it,
    /// the most one Rust object spans: on 32-bit targets, 2 GiB.)
    ///
    /// # Safety
    ///
    /// The region must be valid for reads and writes, and used by nothing
    /// else for as long as the source or any page taken from it lives.
    pub unsafe fn new(start: *mut u8, size: usize) -> Self {
        let mut source = Self::empty();
        // SAFETY: forwarded from the caller.
        unsafe { source.reset(start, size) };
        source
    }

    /// Makes this source [`new`](Self::new)'s over `[start, start + size)`,
    /// in place (a firmware's heap initialises without a copy of its
    /// source on the stack). Whatever it held before is forgotten.
    ///
    /// # Safety
    ///
    /// As [`new`](Self::new); and no page taken from this source before
    /// may be in use.
    pub(crate) unsafe fn reset(&mut self, start: *mut u8, size: usize) {
        self.runs = core::ptr::null_mut();
        self.window = (0, 0);
        self.mapped = 0;
        self.high_water = 0;
        // The region trimmed inwards to whole granules; one too close to
        // the top of the address space to hold one is an empty source, not
        // an overflow.
        let addr = start as usize;
        let first = addr.wrapping_add(REGION_GRANULE - 1) & !(REGION_GRANULE - 1);
        let end = addr.saturating_add(size) & !(REGION_GRANULE - 1);
        if first < addr || end.saturating_sub(first) <= REGION_GRANULE {
            return;
        }
        let run = start.wrapping_add(first - addr).cast::<Run>();
        // SAFETY: the caller gives us the region; `first` lies inside it,
        // aligned to 16, with more than 16 bytes after it.
        unsafe { run.write(Run { size: end - first, next: core::ptr::null_mut() }) };
        self.runs = run;
        self.window = (first, end - first);
    }

    /// Writes a run header at `at`.
    ///
    /// # Safety
    ///
    /// `[at, at + size)` must be free memory of the region, 16-aligned.
    unsafe fn put_run(at: *mut u8, size: usize, next: *mut Run) -> *mut Run {
        let run = at.cast::<Run>();
        // SAFETY: the caller's promise.
        unsafe { run.write(Run { size, next }) };
        run
    }

    /// Points the link that leads to `old` (the list head when `prev` is
    /// null) at `new`.
    ///
    /// # Safety
    ///
    /// `prev` must be null or a run of the list.
    unsafe fn relink(&mut self, prev: *mut Run, new: *mut Run) {
        if prev.is_null() {
            self.runs = new;
        } else {
            // SAFETY: the caller's promise.
            unsafe { (*prev).next = new };
        }
    }

    /// Takes `size` bytes aligned to `align` from the start of run `cur`
    /// (whose predecessor is `prev`), if they fit, splitting off what is
    /// left before and after.
    ///
    /// # Safety
    ///
    /// `cur` must be a run of the list and `prev` null or the run before it.
    unsafe fn take(
        &mut self,
        prev: *mut Run,
        cur: *mut Run,
        size: usize,
        align: usize,
    ) -> Option<NonNull<u8>> {
        // SAFETY: the caller's promise.
        let Run { size: len, next } = unsafe { cur.read() };
        let (start, end) = (cur as usize, cur as usize + len);
        let at = start.checked_next_multiple_of(align)?;
        if at.checked_add(size).is_none_or(|e| e > end) {
            return None;
        }
        // SAFETY: the front part `[start, at)` and the back part
        // `[at + size, end)` are free memory of this run, 16-aligned.
        unsafe {
            let back = if at + size < end {
                Self::put_run(cur.cast::<u8>().with_addr(at + size), end - at - size, next)
            } else {
                next
            };
            if at > start {
                (*cur).size = at - start;
                (*cur).next = back;
            } else {
                self.relink(prev, back);
            }
        }
        self.mapped += size;
        self.high_water = self.high_water.max(self.mapped);
        NonNull::new(cur.cast::<u8>().with_addr(at))
    }

    /// The free runs as `(start, size)` pairs, in address order (for tests
    /// and reports).
    pub fn free_runs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let mut cur = self.runs;
        core::iter::from_fn(move || {
            if cur.is_null() {
                return None;
            }
            // SAFETY: every run of the list lies in our free memory.
            let run = unsafe { &*cur };
            let item = (cur as usize, run.size);
            cur = run.next;
            Some(item)
        })
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
        check_request(size, align, REGION_GRANULE)?;
        let (mut prev, mut cur) = (core::ptr::null_mut::<Run>(), self.runs);
        while !cur.is_null() {
            // SAFETY: `prev` is null or the run before `cur`, a run of the list.
            if let Some(p) = unsafe { self.take(prev, cur, size, align) } {
                return Ok(p);
            }
            // SAFETY: a run of the list.
            (prev, cur) = (cur, unsafe { (*cur).next });
        }
        Err(PagesError::Exhausted { size, align })
    }

    const COMMITTED: bool = true;

    unsafe fn deallocate_pages(&mut self, ptr: NonNull<u8>, size: usize) {
        let addr = ptr.as_ptr() as usize;
        let (mut prev, mut cur) = (core::ptr::null_mut::<Run>(), self.runs);
        while !cur.is_null() && (cur as usize) < addr {
            // SAFETY: a run of the list.
            (prev, cur) = (cur, unsafe { (*cur).next });
        }
        // SAFETY: `[addr, addr + size)` is ours again (the caller's promise)
        // and lies between `prev` and `cur`; merging with a neighbour that
        // touches it only grows that run over free memory.
        unsafe {
            let (mut len, mut next) = (size, cur);
            if !cur.is_null() && addr + size == cur as usize {
                len += (*cur).size;
                next = (*cur).next;
            }
            if !prev.is_null() && prev as usize + (*prev).size == addr {
                (*prev).size += len;
                (*prev).next = next;
            } else {
                let run = Self::put_run(ptr.as_ptr(), len, next);
                self.relink(prev, run);
            }
        }
        self.mapped -= size;
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;
    use std::vec::Vec;

    #[test]
    fn region_source_trims_aligns_coalesces_and_reuses() {
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
        assert_eq!(src.free_runs().collect::<Vec<_>>(), [(start, len)]);
        // Everything coalesced: the whole window is one run again.
        let all = src.allocate_pages(len, REGION_GRANULE).unwrap();
        assert_eq!(all.as_ptr() as usize, start);
    }
}
