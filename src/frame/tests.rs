//! Unit tests of the frame allocator: memory maps, buddy splits and merges, errors.

extern crate std;
use super::*;
use std::vec::Vec;

const MIB: u64 = 1 << 20;

fn region(start: u64, len: u64) -> MemoryRegion {
    MemoryRegion { start: PhysAddr::new(start), len, kind: MemoryKind::Usable }
}

fn build<'m>(
    map: &[MemoryRegion],
    reserved: &[PhysRange],
    meta: &'m mut Vec<MaybeUninit<FrameMeta>>,
) -> BuddyAllocator<'m> {
    meta.resize(BuddyAllocator::metadata_len(map).expect("valid map"), MaybeUninit::uninit());
    // SAFETY: the frames are synthetic; nothing ever touches them.
    let buddy = unsafe { BuddyAllocator::new(map, reserved, meta) }.expect("valid map");
    buddy.check_invariants();
    buddy
}

#[test]
fn exhaustion_and_refill_merge_back_to_top_order() {
    let map = [region(0, 16 * MIB)];
    let mut meta = Vec::new();
    let mut buddy = build(&map, &[], &mut meta);
    assert_eq!(buddy.free_blocks()[MAX_ORDER], 4);
    let mut frames = Vec::new();
    while let Ok(f) = buddy.allocate(0) {
        frames.push(f);
    }
    assert_eq!(frames.len(), 4096);
    assert_eq!(buddy.allocate(0), Err(AllocateError::OutOfMemory { order: 0 }));
    let mut sorted: Vec<u64> = frames.iter().map(|f| f.start_address().as_u64()).collect();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 4096, "a frame was handed out twice");
    // Free in an interleaved order so merges happen late.
    for f in frames.iter().step_by(2).chain(frames.iter().skip(1).step_by(2)) {
        buddy.deallocate(*f, 0).unwrap();
    }
    buddy.check_invariants();
    assert_eq!(buddy.free_blocks(), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4]);
}

#[test]
fn holes_reserved_and_unaligned_edges_are_never_handed_out() {
    let map = [
        region(0x1800, MIB - 0x1800 + 0x123), // unaligned both ends
        MemoryRegion { start: PhysAddr::new(MIB), len: MIB, kind: MemoryKind::Reserved },
        region(2 * MIB, 6 * MIB),
    ];
    let kernel = PhysRange::new(PhysAddr::new(3 * MIB + 0x800), 0x3000);
    let mut meta = Vec::new();
    let mut buddy = build(&map, &[kernel], &mut meta);
    let expected = (MIB - 0x2000) / FRAME_SIZE + (6 * MIB) / FRAME_SIZE - 4;
    assert_eq!(buddy.managed_frames() as u64, expected);
    let mut seen = Vec::new();
    while let Ok(f) = buddy.allocate(0) {
        let a = f.start_address().as_u64();
        assert!(a >= 0x2000, "frame below the usable start");
        assert!(!(MIB..2 * MIB).contains(&a), "frame in the reserved entry");
        assert!(!(3 * MIB..3 * MIB + 0x4000).contains(&a), "frame in the kernel image");
        seen.push(a);
    }
    assert_eq!(seen.len() as u64, expected);
}

#[test]
fn every_deallocate_error_is_typed_and_changes_nothing() {
    let map = [region(0, 8 * MIB), region(12 * MIB, 4 * MIB)];
    let mut meta = Vec::new();
    let mut buddy = build(&map, &[PhysRange::new(PhysAddr::new(0), MIB)], &mut meta);
    let block = buddy.allocate(3).unwrap();
    let base = block.start_address();
    let free_before = buddy.free_frames();
    let frame = |a: u64| PhysFrame::containing_address(PhysAddr::new(a));
    assert_eq!(buddy.deallocate(block, 11), Err(DeallocateError::InvalidOrder { order: 11 }));
    assert_eq!(
        buddy.deallocate(frame(base.as_u64() + FRAME_SIZE), 3),
        Err(DeallocateError::Misaligned { frame: base + FRAME_SIZE, order: 3 })
    );
    assert_eq!(
        buddy.deallocate(frame(base.as_u64() + FRAME_SIZE), 0),
        Err(DeallocateError::InsideBlock { frame: base + FRAME_SIZE, block: base, order: 3 })
    );
    assert_eq!(
        buddy.deallocate(block, 2),
        Err(DeallocateError::WrongOrder { frame: base, allocated: 3, given: 2 })
    );
    assert_eq!(
        buddy.deallocate(frame(0x5000), 0),
        Err(DeallocateError::NotOwned { frame: PhysAddr::new(0x5000) })
    );
    assert_eq!(
        buddy.deallocate(frame(9 * MIB), 0),
        Err(DeallocateError::NotOwned { frame: PhysAddr::new(9 * MIB) })
    );
    assert_eq!(
        buddy.deallocate(frame(64 * MIB), 0),
        Err(DeallocateError::OutOfRange { frame: PhysAddr::new(64 * MIB) })
    );
    // A frame inside a free block, and a freed block freed again.
    assert_eq!(
        buddy.deallocate(frame(14 * MIB + 3 * FRAME_SIZE), 0),
        Err(DeallocateError::DoubleFree { frame: PhysAddr::new(14 * MIB + 3 * FRAME_SIZE) })
    );
    assert_eq!(buddy.free_frames(), free_before, "an error changed the allocator");
    buddy.check_invariants();
    buddy.deallocate(block, 3).unwrap();
    assert_eq!(buddy.deallocate(block, 3), Err(DeallocateError::DoubleFree { frame: base }));
    buddy.check_invariants();
}

#[test]
fn corrupt_maps_are_rejected() {
    let mut meta = Vec::new();
    meta.resize(4096, MaybeUninit::uninit());
    let overlap = [region(0, 2 * MIB), region(MIB, 2 * MIB)];
    // SAFETY: synthetic frames, never touched.
    let err = unsafe { BuddyAllocator::new(&overlap, &[], &mut meta) }.unwrap_err();
    assert!(matches!(err, MemoryMapError::UsableOverlap { .. }));
    let overflow = [region(1 << 40, u64::MAX - 100)];
    // SAFETY: as above.
    let err = unsafe { BuddyAllocator::new(&overflow, &[], &mut meta) }.unwrap_err();
    assert!(matches!(err, MemoryMapError::EntryOverflows { .. }));
    let tiny = [region(0x10, 0x100)];
    // SAFETY: as above.
    let err = unsafe { BuddyAllocator::new(&tiny, &[], &mut meta) }.unwrap_err();
    assert_eq!(err, MemoryMapError::NoUsableMemory);
    let big = [region(0, 64 * MIB)];
    // SAFETY: as above.
    let err = unsafe { BuddyAllocator::new(&big, &[], &mut meta) }.unwrap_err();
    assert_eq!(err, MemoryMapError::MetadataTooSmall { needed: 16384, provided: 4096 });
}

const LIMIT: u64 = 1 << 52;

fn entry(start: u64, len: u64, kind: MemoryKind) -> MemoryRegion {
    MemoryRegion { start: PhysAddr::new(start), len, kind }
}

/// Every frame `buddy` hands out, by address, then all given back.
fn drain(buddy: &mut BuddyAllocator<'_>) -> Vec<u64> {
    let mut frames = Vec::new();
    while let Ok(f) = buddy.allocate(0) {
        frames.push(f);
    }
    for f in &frames {
        buddy.deallocate(*f, 0).unwrap();
    }
    buddy.check_invariants();
    let mut addrs: Vec<u64> = frames.iter().map(|f| f.start_address().as_u64()).collect();
    addrs.sort_unstable();
    addrs
}

#[test]
fn entries_ending_at_the_52_bit_limit_are_valid() {
    // The top 8 MiB, the upper half of it reserved by the map.
    let map = [region(LIMIT - 8 * MIB, 8 * MIB), entry(LIMIT - 4 * MIB, 4 * MIB, MemoryKind::Reserved)];
    let mut meta = Vec::new();
    let mut buddy = build(&map, &[], &mut meta);
    assert_eq!(buddy.managed_frames(), 1024);
    let frames = drain(&mut buddy);
    assert_eq!((frames[0], frames[1023]), (LIMIT - 8 * MIB, LIMIT - 4 * MIB - FRAME_SIZE));
    // Usable RAM at both ends of the address space spans 2^40 frames:
    // more than 32-bit frame indices name, a typed error.
    let both = [region(LIMIT - 4 * MIB, 4 * MIB), region(0, 4 * MIB)];
    let mut small = [MaybeUninit::uninit(); 16];
    // SAFETY: synthetic frames, never touched.
    let err = unsafe { BuddyAllocator::new(&both, &[], &mut small) }.unwrap_err();
    assert_eq!(err, MemoryMapError::TooManyFrames { frames: 1 << 40 });
}

#[test]
fn empty_entries_and_reserved_ranges_take_no_frame() {
    let map = [region(0, 4 * MIB), entry(0x1800, 0, MemoryKind::Reserved), entry(0x5000, 0, MemoryKind::Bad)];
    let reserved = [PhysRange::new(PhysAddr::new(0x3800), 0), PhysRange::new(PhysAddr::new(0x8000), 0)];
    let mut meta = Vec::new();
    let mut buddy = build(&map, &reserved, &mut meta);
    assert_eq!(buddy.managed_frames(), 1024, "an empty range removed a frame");
    assert_eq!(drain(&mut buddy), (0..1024).map(|i| i * FRAME_SIZE).collect::<Vec<_>>());
    assert_eq!(find_free_range(&map, &reserved, 4 * MIB, FRAME_SIZE), Ok(Some(PhysAddr::zero())));
}

#[test]
fn find_free_range_looks_after_non_usable_entries_inside_usable_ones() {
    let map = [region(0, 16 * MIB), entry(0, MIB, MemoryKind::Reserved)];
    assert_eq!(find_free_range(&map, &[], MIB, FRAME_SIZE), Ok(Some(PhysAddr::new(MIB))));
    // Overlapping non-usable entries: the free space starts after the last.
    let map =
        [region(0, 16 * MIB), entry(0, 2 * MIB, MemoryKind::AcpiNvs), entry(MIB, 3 * MIB, MemoryKind::Bad)];
    assert_eq!(find_free_range(&map, &[], 12 * MIB, 2 * MIB), Ok(Some(PhysAddr::new(4 * MIB))));
    assert_eq!(find_free_range(&map, &[], 12 * MIB + 1, FRAME_SIZE), Ok(None));
}

#[test]
fn corrupt_maps_are_the_same_error_from_every_function_taking_a_map() {
    let overflowing = [region(1 << 40, u64::MAX - 100)];
    let past_52_bits = [region(0, 1 << 60)];
    let overlap = [region(0, 2 * MIB), entry(8 * MIB, MIB, MemoryKind::Bad), region(MIB, 2 * MIB)];
    let no_frame = [region(0x10, 0x100), entry(0, 64 * MIB, MemoryKind::Reserved)];
    let too_many = [region(0, 4 * MIB), region(1 << 45, 4 * MIB)];
    let cases = [
        (&overflowing[..], MemoryMapError::EntryOverflows { region: overflowing[0] }),
        (&past_52_bits, MemoryMapError::EntryOverflows { region: past_52_bits[0] }),
        (&overlap, MemoryMapError::UsableOverlap { a: overlap[0], b: overlap[2] }),
        (&no_frame, MemoryMapError::NoUsableMemory),
        (&too_many, MemoryMapError::TooManyFrames { frames: (1 << 33) + 1024 }),
    ];
    let mut meta = [MaybeUninit::uninit(); 16];
    for (map, err) in cases {
        assert_eq!(validate_map(map), Err(err));
        assert_eq!(BuddyAllocator::metadata_len(map), Err(err));
        assert_eq!(find_free_range(map, &[], FRAME_SIZE, FRAME_SIZE), Err(err));
        // SAFETY: synthetic frames, never touched.
        assert_eq!(unsafe { BuddyAllocator::new(map, &[], &mut meta) }.unwrap_err(), err);
    }
}

#[test]
fn find_free_range_avoids_reserved_and_unusable_memory() {
    let map = [
        region(0, 2 * MIB),
        MemoryRegion { start: PhysAddr::new(2 * MIB), len: MIB, kind: MemoryKind::Reserved },
        region(3 * MIB, 4 * MIB),
    ];
    let reserved = [PhysRange::new(PhysAddr::new(0), MIB), PhysRange::new(PhysAddr::new(3 * MIB), 0x5000)];
    let at = |size| find_free_range(&map, &reserved, size, FRAME_SIZE).unwrap().map(|a| a.as_u64());
    assert_eq!(at(MIB), Some(MIB));
    assert_eq!(at(MIB + 1), Some(3 * MIB + 0x5000));
    assert_eq!(at(4 * MIB), None);
}

#[test]
fn higher_orders_are_naturally_aligned_and_split_lazily() {
    let map = [region(MIB, 7 * MIB)]; // 1 MiB..8 MiB: not 4 MiB aligned at the start
    let mut meta = Vec::new();
    let mut buddy = build(&map, &[], &mut meta);
    for order in 0..=MAX_ORDER {
        if let Ok(f) = buddy.allocate(order) {
            let pfn = f.start_address().as_u64() / FRAME_SIZE;
            assert_eq!(pfn % (1 << order), 0, "order {order} block misaligned");
            buddy.check_invariants();
        }
    }
    assert_eq!(buddy.allocate(MAX_ORDER + 1), Err(AllocateError::InvalidOrder { order: 11 }));
}
