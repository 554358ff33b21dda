//! Puts the target's memory map where cortex-m-rt's `link.x` finds it
//! (`memory.x`: QEMU's mps2-an386 for the Cortex-M4F, `memory-microbit.x`:
//! the micro:bit's nRF51822 for the Cortex-M0), and links the firmware
//! binaries with `link.x` (thumb targets only).
use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target = std::env::var("TARGET").unwrap_or_default();
    let map = if target.starts_with("thumbv6m") { "memory-microbit.x" } else { "memory.x" };
    std::fs::copy(map, out.join("memory.x")).expect("copy the memory map");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-changed=memory-microbit.x");
    if target.starts_with("thumb") {
        println!("cargo:rustc-link-arg-bins=-Tlink.x");
    }
}
