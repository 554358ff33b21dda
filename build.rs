//! Sets `strata_unoptimized` when this crate is built at opt-level 0 (a
//! dependency in a dev profile, as most firmware is first built).
//!
//! The hot paths are `#[inline(always)]` only when optimised: at opt-level 0
//! LLVM still inlines those, but gives every local of every inlined body its
//! own stack slot, so one `realloc` took 8.5 KiB of stack on a Cortex-M0
//! (more than half of a micro:bit's RAM). Left to themselves, the functions
//! keep frames of their own, and a call chain only the frames on it.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(strata_unoptimized)");
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var("OPT_LEVEL").as_deref() == Ok("0") {
        println!("cargo::rustc-cfg=strata_unoptimized");
    }
}
