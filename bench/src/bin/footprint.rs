//! Heap footprint of strata after the CPython-like churn, by op count.
use strata_bench::{Region, cpython_churn, make_peer};

fn main() {
    for ops in [200_000usize, 1_000_000, 3_000_000] {
        let region = Region::new(128 << 20);
        let heap = Box::leak(Box::new(strata::LockedHeap::empty()));
        // SAFETY: the region outlives the run (leaked heap is never used after).
        unsafe { heap.init(region.ptr(), region.size()) };
        let peer = strata_bench::Peer { name: "strata", alloc: Box::new(HeapRef(heap)), region: None };
        let t = std::time::Instant::now();
        let out = cpython_churn(&peer, 0x5eed_1234_abcd, ops);
        let ns = t.elapsed().as_nanos() as f64 / out.ops as f64;
        let s = heap.stats();
        println!(
            "{ops}: {ns:.1} ns/op arenas cur {} hw {} segs {} seg_bytes {} bin_hits {} binned {} src hw {} KiB",
            s.arenas.current,
            s.arenas.high_water,
            s.segments.segments,
            s.segments.segment_bytes,
            s.segments.bin_hits,
            s.segments.binned_blocks,
            heap.with(|h| h.source().high_water()) >> 10
        );
        let _ = make_peer;
    }
}

struct HeapRef(&'static strata::LockedHeap);
// SAFETY: forwards.
unsafe impl std::alloc::GlobalAlloc for HeapRef {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        unsafe { self.0.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        unsafe { self.0.dealloc(p, l) }
    }
}
