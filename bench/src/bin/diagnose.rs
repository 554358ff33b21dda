//! Where does the memory go at the first failure? Fills a `strata::Heap`
//! with the CPython-like workload and breaks the region down by layer.
//! `GEOMETRY=ARENA_SHIFT,POOL_SHIFT` tries another layer +2 geometry (e.g.
//! `22,16`: 4 MiB arenas of 64 KiB pools).

use std::cell::RefCell;
use std::ptr::{self, NonNull};

use strata::Heap;
use strata::source::PageSource;
use strata_bench::{Region, cpython_fill_program};

/// The benchmark's seed.
const SEED: u64 = 0x5eed_1234_abcd;

fn main() {
    let offset = std::env::var("OFFSET").map_or(strata_bench::REGION_OFFSET, |o| {
        usize::from_str_radix(o.trim_start_matches("0x"), 16).unwrap()
    });
    let region = Region::at_offset(32 << 20, offset);
    // SAFETY: the region outlives the heap.
    let source = unsafe { strata::RegionSource::new(region.ptr(), region.size()) };
    let heap = match std::env::var("GEOMETRY") {
        Ok(g) => {
            let v: Vec<u32> = g.split(',').map(|x| x.parse().unwrap()).collect();
            let geometry = strata::object::Geometry {
                arena_shift: v[0],
                pool_shift: v[1],
                class_shift: 3,
                threshold: 512,
            };
            Heap::with_geometry(source, geometry, strata::segment::Config::for_window(region.size()))
                .expect("GEOMETRY=arena_shift,pool_shift: a valid geometry")
        }
        Err(_) => Heap::new(source),
    };
    let heap = RefCell::new(heap);
    let mut failure = None;
    let (live, _) = cpython_fill_program(
        SEED,
        |layout| match heap.borrow_mut().allocate(layout) {
            Ok(p) => p.as_ptr(),
            Err(e) => {
                failure = Some(format!("{layout:?}: {e:?}"));
                ptr::null_mut()
            }
        },
        // SAFETY: the program frees only blocks it holds live.
        |b| unsafe { heap.borrow_mut().deallocate(NonNull::new(b.ptr).unwrap(), b.layout).unwrap() },
    );
    let heap = heap.into_inner();
    println!("first failure: {}", failure.unwrap());
    let live_bytes: usize = live.iter().map(|b| b.layout.size()).sum();
    let small_req: usize = live.iter().map(|b| b.layout.size()).filter(|&size| size <= 512).sum();
    let s = heap.stats();
    let total = region.size() as f64;
    let pct = |x: usize| 100.0 * x as f64 / total;
    println!("live requested: {:.2} %", pct(live_bytes));
    let classes = heap.class_stats();
    let in_use: usize = classes.iter().map(|s| s.blocks_in_use * s.block_size).sum();
    let free_in_pools: usize = classes.iter().map(|s| s.blocks_free * s.block_size).sum();
    let pools: usize = classes.iter().map(|s| s.pools).sum();
    let arena_bytes = s.arenas.current * s.geometry.arena_size();
    println!(
        "arenas: {} × {} KiB = {:.2} %",
        s.arenas.current,
        s.geometry.arena_size() >> 10,
        pct(arena_bytes)
    );
    println!(
        "  small requested {:.2} %, blocks in use {:.2} % (quantization {:.2} %)",
        pct(small_req),
        pct(in_use),
        pct(in_use - small_req)
    );
    println!(
        "  free blocks in used pools {:.2} %, pools in use {pools}, empty pool bytes {:.2} %",
        pct(free_in_pools),
        pct(arena_bytes - pools * s.geometry.pool_size())
    );
    println!("layer 0: {:?}", s.segments);
    println!(
        "  span bytes {:.2} %, allocated {:.2} % (arenas included), free {:.2} %",
        pct(s.segments.span_bytes),
        pct(s.segments.allocated_bytes),
        pct(s.segments.free_bytes)
    );
    let seg: Vec<_> = live.iter().filter(|b| heap.owner(b.ptr) == Some(strata::Layer::Segment)).collect();
    let seg_req: usize = seg.iter().map(|b| b.layout.size()).sum();
    let seg_16: usize = seg.iter().map(|b| b.layout.size().next_multiple_of(16)).sum();
    let arena_bytes_in_layer0 =
        if <strata::RegionSource as strata::PageSource>::COMMITTED { arena_bytes } else { 0 };
    println!(
        "  layer 0 holds {} live blocks: requested {:.2} %, rounded to 16 {:.2} %, so {:.1} B per block beyond the request",
        seg.len(),
        pct(seg_req),
        pct(seg_16),
        (s.segments.allocated_bytes - arena_bytes_in_layer0 - seg_req) as f64 / seg.len().max(1) as f64
    );
    println!("source free: {:.2} %", pct(heap.source().window().1 - heap.source().bytes_out()));
    println!("front: {:?}", s.front);
    let report = heap.report();
    // What no placement policy can win back: the rounding every request
    // pays (to 8 in +2's classes, as linked_list_allocator rounds; to 16 in
    // layer 0) and the pools' headers and tails.
    let u = report.usage;
    let rounding: usize = live
        .iter()
        .map(|b| {
            let granule = if b.layout.size() <= 512 { 8 } else { 16 };
            b.layout.size().next_multiple_of(granule) - b.layout.size()
        })
        .sum();
    println!(
        "structure: pool headers {:.2} %, arena headers {:.2} %, pool tails {:.2} %, rounding {:.2} % \
         -> at most {:.2} % of this region can hold requested bytes with this geometry",
        pct(u.pool_headers),
        pct(u.arena_headers),
        pct(u.quantization),
        pct(rounding),
        100.0 - pct(u.pool_headers + u.arena_headers + u.quantization + rounding)
    );
    println!("{report}");
    linked_list_allocator_breakdown();
}

/// The same workload over `linked_list_allocator`: its live bytes at the
/// first failure, split into the rounding it pays (sizes to 8, at least 16
/// bytes) and what is left in holes.
fn linked_list_allocator_breakdown() {
    let offset = std::env::var("OFFSET").map_or(strata_bench::REGION_OFFSET, |o| {
        usize::from_str_radix(o.trim_start_matches("0x"), 16).unwrap()
    });
    let region = Region::at_offset(32 << 20, offset);
    // SAFETY: the region outlives the heap and serves only it.
    let heap = unsafe { linked_list_allocator::Heap::new(region.ptr(), region.size()) };
    let heap = RefCell::new(heap);
    let (live, _) = cpython_fill_program(
        SEED,
        |layout| heap.borrow_mut().allocate_first_fit(layout).map_or(ptr::null_mut(), NonNull::as_ptr),
        // SAFETY: the program frees only blocks it holds live.
        |b| unsafe { heap.borrow_mut().deallocate(NonNull::new(b.ptr).unwrap(), b.layout) },
    );
    let pct = |x: usize| 100.0 * x as f64 / region.size() as f64;
    let requested: usize = live.iter().map(|b| b.layout.size()).sum();
    let rounded: usize = live.iter().map(|b| b.layout.size().next_multiple_of(8).max(16)).sum();
    println!(
        "linked_list_allocator: live requested {:.2} %, rounding {:.2} %, holes {:.2} %",
        pct(requested),
        pct(rounded - requested),
        pct(region.size() - rounded)
    );
}
