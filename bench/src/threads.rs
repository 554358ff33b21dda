// The multi-threaded workloads shared by the `threads-system`,
// `threads-talc` and `threads-strata` binaries: identical code, only the
// global allocator differs. Each runs a fixed total amount of work split
// over 1, 2, 4 and 8 threads and prints one line per run.
use std::collections::BTreeMap;
use std::time::Instant;

fn lcg(x: u64) -> u64 {
    x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407)
}

/// The std workload: a map of vectors and a set of strings.
fn std_workload(seed: u64, n: usize) -> u64 {
    let mut map: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut strings: Vec<String> = Vec::new();
    let mut x = seed;
    for i in 0..n {
        x = lcg(x);
        map.entry(x % 4096).or_default().push(i as u64);
        if i % 3 == 0 {
            strings.push(format!("{x:x}-{i}"));
            if strings.len() > 512 {
                strings.swap_remove((x % 512) as usize);
            }
        }
    }
    let text: usize = strings.iter().map(String::len).sum();
    map.values().map(|v| v.iter().sum::<u64>()).sum::<u64>() + map.len() as u64 + text as u64
}

/// malloc/free churn: `n` operations on a set of up to 1000 live blocks of
/// random sizes in 16..=`max` bytes, every block filled with a tag and
/// checked when freed.
fn churn(seed: u64, n: usize, max: usize) -> u64 {
    let mut live: Vec<(Vec<u8>, u8)> = Vec::with_capacity(1000);
    let mut x = seed | 1;
    let mut sum = 0u64;
    for i in 0..n {
        x = lcg(x);
        let r = (x >> 33) as usize;
        if live.len() >= 1000 || (live.len() > 500 && r.is_multiple_of(2)) {
            let (block, tag) = live.swap_remove(r % live.len());
            assert!(block.iter().all(|&b| b == tag), "contents lost");
            sum += block.len() as u64;
        } else {
            let size = 16 + (r >> 8) % (max - 15);
            let tag = i as u8;
            live.push((vec![tag; size], tag));
        }
    }
    for (block, tag) in live {
        assert!(block.iter().all(|&b| b == tag), "contents lost");
        sum += block.len() as u64;
    }
    sum
}

/// Runs `work(seed)` `rounds` times split over `threads` threads (the same
/// total work for every thread count); prints the checksum and seconds.
fn run(label: &str, workload: &str, threads: u64, rounds: u64, work: fn(u64) -> u64) {
    let start = Instant::now();
    let per = rounds / threads;
    let handles: Vec<_> = (0..threads)
        .map(|t| std::thread::spawn(move || (0..per).map(|r| work(t * per + r)).sum::<u64>()))
        .collect();
    let sum: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    println!(
        "{label}: workload={workload} threads={threads} checksum={sum:#x} seconds={:.3}",
        start.elapsed().as_secs_f64()
    );
}

/// A named workload: one round from a seed.
type Workload = (&'static str, fn(u64) -> u64);

/// Every workload at 1, 2, 4 and 8 threads.
pub fn run_all(label: &str) {
    let workloads: [Workload; 3] = [
        ("churn 16 B-4 KiB", |s| churn(s, 250_000, 4096)),
        ("churn 16 B-64 KiB", |s| churn(s, 40_000, 65536)),
        ("std", |s| std_workload(s, 100_000)),
    ];
    // `THREADS_ONLY="churn 16 B-4 KiB:4"` runs one workload at one thread
    // count (for profiling); unset, everything runs.
    let only = std::env::var("THREADS_ONLY").ok();
    for (name, work) in workloads {
        for threads in [1, 2, 4, 8] {
            if only.as_deref().is_some_and(|o| o != format!("{name}:{threads}")) {
                continue;
            }
            run(label, name, threads, 16, work);
        }
    }
}
