//! The multi-threaded workloads with `strata::LockedHeap` over a 512 MiB region
//! as the global allocator.
use std::mem::MaybeUninit;

#[path = "../threads.rs"]
mod threads;

#[global_allocator]
static HEAP: strata::LockedHeap = strata::LockedHeap::empty();
const REGION: usize = 512 << 20;
static mut MEMORY: [MaybeUninit<u8>; REGION] = [MaybeUninit::uninit(); REGION];

/// Runs from `.init_array`, before the Rust runtime's first allocation.
extern "C" fn init_heap() {
    // SAFETY: MEMORY is handed out once, here, before anything runs.
    HEAP.init_from_slice(unsafe { std::slice::from_raw_parts_mut((&raw mut MEMORY).cast(), REGION) });
}

#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn() = init_heap;

fn main() {
    threads::run_all("strata");
    let s = HEAP.stats();
    println!(
        "strata: failed allocations {}, arenas high water {}",
        s.front.failed_allocations, s.arenas.high_water
    );
}
