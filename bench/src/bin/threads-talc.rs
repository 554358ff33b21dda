//! The multi-threaded workloads with talc (behind its spin lock) over a
//! 512 MiB region as the global allocator.
use std::mem::MaybeUninit;

#[path = "../threads.rs"]
mod threads;

const REGION: usize = 512 << 20;
static mut MEMORY: [MaybeUninit<u8>; REGION] = [MaybeUninit::uninit(); REGION];

#[global_allocator]
static TALC: talc::TalcLock<spinning_top::RawSpinlock, talc::source::Manual> =
    talc::TalcLock::new(talc::source::Manual);

/// Runs from `.init_array`, before the Rust runtime's first allocation.
extern "C" fn init_heap() {
    // SAFETY: MEMORY is handed out once, here, before anything runs.
    unsafe { TALC.lock().claim((&raw mut MEMORY).cast(), REGION) }.expect("talc claims the region");
}

#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn() = init_heap;

fn main() {
    threads::run_all("talc");
}
