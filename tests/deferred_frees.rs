//! Layer 0's deferred frees (`segment/tlsf/deferred.rs`) through
//! `SegmentAllocator`: reuse, refusals while a chunk waits, and capacity
//! kept by merging the waiting chunks before a request fails.

mod common;

use std::alloc::Layout;

use common::Region;
#[cfg(target_pointer_width = "64")]
use strata::segment::{Config, DeallocateError, SegmentAllocator};
use strata::source::PageSource;

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

/// Deferred frees (TLSF's deferred lists, on a committed source): a block
/// freed and asked for again at its size comes back at its address; while
/// it waits, a second free or a realloc of it is refused as a double free;
/// it counts as free; and before a request fails, every waiting chunk
/// merges, so that the whole window can still be had in one block.
/// (64-bit targets: on 32-bit ones a chunk header has no bit left for the
/// deferred flag, and no free defers.)
#[test]
#[cfg(target_pointer_width = "64")]
fn deferred_frees_come_back_are_refused_twice_and_merge_before_a_failure() {
    let region = Region::new(16 << 20);
    let mut src = region.source();
    let window = src.window();
    let mut seg = SegmentAllocator::new(Config::for_window(window.1), window).unwrap();
    let l = layout(3000, 8);
    // SAFETY (all below): `src` is this layer's one page source; blocks
    // are freed once with their layout, but for the refused second frees.
    unsafe {
        let blocks: Vec<_> = (0..64).map(|_| seg.allocate(l, &mut src).unwrap()).collect();
        let in_use = seg.stats().allocated_bytes;
        seg.deallocate(blocks[10], l, &mut src).unwrap();
        assert!(seg.stats().allocated_bytes < in_use, "a deferred chunk counts as free");
        let twice = Err(DeallocateError::NotAllocated { ptr: blocks[10].as_ptr() as usize });
        assert_eq!(seg.deallocate(blocks[10], l, &mut src), twice, "double free of a deferred chunk");
        assert!(seg.resize_in_place(blocks[10], l, 2000, &mut src).is_err(), "resize of a deferred chunk");
        seg.check_invariants();
        let again = seg.allocate(l, &mut src).unwrap();
        assert_eq!(again, blocks[10], "the block freed is the one asked for again");
        // Every other block freed: each waits on a deferred list or
        // merges, and none is next to another free chunk but through them.
        for (i, &p) in blocks.iter().enumerate() {
            if i % 2 == 1 {
                seg.deallocate(p, l, &mut src).unwrap();
            }
        }
        seg.check_invariants();
        for (i, &p) in blocks.iter().enumerate() {
            if i % 2 == 0 {
                seg.deallocate(p, l, &mut src).unwrap();
            }
        }
        assert!(seg.stats().free_chunks > 1, "no chunk waits on a deferred list: not the case tested");
        // The whole window, less at most 64 bytes, in one block: only once
        // the waiting chunks merge.
        let all = seg.allocate(layout(window.1 - 64, 8), &mut src).unwrap();
        seg.check_invariants();
        seg.deallocate(all, layout(window.1 - 64, 8), &mut src).unwrap();
        assert_eq!(seg.trim(&mut src), 1);
        assert_eq!(src.bytes_out(), 0, "trim gives the window back");
    }
}

/// A committed source that lent out a piece before the heap took it cannot
/// be taken whole: layer 0 then holds it by spans, which go back when they
/// fall wholly free. Frees must not defer there (a deferred chunk would
/// keep its span from ever looking empty): after a churn freed whole, the
/// invariants hold, `trim` gives back all but the piece, and the rest can
/// be had in one block.
#[test]
fn a_source_that_lent_a_piece_first_gets_every_span_back() {
    const SIZE: usize = 32 << 20;
    let region = Region::new(SIZE);
    let mut src = region.source();
    let piece = src.allocate_pages(16, 16).unwrap();
    let mut heap = strata::Heap::new(src);
    let mut blocks = Vec::new();
    for i in 0..3000usize {
        let l = layout(1 + (i * 37) % 3000 + if i % 50 == 0 { 200_000 } else { 0 }, 8);
        blocks.push((heap.allocate(l).unwrap(), l));
    }
    for (p, l) in blocks {
        // SAFETY: a live block of this heap, freed once with its layout.
        unsafe { heap.deallocate(p, l) }.unwrap();
    }
    heap.check_invariants();
    heap.trim();
    heap.check_invariants();
    assert_eq!(heap.stats().segments.spans, 0, "wholly free spans kept after trim");
    assert_eq!(heap.source().bytes_out(), 16, "only the lent piece stays out");
    let big = layout(30 << 20, 8);
    let p = heap.allocate(big).expect("30 MiB of a 32 MiB source less 16 bytes");
    // SAFETY: as above.
    unsafe { heap.deallocate(p, big) }.unwrap();
    let _ = piece;
}
