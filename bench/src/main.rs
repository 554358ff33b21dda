//! `make bench`: the workloads of `strata_bench` on every peer, same seeds,
//! same region size, in one run; wall time per operation (median of several
//! runs) and each peer's ratio to strata, plus heap efficiency.
//!
//! `strata-bench --only PEER WORKLOAD OPS` runs one workload once, for
//! `valgrind --tool=callgrind` instruction counts.

use std::time::Instant;

use strata_bench::{PEERS, Peer, Region, cpython_churn, cpython_fill, make_peer, random_actions, talc_fill};

const REGION: usize = 128 << 20;
const SEED: u64 = 0x5eed_1234_abcd;

type Workload = fn(&Peer, usize) -> strata_bench::Outcome;

fn workloads() -> Vec<(&'static str, Workload)> {
    vec![
        ("cpython-churn", |p, n| cpython_churn(p, SEED, n)),
        ("random-200", |p, n| random_actions(p, SEED, n, 200, false)),
        ("random-200-realloc", |p, n| random_actions(p, SEED, n, 200, true)),
        ("random-1000", |p, n| random_actions(p, SEED, n, 1000, false)),
        ("random-10000", |p, n| random_actions(p, SEED, n, 10_000, false)),
        ("random-30000-realloc", |p, n| random_actions(p, SEED, n, 30_000, true)),
    ]
}

fn time_ns_per_op(peer_name: &'static str, w: Workload, ops: usize, runs: usize) -> f64 {
    let mut samples: Vec<f64> = (0..runs)
        .map(|_| {
            let region = Region::new(REGION);
            let peer = make_peer(peer_name, &region);
            let start = Instant::now();
            let out = w(&peer, ops);
            let ns = start.elapsed().as_nanos() as f64;
            assert_eq!(out.failures, 0, "{peer_name} failed allocations");
            ns / out.ops as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 5 && args[1] == "--only" {
        let name = PEERS.iter().copied().find(|p| *p == args[2]).expect("known peer");
        let (_, w) = workloads().into_iter().find(|(n, _)| *n == args[3]).expect("known workload");
        let region = Region::new(REGION);
        let peer = make_peer(name, &region);
        let out = w(&peer, args[4].parse().expect("op count"));
        println!("{name} {} {:?}", args[3], out);
        return;
    }
    if args.len() == 4 && args[1] == "--time" {
        let (_, w) = workloads().into_iter().find(|(n, _)| *n == args[2]).expect("known workload");
        let ops: usize = args[3].parse().expect("op count");
        for &p in PEERS.iter().filter(|p| **p != "linked_list_allocator") {
            println!("{p}: {:.1} ns/op", time_ns_per_op(p, w, ops, 5));
        }
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let (ops, runs) = if quick { (200_000, 3) } else { (1_000_000, 5) };
    println!(
        "## Wall time, ns per operation (median of {runs} runs, {ops} ops, {} MiB region)\n",
        REGION >> 20
    );
    print!("| workload |");
    for p in PEERS {
        print!(" {p} |");
    }
    println!();
    println!("|---|{}", "---|".repeat(PEERS.len()));
    for (wname, w) in workloads() {
        let slow_peer_ops =
            if wname.starts_with("random-1") || wname.starts_with("random-3") { ops / 10 } else { ops };
        let times: Vec<f64> = PEERS
            .iter()
            .map(|&p| {
                let n = if p == "linked_list_allocator" { slow_peer_ops / 4 } else { slow_peer_ops };
                time_ns_per_op(p, w, n, runs)
            })
            .collect();
        print!("| {wname} |");
        for t in &times {
            print!(" {:.1} ({:.2}×) |", t, t / times[0]);
        }
        println!();
    }
    println!("\n## Heap efficiency: live bytes at the first failure ÷ region ({} MiB region)\n", 32);
    print!("| workload |");
    for p in PEERS.iter().filter(|p| **p != "system") {
        print!(" {p} |");
    }
    println!();
    println!("|---|{}", "---|".repeat(PEERS.len() - 1));
    for (wname, f) in [("cpython-fill", cpython_fill as fn(&Peer, u64) -> _), ("talc-fill", talc_fill)] {
        print!("| {wname} |");
        for &p in PEERS.iter().filter(|p| **p != "system") {
            let region = Region::new(32 << 20);
            let peer = make_peer(p, &region);
            let out = f(&peer, SEED);
            print!(" {:.1} % |", 100.0 * out.live_bytes as f64 / region.size() as f64);
        }
        println!();
    }
}
