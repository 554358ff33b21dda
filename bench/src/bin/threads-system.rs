//! The 4-thread std workload under the system allocator.
#[path = "../threads.rs"]
mod threads;

fn main() {
    for n in [1, 2, 4] {
        threads::run("system", n);
    }
}
