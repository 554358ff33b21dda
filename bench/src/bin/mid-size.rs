//! Speed on a mid-size heap (`make bench`): a 4 MiB region, where strata's
//! layer 0 is first fit by address in a tree by default, against the same
//! heap asked to use TLSF, linked_list_allocator, talc and rlsf, in the same
//! run. Best of three runs, nanoseconds per operation; prints a Markdown
//! table and writes it to `bench/MID-SIZE.md`.
//!
//! The churn runs to exhaustion on a heap this small (every peer fails
//! most of its requests): it measures the calls that search and fail as
//! much as those that succeed.

use std::fmt::Write as _;
use std::time::Instant;

use strata_bench::{Outcome, Peer, Region, cpython_churn, make_peer, random_actions};

const REGION: usize = 4 << 20;
const OPS: usize = 300_000;
const PEERS: [&str; 5] = ["strata (first fit)", "strata (TLSF)", "linked_list_allocator", "talc", "rlsf"];
const WORKLOADS: [&str; 4] = ["random-512", "random-4096", "random-4096-realloc", "cpython-churn"];

/// strata over `region`, its layer 0 first fit (the default on 4 MiB) or
/// TLSF.
fn strata(region: &Region, first_fit: bool) -> Peer {
    let heap = Box::new(strata::LockedHeap::empty());
    // SAFETY: the region outlives the peer and serves only it.
    let source = unsafe { strata::RegionSource::new(region.ptr(), region.size()) };
    let window = strata::PageSource::window(&source).1;
    let config = strata::segment::Config { first_fit, ..strata::segment::Config::for_window(window) };
    let geometry = strata::object::Geometry::for_window(window);
    heap.init_heap(strata::Heap::with_geometry(source, geometry, config).expect("a valid configuration"));
    // The engine is chosen at the first call.
    let layout = std::alloc::Layout::new::<u64>();
    // SAFETY: a block of this heap, freed at once with its layout.
    unsafe {
        std::alloc::GlobalAlloc::dealloc(&*heap, std::alloc::GlobalAlloc::alloc(&*heap, layout), layout)
    };
    assert_eq!(heap.stats().segments.first_fit, first_fit);
    Peer { name: "strata", alloc: heap, region: Some((region.ptr() as usize, region.size())) }
}

fn run(peer: &Peer, workload: &str) -> Outcome {
    match workload {
        "random-512" => random_actions(peer, 7, OPS, 512, false),
        "random-4096" => random_actions(peer, 7, OPS, 4096, false),
        "random-4096-realloc" => random_actions(peer, 7, OPS, 4096, true),
        _ => cpython_churn(peer, 7, OPS),
    }
}

fn ns_per_op(name: &str, workload: &str) -> f64 {
    (0..3)
        .map(|_| {
            let region = Region::new(REGION);
            let peer = match name {
                "strata (first fit)" => strata(&region, true),
                "strata (TLSF)" => strata(&region, false),
                other => make_peer(PEERS.iter().copied().find(|p| *p == other).unwrap(), &region),
            };
            let t = Instant::now();
            run(&peer, workload);
            t.elapsed().as_nanos() as f64 / OPS as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let mut md = String::new();
    writeln!(md, "### Mid-size heap ({} MiB): first fit against TLSF\n", REGION >> 20).unwrap();
    writeln!(md, "Nanoseconds per operation, best of three runs, same run for every peer.\n").unwrap();
    write!(md, "| workload |").unwrap();
    for p in PEERS {
        write!(md, " {p} |").unwrap();
    }
    writeln!(md, "\n|---|{}", "---|".repeat(PEERS.len())).unwrap();
    for w in WORKLOADS {
        write!(md, "| {w} |").unwrap();
        let base = ns_per_op(PEERS[0], w);
        write!(md, " {base:.1} |").unwrap();
        for p in &PEERS[1..] {
            let ns = ns_per_op(p, w);
            write!(md, " {ns:.1} ({:.2}×) |", ns / base).unwrap();
        }
        writeln!(md).unwrap();
    }
    print!("{md}");
    std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/MID-SIZE.md"), &md)
        .expect("write bench/MID-SIZE.md");
}
