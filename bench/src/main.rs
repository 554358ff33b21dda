//! `make bench`: every workload on every peer, same seeds, same region size,
//! in one run. Wall time per operation (median of several runs) with each
//! peer's ratio to strata; instructions per operation under
//! `valgrind --tool=callgrind` (deterministic on noisy machines); heap
//! efficiency; threads; the goals of the benchmark issue checked. Writes
//! `bench/RESULTS.md` and `bench/results.png`.
//!
//! `strata-bench --only PEER WORKLOAD OPS` runs one workload once (what the
//! callgrind runs execute), `--time PEER WORKLOAD OPS` times it, `--fill PEER
//! cpython-fill|talc-fill` runs one fill; `--quick` runs fewer operations and
//! no callgrind.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Instant;

use strata_bench::{
    Outcome, PEERS, Peer, Region, cpython_churn, cpython_fill, fragmented_class, largest_block, make_peer,
    page_aligned, random_actions, realloc_growth, talc_fill,
};

const REGION: usize = 128 << 20;
const FILL_REGION: usize = 32 << 20;
const REGION_ALIGN_PAGES: usize = (4 << 20) / 4096;
/// Where the fill regions start past a 4 MiB boundary: a fill that ends at
/// the first failure depends on how layer +2's 1 MiB arenas line up with
/// the region (strata's cpython-fill at 32 MiB: 93.1 % or 97.5 %; see
/// `--fill-offsets`), so the table reports the mean over these.
const FILL_OFFSETS: [usize; 4] = [0, 1 << 18, 2 << 18, 3 << 18];
const SEED: u64 = 0x5eed_1234_abcd;
/// Runs of each threads binary; the table keeps each cell's best (the
/// machines are shared and noisy).
const THREAD_RUNS: usize = 3;

type Workload = fn(&Peer, usize) -> Outcome;
type Fill = fn(&Peer, u64) -> Outcome;

struct Spec {
    name: &'static str,
    run: Workload,
    ops: usize,
    pathological: bool,
    callgrind: bool,
}

fn workloads() -> Vec<Spec> {
    let w =
        |name, run: Workload, ops, pathological, callgrind| Spec { name, run, ops, pathological, callgrind };
    vec![
        w("cpython-churn", |p, n| cpython_churn(p, SEED, n), 1_000_000, false, true),
        w("random-200", |p, n| random_actions(p, SEED, n, 200, false), 1_000_000, false, true),
        w("random-200-realloc", |p, n| random_actions(p, SEED, n, 200, true), 1_000_000, false, true),
        w("random-1000", |p, n| random_actions(p, SEED, n, 1000, false), 1_000_000, false, true),
        w("random-1000-realloc", |p, n| random_actions(p, SEED, n, 1000, true), 1_000_000, false, false),
        w("random-10000", |p, n| random_actions(p, SEED, n, 10_000, false), 300_000, false, false),
        w("random-10000-realloc", |p, n| random_actions(p, SEED, n, 10_000, true), 300_000, false, false),
        w("random-30000", |p, n| random_actions(p, SEED, n, 30_000, false), 300_000, false, false),
        w("random-30000-realloc", |p, n| random_actions(p, SEED, n, 30_000, true), 300_000, false, false),
        w("page-aligned 4096×(1,4096)", |p, n| page_aligned(p, SEED, n), 81_920, true, true),
        w("fragmented-class", |p, n| fragmented_class(p, SEED, n), 300_000, true, true),
        w("realloc-growth to 1 MiB", |p, n| realloc_growth(p, SEED, n), 18_000, true, false),
    ]
}

/// linked_list_allocator is O(holes): run it on a tenth of the operations.
fn ops_for(peer: &str, ops: usize) -> usize {
    if peer == "linked_list_allocator" { (ops / 10).max(1) } else { ops }
}

fn time_ns_per_op(peer: &'static str, w: Workload, ops: usize, runs: usize) -> f64 {
    let mut samples: Vec<f64> = (0..runs)
        .map(|_| {
            let region = Region::new(REGION);
            let p = make_peer(peer, &region);
            let start = Instant::now();
            let out = w(&p, ops);
            let ns = start.elapsed().as_nanos() as f64;
            assert_eq!(out.failures, 0, "{peer}: failed allocations");
            ns / out.ops as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Instructions per operation: two callgrind runs of N and 2N operations,
/// whose difference cancels the set-up.
fn callgrind_per_op(peer: &str, workload: &str, n: usize) -> Option<f64> {
    callgrind_per_op_of(&std::env::current_exe().ok()?, peer, workload, n)
}

/// [`callgrind_per_op`] of another build of this benchmark.
fn callgrind_per_op_of(exe: &std::path::Path, peer: &str, workload: &str, n: usize) -> Option<f64> {
    let run = |ops: usize| -> Option<(f64, f64)> {
        let out = Command::new("valgrind")
            .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
            .arg(exe)
            .args(["--only", peer, workload, &ops.to_string()])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        let ir = text.split("Collected : ").nth(1)?.split_whitespace().next()?.parse().ok()?;
        let done = text.split("ops: ").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
        Some((ir, done))
    };
    let (i1, o1) = run(n)?;
    let (i2, o2) = run(2 * n)?;
    // A workload made of whole rounds may run the same count twice.
    (o2 > o1).then(|| (i2 - i1) / (o2 - o1))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cmd = |c: &str, a: &[&str]| {
        Command::new(c)
            .args(a)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    format!(
        "{cpu}, {cores} cores; {}; {}",
        cmd("rustc", &["-V"]),
        cmd("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
    )
}

/// Runs a threads binary (a sibling of this executable) [`THREAD_RUNS`]
/// times and returns its best seconds per workload and thread count.
fn threads(bin: &str) -> Option<Vec<(String, u32, f64)>> {
    let exe = std::env::current_exe().ok()?.with_file_name(bin);
    let mut best: Vec<(String, u32, f64)> = Vec::new();
    for _ in 0..THREAD_RUNS {
        let out = Command::new(&exe).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        for l in text.lines() {
            let parsed = (|| {
                let w = l.split("workload=").nth(1)?.split(" threads=").next()?.to_string();
                let t: u32 = l.split("threads=").nth(1)?.split_whitespace().next()?.parse().ok()?;
                let s: f64 = l.split("seconds=").nth(1)?.trim().parse().ok()?;
                Some((w, t, s))
            })();
            let Some((w, t, s)) = parsed else { continue };
            match best.iter_mut().find(|r| r.0 == w && r.1 == t) {
                Some(r) => r.2 = r.2.min(s),
                None => best.push((w, t, s)),
            }
        }
    }
    Some(best)
}

/// The cost of strata's features: the same workloads on three builds of
/// this benchmark (strata without event counters, with them — the default —
/// and with the debug hooks), written into `bench/RESULTS.md`.
fn cost(dir: &std::path::Path, exes: &[String]) {
    let builds = ["no features", "stats (default)", "debug + stats"];
    let mut md = String::from(
        "## Cost of the statistics and debug features\n\n`scripts/bench-cost.sh` builds this benchmark three times — strata with no features (`--no-default-features`), with `stats` (the default: event counters on the fast paths) and with `debug` — and runs strata's workloads on each: instructions per operation under callgrind (exact), wall time (noisy) and the ratio to the featureless build.\n\n| workload | build | instructions/op | × | wall ns/op | × |\n|---|---|---|---|---|---|\n",
    );
    for w in ["cpython-churn", "random-200-realloc", "random-1000"] {
        let mut base = None;
        for (build, exe) in builds.iter().zip(exes) {
            let exe = std::path::Path::new(exe);
            let ir = callgrind_per_op_of(exe, "strata", w, 100_000);
            let wall =
                Command::new(exe).args(["--time", "strata", w, "300000"]).output().ok().and_then(|o| {
                    String::from_utf8_lossy(&o.stdout).split("ns/op: ").nth(1)?.trim().parse::<f64>().ok()
                });
            let (b_ir, b_wall) = *base.get_or_insert((ir, wall));
            let ratio = |x: Option<f64>, b: Option<f64>| match (x, b) {
                (Some(x), Some(b)) if b > 0.0 => format!("{:.2}", x / b),
                _ => "–".into(),
            };
            let show = |x: Option<f64>| x.map_or("–".into(), |x| format!("{x:.1}"));
            writeln!(
                md,
                "| {w} | {build} | {} | {} | {} | {} |",
                show(ir),
                ratio(ir, b_ir),
                show(wall),
                ratio(wall, b_wall)
            )
            .unwrap();
            println!("cost: {w} {build}: {} instructions/op, {} ns/op", show(ir), show(wall));
        }
    }
    let path = dir.join("RESULTS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let kept = match old.find("## Cost of the statistics and debug features") {
        Some(i) => {
            let rest = &old[i + 3..];
            let end = rest.find("\n## ").map_or(old.len(), |j| i + 3 + j + 1);
            format!("{}{}", &old[..i], &old[end..])
        }
        None => old,
    };
    std::fs::write(&path, format!("{}\n\n{md}", kept.trim_end())).expect("write bench/RESULTS.md");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 5 && args[1] == "--only" {
        let name = PEERS.iter().chain(&["bump"]).copied().find(|p| *p == args[2]).expect("known peer");
        let spec = workloads().into_iter().find(|s| s.name == args[3]).expect("known workload");
        let region = Region::new(REGION);
        let peer = make_peer(name, &region);
        let out = (spec.run)(&peer, args[4].parse().expect("op count"));
        println!("{name} {} {:?}", args[3], out);
        return;
    }
    if args.len() == 5 && args[1] == "--time" {
        let name = PEERS.iter().copied().find(|p| *p == args[2]).expect("known peer");
        let spec = workloads().into_iter().find(|s| s.name == args[3]).expect("known workload");
        println!("ns/op: {:.2}", time_ns_per_op(name, spec.run, args[4].parse().expect("op count"), 5));
        return;
    }
    if args.len() == 2 && args[1] == "--fill-offsets" {
        // How much the fill depends on where the region starts.
        for offset in (0..REGION_ALIGN_PAGES).step_by(64).map(|p| p * 4096) {
            print!("offset {offset:#8x}:");
            for name in ["strata", "talc", "rlsf"] {
                for (fname, fill) in [("cpython", cpython_fill as Fill), ("talc", talc_fill)] {
                    let region = Region::at_offset(FILL_REGION, offset);
                    let out = fill(&make_peer(name, &region), SEED);
                    let pct = 100.0 * out.live_bytes as f64 / FILL_REGION as f64;
                    print!(" {name}/{fname} {pct:.1}");
                }
            }
            println!();
        }
        return;
    }
    if args.len() == 4 && args[1] == "--fill" {
        let name = PEERS.iter().copied().find(|p| *p == args[2]).expect("known peer");
        let fill: Fill = if args[3] == "talc-fill" { talc_fill } else { cpython_fill };
        let region = Region::new(FILL_REGION);
        let out = fill(&make_peer(name, &region), SEED);
        println!("{name} {}: {:.1} %", args[3], 100.0 * out.live_bytes as f64 / FILL_REGION as f64);
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    if args.len() == 5 && args[1] == "--cost" {
        cost(dir, &args[2..]);
        return;
    }
    if args.len() == 2 && args[1] == "--redraw" {
        // Redraw the chart from the wall-time table of bench/RESULTS.md.
        let md = std::fs::read_to_string(dir.join("RESULTS.md")).expect("bench/RESULTS.md");
        let table =
            md.split("## Wall time").nth(1).expect("wall-time table").split("\n## ").next().unwrap_or("");
        let wall: Vec<(&'static str, bool, Vec<f64>)> = table
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| workload"))
            .map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).filter(|c| !c.is_empty()).collect();
                let name: &'static str = Box::leak(cells[0].to_string().into_boxed_str());
                let times = cells[1..]
                    .iter()
                    .map(|c| c.split_whitespace().next().unwrap_or("0").parse().unwrap_or(0.0))
                    .collect();
                (name, false, times)
            })
            .collect();
        chart::draw(&dir.join("results.png"), &wall).expect("draw the chart");
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let (scale, runs) = if quick { (5, 3) } else { (1, 5) };
    let mut md = String::new();
    let m = machine();
    writeln!(md, "# strata benchmarks\n\nMachine: {m}.\n").unwrap();
    writeln!(
        md,
        "Every peer sits behind the same locked `dyn GlobalAlloc` call over a fresh {} MiB region and replays the same seeded workload; every returned pointer is checked for alignment and for lying in the region. Ratios are peer ÷ strata from this run; under 1 means the peer is faster. linked_list_allocator runs a tenth of the operations (it is O(holes)).\n",
        REGION >> 20
    )
    .unwrap();

    // Wall time.
    writeln!(md, "## Wall time, ns per operation (median of {runs} runs)\n").unwrap();
    write!(md, "| workload |").unwrap();
    for p in PEERS {
        write!(md, " {p} |").unwrap();
    }
    writeln!(md, "\n|---|{}", "---|".repeat(PEERS.len())).unwrap();
    let mut wall: Vec<(&'static str, bool, Vec<f64>)> = Vec::new();
    for spec in workloads() {
        let ops = spec.ops / scale;
        let times: Vec<f64> =
            PEERS.iter().map(|&p| time_ns_per_op(p, spec.run, ops_for(p, ops), runs)).collect();
        write!(md, "| {} |", spec.name).unwrap();
        for t in &times {
            write!(md, " {t:.1} ({:.2}×) |", t / times[0]).unwrap();
        }
        writeln!(md).unwrap();
        eprintln!("wall: {} done", spec.name);
        wall.push((spec.name, spec.pathological, times));
    }

    // Instructions.
    let mut instr: Vec<(&'static str, Vec<Option<f64>>)> = Vec::new();
    let have_valgrind = Command::new("valgrind").arg("--version").output().is_ok_and(|o| o.status.success());
    if !quick && have_valgrind {
        let peers: Vec<&'static str> = PEERS.iter().copied().chain(["bump"]).collect();
        writeln!(md, "\n## Instructions per operation (callgrind; deterministic)\n").unwrap();
        writeln!(md, "Includes the workload's own bookkeeping; `bump` (a locked bump allocator that never frees, behind the same call) is the floor of any locked design.\n").unwrap();
        write!(md, "| workload |").unwrap();
        for p in &peers {
            write!(md, " {p} |").unwrap();
        }
        writeln!(md, "\n|---|{}", "---|".repeat(peers.len())).unwrap();
        for spec in workloads().into_iter().filter(|s| s.callgrind) {
            let n = 100_000.min(spec.ops);
            let counts: Vec<Option<f64>> =
                peers.iter().map(|&p| callgrind_per_op(p, spec.name, ops_for(p, n))).collect();
            write!(md, "| {} |", spec.name).unwrap();
            for c in &counts {
                match (c, counts[0]) {
                    (Some(c), Some(s)) => write!(md, " {c:.0} ({:.2}×) |", c / s).unwrap(),
                    (Some(c), None) => write!(md, " {c:.0} |").unwrap(),
                    (None, _) => write!(md, " — |").unwrap(),
                }
            }
            writeln!(md).unwrap();
            eprintln!("callgrind: {} done", spec.name);
            instr.push((spec.name, counts));
        }
    }

    // Heap efficiency and the largest block.
    writeln!(
        md,
        "\n## Heap efficiency ({} MiB region; fills are the mean over {} placements of the region, \
         0, ¼, ½ and ¾ MiB past a 1 MiB boundary)\n",
        FILL_REGION >> 20,
        FILL_OFFSETS.len()
    )
    .unwrap();
    let fill_peers: Vec<&'static str> = PEERS.iter().copied().filter(|p| *p != "system").collect();
    write!(md, "| measure |").unwrap();
    for p in &fill_peers {
        write!(md, " {p} |").unwrap();
    }
    writeln!(md, "\n|---|{}", "---|".repeat(fill_peers.len())).unwrap();
    let mut talc_fill_strata = 0.0;
    let fills: [(&str, Fill); 2] = [("cpython-fill", cpython_fill), ("talc-fill", talc_fill)];
    for (name, f) in fills {
        write!(md, "| {name}: live bytes at the first failure ÷ region |").unwrap();
        for &p in &fill_peers {
            let pct = FILL_OFFSETS
                .iter()
                .map(|&offset| {
                    let region = Region::at_offset(FILL_REGION, offset);
                    let out = f(&make_peer(p, &region), SEED);
                    100.0 * out.live_bytes as f64 / FILL_REGION as f64
                })
                .sum::<f64>()
                / FILL_OFFSETS.len() as f64;
            if name == "talc-fill" && p == "strata" {
                talc_fill_strata = pct;
            }
            write!(md, " {pct:.1} % |").unwrap();
        }
        writeln!(md).unwrap();
    }
    write!(md, "| largest block in a fresh heap ÷ region |").unwrap();
    for &p in &fill_peers {
        let region = Region::new(FILL_REGION);
        let out = largest_block(&make_peer(p, &region), FILL_REGION);
        write!(md, " {:.1} % |", 100.0 * out.live_bytes as f64 / FILL_REGION as f64).unwrap();
    }
    writeln!(md).unwrap();

    // Threads.
    let t_strata = threads("threads-strata");
    let t_system = threads("threads-system");
    let t_talc = threads("threads-talc");
    let secs = |runs: &Option<Vec<(String, u32, f64)>>, w: &str, n: u32| {
        runs.as_ref()?.iter().find(|(x, t, _)| x == w && *t == n).map(|r| r.2)
    };
    if let Some(s) = &t_strata {
        writeln!(md, "\n## Threads: fixed total work split over the threads, each allocator the program's global allocator (strata: `LockedHeap`, thread caches on their own), best of {THREAD_RUNS} runs\n").unwrap();
        writeln!(md, "| workload | threads | system (s) | talc (s) | strata (s) | strata ÷ system | strata ÷ talc |\n|---|---|---|---|---|---|---|").unwrap();
        for (w, n, a) in s {
            let (y, t) = (secs(&t_system, w, *n), secs(&t_talc, w, *n));
            let cell = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.3}"));
            let ratio = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{:.2}×", a / v));
            writeln!(md, "| {w} | {n} | {} | {} | {a:.3} | {} | {} |", cell(y), cell(t), ratio(y), ratio(t))
                .unwrap();
        }
    }

    // Goals.
    writeln!(md, "\n## Goals\n").unwrap();
    let mark = |ok: bool| if ok { "met" } else { "**not met**" };
    let find = |name: &str| instr.iter().find(|(n, _)| *n == name).map(|(_, c)| c.clone());
    let idx = |p: &str| PEERS.iter().position(|x| *x == p).unwrap();
    for w in ["cpython-churn", "random-200"] {
        if let Some(c) = find(w)
            && let (Some(s), Some(t), Some(l)) = (c[0], c[idx("talc")], c[idx("linked_list_allocator")])
        {
            writeln!(md, "- {w}: fewer instructions per op than talc ({s:.0} vs {t:.0}): {}; ≥ 10× fewer than linked_list_allocator ({:.1}×): {}", mark(s < t), l / s, mark(l >= 10.0 * s)).unwrap();
        }
    }
    writeln!(
        md,
        "- heap efficiency ≥ 97 % on the talc-style workload ({talc_fill_strata:.1} %): {}",
        mark(talc_fill_strata >= 97.0)
    )
    .unwrap();
    let mut strata_times: Vec<f64> = wall.iter().map(|(_, _, t)| t[0]).collect();
    strata_times.sort_by(f64::total_cmp);
    let median = strata_times[strata_times.len() / 2];
    for (name, patho, t) in &wall {
        if *patho {
            writeln!(
                md,
                "- pathological `{name}` within 3× strata's median ({:.1} vs {median:.1} ns/op): {}",
                t[0],
                mark(t[0] <= 3.0 * median)
            )
            .unwrap();
        }
    }
    if let Some(s) = &t_strata {
        let mut workloads: Vec<&str> = s.iter().map(|r| r.0.as_str()).collect();
        workloads.dedup();
        for w in workloads {
            if let (Some(one), Some(four)) = (secs(&t_strata, w, 1), secs(&t_strata, w, 4)) {
                let sys = secs(&t_system, w, 4).unwrap_or(f64::NAN);
                let talc = secs(&t_talc, w, 4).unwrap_or(f64::NAN);
                writeln!(
                    md,
                    "- {w}, 4 threads: within 1.3× of the system allocator ({four:.3} vs {sys:.3} s): {}; no slower than talc ({talc:.3} s): {}; at most 0.7× strata's 1-thread time ({one:.3} s): {}",
                    mark(four <= 1.3 * sys),
                    mark(four <= talc),
                    mark(four <= 0.7 * one)
                )
                .unwrap();
            }
        }
    }

    print!("{md}");
    std::fs::write(dir.join("RESULTS.md"), &md).expect("write RESULTS.md");
    match chart::draw(&dir.join("results.png"), &wall) {
        Ok(()) => eprintln!("wrote bench/RESULTS.md and bench/results.png"),
        Err(e) => eprintln!("wrote bench/RESULTS.md; no chart: {e}"),
    }
}

mod chart {
    use plotters::prelude::*;
    use plotters::style::{FontStyle, register_font};
    use strata_bench::PEERS;

    const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

    /// Grouped bars: each workload's wall time per operation for every peer,
    /// as a ratio to strata on a log scale.
    pub fn draw(
        path: &std::path::Path,
        wall: &[(&'static str, bool, Vec<f64>)],
    ) -> Result<(), Box<dyn std::error::Error>> {
        let font =
            std::fs::read(FONT).map_err(|e| format!("{FONT}: {e} (apt-get install fonts-dejavu-core)"))?;
        register_font("sans-serif", FontStyle::Normal, Box::leak(font.into_boxed_slice()))
            .map_err(|_| "font not usable")?;
        let root = BitMapBackend::new(path, (1400, 700)).into_drawing_area();
        root.fill(&WHITE)?;
        let groups = wall.len() as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "wall time per operation, ratio to strata (log scale; lower is faster)",
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(150)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..groups, (0.05f64..400f64).log_scale())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(wall.len() + 1)
            .x_label_formatter(&|x| {
                let i = x.round() as usize;
                if (x - x.round()).abs() < 0.01 && i < wall.len() {
                    wall[i].0.to_string()
                } else {
                    String::new()
                }
            })
            .x_label_style(("sans-serif", 13).into_text_style(&root).transform(FontTransform::Rotate270))
            .y_desc("peer ÷ strata")
            .draw()?;
        let width = 0.8 / PEERS.len() as f64;
        for (j, peer) in PEERS.iter().enumerate() {
            let color = Palette99::pick(j).to_rgba();
            chart
                .draw_series(wall.iter().enumerate().map(|(i, (_, _, t))| {
                    let x0 = i as f64 + 0.05 + j as f64 * width;
                    Rectangle::new(
                        [(x0, 0.05), (x0 + width * 0.9, (t[j] / t[0]).clamp(0.05, 400.0))],
                        color.filled(),
                    )
                }))?
                .label(*peer)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        }
        chart.draw_series(std::iter::once(PathElement::new(vec![(0.0, 1.0), (groups, 1.0)], BLACK)))?;
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
        root.present()?;
        Ok(())
    }
}
