//! The fill sweep (`make bench`): how much of a region each allocator hands
//! out before its first failure, at every region size from 64 KiB to 64 MiB
//! and for five workloads, mean of ten seeds, strata against
//! linked_list_allocator, talc and rlsf in the same run.
//!
//! Prints a Markdown table (one row per region and workload; the best peer
//! and whether strata is within one point of it) and writes it to
//! `bench/FILL.md`. `fill-sweep REGION_KIB WORKLOAD` runs one cell.
//!
//! linked_list_allocator walks its hole list on every call: where that
//! takes minutes (the small-block workloads on the largest regions) its
//! cell is left out and marked so.

use std::fmt::Write as _;
use std::time::Instant;

use strata_bench::{Outcome, Peer, Region, cpython_fill, make_peer, talc_fill, uniform_fill};

const SEEDS: [u64; 10] = [
    0x5eed_0001,
    0x5eed_0002,
    0x5eed_0003,
    0x5eed_0004,
    0x5eed_0005,
    0x5eed_0006,
    0x5eed_0007,
    0x5eed_0008,
    0x5eed_0009,
    0x5eed_000a,
];
const REGIONS: [usize; 6] = [64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20];
const WORKLOADS: [&str; 5] =
    ["uniform ≤ 512 B", "uniform ≤ 4 KiB", "uniform ≤ 64 KiB", "talc-fill", "cpython-fill"];
const PEERS: [&str; 4] = ["strata", "linked_list_allocator", "talc", "rlsf"];

fn run(peer: &Peer, workload: &str, seed: u64) -> Outcome {
    match workload {
        "uniform ≤ 512 B" => uniform_fill(peer, seed, 512),
        "uniform ≤ 4 KiB" => uniform_fill(peer, seed, 4096),
        "uniform ≤ 64 KiB" => uniform_fill(peer, seed, 64 << 10),
        "talc-fill" => talc_fill(peer, seed),
        "cpython-fill" => cpython_fill(peer, seed),
        other => panic!("unknown workload {other}"),
    }
}

/// Whether linked_list_allocator's O(holes) walks make this cell take
/// a minute or more (measured: 67 s for five seeds of blocks up to 512
/// bytes on 16 MiB, 16 times that on 64 MiB; 0.8 s for blocks up to 4 KiB).
fn lla_too_slow(region: usize, workload: &str) -> bool {
    region >= 16 << 20 && matches!(workload, "uniform ≤ 512 B" | "cpython-fill")
}

/// Mean fill (percent of the region live at the first failure) over the
/// seeds, or `None` where the peer is left out.
fn fill(name: &'static str, region: usize, workload: &str) -> Option<f64> {
    if name == "linked_list_allocator" && lla_too_slow(region, workload) {
        return None;
    }
    let mut sum = 0.0;
    for seed in SEEDS {
        let r = Region::new(region);
        let peer = make_peer(name, &r);
        let out = run(&peer, workload, seed);
        assert_eq!(out.failures, 1, "{name} never failed");
        sum += out.live_bytes as f64 / region as f64 * 100.0;
        drop(peer);
    }
    Some(sum / SEEDS.len() as f64)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3 {
        let region = args[1].parse::<usize>().expect("region in KiB") << 10;
        for name in PEERS {
            let t = Instant::now();
            let f = fill(name, region, &args[2]);
            println!("{name:>22}: {f:?} ({:.1} s)", t.elapsed().as_secs_f64());
        }
        return;
    }
    let mut table = String::new();
    writeln!(
        table,
        "| region | workload | strata | linked_list_allocator | talc | rlsf | best peer − strata |"
    )
    .unwrap();
    writeln!(table, "|---|---|---|---|---|---|---|").unwrap();
    let (mut cells, mut met) = (0, 0);
    for region in REGIONS {
        for workload in WORKLOADS {
            let f: Vec<Option<f64>> = PEERS.iter().map(|&p| fill(p, region, workload)).collect();
            let strata = f[0].expect("strata always runs");
            let best = f[1..].iter().flatten().copied().fold(0.0, f64::max);
            let gap = best - strata;
            cells += 1;
            met += usize::from(gap <= 1.0);
            let cell = |x: &Option<f64>| x.map_or("(minutes: left out)".to_string(), |v| format!("{v:.1} %"));
            let line = format!(
                "| {} KiB | {workload} | {} | {} | {} | {} | {gap:+.1}{} |",
                region >> 10,
                cell(&f[0]),
                cell(&f[1]),
                cell(&f[2]),
                cell(&f[3]),
                if gap <= 1.0 { "" } else { " **over 1 point**" }
            );
            println!("{line}");
            writeln!(table, "{line}").unwrap();
        }
    }
    let summary =
        format!("strata within 1 point of the best peer in {met} of {cells} cells (mean of 10 seeds).");
    println!("{summary}");
    writeln!(table, "\n{summary}").unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/FILL.md");
    std::fs::write(path, table).expect("write bench/FILL.md");
}
