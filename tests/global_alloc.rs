//! `strata::LockedHeap` as the real `#[global_allocator]` of this test
//! binary: a 512 MiB region, four threads, and results checked against an
//! allocation-free computation of the same values.

use std::collections::BTreeMap;
use std::mem::MaybeUninit;
use std::thread;

use strata::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

const REGION: usize = 512 << 20;
static mut MEMORY: [MaybeUninit<u8>; REGION] = [MaybeUninit::uninit(); REGION];

/// Runs from `.init_array`, before the Rust runtime (and its first
/// allocation), so the global allocator has memory from the start.
extern "C" fn init_heap() {
    // SAFETY: MEMORY is handed out once, here, before anything runs.
    HEAP.init_from_slice(unsafe { std::slice::from_raw_parts_mut((&raw mut MEMORY).cast(), REGION) });
}

#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn() = init_heap;

fn lcg(x: u64) -> u64 {
    x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407)
}

/// A workload of maps, vectors and strings; returns a checksum.
fn workload(seed: u64, n: usize) -> u64 {
    let mut map: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut x = seed;
    for i in 0..n {
        x = lcg(x);
        map.entry(x % 1024).or_default().push(i as u64);
        if i % 7 == 0 {
            let s = format!("{x:x}-{i}");
            assert_eq!(u64::from_str_radix(s.split('-').next().unwrap(), 16).unwrap(), x);
        }
    }
    map.values().map(|v| v.iter().sum::<u64>()).sum::<u64>() + map.len() as u64
}

/// The same checksum, computed without a single allocation.
fn expected(seed: u64, n: usize) -> u64 {
    let mut seen = [false; 1024];
    let mut x = seed;
    for _ in 0..n {
        x = lcg(x);
        seen[(x % 1024) as usize] = true;
    }
    let n = n as u64;
    n * (n - 1) / 2 + seen.iter().filter(|&&s| s).count() as u64
}

#[test]
fn four_threads_compute_the_right_results_through_strata() {
    let before = HEAP.stats();
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            thread::spawn(move || (0..20).map(|round| workload(t * 1000 + round, 20_000)).collect::<Vec<_>>())
        })
        .collect();
    for (t, h) in handles.into_iter().enumerate() {
        let results = h.join().expect("worker thread");
        for (round, got) in results.into_iter().enumerate() {
            assert_eq!(got, expected(t as u64 * 1000 + round as u64, 20_000));
        }
    }
    let after = HEAP.stats();
    assert!(
        after.arenas.allocated_total > before.arenas.allocated_total || after.arenas.current > 0,
        "the workload never reached layer +2: {after:?}"
    );
    assert_eq!(after.front.failed_allocations, 0);
    assert_eq!(after.front.refused_frees, 0);
    HEAP.with(|h| h.check_invariants());
}

#[test]
fn large_vectors_and_strings_grow_through_realloc() {
    let mut v: Vec<u64> = Vec::new();
    for i in 0..(1 << 20) {
        v.push(i);
    }
    assert_eq!(v.iter().sum::<u64>(), (1u64 << 20) * ((1 << 20) - 1) / 2);
    let s: String = (0..100_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    assert_eq!(s.len(), 100_000);
    assert!(HEAP.stats().front.realloc_moved > 0);
}
