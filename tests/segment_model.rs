//! Layer 0 alone against a shadow model, in each of its modes: TLSF over a
//! committed region held whole, TLSF over spans of a page-mapping source
//! (with large blocks in spans of their own), and first fit on a small
//! region. Random programs of allocations (any alignment), frees, resizes
//! in place, backward growth and bad frees; after every step the contents
//! of every live block, the model's disjointness and alignment, and the
//! layer's own invariants are checked.

mod common;

use std::alloc::Layout;
use std::collections::BTreeMap;
use std::ptr::NonNull;

use common::{BytesOut, Region};
use proptest::prelude::*;
use strata::segment::{Config, DeallocateError, SegmentAllocator};
use strata::source::PageSource;

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        size: usize,
        align_shift: u32,
    },
    Free {
        which: usize,
    },
    Resize {
        which: usize,
        size: usize,
    },
    /// A resize 8 bytes down (a first-fit block's tail then becomes a
    /// sliver, or joins a free neighbour).
    ShrinkByEight {
        which: usize,
    },
    Backward {
        which: usize,
        size: usize,
    },
    Growable {
        size: usize,
    },
    DoubleFree,
    WrongSize {
        which: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let size = prop_oneof![4 => 1usize..600, 3 => 600usize..20_000, 1 => 20_000usize..400_000];
    prop_oneof![
        5 => (size.clone(), prop_oneof![6 => Just(0u32), 1 => 1u32..13]).prop_map(|(size, align_shift)| Op::Alloc { size, align_shift }),
        3 => any::<usize>().prop_map(|which| Op::Free { which }),
        2 => (any::<usize>(), size.clone()).prop_map(|(which, size)| Op::Resize { which, size }),
        1 => (any::<usize>(), 1usize..4000).prop_map(|(which, size)| Op::Backward { which, size }),
        2 => any::<usize>().prop_map(|which| Op::ShrinkByEight { which }),
        1 => (4096usize..100_000).prop_map(|size| Op::Growable { size }),
        1 => Just(Op::DoubleFree),
        1 => any::<usize>().prop_map(|which| Op::WrongSize { which }),
    ]
}

struct Block {
    ptr: NonNull<u8>,
    layout: Layout,
    seed: u8,
}

fn fill(b: &Block) {
    // SAFETY: a live block of `layout.size()` bytes.
    unsafe { std::ptr::write_bytes(b.ptr.as_ptr(), b.seed, b.layout.size()) };
}

fn verify(b: &Block, len: usize) {
    // SAFETY: a live block of at least `len` bytes.
    let bytes = unsafe { std::slice::from_raw_parts(b.ptr.as_ptr(), len) };
    assert!(bytes.iter().all(|&x| x == b.seed), "contents of {:p} lost", b.ptr);
}

/// Live blocks, by start address, for the overlap check.
fn disjoint(live: &[Block]) {
    let ranges: BTreeMap<usize, usize> =
        live.iter().map(|b| (b.ptr.as_ptr() as usize, b.layout.size().max(1))).collect();
    let mut end = 0;
    for (&start, &len) in &ranges {
        assert!(start >= end, "blocks overlap at {start:#x}");
        end = start + len;
    }
}

fn replay<S: BytesOut>(region: &Region, mut source: S, config: Config, ops: &[Op]) {
    let window = source.window();
    let mut seg = SegmentAllocator::new(config, window).unwrap();
    let mut live: Vec<Block> = Vec::new();
    let mut freed: Option<(NonNull<u8>, Layout)> = None;
    let mut seed = 0u8;
    for op in ops {
        match *op {
            Op::Alloc { size, .. } | Op::Growable { size } => {
                let align = 1 << align_shift_of(op);
                let layout = Layout::from_size_align(size, align).unwrap();
                let result = if matches!(op, Op::Growable { .. }) {
                    // SAFETY: `source` is this layer's one page source.
                    unsafe { seg.allocate_growable(layout, &mut source) }
                } else {
                    // SAFETY: `source` is this layer's one page source.
                    unsafe { seg.allocate(layout, &mut source) }
                };
                match result {
                    Ok(ptr) => {
                        assert_eq!(ptr.as_ptr() as usize % align, 0, "misaligned");
                        assert!(region.contains(ptr.as_ptr(), size), "outside the region");
                        assert!(seg.owns(ptr.as_ptr()), "a block the layer does not own");
                        seed = seed.wrapping_add(1);
                        let b = Block { ptr, layout, seed };
                        fill(&b);
                        live.push(b);
                    }
                    Err(_) => {
                        // A failure over a region held whole leaves no free
                        // chunk of the request and 64 bytes (large
                        // alignments need more); first fit leaves no free
                        // block of the request rounded to 8 bytes, plus the
                        // largest pad its alignment may need.
                        let s = seg.stats();
                        let pad = align.max(8) - 8;
                        let first_fit_full =
                            s.first_fit && s.largest_free < size.max(16).next_multiple_of(8) + pad;
                        assert!(
                            first_fit_full
                                || (!s.first_fit && (align > 16 || s.largest_free < size + 64))
                                || !S::COMMITTED,
                            "{size} bytes failed with a free chunk of {}",
                            s.largest_free
                        );
                    }
                }
            }
            Op::Free { which } if !live.is_empty() => {
                let b = live.swap_remove(which % live.len());
                verify(&b, b.layout.size());
                // SAFETY: a live block with its layout.
                unsafe { seg.deallocate(b.ptr, b.layout, &mut source) }.expect("free of a live block");
                freed = Some((b.ptr, b.layout));
            }
            Op::Resize { which, .. } | Op::ShrinkByEight { which } if !live.is_empty() => {
                let i = which % live.len();
                let size = match *op {
                    Op::Resize { size, .. } => size,
                    _ => live[i].layout.size().saturating_sub(8).max(1),
                };
                let b = &live[i];
                // SAFETY: a live block with its layout.
                match unsafe { seg.resize_in_place(b.ptr, b.layout, size, &mut source) } {
                    Ok(true) => {
                        verify(b, b.layout.size().min(size));
                        let b = &mut live[i];
                        b.layout = Layout::from_size_align(size, b.layout.align()).unwrap();
                        fill(b);
                    }
                    Ok(false) => verify(b, b.layout.size()),
                    Err(e) => panic!("a live block refused: {e:?}"),
                }
            }
            Op::Backward { which, size } if !live.is_empty() => {
                let i = which % live.len();
                let (ptr, layout) = (live[i].ptr, live[i].layout);
                if layout.size() >= size {
                    continue;
                }
                // SAFETY: checked by resize_in_place first, as the front door does.
                let checked = unsafe { seg.resize_in_place(ptr, layout, layout.size(), &mut source) };
                assert_eq!(checked, Ok(true));
                // SAFETY: a checked block; `keep` is its size.
                if let Some(q) = unsafe { seg.grow_backward(ptr, layout, size, layout.size()) } {
                    let b = &mut live[i];
                    b.ptr = q;
                    verify(b, layout.size());
                    b.layout = Layout::from_size_align(size, layout.align()).unwrap();
                    fill(b);
                }
            }
            Op::DoubleFree => {
                if let Some((ptr, layout)) = freed.take() {
                    // SAFETY: the block freed by the step just before: the
                    // layer must refuse it (nothing reused its memory since).
                    let r = unsafe { seg.deallocate(ptr, layout, &mut source) };
                    assert!(
                        matches!(
                            r,
                            Err(DeallocateError::NotAllocated { .. }) | Err(DeallocateError::NotOwned { .. })
                        ),
                        "a double free was accepted: {r:?}"
                    );
                }
            }
            Op::WrongSize { which } if !live.is_empty() && !config.first_fit => {
                let b = &live[which % live.len()];
                let wrong = Layout::from_size_align(b.layout.size() + 4096, b.layout.align()).unwrap();
                // SAFETY: a live block freed with a size it does not have:
                // refused, nothing changed.
                let r = unsafe { seg.deallocate(b.ptr, wrong, &mut source) };
                assert!(r.is_err(), "a free with the wrong size was accepted");
                verify(b, b.layout.size());
            }
            _ => {}
        }
        // Only the step right after a free may free it again.
        if !matches!(op, Op::Free { .. }) {
            freed = None;
        }
        disjoint(&live);
        seg.check_invariants();
    }
    for b in live.drain(..) {
        verify(&b, b.layout.size());
        // SAFETY: live blocks with their layouts.
        unsafe { seg.deallocate(b.ptr, b.layout, &mut source) }.unwrap();
    }
    seg.check_invariants();
    assert_eq!(seg.stats().allocated_bytes, 0, "blocks leaked: {:?}", seg.stats());
    // SAFETY: `source` is this layer's one page source.
    unsafe { seg.trim(&mut source) };
    assert_eq!(source.bytes_out(), 0, "memory not given back: {:?}", seg.stats());
}

fn align_shift_of(op: &Op) -> u32 {
    match *op {
        Op::Alloc { align_shift, .. } => align_shift,
        _ => 0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn tlsf_over_a_region_held_whole(ops in prop::collection::vec(op(), 1..400)) {
        let region = Region::new(8 << 20);
        let source = region.source();
        let config = Config { first_fit: false, ..Config::for_window(source.window().1) };
        replay(&region, source, config, &ops);
    }

    #[test]
    fn first_fit_on_a_mid_size_region(ops in prop::collection::vec(op(), 1..400)) {
        let region = Region::new(4 << 20);
        let source = region.source();
        let config = Config::for_window(source.window().1);
        assert!(config.first_fit);
        replay(&region, source, config, &ops);
    }

    #[test]
    fn tlsf_over_spans_of_a_page_mapping_source(ops in prop::collection::vec(op(), 1..400)) {
        let region = Region::new(16 << 20);
        let config = Config { first_fit: false, span_min: 64 << 10, large_threshold: 128 << 10 };
        replay(&region, region.mapped(), config, &ops);
    }

    #[test]
    fn first_fit_on_a_small_region(ops in prop::collection::vec(op(), 1..300)) {
        let region = Region::new(256 << 10);
        let source = region.source();
        let config = Config::for_window(source.window().1);
        assert!(config.first_fit);
        replay(&region, source, config, &ops);
    }

    #[test]
    fn tlsf_on_a_region_too_small_for_its_requests(ops in prop::collection::vec(op(), 1..300)) {
        let region = Region::new(1 << 20);
        let source = region.source();
        let config = Config { first_fit: false, ..Config::for_window(source.window().1) };
        replay(&region, source, config, &ops);
    }
}
