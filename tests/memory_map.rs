//! Layer −2's memory maps on the host: random maps (unsorted, overlapping,
//! unaligned, empty, at and past the 52-bit limit and `u64::MAX`) give
//! exactly the frames the documented rule manages, or the typed error a
//! corrupt map is.
#![cfg(all(feature = "paging", target_arch = "x86_64"))]

use std::mem::MaybeUninit;

use proptest::prelude::*;
use strata::frame::{BuddyAllocator, MemoryKind, MemoryMapError, MemoryRegion, PhysRange};
use x86_64::PhysAddr;

// ---------------------------------------------------------------------------
// Property test: random memory maps (unsorted, overlapping, unaligned, empty,
// at and past the 52-bit limit and u64::MAX) against a model of the managed
// frames. The documented rule: a frame is managed iff it lies wholly inside a
// usable entry and overlaps no non-usable entry and no reserved range (an
// empty range overlaps nothing); a corrupt map is the MemoryMapError that
// `validate_map` documents, from every function taking a map.
// ---------------------------------------------------------------------------

const FRAME: u64 = strata::frame::FRAME_SIZE;
const LIMIT: u64 = 1 << 52;
const MIB: u64 = 1 << 20;
/// Addresses are drawn in two windows of this size: from 0, and up to 2^52.
const WINDOW: u64 = 32 * MIB;
/// Largest span (in frames) built and compared frame by frame.
const MODEL_FRAMES: u64 = 1 << 14;

fn kind() -> impl Strategy<Value = MemoryKind> {
    prop_oneof![
        5 => Just(MemoryKind::Usable),
        2 => Just(MemoryKind::Reserved),
        1 => Just(MemoryKind::AcpiReclaimable),
        1 => prop_oneof![Just(MemoryKind::AcpiNvs), Just(MemoryKind::Bad), any::<u32>().prop_map(MemoryKind::from_e820)],
    ]
}

/// An address inside `[base, base + WINDOW)`: frame-aligned, next to a frame
/// edge, or anywhere.
fn near(base: u64) -> impl Strategy<Value = u64> {
    let frames = WINDOW / FRAME;
    prop_oneof![
        (0..frames).prop_map(move |f| base + f * FRAME),
        (0..frames, prop_oneof![Just(1), Just(FRAME / 2), Just(FRAME - 1)])
            .prop_map(move |(f, d)| base + f * FRAME + d),
        (0..WINDOW).prop_map(move |a| base + a),
    ]
}

/// A start address a `PhysAddr` can hold: low, or just below 2^52.
fn start() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => near(0),
        2 => near(LIMIT - WINDOW),
        1 => prop_oneof![Just(0), Just(LIMIT - FRAME), Just(LIMIT - 1), Just(LIMIT - 4 * MIB)],
    ]
}

/// A length that keeps `[start, start + len)` inside 52 bits.
fn valid_len(start: u64) -> impl Strategy<Value = u64> {
    let room = LIMIT - start;
    prop_oneof![
        2 => Just(0),
        6 => 0..=(8 * MIB).min(room),
        4 => (1..=2048u64).prop_map(move |f| (f * FRAME).min(room)),
        1 => Just(room),
    ]
}

/// Any length: valid ones, and ends past 2^52, at u64::MAX and past it.
fn any_len(start: u64) -> impl Strategy<Value = u64> {
    let room = LIMIT - start;
    prop_oneof![
        8 => valid_len(start),
        1 => (1..=2 * FRAME).prop_map(move |d| room + d),
        1 => Just(u64::MAX - start),
        1 => (1..=2 * FRAME).prop_map(move |d| (u64::MAX - start).saturating_add(d)),
        1 => Just(u64::MAX),
        1 => any::<u64>(),
    ]
}

fn entry(len: fn(u64) -> BoxedStrategy<u64>) -> impl Strategy<Value = MemoryRegion> {
    (start(), kind()).prop_flat_map(move |(start, kind)| {
        len(start).prop_map(move |len| MemoryRegion { start: PhysAddr::new(start), len, kind })
    })
}

/// A map of disjoint usable and non-usable runs over the window at `base`
/// (valid by construction), with non-usable entries, empty entries and the
/// odd entry of any kind, corrupt or far away, thrown over it; shuffled.
fn mostly_valid_map(base: u64) -> impl Strategy<Value = Vec<MemoryRegion>> {
    let runs = prop::collection::vec((near(base), kind()), 1..8).prop_map(|mut cuts| {
        cuts.sort_by_key(|c| c.0);
        cuts.windows(2)
            .filter(|w| w[0].1 != MemoryKind::Reserved) // a hole in the map
            .map(|w| MemoryRegion { start: PhysAddr::new(w[0].0), len: w[1].0 - w[0].0, kind: w[0].1 })
            .collect::<Vec<_>>()
    });
    let blocker = entry(|s| valid_len(s).boxed()).prop_map(|mut e| {
        if e.kind == MemoryKind::Usable {
            e.kind = MemoryKind::Bad;
        }
        e
    });
    let empty = (start(), kind()).prop_map(|(start, kind)| MemoryRegion {
        start: PhysAddr::new(start),
        len: 0,
        kind,
    });
    let odd = prop_oneof![entry(|s| any_len(s).boxed()), entry(|s| valid_len(s).boxed())];
    (
        runs,
        prop::collection::vec(blocker, 0..4),
        prop::collection::vec(empty, 0..3),
        proptest::option::weighted(0.3, odd),
    )
        .prop_flat_map(|(mut map, blockers, empties, odd)| {
            map.extend(blockers);
            map.extend(empties);
            map.extend(odd);
            Just(map).prop_shuffle()
        })
}

fn memory_map() -> impl Strategy<Value = Vec<MemoryRegion>> {
    prop_oneof![
        4 => mostly_valid_map(0),
        1 => mostly_valid_map(LIMIT - WINDOW),
        1 => prop::collection::vec(entry(|s| any_len(s).boxed()), 0..8),
    ]
}

/// Reserved ranges: low or high, empty, and inverted (`end < start`, empty too).
fn reserved_ranges() -> impl Strategy<Value = Vec<PhysRange>> {
    let range = (
        start(),
        prop_oneof![3 => 0..=(2 * MIB), 1 => Just(0u64), 1 => (1..=64u64).prop_map(|f| f * FRAME)],
        any::<bool>(),
    )
        .prop_map(|(start, len, inverted)| {
            let end = start.saturating_add(len).min(LIMIT - 1);
            let (start, end) = if inverted && end > start { (end, start) } else { (start, end) };
            PhysRange { start: PhysAddr::new(start), end: PhysAddr::new(end) }
        });
    prop::collection::vec(range, 0..4)
}

fn bounds(r: &MemoryRegion) -> (u128, u128) {
    (u128::from(r.start.as_u64()), u128::from(r.start.as_u64()) + u128::from(r.len))
}

/// The model of `validate_map`: the frame numbers `[base, end)` the metadata spans.
fn model_span(map: &[MemoryRegion]) -> Result<(u64, u64), MemoryMapError> {
    if let Some(region) = map.iter().find(|r| bounds(r).1 > u128::from(LIMIT)) {
        return Err(MemoryMapError::EntryOverflows { region: *region });
    }
    let usable: Vec<&MemoryRegion> = map.iter().filter(|r| r.kind == MemoryKind::Usable).collect();
    for (i, a) in usable.iter().enumerate() {
        for b in &usable[i + 1..] {
            let ((a0, a1), (b0, b1)) = (bounds(a), bounds(b));
            if a0 < a1 && b0 < b1 && a0 < b1 && b0 < a1 {
                return Err(MemoryMapError::UsableOverlap { a: **a, b: **b });
            }
        }
    }
    let frames = usable.iter().map(|r| {
        let (s, e) = bounds(r);
        (s.div_ceil(u128::from(FRAME)) as u64, (e / u128::from(FRAME)) as u64)
    });
    let (lo, hi) =
        frames.filter(|(f, e)| f < e).fold((u64::MAX, 0), |(lo, hi), (f, e)| (lo.min(f), hi.max(e)));
    if lo >= hi {
        return Err(MemoryMapError::NoUsableMemory);
    }
    let base = lo / 1024 * 1024;
    if hi - base >= u64::from(u32::MAX) {
        return Err(MemoryMapError::TooManyFrames { frames: hi - base });
    }
    Ok((base, hi))
}

/// The non-empty ranges nothing may be handed out from or placed in.
fn blockers(map: &[MemoryRegion], reserved: &[PhysRange]) -> Vec<(u128, u128)> {
    let unusable = map.iter().filter(|r| r.kind != MemoryKind::Usable).map(bounds);
    let reserved = reserved.iter().map(|r| (u128::from(r.start.as_u64()), u128::from(r.end.as_u64())));
    unusable.chain(reserved).filter(|(s, e)| s < e).collect()
}

/// The documented rule, frame by frame.
fn model_managed(map: &[MemoryRegion], reserved: &[PhysRange], (base, end): (u64, u64)) -> Vec<u64> {
    let blockers = blockers(map, reserved);
    (base..end)
        .map(|pfn| u128::from(pfn * FRAME))
        .filter(|&a| {
            let inside = map
                .iter()
                .filter(|r| r.kind == MemoryKind::Usable)
                .map(bounds)
                .any(|(s, e)| s <= a && a + 4096 <= e);
            inside && !blockers.iter().any(|&(s, e)| s < a + 4096 && a < e)
        })
        .map(|a| a as u64)
        .collect()
}

fn fits(map: &[MemoryRegion], blockers: &[(u128, u128)], start: u128, size: u64) -> bool {
    let end = start + u128::from(size);
    let inside =
        map.iter().filter(|r| r.kind == MemoryKind::Usable).map(bounds).any(|(s, e)| s <= start && end <= e);
    inside && (size == 0 || !blockers.iter().any(|&(s, e)| s < end && start < e))
}

fn check_memory_map(map: &[MemoryRegion], reserved: &[PhysRange], short: u64, size: u64, align: u64) {
    let span = model_span(map);
    assert_eq!(strata::frame::validate_map(map), span.map(drop));
    assert_eq!(BuddyAllocator::metadata_len(map), span.map(|(base, end)| (end - base) as usize));

    // find_free_range: the map's error, or a range that fits; and when every
    // usable entry is low, None only if no aligned start fits.
    let found = strata::frame::find_free_range(map, reserved, size, align);
    match span {
        Err(e) => assert_eq!(found, Err(e)),
        Ok(_) => {
            let blockers = blockers(map, reserved);
            match found.unwrap() {
                Some(at) => {
                    assert_eq!(at.as_u64() % align, 0, "misaligned");
                    assert!(
                        fits(map, &blockers, u128::from(at.as_u64()), size),
                        "{size:#x} at {at:?} does not fit"
                    );
                }
                None => {
                    // Try every aligned start when the usable entries lie close together.
                    let usable = map.iter().filter(|r| r.kind == MemoryKind::Usable && r.len > 0).map(bounds);
                    let (lo, hi) = usable.fold((u128::MAX, 0), |(lo, hi), (s, e)| (lo.min(s), hi.max(e)));
                    if hi.saturating_sub(lo) <= u128::from(2 * WINDOW) && align >= FRAME {
                        let align = u128::from(align);
                        // (A start is a physical address: below the limit,
                        // even for an empty range.)
                        let free = (lo / align..=hi / align)
                            .map(|i| i * align)
                            .filter(|&s| s < u128::from(LIMIT))
                            .find(|&s| fits(map, &blockers, s, size));
                        assert_eq!(free, None, "find_free_range missed {size:#x} bytes");
                    }
                }
            }
        }
    }

    // new: the model's error, or exactly the model's frames.
    let (provided, expected) = match span {
        Err(e) => (0, Err(e)),
        Ok((base, end)) => {
            let needed = end - base;
            let provided = needed.saturating_sub(short).min(MODEL_FRAMES);
            if provided < needed {
                (
                    provided,
                    Err(MemoryMapError::MetadataTooSmall {
                        needed: needed as usize,
                        provided: provided as usize,
                    }),
                )
            } else {
                let frames = model_managed(map, reserved, (base, end));
                (provided, if frames.is_empty() { Err(MemoryMapError::NoUsableMemory) } else { Ok(frames) })
            }
        }
    };
    let mut meta = vec![MaybeUninit::uninit(); provided as usize];
    // SAFETY: the frames are synthetic; nothing ever touches them.
    let built = unsafe { BuddyAllocator::new(map, reserved, &mut meta) };
    let (mut buddy, frames) = match (built, expected) {
        (Ok(buddy), Ok(frames)) => (buddy, frames),
        (built, expected) => {
            assert_eq!(built.map(drop).err(), expected.err(), "BuddyAllocator::new");
            return;
        }
    };
    buddy.check_invariants();
    assert_eq!(buddy.managed_frames(), frames.len(), "managed frames");
    assert_eq!(buddy.free_frames(), frames.len());
    let mut handed = Vec::new();
    while let Ok(frame) = buddy.allocate(0) {
        handed.push(frame);
    }
    let mut addrs: Vec<u64> = handed.iter().map(|f| f.start_address().as_u64()).collect();
    addrs.sort_unstable();
    assert_eq!(addrs, frames, "the frames handed out are not the managed ones");
    for frame in handed.iter().rev() {
        buddy.deallocate(*frame, 0).unwrap();
    }
    buddy.check_invariants();
    assert_eq!(buddy.free_frames(), frames.len());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn memory_maps_give_exactly_the_documented_frames_or_a_typed_error(
        map in memory_map(),
        reserved in reserved_ranges(),
        short in prop_oneof![6 => Just(0u64), 1 => 1..64u64, 1 => Just(u64::MAX)],
        size in prop_oneof![Just(0u64), 1..=(4 * MIB), (1..=1024u64).prop_map(|f| f * FRAME), 4 * MIB..=WINDOW],
        align in prop_oneof![Just(1u64), (12..=21u32).prop_map(|s| 1u64 << s)],
    ) {
        check_memory_map(&map, &reserved, short, size, align);
    }
}
