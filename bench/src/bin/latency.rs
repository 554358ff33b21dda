//! Worst-case cost per operation (`make bench`): every allocator call of
//! the CPython-like churn and of random-30000 (with reallocs) timed with the
//! time-stamp counter, for strata, talc and rlsf in the same run.
//!
//! One run's maximum is mostly the machine's noise (an interrupt, a
//! preemption). So each trace is replayed five times — the workloads are
//! seeded, every run makes the same calls — and each call keeps its
//! *smallest* time over the runs: what remains is what the allocator itself
//! did on that call, its algorithmic worst case. Prints a Markdown table
//! (median, 99th and 99.99th percentiles and maximum, in TSC ticks, and
//! strata's maximum against the others') and writes it to
//! `bench/LATENCY.md`.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::RefCell;
use std::fmt::Write as _;

use strata_bench::{Outcome, Peer, Region, cpython_churn, make_peer, random_actions};

const SEED: u64 = 0x5eed_1234_abcd;
const RUNS: usize = 5;
const OPS: usize = 200_000;
const REGION: usize = 128 << 20;
const PEERS: [&str; 3] = ["strata", "talc", "rlsf"];

thread_local! {
    static TICKS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// An allocator whose every call is timed into `TICKS`.
struct Timed(Box<dyn GlobalAlloc + Sync>);

#[inline(always)]
fn ticks() -> u64 {
    // SAFETY: RDTSC has no preconditions on x86_64.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::time::Instant::now().elapsed().as_nanos() as u64
    }
}

fn record(t0: u64) {
    let dt = ticks().saturating_sub(t0).min(u64::from(u32::MAX)) as u32;
    TICKS.with(|t| t.borrow_mut().push(dt));
}

// SAFETY: forwards every call to the allocator inside.
unsafe impl GlobalAlloc for Timed {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let t0 = ticks();
        // SAFETY: forwarded contract.
        let p = unsafe { self.0.alloc(layout) };
        record(t0);
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let t0 = ticks();
        // SAFETY: forwarded contract.
        unsafe { self.0.dealloc(ptr, layout) };
        record(t0);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let t0 = ticks();
        // SAFETY: forwarded contract.
        let p = unsafe { self.0.realloc(ptr, layout, new_size) };
        record(t0);
        p
    }
}

fn workload(name: &str, peer: &Peer) -> Outcome {
    match name {
        "cpython-churn" => cpython_churn(peer, SEED, OPS),
        "random-30000-realloc" => random_actions(peer, SEED, OPS, 30_000, true),
        other => panic!("unknown workload {other}"),
    }
}

/// Per-call ticks of one peer on one workload: the smallest over the runs.
fn trace(peer: &'static str, name: &str) -> Vec<u32> {
    let mut best: Option<Vec<u32>> = None;
    for _ in 0..RUNS {
        let region = Region::new(REGION);
        let inner = make_peer(peer, &region);
        let timed = Peer { name: inner.name, alloc: Box::new(Timed(inner.alloc)), region: inner.region };
        TICKS.with(|t| t.borrow_mut().clear());
        let out = workload(name, &timed);
        assert_eq!(out.failures, 0, "{peer}: failed allocations");
        let run = TICKS.with(|t| t.take());
        best = Some(match best {
            None => run,
            Some(b) => {
                assert_eq!(b.len(), run.len(), "{peer}: runs made different calls");
                b.iter().zip(&run).map(|(&x, &y)| x.min(y)).collect()
            }
        });
    }
    best.unwrap()
}

fn main() {
    let mut md = String::from(
        "## Cost per call, worst case\n\nTSC ticks per allocator call (alloc, free or realloc), each call's smallest time over five replays of the same seeded trace (one run's maximum is the machine's noise); 128 MiB region, same run for every peer.\n\n| workload | peer | calls | median | 99 % | 99.99 % | max | max ÷ strata's |\n|---|---|---|---|---|---|---|---|\n",
    );
    for name in ["cpython-churn", "random-30000-realloc"] {
        let mut rows = Vec::new();
        for peer in PEERS {
            let mut t = trace(peer, name);
            t.sort_unstable();
            let q = |p: f64| t[((t.len() - 1) as f64 * p) as usize];
            rows.push((peer, t.len(), q(0.5), q(0.99), q(0.9999), *t.last().unwrap()));
        }
        let strata_max = rows[0].5.max(1);
        for (peer, n, med, p99, p9999, max) in rows {
            let line = format!(
                "| {name} | {peer} | {n} | {med} | {p99} | {p9999} | {max} | {:.2} |",
                max as f64 / strata_max as f64
            );
            println!("{line}");
            writeln!(md, "{line}").unwrap();
        }
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/LATENCY.md");
    std::fs::write(path, md).expect("write bench/LATENCY.md");
}
