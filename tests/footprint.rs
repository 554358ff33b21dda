//! A heap static is all zeros, so it lies in `.bss`: no flash and no copy
//! at reset (README, *What a firmware build holds*). Checked in this test
//! binary's own symbol table (`nm`), in the default build and in the
//! firmware build (`--no-default-features`).

use std::process::Command;

/// An empty heap, under a name `nm` can find.
#[unsafe(no_mangle)]
static STRATA_FOOTPRINT_EMPTY_HEAP: strata::LockedHeap = strata::LockedHeap::empty();

#[test]
fn an_empty_heap_static_lies_in_bss() {
    // Used, so that the static is kept.
    assert_eq!(STRATA_FOOTPRINT_EMPTY_HEAP.stats().segments.span_bytes, 0);
    let exe = std::env::current_exe().expect("the test binary");
    let out = Command::new("nm").arg(&exe).output().expect("nm (binutils) runs");
    assert!(out.status.success(), "nm failed: {}", String::from_utf8_lossy(&out.stderr));
    let symbols = String::from_utf8_lossy(&out.stdout);
    let line = symbols
        .lines()
        .find(|l| l.ends_with(" STRATA_FOOTPRINT_EMPTY_HEAP"))
        .expect("the heap static in the symbol table");
    let kind = line.split_whitespace().nth(1).expect("a symbol type");
    assert!(matches!(kind, "b" | "B"), "{line}: the heap static is not in .bss (not all zeros)");
}
