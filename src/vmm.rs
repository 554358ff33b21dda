//! # Layer −1: the paging virtual memory manager
//!
//! **Takes from below:** 4 KiB frames from layer −2 (any
//! [`FrameAllocator`] + [`FrameDeallocator`], in the kernel the
//! [`BuddyAllocator`](crate::frame::BuddyAllocator)), and the kernel's page
//! tables through x86_64's [`OffsetPageTable`].
//!
//! **Gives above:** whole pages inside one dedicated virtual range (the kernel
//! heap range). A [`Region`] is first *reserved* (address space only, with a
//! requested power-of-two alignment), then its pages are *mapped* to fresh
//! zeroed frames, *protected*, *unmapped* (frames and emptied page-table
//! frames go back to layer −2) and finally *released*. Layers 0 and +2 take
//! their memory from here through their page-source trait.
//!
//! ```text
//!  heap range ┌───┬──────────┬───┬────────────────────┬───┬─────┄
//!             │ G │ region A │ G │      region B      │ G │ free
//!             └───┴──────────┴───┴────────────────────┴───┴─────┄
//!               G = unmapped guard page, never part of any region
//! ```
//!
//! **Invariants:** regions are kept sorted and disjoint in a fixed table of
//! `N` entries (this layer sits below the heap, so it never allocates);
//! between two regions, and before the first, lies at least one page that is
//! never mapped; a page is mapped only inside a region; `mapped_pages` counts
//! exactly the pages mapped through this VMM. Every L4, L3 and L2 entry this
//! VMM creates is present and writable (not no-execute, not user), so the
//! last-level entry alone decides what a page allows, and [`Vmm::protect`]
//! needs to change nothing else.
//!
//! **Costs:** reserving is a first-fit scan of the sorted table, O(regions);
//! looking up the region of an address (the page-fault handler does it) is a
//! binary search; map, unmap and protect are O(pages).
//!
//! Every unmap and change of rights is followed by a TLB flush through the
//! function given at construction (`invlpg` and a shootdown in the kernel,
//! nothing in host tests, where the tables live in ordinary memory and are
//! never loaded); a new mapping of a page that was not present needs none.

use core::fmt;

use bitflags::bitflags;
use x86_64::structures::paging::mapper::{
    CleanUp, MapToError, MappedFrame, Mapper, MapperFlush, TranslateResult,
};
use x86_64::structures::paging::page::PageRange;
use x86_64::structures::paging::{
    FrameAllocator, FrameDeallocator, OffsetPageTable, Page, PageTableFlags, PhysFrame, Size4KiB, Translate,
};
use x86_64::{PhysAddr, VirtAddr};

/// Size of one page in bytes.
pub const PAGE_SIZE: u64 = 4096;

/// Flags of the L4, L3 and L2 entries above a mapped page: they allow
/// everything a page may be given, and the L1 entry restricts. (x86_64's
/// `map_to` would copy the first page's rights into new parent tables, and a
/// page later made writable under a read-only parent would stay read-only.)
const PARENT_FLAGS: PageTableFlags = PageTableFlags::PRESENT.union(PageTableFlags::WRITABLE);

bitflags! {
    /// Access rights of mapped pages. Pages are always readable.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct PageFlags: u8 {
        /// Writes are allowed.
        const WRITABLE = 1 << 0;
        /// Instruction fetches are allowed (otherwise the page is no-execute
        /// where the CPU supports it).
        const EXECUTABLE = 1 << 1;
    }
}

/// A reserved range of whole pages inside the heap range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First page.
    pub start: Page,
    /// Number of pages.
    pub pages: u64,
}

impl Region {
    /// One past the last byte.
    pub fn end(&self) -> VirtAddr {
        self.start.start_address() + self.pages * PAGE_SIZE
    }

    /// All pages of the region.
    pub fn range(&self) -> PageRange {
        Page::range(self.start, self.start + self.pages)
    }

    /// Whether `addr` lies inside the region.
    pub fn contains(&self, addr: VirtAddr) -> bool {
        self.start.start_address() <= addr && addr < self.end()
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{:#x}..{:#x}) ({} pages)",
            self.start.start_address().as_u64(),
            self.end().as_u64(),
            self.pages
        )
    }
}

/// What a virtual address is, as far as this VMM knows (for fault reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressInfo {
    /// Outside the heap range: not this VMM's business.
    Outside,
    /// In the heap range but in no region and no guard page.
    Unreserved,
    /// A guard page: the unmapped page after `after` (an overflow) and/or
    /// before `before` (an underflow).
    Guard {
        /// The region that ends right below this page.
        after: Option<Region>,
        /// The region that starts right above this page.
        before: Option<Region>,
    },
    /// Inside a region, on a page that is not mapped.
    Unmapped {
        /// The region.
        region: Region,
    },
    /// Inside a region, on a mapped page.
    Mapped {
        /// The region.
        region: Region,
        /// Whether the page is writable.
        writable: bool,
    },
}

impl fmt::Display for AddressInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Outside => write!(f, "outside the kernel heap range"),
            Self::Unreserved => write!(f, "an unreserved page of the kernel heap range"),
            Self::Guard { after: Some(r), .. } => write!(f, "the guard page after region {r}"),
            Self::Guard { after: None, before: Some(r) } => {
                write!(f, "the guard page before region {r}")
            }
            Self::Guard { after: None, before: None } => write!(f, "a guard page"),
            Self::Unmapped { region } => write!(f, "an unmapped page of region {region}"),
            Self::Mapped { region, writable } => write!(
                f,
                "a mapped {} page of region {region}",
                if *writable { "writable" } else { "read-only" }
            ),
        }
    }
}

/// Why [`Vmm::reserve`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReserveError {
    /// Zero pages, or an alignment that is not a power of two of at least a page.
    InvalidRequest {
        /// Pages asked for.
        pages: u64,
        /// Alignment asked for, in bytes.
        align: u64,
    },
    /// No gap in the heap range is large enough.
    AddressSpaceExhausted {
        /// Pages asked for.
        pages: u64,
    },
    /// The region table is full.
    TooManyRegions {
        /// Its capacity.
        capacity: usize,
    },
}

impl fmt::Display for ReserveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidRequest { pages, align } => {
                write!(f, "invalid reservation: {pages} pages aligned to {align} bytes")
            }
            Self::AddressSpaceExhausted { pages } => {
                write!(f, "no gap of {pages} pages left in the heap's address range")
            }
            Self::TooManyRegions { capacity } => write!(f, "the region table is full ({capacity} regions)"),
        }
    }
}

impl core::error::Error for ReserveError {}

/// Why [`Vmm::map`], [`Vmm::unmap`], [`Vmm::protect`] or [`Vmm::release`] failed.
/// Nothing was changed when one of these is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageError {
    /// The pages do not lie inside one reserved region.
    NotReserved {
        /// First page of the request.
        start: Page,
        /// Pages in the request.
        pages: u64,
    },
    /// A page to map is mapped already.
    AlreadyMapped {
        /// The page.
        page: Page,
    },
    /// A page to unmap or protect is not mapped.
    NotMapped {
        /// The page.
        page: Page,
    },
    /// Layer −2 ran out of frames (for data or for page tables).
    OutOfFrames,
}

impl fmt::Display for PageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotReserved { start, pages } => {
                write!(f, "{pages} pages at {:#x} are not inside one region", start.start_address().as_u64())
            }
            Self::AlreadyMapped { page } => {
                write!(f, "page {:#x} is already mapped", page.start_address().as_u64())
            }
            Self::NotMapped { page } => {
                write!(f, "page {:#x} is not mapped", page.start_address().as_u64())
            }
            Self::OutOfFrames => write!(f, "out of physical frames"),
        }
    }
}

impl core::error::Error for PageError {}

/// Counters of the VMM, for reports and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmmStats {
    /// Regions reserved.
    pub regions: usize,
    /// Pages reserved in those regions.
    pub reserved_pages: u64,
    /// Pages currently mapped.
    pub mapped_pages: u64,
    /// Page-table frames this VMM allocated and has not yet freed.
    pub table_frames: u64,
}

/// Counts the frames the mapper takes and gives back for page tables.
struct Counting<'f, F> {
    inner: &'f mut F,
    allocated: u64,
    freed: u64,
}

// SAFETY: forwards to an allocator that upholds the contract itself.
unsafe impl<F: FrameAllocator<Size4KiB>> FrameAllocator<Size4KiB> for Counting<'_, F> {
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        let frame = self.inner.allocate_frame()?;
        self.allocated += 1;
        Some(frame)
    }
}

impl<F: FrameDeallocator<Size4KiB>> FrameDeallocator<Size4KiB> for Counting<'_, F> {
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame) {
        self.freed += 1;
        // SAFETY: our caller (the mapper's clean-up) upholds the contract.
        unsafe { self.inner.deallocate_frame(frame) }
    }
}

/// The VMM: a page-table mapper, a heap range, and a fixed table of up to `N` regions.
pub struct Vmm<'pt, const N: usize = 512> {
    mapper: OffsetPageTable<'pt>,
    heap: PageRange,
    flush: fn(VirtAddr),
    no_execute: bool,
    regions: [Region; N],
    len: usize,
    stats: VmmStats,
}

impl<const N: usize> fmt::Debug for Vmm<'_, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vmm").field("heap", &self.heap).field("stats", &self.stats).finish()
    }
}

impl<'pt, const N: usize> Vmm<'pt, N> {
    /// Creates a VMM that manages `heap` through `mapper`.
    ///
    /// `flush` is called with the address of every page whose mapping was
    /// removed or changed — not for a new mapping of a page that was not
    /// present, which no TLB holds — (`x86_64::instructions::tlb::flush`
    /// when `mapper` is the live page table, plus a shootdown of the other
    /// CPUs' TLBs on several CPUs). `no_execute` says whether `EFER.NXE` is on, so that pages
    /// without [`PageFlags::EXECUTABLE`] may be marked no-execute.
    ///
    /// # Panics
    ///
    /// If `heap` crosses the hole of non-canonical addresses between the
    /// lower and the upper half: no region could be placed across it.
    ///
    /// # Safety
    ///
    /// Nothing else may map, unmap or use any page of `heap` while the VMM
    /// lives, and `mapper` must give exclusive access to valid page tables
    /// whose frames are reachable at its physical-memory offset. No page
    /// table may exist yet whose entries all lie in `heap` (a level-3 table
    /// installed ahead of time, to be shared between address spaces, say):
    /// the VMM gives back to the frame allocator its calls are given every
    /// table under `heap` that its unmaps leave empty, and it would give
    /// that one back too.
    pub unsafe fn new(
        mapper: OffsetPageTable<'pt>,
        heap: PageRange,
        flush: fn(VirtAddr),
        no_execute: bool,
    ) -> Self {
        // The lower half ends at 2^47, the upper half starts at -2^47.
        const LOWER_END: u64 = 1 << 47;
        assert!(
            heap.is_empty()
                || (heap.start.start_address().as_u64() < LOWER_END)
                    == (heap.end.start_address().as_u64().wrapping_sub(PAGE_SIZE) < LOWER_END),
            "strata::vmm: the heap range {heap:?} crosses the non-canonical hole"
        );
        let empty = Region { start: heap.start, pages: 0 };
        Self { mapper, heap, flush, no_execute, regions: [empty; N], len: 0, stats: VmmStats::default() }
    }

    /// The heap range this VMM manages.
    pub fn heap_range(&self) -> PageRange {
        self.heap
    }

    /// Current counters.
    pub fn stats(&self) -> VmmStats {
        self.stats
    }

    /// The reserved regions, sorted by address.
    pub fn regions(&self) -> &[Region] {
        &self.regions[..self.len]
    }

    /// Reserves `pages` pages of address space whose start is aligned to
    /// `align` bytes (a power of two, at least [`PAGE_SIZE`]), with an
    /// unmapped guard page on both sides. Nothing is mapped yet.
    pub fn reserve(&mut self, pages: u64, align: u64) -> Result<Region, ReserveError> {
        self.reserve_in(pages, align, self.heap.start.start_address(), self.heap.end.start_address())
    }

    /// [`reserve`](Self::reserve), with the region lying inside
    /// `[low, high)` (clipped to the heap range): how a page source with a
    /// window of its own takes its pages.
    pub fn reserve_in(
        &mut self,
        pages: u64,
        align: u64,
        low: VirtAddr,
        high: VirtAddr,
    ) -> Result<Region, ReserveError> {
        if pages == 0 || !align.is_power_of_two() || align < PAGE_SIZE {
            return Err(ReserveError::InvalidRequest { pages, align });
        }
        if self.len == N {
            return Err(ReserveError::TooManyRegions { capacity: N });
        }
        let size = pages.checked_mul(PAGE_SIZE).ok_or(ReserveError::AddressSpaceExhausted { pages })?;
        let heap_start = self.heap.start.start_address().as_u64().max(low.as_u64());
        let heap_end = self.heap.end.start_address().as_u64().min(high.as_u64());
        if heap_end <= heap_start {
            return Err(ReserveError::AddressSpaceExhausted { pages });
        }
        let mut low = heap_start; // end of the previous region (or the window start)
        for slot in 0..=self.len {
            let high = match self.regions.get(slot).filter(|_| slot < self.len) {
                Some(r) => r.start.start_address().as_u64().min(heap_end),
                None => heap_end,
            };
            if high <= heap_start {
                // Regions below the window: skip to the first one inside it.
                low = self.regions[slot].end().as_u64().max(heap_start);
                continue;
            }
            // One guard page after the previous region and one before the next.
            let Some(start) = (low + PAGE_SIZE).checked_next_multiple_of(align) else {
                break;
            };
            let fits = start.checked_add(size).and_then(|e| e.checked_add(PAGE_SIZE));
            if fits.is_some_and(|end| end <= high) {
                let region = Region { start: Page::containing_address(VirtAddr::new(start)), pages };
                self.regions.copy_within(slot..self.len, slot + 1);
                self.regions[slot] = region;
                self.len += 1;
                self.stats.regions += 1;
                self.stats.reserved_pages += pages;
                return Ok(region);
            }
            if slot < self.len {
                low = self.regions[slot].end().as_u64().max(low);
            }
            if low >= heap_end {
                break;
            }
        }
        Err(ReserveError::AddressSpaceExhausted { pages })
    }

    /// Index of the region that contains all of `pages` (at least one) from
    /// `start`. Any count is safe: it is compared with the pages the region
    /// has left from `start`, never multiplied or added.
    fn region_index(&self, start: Page, pages: u64) -> Result<usize, PageError> {
        let err = PageError::NotReserved { start, pages };
        let i = self.find(start.start_address()).ok_or(err)?;
        let r = &self.regions[i];
        let left = r.pages - (start - r.start);
        (1..=left).contains(&pages).then_some(i).ok_or(err)
    }

    /// Index of the region containing `addr`, by binary search.
    fn find(&self, addr: VirtAddr) -> Option<usize> {
        let regions = self.regions();
        let i = regions.partition_point(|r| r.start.start_address() <= addr);
        (i > 0 && regions[i - 1].contains(addr)).then(|| i - 1)
    }

    fn is_mapped(&self, page: Page) -> bool {
        !matches!(
            self.mapper.translate(page.start_address()),
            TranslateResult::NotMapped | TranslateResult::InvalidFrameAddress(_)
        )
    }

    fn table_flags(&self, flags: PageFlags) -> PageTableFlags {
        let mut out = PageTableFlags::PRESENT;
        if flags.contains(PageFlags::WRITABLE) {
            out |= PageTableFlags::WRITABLE;
        }
        if self.no_execute && !flags.contains(PageFlags::EXECUTABLE) {
            out |= PageTableFlags::NO_EXECUTE;
        }
        out
    }

    /// Invalidates the TLB entry of `page` through the configured function.
    fn flushed(&self, flush: MapperFlush<Size4KiB>, page: Page) {
        flush.ignore();
        (self.flush)(page.start_address());
    }

    /// Maps `pages` pages from `start`, all inside one region and all unmapped,
    /// each to a fresh zeroed frame from `frames`. On failure every page
    /// mapped so far is unmapped again and its frame given back.
    pub fn map<F>(
        &mut self,
        start: Page,
        pages: u64,
        flags: PageFlags,
        frames: &mut F,
    ) -> Result<(), PageError>
    where
        F: FrameAllocator<Size4KiB> + FrameDeallocator<Size4KiB>,
    {
        self.region_index(start, pages)?;
        if let Some(page) = (0..pages).map(|i| start + i).find(|p| self.is_mapped(*p)) {
            return Err(PageError::AlreadyMapped { page });
        }
        let table_flags = self.table_flags(flags);
        for i in 0..pages {
            if let Err(e) = self.map_one(start + i, table_flags, frames) {
                // Roll back: the pages before `i` were all mapped here, and the
                // failed page may have left new, empty page tables behind.
                self.unmap_unchecked(start, i, frames);
                self.clean_up(start, pages, frames);
                return Err(e);
            }
        }
        Ok(())
    }

    fn map_one<F>(&mut self, page: Page, flags: PageTableFlags, frames: &mut F) -> Result<(), PageError>
    where
        F: FrameAllocator<Size4KiB> + FrameDeallocator<Size4KiB>,
    {
        let frame = frames.allocate_frame().ok_or(PageError::OutOfFrames)?;
        let phys = self.mapper.phys_offset() + frame.start_address().as_u64();
        // SAFETY: the frame was just handed to us by layer −2, so it is unused
        // RAM, and it is reachable at the mapper's physical-memory offset.
        unsafe { core::ptr::write_bytes(phys.as_mut_ptr::<u8>(), 0, PAGE_SIZE as usize) };
        let mut counting = Counting { inner: frames, allocated: 0, freed: 0 };
        // SAFETY: the page lies in a region of the heap range, which nothing
        // else uses (constructor contract), and it is not mapped yet; the frame
        // is fresh, so no other page aliases it. The parent entries allow more
        // than the page, which only its own entry's flags then restrict.
        let result =
            unsafe { self.mapper.map_to_with_table_flags(page, frame, flags, PARENT_FLAGS, &mut counting) };
        let tables = counting.allocated;
        match result {
            Ok(flush) => {
                self.stats.table_frames += tables;
                self.stats.mapped_pages += 1;
                // A page that was not present is in no TLB (x86 caches no
                // not-present translation), so a new mapping needs no
                // flush, here or on any other CPU; unmapping and changing
                // rights do.
                flush.ignore();
                Ok(())
            }
            Err(e) => {
                self.stats.table_frames += tables;
                // SAFETY: the frame was never mapped.
                unsafe { frames.deallocate_frame(frame) };
                match e {
                    MapToError::FrameAllocationFailed => Err(PageError::OutOfFrames),
                    _ => Err(PageError::AlreadyMapped { page }),
                }
            }
        }
    }

    /// Unmaps `pages` pages from `start` (inside one region, all mapped),
    /// gives their frames back, and frees page-table frames left empty.
    pub fn unmap<F>(&mut self, start: Page, pages: u64, frames: &mut F) -> Result<(), PageError>
    where
        F: FrameAllocator<Size4KiB> + FrameDeallocator<Size4KiB>,
    {
        self.region_index(start, pages)?;
        if let Some(page) = (0..pages).map(|i| start + i).find(|p| !self.is_mapped(*p)) {
            return Err(PageError::NotMapped { page });
        }
        self.unmap_unchecked(start, pages, frames);
        Ok(())
    }

    /// Unmaps pages known to be mapped, then frees emptied page tables.
    fn unmap_unchecked<F>(&mut self, start: Page, pages: u64, frames: &mut F)
    where
        F: FrameDeallocator<Size4KiB>,
    {
        for i in 0..pages {
            let page = start + i;
            let Ok((frame, flush)) = self.mapper.unmap(page) else {
                unreachable!("page {:#x} was checked to be mapped", page.start_address().as_u64());
            };
            self.flushed(flush, page);
            self.stats.mapped_pages -= 1;
            // SAFETY: the frame came from `frames` when the page was mapped,
            // and the page that used it is no longer mapped.
            unsafe { frames.deallocate_frame(frame) };
        }
        self.clean_up(start, pages, frames);
    }

    /// Frees the page tables left empty under `pages` pages from `start`.
    fn clean_up<F: FrameDeallocator<Size4KiB>>(&mut self, start: Page, pages: u64, frames: &mut F) {
        if pages == 0 {
            return;
        }
        let mut counting = Counting { inner: frames, allocated: 0, freed: 0 };
        // SAFETY: only tables under the heap range are considered, which this
        // VMM alone populated; the mapper frees only tables whose every entry
        // is unused.
        unsafe {
            self.mapper.clean_up_addr_range(Page::range_inclusive(start, start + (pages - 1)), &mut counting)
        };
        self.stats.table_frames -= counting.freed;
    }

    /// Changes the access rights of `pages` mapped pages from `start`.
    pub fn protect(&mut self, start: Page, pages: u64, flags: PageFlags) -> Result<(), PageError> {
        self.region_index(start, pages)?;
        if let Some(page) = (0..pages).map(|i| start + i).find(|p| !self.is_mapped(*p)) {
            return Err(PageError::NotMapped { page });
        }
        let table_flags = self.table_flags(flags);
        for i in 0..pages {
            // SAFETY: the page is mapped (checked above) in a region this VMM
            // owns; changing its rights cannot break memory safety of Rust
            // code that respects them.
            match unsafe { self.mapper.update_flags(start + i, table_flags) } {
                Ok(flush) => self.flushed(flush, start + i),
                Err(_) => unreachable!("page was checked to be mapped"),
            }
        }
        Ok(())
    }

    /// Unmaps whatever is still mapped in `region`, gives the frames back, and
    /// returns its address space.
    pub fn release<F>(&mut self, region: Region, frames: &mut F) -> Result<(), PageError>
    where
        F: FrameAllocator<Size4KiB> + FrameDeallocator<Size4KiB>,
    {
        let i = self.region_index(region.start, region.pages)?;
        if self.regions[i] != region {
            return Err(PageError::NotReserved { start: region.start, pages: region.pages });
        }
        for page in region.range() {
            if self.is_mapped(page) {
                self.unmap_unchecked(page, 1, frames);
            }
        }
        self.regions.copy_within(i + 1..self.len, i);
        self.len -= 1;
        self.stats.regions -= 1;
        self.stats.reserved_pages -= region.pages;
        Ok(())
    }

    /// Reserves and maps a region in one step (see [`reserve`](Self::reserve)
    /// and [`map`](Self::map)); nothing stays reserved if mapping fails.
    pub fn allocate<F>(
        &mut self,
        pages: u64,
        align: u64,
        flags: PageFlags,
        frames: &mut F,
    ) -> Result<Region, AllocateError>
    where
        F: FrameAllocator<Size4KiB> + FrameDeallocator<Size4KiB>,
    {
        let heap = (self.heap.start.start_address(), self.heap.end.start_address());
        self.allocate_in(pages, align, flags, frames, heap)
    }

    /// The physical address `addr` is mapped to, if it is.
    pub fn translate(&self, addr: VirtAddr) -> Option<PhysAddr> {
        self.mapper.translate_addr(addr)
    }

    /// [`allocate`](Self::allocate) inside `[low, high)`.
    pub fn allocate_in<F>(
        &mut self,
        pages: u64,
        align: u64,
        flags: PageFlags,
        frames: &mut F,
        (low, high): (VirtAddr, VirtAddr),
    ) -> Result<Region, AllocateError>
    where
        F: FrameAllocator<Size4KiB> + FrameDeallocator<Size4KiB>,
    {
        let region = self.reserve_in(pages, align, low, high).map_err(AllocateError::Reserve)?;
        if let Err(e) = self.map(region.start, pages, flags, frames) {
            self.release(region, frames).expect("the region was just reserved");
            return Err(AllocateError::Map(e));
        }
        Ok(region)
    }

    /// The region that starts at `addr`, if any.
    pub fn region_at(&self, addr: VirtAddr) -> Option<Region> {
        let i = self.find(addr)?;
        (self.regions[i].start.start_address() == addr).then_some(self.regions[i])
    }

    /// What `addr` is: mapped, unmapped, a guard page, or not in a region.
    pub fn lookup(&self, addr: VirtAddr) -> AddressInfo {
        let start = self.heap.start.start_address();
        let end = self.heap.end.start_address();
        if addr < start || addr >= end {
            return AddressInfo::Outside;
        }
        if let Some(i) = self.find(addr) {
            let region = self.regions[i];
            let page = Page::<Size4KiB>::containing_address(addr);
            return match self.mapper.translate(page.start_address()) {
                TranslateResult::Mapped { flags, frame: MappedFrame::Size4KiB(_), .. } => {
                    AddressInfo::Mapped { region, writable: flags.contains(PageTableFlags::WRITABLE) }
                }
                _ => AddressInfo::Unmapped { region },
            };
        }
        let page = Page::<Size4KiB>::containing_address(addr).start_address();
        let regions = self.regions();
        let after = regions.iter().copied().find(|r| r.end() == page);
        let before = regions.iter().copied().find(|r| r.start.start_address() == page + PAGE_SIZE);
        if after.is_some() || before.is_some() || page == start {
            AddressInfo::Guard { after, before }
        } else {
            AddressInfo::Unreserved
        }
    }

    /// Checks the region table, panicking on a broken invariant.
    pub fn check_invariants(&self) {
        let mut low = self.heap.start.start_address();
        let mut pages = 0;
        for r in self.regions() {
            assert!(r.pages > 0, "empty region");
            assert!(r.start.start_address() > low, "regions overlap or lack a guard page");
            low = r.end();
            assert!(
                low < self.heap.end.start_address(),
                "region past the heap range or without a guard page"
            );
            pages += r.pages;
        }
        assert_eq!(pages, self.stats.reserved_pages, "reserved page count");
        assert_eq!(self.len, self.stats.regions, "region count");
    }
}

/// Why [`Vmm::allocate`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocateError {
    /// No address space.
    Reserve(ReserveError),
    /// The pages could not be mapped.
    Map(PageError),
}

impl fmt::Display for AllocateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reserve(e) => write!(f, "no address space: {e}"),
            Self::Map(e) => write!(f, "the pages could not be mapped: {e}"),
        }
    }
}

impl core::error::Error for AllocateError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Reserve(e) => Some(e),
            Self::Map(e) => Some(e),
        }
    }
}
