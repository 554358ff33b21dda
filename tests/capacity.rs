//! Capacity: a request fails only when no free run holds it (plus at most
//! 64 bytes), whatever the number of blocks, spans or large blocks — the
//! patterns that made layer 0's fixed tables fail with most memory free.

mod common;

use std::alloc::Layout;
use std::ptr::NonNull;

use common::{Region, Rng};
use strata::Heap;
use strata::source::PageSource;

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// Asserts that a failed request of `size` bytes had no free run of
/// `size + 64` bytes to use.
fn failure_is_honest<S: PageSource>(heap: &Heap<S>, size: usize) {
    let s = heap.stats();
    assert!(
        s.segments.largest_free < size + 64,
        "a {size}-byte request failed with a free chunk of {} bytes: {s:?}",
        s.segments.largest_free
    );
}

/// Each round keeps one 300 KiB buffer and 1000 objects of 600–2048 bytes,
/// freeing nothing, until the first failure: the region is full then.
fn buffers_and_objects_until_full(region_size: usize) {
    let region = Region::new(region_size);
    let mut heap = Heap::new(region.source());
    let mut rng = Rng(0xcafe);
    let mut live = 0usize;
    let failed = 'rounds: loop {
        for size in std::iter::once(300 << 10).chain((0..1000).map(|_| 600 + rng.below(1449) as usize)) {
            match heap.allocate(layout(size)) {
                Ok(_) => live += size,
                Err(_) => break 'rounds size,
            }
        }
    };
    failure_is_honest(&heap, failed);
    let used = live as f64 / region_size as f64;
    assert!(used > 0.97, "only {:.1} % of a {} MiB region used", used * 100.0, region_size >> 20);
    heap.check_invariants();
}

#[test]
fn buffers_and_objects_fill_a_64_mib_region() {
    buffers_and_objects_until_full(64 << 20);
}

#[test]
fn buffers_and_objects_fill_a_512_mib_region() {
    buffers_and_objects_until_full(512 << 20);
}

/// 64 live blocks of 1 MiB, then 64 rounds of "free one 1 MiB block,
/// allocate 2 MiB and 1.5 MiB": no failure while the region has room.
fn large_blocks_churn<S: PageSource>(mut heap: Heap<S>) {
    let mut ones: Vec<NonNull<u8>> = (0..64).map(|_| heap.allocate(layout(1 << 20)).unwrap()).collect();
    let mut others = Vec::new();
    for round in 0..64 {
        let p = ones.pop().unwrap();
        // SAFETY: a live block of this heap with this layout.
        unsafe { heap.deallocate(p, layout(1 << 20)) }.unwrap();
        for size in [2 << 20, 3 << 19] {
            let q =
                heap.allocate(layout(size)).unwrap_or_else(|e| panic!("round {round}, {size} bytes: {e}"));
            others.push((q, size));
        }
    }
    heap.check_invariants();
    for (p, size) in others {
        // SAFETY: live blocks with their layouts.
        unsafe { heap.deallocate(p, layout(size)) }.unwrap();
    }
    for p in ones {
        // SAFETY: as above.
        unsafe { heap.deallocate(p, layout(1 << 20)) }.unwrap();
    }
    heap.trim();
    heap.check_invariants();
    assert_eq!(heap.stats().segments.spans, 0, "every span back after trim");
}

/// A larger reservation still: 16 GiB (1 GiB on 32-bit targets).
const HUGE: usize = if usize::BITS >= 64 { (16u64 << 30) as usize } else { 1 << 30 };

#[test]
fn large_blocks_churn_on_a_4_gib_region() {
    let region = Region::new(common::LARGE);
    large_blocks_churn(Heap::new(region.source()));
}

#[test]
fn large_blocks_churn_over_a_page_mapping_source() {
    let region = Region::new(common::LARGE);
    large_blocks_churn(Heap::new(region.mapped()));
}

/// 4080-byte and 64-byte blocks in turn (aligned to 16, as a C malloc
/// shim asks), nothing freed: arenas and spans keep landing after each
/// other, each of which once took a table entry.
fn alternating_sizes<S: PageSource>(mut heap: Heap<S>, until: usize) {
    let mut live = 0;
    while live < until {
        for size in [4080, 64] {
            let l = Layout::from_size_align(size, 16).unwrap();
            heap.allocate(l).unwrap_or_else(|e| panic!("{size} bytes with {live} live: {e}"));
            live += size;
        }
    }
    heap.check_invariants();
}

#[test]
fn alternating_sizes_on_a_4_gib_region() {
    let region = Region::new(common::LARGE);
    alternating_sizes(Heap::new(region.source()), 256 << 20);
}

#[test]
fn alternating_sizes_over_a_page_mapping_source() {
    let region = Region::new(common::LARGE);
    alternating_sizes(Heap::new(region.mapped()), 256 << 20);
}

#[test]
fn freed_memory_is_one_run_again_without_a_trim() {
    let region = Region::new(64 << 20);
    let mut heap = Heap::new(region.source());
    let big = heap.allocate(layout(40 << 20)).unwrap();
    let small = heap.allocate(layout(1024)).unwrap();
    // SAFETY: live blocks with their layouts.
    unsafe {
        heap.deallocate(big, layout(40 << 20)).unwrap();
        heap.deallocate(small, layout(1024)).unwrap();
    }
    let all = heap.allocate(layout(48 << 20)).expect("48 MiB of a free 64 MiB region");
    // SAFETY: as above.
    unsafe { heap.deallocate(all, layout(48 << 20)) }.unwrap();
}

#[test]
fn a_fresh_heap_hands_out_its_whole_window_less_64_bytes() {
    for size in
        [4 << 10, 8 << 10, 60 << 10, 64 << 10, 100_000, 256 << 10, 1 << 20, (3 << 20) + 4096, 64 << 20]
    {
        for offset in [0, 8, 24] {
            let region = Region::new(size + 64);
            // SAFETY: the region outlives the heap and serves only it.
            let source = unsafe { strata::RegionSource::new(region.ptr().add(offset), size) };
            let window = source.window().1;
            let mut heap = Heap::new(source);
            let want = window - 64;
            let p = heap
                .allocate(layout(want))
                .unwrap_or_else(|e| panic!("{want} of a {window}-byte window: {e}"));
            // SAFETY: a live block with its layout.
            unsafe { heap.deallocate(p, layout(want)) }.unwrap();
            heap.check_invariants();
        }
    }
}

/// A heavy-tailed program like the C programs that once got nulls: up to
/// 3000 live blocks, nine in ten of 16 bytes to 4 KiB and one in ten of
/// 128 KiB to 2 MiB, 100 000 operations on a large reservation: never a
/// null.
#[test]
fn a_heavy_tailed_program_never_fails_on_a_large_region() {
    let region = Region::new(HUGE);
    let mut heap = Heap::new(region.source());
    let mut rng = Rng(0x7a11);
    let mut live: Vec<(NonNull<u8>, usize)> = Vec::new();
    for op in 0..100_000 {
        if live.len() >= 3000 || (live.len() > 100 && rng.below(2) == 0) {
            let (p, size) = live.swap_remove(rng.below(live.len() as u64) as usize);
            // SAFETY: a live block with its layout.
            unsafe { heap.deallocate(p, layout(size)) }.unwrap();
        } else {
            let size = if rng.below(10) == 0 {
                (128 << 10) + rng.below((2 << 20) - (128 << 10)) as usize
            } else {
                16 + rng.below(4081) as usize
            };
            let p = heap.allocate(layout(size)).unwrap_or_else(|e| panic!("op {op}: {size} bytes: {e}"));
            live.push((p, size));
        }
    }
    heap.check_invariants();
}
