//! Property tests: long random programs of allocate / free / reallocate /
//! allocate_zeroed, sizes 1 B to 1 MiB, alignments 1 to 4096, replayed on a
//! `Heap` and checked against a shadow model after every step. The model
//! holds each block at its usable size (`Heap::usable_size`, written to its
//! last byte), and half the frees and reallocs go without a layout.

mod common;

use std::alloc::Layout;
use std::collections::BTreeMap;
use std::ptr::NonNull;

use common::Region;
use proptest::prelude::*;
use strata::Heap;
use strata::front::{AllocateError, Layer};
use strata::segment::DeallocateError;
use strata::source::PageSource;

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        size: usize,
        align_shift: u32,
        zeroed: bool,
    },
    Free {
        which: usize,
    },
    Realloc {
        which: usize,
        size: usize,
    },
    /// C's `free`: without the layout.
    FreeUnsized {
        which: usize,
    },
    /// C's `realloc`: without the layout.
    ReallocUnsized {
        which: usize,
        size: usize,
    },
    /// Doubles one block `times` times in a row (at least to 4 KiB): a
    /// growing `Vec`, which layer 0 moves to a mapping of its own.
    Grow {
        which: usize,
        times: u32,
    },
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 1usize..=512,
        3 => 513usize..=16 << 10,
        1 => (16usize << 10)..=(1 << 20),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (size(), prop_oneof![3 => Just(0u32), 2 => 0u32..=12], any::<bool>())
            .prop_map(|(size, align_shift, zeroed)| Op::Alloc { size, align_shift, zeroed }),
        2 => any::<usize>().prop_map(|which| Op::Free { which }),
        1 => any::<usize>().prop_map(|which| Op::FreeUnsized { which }),
        1 => (any::<usize>(), size()).prop_map(|(which, size)| Op::Realloc { which, size }),
        1 => (any::<usize>(), size()).prop_map(|(which, size)| Op::ReallocUnsized { which, size }),
        1 => (any::<usize>(), 1u32..6).prop_map(|(which, times)| Op::Grow { which, times }),
    ]
}

/// Mostly small allocations, few frees: fills a small heap.
fn small_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1usize..=256, 0u32..=4).prop_map(|(size, align_shift)| Op::Alloc { size, align_shift, zeroed: false }),
        1 => ((4usize << 10)..=(64 << 10)).prop_map(|size| Op::Alloc { size, align_shift: 3, zeroed: false }),
        1 => any::<usize>().prop_map(|which| Op::Free { which }),
        1 => any::<usize>().prop_map(|which| Op::FreeUnsized { which }),
        1 => (any::<usize>(), 1usize..=256).prop_map(|(which, size)| Op::Realloc { which, size }),
    ]
}

struct Live {
    ptr: NonNull<u8>,
    layout: Layout,
    /// The bytes the block may use: its usable size, or the layout's on a
    /// heap that keeps no sizes.
    len: usize,
    seed: u8,
}

/// The byte the model expects at offset `i` of a block with `seed`; only the
/// first and last 256 bytes are written and checked, so large blocks stay cheap.
fn pattern(seed: u8, i: usize) -> u8 {
    seed.wrapping_add((i as u8).wrapping_mul(31))
}

fn checked_offsets(len: usize) -> impl Iterator<Item = usize> {
    (0..len.min(256)).chain(len.saturating_sub(256).max(256.min(len))..len)
}

fn fill(b: &Live) {
    for i in checked_offsets(b.len) {
        // SAFETY: the block is live and `layout.size()` long.
        unsafe { b.ptr.as_ptr().add(i).write(pattern(b.seed, i)) };
    }
}

fn verify(b: &Live, len: usize) {
    for i in checked_offsets(len) {
        // SAFETY: as above.
        let v = unsafe { b.ptr.as_ptr().add(i).read() };
        assert_eq!(v, pattern(b.seed, i), "block {:p} lost its contents at offset {i}", b.ptr);
    }
}

struct Model {
    live: Vec<Live>,
    ranges: BTreeMap<usize, usize>,
    seed: u8,
}

impl Model {
    /// A new block, held at its usable size where the heap keeps sizes.
    fn insert<S: PageSource>(
        &mut self,
        heap: &Heap<S>,
        region: &Region,
        ptr: NonNull<u8>,
        layout: Layout,
    ) -> Live {
        let start = ptr.as_ptr() as usize;
        assert_eq!(start % layout.align(), 0, "{layout:?} misaligned at {start:#x}");
        let len = match heap.usable_size(ptr) {
            Ok(usable) => {
                assert!(usable >= layout.size(), "usable size {usable} under the {layout:?} asked for");
                assert_eq!(heap.usable_layout(ptr).unwrap().size(), usable);
                usable
            }
            Err(DeallocateError::SizeUnknown { .. }) if heap.stats().segments.first_fit => layout.size(),
            Err(e) => panic!("no usable size for a block just allocated with {layout:?}: {e}"),
        };
        assert!(region.contains(ptr.as_ptr(), len), "block outside the region");
        let end = start + len.max(1);
        if let Some((&s, &e)) = self.ranges.range(..end).next_back() {
            assert!(e <= start || s >= end, "[{start:#x},{end:#x}) overlaps [{s:#x},{e:#x})");
        }
        self.ranges.insert(start, end);
        self.seed = self.seed.wrapping_add(37);
        Live { ptr, layout, len, seed: self.seed }
    }

    fn remove(&mut self, b: &Live) {
        self.ranges.remove(&(b.ptr.as_ptr() as usize)).expect("model knows the block");
    }
}

/// Reallocates live block `i` to `size` bytes (with its layout, or without
/// as C's `realloc`) and checks the kept prefix; returns the block's index
/// afterwards.
fn realloc<S: PageSource>(
    heap: &mut Heap<S>,
    m: &mut Model,
    region: &Region,
    i: usize,
    size: usize,
    sized: bool,
) -> usize {
    let old = &m.live[i];
    let result = if sized {
        // SAFETY: a live block of this heap with this layout.
        unsafe { heap.reallocate(old.ptr, old.layout, size) }
    } else {
        // SAFETY: a live block of this heap.
        let r = unsafe { heap.reallocate_unsized(old.ptr, size) };
        if heap.stats().segments.first_fit
            && !heap.owner(old.ptr.as_ptr()).is_some_and(|l| l == Layer::Object)
        {
            assert!(
                matches!(r, Err(AllocateError::Refused(DeallocateError::SizeUnknown { .. }))),
                "a first-fit block resized without its size: {r:?}"
            );
        }
        r
    };
    match result {
        Ok(ptr) => {
            let old = m.live.swap_remove(i);
            m.remove(&old);
            // Without a layout, the block answers to the layout the heap
            // gives it (C's `realloc` may serve more than asked: a small
            // size rounded up to `malloc`'s alignment).
            let layout = if sized {
                Layout::from_size_align(size, old.layout.align()).unwrap()
            } else {
                let usable = heap.usable_layout(ptr).expect("the block a realloc returned");
                assert!(usable.size() >= size, "{usable:?} is short of {size}");
                // (16, as `malloc`'s blocks are; on 32-bit targets a block
                // of Rust's aligned to 8 may stay so past 512 bytes.)
                let c_align =
                    if usize::BITS >= 64 || old.ptr.as_ptr().addr().is_multiple_of(16) || size <= 512 {
                        16
                    } else {
                        8
                    };
                assert!((ptr.as_ptr() as usize).is_multiple_of(c_align), "not aligned as malloc's: {ptr:p}");
                usable
            };
            let mut b = m.insert(heap, region, ptr, layout);
            b.seed = old.seed;
            // The kept prefix must have survived the move: the old size
            // the call was given (all of the usable bytes, without one).
            let kept = if sized { old.layout.size() } else { old.len };
            verify(&b, kept.min(size).min(256));
            fill(&b);
            m.live.push(b);
            m.live.len() - 1
        }
        Err(_) => {
            verify(old, old.len);
            i
        }
    }
}

fn replay(region_size: usize, ops: &[Op]) {
    let region = Region::new(region_size);
    replay_on(&region, Heap::new(region.source()), ops);
}

/// As [`replay`], over a VMM-like source: layer 0 takes spans and gives them
/// back.
fn replay_mapped(region_size: usize, ops: &[Op]) {
    let region = Region::new(region_size);
    replay_on(&region, Heap::new(region.mapped()), ops);
}

fn replay_on<S: common::BytesOut>(region: &Region, mut heap: Heap<S>, ops: &[Op]) {
    let region_size = region.len();
    let mut m = Model { live: Vec::new(), ranges: BTreeMap::new(), seed: 0 };
    for op in ops {
        match *op {
            Op::Alloc { size, align_shift, zeroed } => {
                let layout = Layout::from_size_align(size, 1 << align_shift).unwrap();
                let result = if zeroed { heap.allocate_zeroed(layout) } else { heap.allocate(layout) };
                if let Ok(ptr) = result {
                    if zeroed {
                        // SAFETY: a live block of `size` bytes.
                        let bytes = unsafe { std::slice::from_raw_parts(ptr.as_ptr(), size) };
                        assert!(bytes.iter().all(|&b| b == 0), "allocate_zeroed returned dirty memory");
                    }
                    let b = m.insert(&heap, region, ptr, layout);
                    fill(&b);
                    m.live.push(b);
                }
            }
            Op::Free { which } if !m.live.is_empty() => {
                let b = m.live.swap_remove(which % m.live.len());
                verify(&b, b.len);
                m.remove(&b);
                // SAFETY: a live block of this heap with this layout.
                unsafe { heap.deallocate(b.ptr, b.layout) }.expect("free of a live block");
            }
            Op::FreeUnsized { which } if !m.live.is_empty() => {
                let i = which % m.live.len();
                verify(&m.live[i], m.live[i].len);
                // SAFETY: a live block of this heap.
                match unsafe { heap.deallocate_unsized(m.live[i].ptr) } {
                    Ok(()) => {
                        let b = m.live.swap_remove(i);
                        m.remove(&b);
                    }
                    // A heap that keeps no sizes refuses, changing nothing.
                    Err(DeallocateError::SizeUnknown { .. }) if heap.stats().segments.first_fit => {}
                    Err(e) => panic!("unsized free of a live block refused: {e}"),
                }
            }
            Op::Realloc { which, size } if !m.live.is_empty() => {
                let i = which % m.live.len();
                realloc(&mut heap, &mut m, region, i, size, true);
            }
            Op::ReallocUnsized { which, size } if !m.live.is_empty() => {
                let i = which % m.live.len();
                realloc(&mut heap, &mut m, region, i, size, false);
            }
            Op::Grow { which, times } if !m.live.is_empty() => {
                let mut i = which % m.live.len();
                for _ in 0..times {
                    let size = (m.live[i].layout.size() * 2).clamp(4096, 8 << 20);
                    i = realloc(&mut heap, &mut m, region, i, size, true);
                    heap.check_invariants();
                }
            }
            _ => {}
        }
        heap.check_invariants();
    }
    for b in m.live.drain(..) {
        verify(&b, b.len);
        // SAFETY: live blocks of this heap.
        unsafe { heap.deallocate(b.ptr, b.layout) }.unwrap();
    }
    heap.check_invariants();
    let stats = heap.stats();
    assert!(stats.arenas.current <= 1, "more than the spare arena kept: {stats:?}");
    assert!(stats.segments.spans <= 1, "more than the spare span kept: {stats:?}");
    // What layer 0 still lends: the spare arena, where arenas are its blocks.
    let lent = if S::COMMITTED { stats.arenas.current * stats.geometry.arena_size() } else { 0 };
    assert_eq!(stats.segments.allocated_bytes, lent, "layer 0 blocks leaked: {stats:?}");
    heap.trim();
    assert_eq!(heap.source().bytes_out(), 0, "pages not returned to the source: {:?}", heap.stats());
    assert_eq!(heap.source().window().1 / 4096, region_size / 4096);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_programs_on_a_64_mib_region(ops in prop::collection::vec(op(), 1..600)) {
        replay(64 << 20, &ops);
    }

    #[test]
    fn random_programs_on_a_64_kib_region(ops in prop::collection::vec(op(), 1..400)) {
        replay(64 << 10, &ops);
    }

    /// The kernel's case: spans taken from a page-mapping source, given
    /// back when wholly free.
    #[test]
    fn random_programs_over_a_page_mapping_source(ops in prop::collection::vec(op(), 1..600)) {
        replay_mapped(64 << 20, &ops);
    }

    /// Mostly small blocks on a heap small enough that arenas run out: small
    /// requests borrow larger classes' blocks, fall back to layer 0, and
    /// fail. (Over a page-mapping source: on a region this small, layer +2
    /// is off and first fit serves everything, the next case.)
    #[test]
    fn small_blocks_exhaust_a_256_kib_heap(ops in prop::collection::vec(small_op(), 1..3000)) {
        replay_mapped(256 << 10, &ops);
    }

    #[test]
    fn small_blocks_exhaust_a_256_kib_region(ops in prop::collection::vec(small_op(), 1..3000)) {
        replay(256 << 10, &ops);
    }
}

#[test]
fn a_long_seeded_program_churns_every_layer() {
    let mut rng = common::Rng(0x5eed);
    let ops: Vec<Op> = (0..20_000)
        .map(|_| match rng.below(10) {
            0..=4 => Op::Alloc {
                size: match rng.below(12) {
                    0..=8 => 1 + rng.below(512) as usize,
                    9 | 10 => 513 + rng.below(16 << 10) as usize,
                    _ => 1 + rng.below(1 << 20) as usize,
                },
                align_shift: if rng.below(4) == 0 { rng.below(13) as u32 } else { 0 },
                zeroed: rng.below(8) == 0,
            },
            5 | 6 => Op::Free { which: rng.next() as usize },
            7 => Op::FreeUnsized { which: rng.next() as usize },
            8 => Op::Realloc { which: rng.next() as usize, size: 1 + rng.below(4096) as usize },
            _ => Op::ReallocUnsized { which: rng.next() as usize, size: 1 + rng.below(4096) as usize },
        })
        .collect();
    replay(256 << 20, &ops);
}
