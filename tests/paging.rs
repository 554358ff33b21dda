//! Layers −2 and −1 on the host: the buddy allocator feeds a VMM whose page
//! tables live in an ordinary buffer that plays the part of physical memory.
#![cfg(all(feature = "paging", target_arch = "x86_64"))]

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::mem::MaybeUninit;

use proptest::prelude::*;
use strata::frame::{BuddyAllocator, MemoryKind, MemoryRegion, PhysRange};
use strata::vmm::{AddressInfo, PAGE_SIZE, PageError, PageFlags, ReserveError, Vmm};
use x86_64::structures::paging::page::PageRange;
use x86_64::structures::paging::{OffsetPageTable, Page, PageTable, PageTableFlags, PhysFrame};
use x86_64::{PhysAddr, VirtAddr};

const PHYS: usize = 16 << 20;
const HEAP_START: u64 = 0xffff_c000_0000_0000;
const HEAP_PAGES: u64 = 1 << 20; // 4 GiB of address space

/// Simulated physical memory: physical address `p` is `base + p` on the host.
struct PhysMem {
    base: *mut u8,
    /// The frame of the L4 table the VMM maps through.
    l4: PhysAddr,
}

impl PhysMem {
    fn new() -> Self {
        let layout = Layout::from_size_align(PHYS, 4096).unwrap();
        // SAFETY: non-zero size.
        let base = unsafe { alloc_zeroed(layout) };
        assert!(!base.is_null());
        Self { base, l4: PhysAddr::zero() }
    }
    fn byte(&self, frame: PhysFrame, offset: usize) -> u8 {
        // SAFETY: every frame the buddy hands out lies inside the buffer.
        unsafe { *self.base.add(frame.start_address().as_u64() as usize + offset) }
    }
}

impl Drop for PhysMem {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.base, Layout::from_size_align(PHYS, 4096).unwrap()) }
    }
}

fn no_flush(_: VirtAddr) {}

fn with_stack(test: impl FnOnce(&PhysMem, &mut BuddyAllocator<'_>, &mut Vmm<'_, 64>)) {
    with_heap(HEAP_PAGES, |mem, frames, vmm| {
        test(mem, frames, vmm);
        vmm.check_invariants();
        frames.check_invariants();
    });
}

/// A buddy allocator over the simulated memory and a VMM whose heap range
/// is `heap_pages` pages from `HEAP_START`.
fn with_heap(heap_pages: u64, test: impl FnOnce(&PhysMem, &mut BuddyAllocator<'_>, &mut Vmm<'_, 64>)) {
    let mut mem = PhysMem::new();
    let map = [MemoryRegion { start: PhysAddr::new(0), len: PHYS as u64, kind: MemoryKind::Usable }];
    let mut meta = vec![MaybeUninit::uninit(); BuddyAllocator::metadata_len(&map).unwrap()];
    let first_page = [PhysRange::new(PhysAddr::new(0), 4096)];
    // SAFETY: the buffer is ours and unused.
    let mut frames = unsafe { BuddyAllocator::new(&map, &first_page, &mut meta) }.unwrap();
    let l4_frame = frames.allocate(0).unwrap();
    mem.l4 = l4_frame.start_address();
    // SAFETY: the frame lies in the zeroed buffer and is used for nothing else.
    let l4 = unsafe { &mut *(mem.base.add(l4_frame.start_address().as_u64() as usize) as *mut PageTable) };
    // SAFETY: the tables live in `mem`, reachable at this offset.
    let mapper = unsafe { OffsetPageTable::new(l4, VirtAddr::from_ptr(mem.base)) };
    let start = Page::containing_address(VirtAddr::new(HEAP_START));
    // SAFETY: nothing else uses this address range; the tables are never loaded.
    let mut vmm = unsafe { Vmm::<64>::new(mapper, Page::range(start, start + heap_pages), no_flush, true) };
    test(&mem, &mut frames, &mut vmm);
}

/// The four entries (L4, L3, L2, L1) on the way to `page`, read from the
/// simulated physical memory, or `None` where the walk meets an entry that
/// is not present.
fn walk(mem: &PhysMem, page: Page) -> Option<[PageTableFlags; 4]> {
    let indices = [page.p4_index(), page.p3_index(), page.p2_index(), page.p1_index()];
    let mut table = mem.l4;
    let mut path = [PageTableFlags::empty(); 4];
    for (level, index) in indices.into_iter().enumerate() {
        // SAFETY: `table` is a page-table frame inside the buffer: the L4
        // frame, or the address of a present entry the VMM wrote.
        let entry = &unsafe { &*(mem.base.add(table.as_u64() as usize) as *const PageTable) }[index];
        if !entry.flags().contains(PageTableFlags::PRESENT) {
            return None;
        }
        assert!(!entry.flags().contains(PageTableFlags::HUGE_PAGE), "the VMM maps 4 KiB pages only");
        path[level] = entry.flags();
        table = entry.addr();
    }
    Some(path)
}

/// What the CPU allows on a page whose walk met `path`: writes only if
/// every level allows them, user access likewise, execution unless some
/// level forbids it. `(writable, user, executable)`.
fn effective(path: [PageTableFlags; 4]) -> (bool, bool, bool) {
    let all = |f| path.iter().all(|e| e.contains(f));
    (
        all(PageTableFlags::WRITABLE),
        all(PageTableFlags::USER_ACCESSIBLE),
        !path.iter().any(|e| e.contains(PageTableFlags::NO_EXECUTE)),
    )
}

#[test]
fn map_unmap_returns_every_frame_including_page_tables() {
    with_stack(|mem, frames, vmm| {
        let free_before = frames.free_frames();
        let region = vmm.reserve(300, 2 << 20).unwrap();
        assert_eq!(region.start.start_address().as_u64() % (2 << 20), 0, "alignment ignored");
        vmm.map(region.start, 300, PageFlags::WRITABLE, frames).unwrap();
        let stats = vmm.stats();
        assert_eq!(stats.mapped_pages, 300);
        assert!(stats.table_frames >= 3, "an L3, an L2 and at least one L1 were needed");
        assert_eq!(frames.free_frames(), free_before - 300 - stats.table_frames as usize);
        // Each page is mapped to a distinct, zeroed frame.
        let mut seen = std::collections::HashSet::new();
        for page in region.range() {
            let phys = vmm_translate(vmm, page);
            assert!(seen.insert(phys), "two pages share a frame");
            let frame = PhysFrame::containing_address(phys);
            assert!(frames.is_allocated(frame));
            assert_eq!(mem.byte(frame, 17), 0);
        }
        vmm.unmap(region.start, 300, frames).unwrap();
        assert_eq!(vmm.stats().mapped_pages, 0);
        assert_eq!(vmm.stats().table_frames, 0, "emptied page tables were not freed");
        assert_eq!(frames.free_frames(), free_before, "frames leaked");
        vmm.release(region, frames).unwrap();
        assert_eq!(vmm.stats().regions, 0);
    });
}

fn vmm_translate(vmm: &Vmm<'_, 64>, page: Page) -> PhysAddr {
    match vmm.lookup(page.start_address()) {
        AddressInfo::Mapped { .. } => {}
        other => panic!("page not mapped: {other:?}"),
    }
    vmm.translate(page.start_address()).expect("mapped")
}

#[test]
fn guard_pages_separate_regions_and_lookup_names_them() {
    with_stack(|_, frames, vmm| {
        let a = vmm.reserve(3, PAGE_SIZE).unwrap();
        let b = vmm.reserve(5, PAGE_SIZE).unwrap();
        assert_eq!(a.start.start_address().as_u64(), HEAP_START + PAGE_SIZE, "no leading guard");
        assert!(b.start.start_address() >= a.end() + PAGE_SIZE, "no guard between regions");
        vmm.map(a.start, 3, PageFlags::WRITABLE, frames).unwrap();
        assert_eq!(vmm.lookup(a.end()), AddressInfo::Guard { after: Some(a), before: Some(b) });
        assert_eq!(
            vmm.lookup(VirtAddr::new(HEAP_START)),
            AddressInfo::Guard { after: None, before: Some(a) }
        );
        assert_eq!(
            vmm.lookup(a.start.start_address() + 5u64),
            AddressInfo::Mapped { region: a, writable: true }
        );
        assert_eq!(vmm.lookup(b.start.start_address()), AddressInfo::Unmapped { region: b });
        assert_eq!(vmm.lookup(b.end() + 10 * PAGE_SIZE), AddressInfo::Unreserved);
        assert_eq!(vmm.lookup(VirtAddr::new(0x1000)), AddressInfo::Outside);
        vmm.protect(a.start, 3, PageFlags::empty()).unwrap();
        assert_eq!(vmm.lookup(a.start.start_address()), AddressInfo::Mapped { region: a, writable: false });
        // Releasing a region unmaps what is left and frees its address space for reuse.
        let free = frames.free_frames();
        vmm.release(a, frames).unwrap();
        assert_eq!(frames.free_frames(), free + 3 + 3, "3 data frames and 3 tables back");
        let c = vmm.reserve(2, PAGE_SIZE).unwrap();
        assert_eq!(c.start, a.start, "first fit should reuse the released gap");
    });
}

#[test]
fn page_errors_are_typed_and_change_nothing() {
    with_stack(|_, frames, vmm| {
        let r = vmm.reserve(4, PAGE_SIZE).unwrap();
        assert!(matches!(vmm.reserve(0, PAGE_SIZE), Err(ReserveError::InvalidRequest { .. })));
        assert!(matches!(vmm.reserve(1, 3000), Err(ReserveError::InvalidRequest { .. })));
        assert!(matches!(
            vmm.reserve(HEAP_PAGES, PAGE_SIZE),
            Err(ReserveError::AddressSpaceExhausted { .. })
        ));
        vmm.map(r.start, 2, PageFlags::WRITABLE, frames).unwrap();
        let free = frames.free_frames();
        assert_eq!(
            vmm.map(r.start + 1, 2, PageFlags::WRITABLE, frames),
            Err(PageError::AlreadyMapped { page: r.start + 1 })
        );
        assert_eq!(vmm.unmap(r.start, 3, frames), Err(PageError::NotMapped { page: r.start + 2 }));
        assert!(matches!(
            vmm.map(r.start + 3, 2, PageFlags::WRITABLE, frames),
            Err(PageError::NotReserved { .. })
        ));
        assert!(matches!(vmm.protect(r.start + 2, 1, PageFlags::WRITABLE), Err(PageError::NotMapped { .. })));
        assert_eq!(frames.free_frames(), free, "a failed call changed the frames");
        assert_eq!(vmm.stats().mapped_pages, 2);
    });
}

#[test]
fn running_out_of_frames_rolls_back_the_whole_map() {
    with_stack(|_, frames, vmm| {
        let pages = frames.free_frames() as u64 + 10;
        let free = frames.free_frames();
        let r = vmm.reserve(pages, PAGE_SIZE).unwrap();
        assert_eq!(vmm.map(r.start, pages, PageFlags::WRITABLE, frames), Err(PageError::OutOfFrames));
        assert_eq!(frames.free_frames(), free, "frames lost in a failed map");
        assert_eq!(vmm.stats().mapped_pages, 0);
        assert_eq!(vmm.stats().table_frames, 0);
        let err = vmm.allocate(pages, PAGE_SIZE, PageFlags::WRITABLE, frames).unwrap_err();
        assert!(matches!(err, strata::vmm::AllocateError::Map(PageError::OutOfFrames)));
        assert_eq!(vmm.stats().regions, 1, "allocate left a region behind");
    });
}

#[test]
fn region_table_capacity_is_a_typed_error() {
    with_stack(|_, _, vmm| {
        for _ in 0..64 {
            vmm.reserve(1, PAGE_SIZE).unwrap();
        }
        assert_eq!(vmm.reserve(1, PAGE_SIZE), Err(ReserveError::TooManyRegions { capacity: 64 }));
    });
}

#[test]
fn reserve_in_keeps_regions_inside_their_window() {
    with_stack(|_, frames, vmm| {
        let low = VirtAddr::new(HEAP_START + (1 << 30));
        let high = low + (64u64 << 20);
        let outside = vmm.reserve(4, PAGE_SIZE).unwrap();
        let a = vmm.allocate_in(256, 1 << 20, PageFlags::WRITABLE, frames, (low, high)).unwrap();
        let b = vmm.allocate_in(256, 1 << 20, PageFlags::WRITABLE, frames, (low, high)).unwrap();
        for r in [a, b] {
            assert!(r.start.start_address() >= low && r.end() <= high, "{r} outside the window");
            assert_eq!(r.start.start_address().as_u64() % (1 << 20), 0);
        }
        assert!(b.start.start_address() >= a.end() + PAGE_SIZE, "no guard page between a and b");
        assert_eq!(vmm.region_at(a.start.start_address()), Some(a));
        assert_eq!(vmm.region_at(a.start.start_address() + PAGE_SIZE), None);
        // 64 MiB, 1 MiB regions aligned to 1 MiB, a guard page on each side:
        // every other MiB, and not the last one (its guard would fall outside).
        let mut n = 2;
        while vmm.reserve_in(256, 1 << 20, low, high).is_ok() {
            n += 1;
        }
        assert_eq!(n, 31);
        assert!(vmm.reserve_in(1, PAGE_SIZE, high, low).is_err(), "an empty window must fail");
        vmm.release(outside, frames).unwrap();
        vmm.release(a, frames).unwrap();
        vmm.release(b, frames).unwrap();
    });
}

#[test]
fn a_map_that_fails_on_a_page_table_frees_the_tables_it_built() {
    with_stack(|_, frames, vmm| {
        // Nothing is mapped yet: the page needs a fresh L3, L2 and L1.
        let r = vmm.reserve(1, 1 << 30).unwrap();
        let free = frames.free_frames();
        // Leave exactly two frames: the data frame and the L3 succeed, the L2 fails.
        let mut hoard = Vec::new();
        while frames.free_frames() > 2 {
            hoard.push(frames.allocate(0).unwrap());
        }
        assert_eq!(vmm.map(r.start, 1, PageFlags::WRITABLE, frames), Err(PageError::OutOfFrames));
        assert_eq!(vmm.stats().table_frames, 0, "tables built by the failed map were kept");
        assert_eq!(frames.free_frames(), 2, "frames lost in the failed map");
        for f in hoard {
            frames.deallocate(f, 0).unwrap();
        }
        assert_eq!(frames.free_frames(), free);
    });
}

#[test]
fn protect_to_writable_makes_the_page_writable_at_every_level() {
    with_stack(|mem, frames, vmm| {
        // The first page mapped: the L3, L2 and L1 tables are created here,
        // by a read-only map.
        let r = vmm.reserve(1, PAGE_SIZE).unwrap();
        vmm.map(r.start, 1, PageFlags::empty(), frames).unwrap();
        assert_eq!(effective(walk(mem, r.start).unwrap()), (false, false, false));
        vmm.protect(r.start, 1, PageFlags::WRITABLE).unwrap();
        assert_eq!(vmm.lookup(r.start.start_address()), AddressInfo::Mapped { region: r, writable: true });
        let path = walk(mem, r.start).unwrap();
        for (level, flags) in ["L4", "L3", "L2"].into_iter().zip(path) {
            assert!(flags.contains(PageTableFlags::WRITABLE), "{level} entry not writable: {flags:?}");
            assert!(!flags.contains(PageTableFlags::NO_EXECUTE), "{level} entry no-execute: {flags:?}");
            assert!(!flags.contains(PageTableFlags::USER_ACCESSIBLE), "{level} entry user: {flags:?}");
        }
        assert_eq!(effective(path), (true, false, false), "writable, kernel-only, no-execute");
        vmm.protect(r.start, 1, PageFlags::WRITABLE | PageFlags::EXECUTABLE).unwrap();
        assert_eq!(effective(walk(mem, r.start).unwrap()), (true, false, true));
        vmm.protect(r.start, 1, PageFlags::empty()).unwrap();
        assert_eq!(effective(walk(mem, r.start).unwrap()), (false, false, false));
        vmm.release(r, frames).unwrap();
        assert_eq!(walk(mem, r.start), None);
    });
}

#[test]
fn huge_page_counts_are_typed_errors_that_change_nothing() {
    with_stack(|_, frames, vmm| {
        let r = vmm.reserve(4, PAGE_SIZE).unwrap();
        vmm.map(r.start, 2, PageFlags::WRITABLE, frames).unwrap();
        let (free, stats) = (frames.free_frames(), vmm.stats());
        for pages in
            [u64::MAX, u64::MAX / PAGE_SIZE + 1, 1 << 52, (1 << 52) + 1, (1 << 40) + 1, 1 << 36, 5, 0]
        {
            for start in [r.start, r.start + 1, r.start + 3] {
                let err = Err(PageError::NotReserved { start, pages });
                assert_eq!(vmm.map(start, pages, PageFlags::WRITABLE, frames), err, "map {pages}");
                assert_eq!(vmm.unmap(start, pages, frames), err, "unmap {pages}");
                assert_eq!(vmm.protect(start, pages, PageFlags::empty()), err, "protect {pages}");
                let bogus = strata::vmm::Region { start, pages };
                assert_eq!(vmm.release(bogus, frames), err, "release {pages}");
            }
        }
        assert_eq!((frames.free_frames(), vmm.stats()), (free, stats), "a failed call changed something");
        assert_eq!(vmm.regions(), [r]);
        vmm.release(r, frames).unwrap();
    });
}

#[test]
fn an_empty_heap_range_passes_its_invariants_and_reserves_nothing() {
    with_heap(0, |_, frames, vmm| {
        assert_eq!(
            vmm.heap_range(),
            PageRange { start: vmm.heap_range().start, end: vmm.heap_range().start }
        );
        vmm.check_invariants();
        assert_eq!(vmm.reserve(1, PAGE_SIZE), Err(ReserveError::AddressSpaceExhausted { pages: 1 }));
        assert_eq!(vmm.lookup(VirtAddr::new(HEAP_START)), AddressInfo::Outside);
        vmm.check_invariants();
        frames.check_invariants();
    });
}

// ---------------------------------------------------------------------------
// Property test: the VMM against a shadow model of regions, mapped pages and
// their effective rights, read back from the page tables at all four levels.
// ---------------------------------------------------------------------------

/// A page count: a number, the pages a region has left from the start page,
/// or the run of mapped pages from it (at least one).
#[derive(Clone, Copy, Debug)]
enum Count {
    N(u64),
    Rest,
    Mapped,
}

#[derive(Clone, Debug)]
enum Op {
    Reserve {
        pages: u64,
        align: u64,
    },
    /// Pages of the `region`-th live region (modulo their number; the heap
    /// start, in no region, when there is none) from page `offset`.
    Map {
        region: usize,
        offset: u64,
        count: Count,
        flags: PageFlags,
    },
    Unmap {
        region: usize,
        offset: u64,
        count: Count,
    },
    Protect {
        region: usize,
        offset: u64,
        count: Count,
        flags: PageFlags,
    },
    /// The `region`-th live region, or a bogus one: its start with `pages`.
    Release {
        region: usize,
        pages: Option<u64>,
    },
}

fn huge_count() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(u64::MAX),
        Just(u64::MAX / PAGE_SIZE + 1),
        Just(1 << 52),
        Just((1 << 52) + 1),
        Just((1 << 40) + 1),
        Just(1 << 36),
        Just(HEAP_PAGES),
        Just(0),
    ]
}

fn count() -> impl Strategy<Value = Count> {
    prop_oneof![
        6 => Just(Count::Rest),
        4 => Just(Count::Mapped),
        3 => (1..8u64).prop_map(Count::N),
        1 => (8..600u64).prop_map(Count::N),
        1 => huge_count().prop_map(Count::N),
    ]
}

fn flags() -> impl Strategy<Value = PageFlags> {
    (0..4u8).prop_map(PageFlags::from_bits_truncate)
}

fn op() -> impl Strategy<Value = Op> {
    let offset = prop_oneof![6 => Just(0u64), 3 => 0..8u64, 1 => 0..700u64];
    prop_oneof![
        2 => (
            prop_oneof![6 => 1..16u64, 2 => 16..600u64, 2 => 3000..5000u64, 1 => huge_count()],
            prop_oneof![
                6 => Just(PAGE_SIZE),
                3 => (12..=32u32).prop_map(|shift| 1u64 << shift),
                1 => prop_oneof![Just(0), Just(3000), Just(PAGE_SIZE / 2), Just(1 << 63), Just(u64::MAX)],
            ],
        )
            .prop_map(|(pages, align)| Op::Reserve { pages, align }),
        4 => (any::<usize>(), offset.clone(), count(), flags())
            .prop_map(|(region, offset, count, flags)| Op::Map { region, offset, count, flags }),
        3 => (any::<usize>(), offset.clone(), count())
            .prop_map(|(region, offset, count)| Op::Unmap { region, offset, count }),
        3 => (any::<usize>(), offset, count(), flags())
            .prop_map(|(region, offset, count, flags)| Op::Protect { region, offset, count, flags }),
        1 => (any::<usize>(), proptest::option::weighted(0.3, prop_oneof![huge_count(), 1..8u64]))
            .prop_map(|(region, pages)| Op::Release { region, pages }),
    ]
}

/// What the VMM should hold: its regions and its mapped pages with their rights.
#[derive(Default)]
struct Shadow {
    regions: Vec<strata::vmm::Region>,
    mapped: std::collections::BTreeMap<Page, PageFlags>,
}

impl Shadow {
    /// First fit with a guard page on both sides, computed without overflow.
    fn reserve(&self, pages: u64, align: u64) -> Result<strata::vmm::Region, ReserveError> {
        if pages == 0 || !align.is_power_of_two() || align < PAGE_SIZE {
            return Err(ReserveError::InvalidRequest { pages, align });
        }
        if self.regions.len() == 64 {
            return Err(ReserveError::TooManyRegions { capacity: 64 });
        }
        let (page, align, size) = (u128::from(PAGE_SIZE), u128::from(align), u128::from(pages) * 4096);
        let heap_end = u128::from(HEAP_START) + u128::from(HEAP_PAGES) * page;
        let mut low = u128::from(HEAP_START);
        let gaps =
            self.regions.iter().map(|r| u128::from(r.start.start_address().as_u64())).chain([heap_end]);
        for (i, high) in gaps.enumerate() {
            let start = (low + page).div_ceil(align) * align;
            if start + size + page <= high {
                let start = Page::containing_address(VirtAddr::new(start as u64));
                return Ok(strata::vmm::Region { start, pages });
            }
            if let Some(r) = self.regions.get(i) {
                low = u128::from(r.end().as_u64());
            }
        }
        Err(ReserveError::AddressSpaceExhausted { pages })
    }

    /// The region holding `pages` pages (at least one) from `start`.
    fn region_of(&self, start: Page, pages: u64) -> Result<usize, PageError> {
        let at = start.start_address();
        self.regions
            .iter()
            .position(|r| r.contains(at) && pages >= 1 && pages <= r.pages - (start - r.start))
            .ok_or(PageError::NotReserved { start, pages })
    }

    fn pages(start: Page, pages: u64) -> impl Iterator<Item = Page> {
        (0..pages).map(move |i| start + i)
    }

    /// Page-table frames (L3, L2, L1; the L4 is the test's) needed for `pages`.
    fn tables<'a>(pages: impl Iterator<Item = &'a Page>) -> u64 {
        let mut sets = [std::collections::BTreeSet::new(), Default::default(), Default::default()];
        for page in pages {
            let a = page.start_address().as_u64();
            for (set, shift) in sets.iter_mut().zip([39, 30, 21]) {
                set.insert(a >> shift);
            }
        }
        sets.iter().map(|s| s.len() as u64).sum()
    }
}

/// Every 4 KiB leaf reachable from the L4 table: page, frame, the four entries' flags.
fn leaves(mem: &PhysMem) -> Vec<(Page, PhysAddr, [PageTableFlags; 4])> {
    fn table(mem: &PhysMem, at: PhysAddr) -> &PageTable {
        // SAFETY: page-table frames lie inside the buffer: the L4 frame or
        // the address of a present entry the VMM wrote.
        unsafe { &*(mem.base.add(at.as_u64() as usize) as *const PageTable) }
    }
    fn walk(
        mem: &PhysMem,
        at: PhysAddr,
        level: usize,
        indices: [u16; 4],
        path: [PageTableFlags; 4],
        out: &mut Vec<(Page, PhysAddr, [PageTableFlags; 4])>,
    ) {
        for (i, entry) in table(mem, at).iter().enumerate() {
            if !entry.flags().contains(PageTableFlags::PRESENT) {
                assert!(entry.is_unused(), "a non-present entry that is not empty");
                continue;
            }
            assert!(!entry.flags().contains(PageTableFlags::HUGE_PAGE), "the VMM maps 4 KiB pages only");
            let (mut indices, mut path) = (indices, path);
            indices[level] = i as u16;
            path[level] = entry.flags();
            if level == 3 {
                let [a, b, c, d] = indices.map(x86_64::structures::paging::PageTableIndex::new);
                out.push((Page::from_page_table_indices(a, b, c, d), entry.addr(), path));
            } else {
                walk(mem, entry.addr(), level + 1, indices, path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(mem, mem.l4, 0, [0; 4], [PageTableFlags::empty(); 4], &mut out);
    out
}

/// Replays `ops` on a fresh stack and on the shadow, comparing after every step.
fn run_vmm_program(ops: &[Op]) {
    with_stack(|mem, frames, vmm| {
        let mut shadow = Shadow::default();
        let free_at_start = frames.free_frames() as u64;
        for (step, op) in ops.iter().enumerate() {
            let nth = |region: usize| {
                (!shadow.regions.is_empty()).then(|| shadow.regions[region % shadow.regions.len()])
            };
            let span = |region: usize, offset: u64, count: Count| {
                let (start, left) = match nth(region) {
                    Some(r) => (r.start + offset, r.pages.saturating_sub(offset)),
                    None => (Page::containing_address(VirtAddr::new(HEAP_START)) + offset, 0),
                };
                (
                    start,
                    match count {
                        Count::N(n) => n,
                        Count::Rest => left,
                        Count::Mapped => {
                            (0..).take_while(|&i| shadow.mapped.contains_key(&(start + i))).count().max(1)
                                as u64
                        }
                    },
                )
            };
            match *op {
                Op::Reserve { pages, align } => {
                    let expected = shadow.reserve(pages, align);
                    assert_eq!(vmm.reserve(pages, align), expected, "step {step}: {op:?}");
                    if let Ok(r) = expected {
                        let at = shadow.regions.partition_point(|o| o.start < r.start);
                        shadow.regions.insert(at, r);
                    }
                }
                Op::Map { region, offset, count, flags } => {
                    let (start, pages) = span(region, offset, count);
                    let expected = shadow.region_of(start, pages).and_then(|_| {
                        if let Some(page) =
                            Shadow::pages(start, pages).find(|p| shadow.mapped.contains_key(p))
                        {
                            return Err(PageError::AlreadyMapped { page });
                        }
                        let tables_now = Shadow::tables(shadow.mapped.keys());
                        let new: Vec<Page> = Shadow::pages(start, pages).collect();
                        let tables_then = Shadow::tables(shadow.mapped.keys().chain(&new));
                        let needed = pages + tables_then - tables_now;
                        if needed > frames.free_frames() as u64 {
                            return Err(PageError::OutOfFrames);
                        }
                        Ok(new)
                    });
                    let actual = vmm.map(start, pages, flags, frames);
                    assert_eq!(actual, expected.as_ref().map(drop).map_err(|e| *e), "step {step}: {op:?}");
                    for page in expected.into_iter().flatten() {
                        shadow.mapped.insert(page, flags);
                    }
                }
                Op::Unmap { region, offset, count } | Op::Protect { region, offset, count, .. } => {
                    let (start, pages) = span(region, offset, count);
                    let expected = shadow.region_of(start, pages).and_then(|_| {
                        match Shadow::pages(start, pages).find(|p| !shadow.mapped.contains_key(p)) {
                            Some(page) => Err(PageError::NotMapped { page }),
                            None => Ok(()),
                        }
                    });
                    let actual = match *op {
                        Op::Protect { flags, .. } => vmm.protect(start, pages, flags),
                        _ => vmm.unmap(start, pages, frames),
                    };
                    assert_eq!(actual, expected, "step {step}: {op:?}");
                    if expected.is_ok() {
                        for page in Shadow::pages(start, pages) {
                            match *op {
                                Op::Protect { flags, .. } => shadow.mapped.insert(page, flags),
                                _ => shadow.mapped.remove(&page),
                            };
                        }
                    }
                }
                Op::Release { region, pages } => {
                    let target = match (nth(region), pages) {
                        (Some(r), None) => r,
                        (Some(r), Some(pages)) => strata::vmm::Region { start: r.start, pages },
                        (None, pages) => strata::vmm::Region {
                            start: Page::containing_address(VirtAddr::new(HEAP_START)),
                            pages: pages.unwrap_or(1),
                        },
                    };
                    let expected = match shadow.regions.iter().position(|r| *r == target) {
                        Some(i) => Ok(i),
                        None => Err(PageError::NotReserved { start: target.start, pages: target.pages }),
                    };
                    assert_eq!(vmm.release(target, frames), expected.map(drop), "step {step}: {op:?}");
                    if let Ok(i) = expected {
                        shadow.regions.remove(i);
                        shadow.mapped.retain(|p, _| !target.contains(p.start_address()));
                    }
                }
            }
            check_against_shadow(mem, frames, vmm, &shadow, free_at_start, step);
        }
        for r in shadow.regions.clone() {
            vmm.release(r, frames).unwrap();
        }
        assert_eq!(frames.free_frames() as u64, free_at_start, "frames not all returned");
        assert_eq!(vmm.stats().table_frames, 0);
    });
}

fn check_against_shadow(
    mem: &PhysMem,
    frames: &BuddyAllocator<'_>,
    vmm: &Vmm<'_, 64>,
    shadow: &Shadow,
    free_at_start: u64,
    step: usize,
) {
    vmm.check_invariants();
    frames.check_invariants();
    assert_eq!(vmm.regions(), shadow.regions, "step {step}: regions");
    let tables = Shadow::tables(shadow.mapped.keys());
    let stats = vmm.stats();
    assert_eq!(stats.regions, shadow.regions.len());
    assert_eq!(stats.reserved_pages, shadow.regions.iter().map(|r| r.pages).sum::<u64>());
    assert_eq!(stats.mapped_pages, shadow.mapped.len() as u64, "step {step}: mapped pages");
    assert_eq!(stats.table_frames, tables, "step {step}: page-table frames");
    assert_eq!(
        frames.free_frames() as u64,
        free_at_start - stats.mapped_pages - tables,
        "step {step}: frames"
    );
    // Exactly the shadow's pages are mapped, each to its own allocated frame,
    // with the rights the shadow gave it once all four levels are combined.
    let leaves = leaves(mem);
    assert_eq!(leaves.len(), shadow.mapped.len(), "step {step}: leaves in the page tables");
    let mut seen = std::collections::HashSet::new();
    for (page, frame, path) in leaves {
        let flags = *shadow.mapped.get(&page).unwrap_or_else(|| panic!("step {step}: stray page {page:?}"));
        let writable = flags.contains(PageFlags::WRITABLE);
        let rights = (writable, false, flags.contains(PageFlags::EXECUTABLE));
        assert_eq!(effective(path), rights, "step {step}: effective rights of {page:?}: {path:?}");
        assert!(seen.insert(frame), "step {step}: two pages share a frame");
        assert!(
            frames.is_allocated(PhysFrame::containing_address(frame)),
            "step {step}: frame not allocated"
        );
        assert_eq!(vmm.translate(page.start_address() + 5u64), Some(frame + 5u64));
        let region = *shadow.regions.iter().find(|r| r.contains(page.start_address())).expect("in a region");
        assert_eq!(vmm.lookup(page.start_address()), AddressInfo::Mapped { region, writable }, "step {step}");
    }
    for r in &shadow.regions {
        let last = r.start + (r.pages - 1);
        for page in [r.start, last] {
            if !shadow.mapped.contains_key(&page) {
                assert_eq!(vmm.lookup(page.start_address()), AddressInfo::Unmapped { region: *r });
            }
        }
        assert!(matches!(vmm.lookup(r.end()), AddressInfo::Guard { after: Some(a), .. } if a == *r));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn vmm_matches_a_shadow_model_of_pages_and_effective_rights(ops in prop::collection::vec(op(), 1..60)) {
        run_vmm_program(&ops);
    }
}

/// A heap range across the non-canonical hole is refused when the VMM is
/// made, with a message that says so, not later inside `reserve`.
#[test]
#[should_panic(expected = "crosses the non-canonical hole")]
fn a_heap_range_across_the_non_canonical_hole_is_refused() {
    let mut table = PageTable::new();
    // SAFETY: the table is never walked: the VMM refuses its range first.
    let mapper = unsafe { OffsetPageTable::new(&mut table, VirtAddr::new(0)) };
    let start = Page::containing_address(VirtAddr::new(0x7fff_fff0_0000));
    let end = Page::containing_address(VirtAddr::new(0xffff_8000_0010_0000));
    // SAFETY: as above.
    let _ = unsafe { Vmm::<4>::new(mapper, Page::range(start, end), no_flush, true) };
}
