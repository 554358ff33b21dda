//! The multi-threaded workloads under the system allocator.
#[path = "../threads.rs"]
mod threads;

fn main() {
    threads::run_all("system");
}
