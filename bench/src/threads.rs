// The 4-thread std workload shared by the `threads-strata` and
// `threads-system` binaries: identical code, only the global allocator differs.
use std::collections::BTreeMap;
use std::time::Instant;

fn lcg(x: u64) -> u64 {
    x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407)
}

fn workload(seed: u64, n: usize) -> u64 {
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

/// Runs 16 rounds of the workload split over `threads` threads (the same
/// total work for every thread count); prints the checksum and seconds.
pub fn run(label: &str, threads: u64) {
    let start = Instant::now();
    let per = 16 / threads;
    let handles: Vec<_> = (0..threads)
        .map(|t| std::thread::spawn(move || (0..per).map(|r| workload(t * per + r, 100_000)).sum::<u64>()))
        .collect();
    let sum: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    println!("{label}: threads={threads} checksum={sum:#x} seconds={:.3}", start.elapsed().as_secs_f64());
}
