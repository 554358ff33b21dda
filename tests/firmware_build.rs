//! The build a firmware uses: no `tlsf`, no `pools` (`cargo test
//! --no-default-features --test firmware_build`). Layer 0 is first fit at
//! every size, layer +2 is left out, and asking for either is refused, not
//! ignored. In other builds this file compiles to nothing.
#![cfg(not(any(feature = "tlsf", feature = "pools")))]

mod common;

use std::alloc::{GlobalAlloc, Layout};
use std::fmt::Write;
use std::mem::MaybeUninit;
use std::ptr::NonNull;

use common::{Region, Rng};
use strata::object::{Geometry, GeometryError};
use strata::segment::{Config, ConfigError, DeallocateError};
use strata::{Heap, InvalidConfig, Layer, LockedHeap};

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

/// A static heap, initialised in place from a leaked region, serves and
/// checks contents; a second `init` panics rather than replace it.
#[test]
fn a_static_heap_serves_after_init_in_place() {
    static HEAP: LockedHeap = LockedHeap::empty();
    let memory: &'static mut [MaybeUninit<u8>] =
        Box::leak(vec![MaybeUninit::uninit(); 64 << 10].into_boxed_slice());
    // Before init: a documented null, nothing else.
    // SAFETY: a valid layout; the null is not freed.
    assert!(unsafe { HEAP.alloc(layout(64, 8)) }.is_null());
    HEAP.init_from_slice(memory);
    let blocks: Vec<(*mut u8, usize)> = (1..200)
        .map(|i| {
            let size = 8 * (i % 40 + 1);
            // SAFETY: a valid layout.
            let p = unsafe { HEAP.alloc(layout(size, 8)) };
            assert!(!p.is_null(), "allocation {i} of {size} bytes failed on a 64 KiB heap");
            // SAFETY: a fresh block of `size` bytes.
            unsafe { p.write_bytes(i as u8, size) };
            (p, size)
        })
        .collect();
    for (i, &(p, size)) in (1..).zip(&blocks) {
        // SAFETY: the block is live and `size` bytes long.
        assert!(
            unsafe { std::slice::from_raw_parts(p, size) }.iter().all(|&b| b == i as u8),
            "block {i} overwritten"
        );
        // SAFETY: allocated above with this layout.
        unsafe { HEAP.dealloc(p, layout(size, 8)) };
    }
    let stats = HEAP.stats();
    assert!(stats.segments.first_fit);
    assert_eq!(stats.front.failed_allocations, 1, "only the one before init failed");
    assert_eq!(stats.front.refused_frees, 0);
    let second = std::panic::catch_unwind(|| {
        HEAP.init_from_slice(Box::leak(vec![MaybeUninit::uninit(); 4096].into_boxed_slice()))
    });
    assert!(second.is_err(), "a second init must panic");
}

/// Even a region of several megabytes is first fit, every block layer 0's.
#[test]
fn layer_0_is_first_fit_at_every_size_and_layer_2_owns_nothing() {
    let region = Region::new(32 << 20);
    let mut heap = Heap::new(region.source());
    assert_eq!(heap.stats().geometry.threshold, 0, "layer +2 is off: {:?}", heap.stats().geometry);
    let small = heap.allocate(layout(16, 8)).unwrap();
    let large = heap.allocate(layout(1 << 20, 4096)).unwrap();
    assert_eq!(heap.owner(small.as_ptr()), Some(Layer::Segment));
    assert_eq!(heap.owner(large.as_ptr()), Some(Layer::Segment));
    assert!(heap.stats().segments.first_fit);
    // SAFETY: allocated above with these layouts.
    unsafe {
        heap.deallocate(small, layout(16, 8)).unwrap();
        heap.deallocate(large, layout(1 << 20, 4096)).unwrap();
    }
    heap.check_invariants();
}

/// A geometry with pools, or TLSF tunables, are errors in this build.
#[test]
fn asking_for_a_layer_not_built_is_refused() {
    let region = Region::new(1 << 20);
    let refused = Heap::with_geometry(region.source(), Geometry::CPYTHON, Config::for_window(1 << 20));
    assert_eq!(refused.err(), Some(InvalidConfig::Geometry(GeometryError::Threshold(512))));
    assert!(GeometryError::Threshold(512).to_string().contains("not built (feature `pools`)"));
    let tlsf = Config { first_fit: false, ..Config::for_window(1 << 20) };
    let off = Geometry { threshold: 0, ..Geometry::for_region(1 << 20) };
    let refused = Heap::with_geometry(region.source(), off, tlsf);
    assert_eq!(refused.err(), Some(InvalidConfig::Segment(ConfigError::TlsfNotBuilt)));
    assert!(Config::for_window(1 << 30).first_fit, "the default tunables are first fit at every size");
}

/// The report says which layer is left out, written without a `Report`.
#[test]
fn the_report_says_layer_2_is_not_built() {
    let region = Region::new(256 << 10);
    let mut heap = Heap::new(region.source());
    let p = heap.allocate(layout(100, 8)).unwrap();
    let mut text = String::new();
    heap.write_report(&mut text).unwrap();
    assert!(text.contains("Layer +2 is not built"), "{text}");
    assert!(text.contains("layer 0 (first fit)"), "{text}");
    assert_eq!(text, heap.report().to_string(), "the streamed report and the snapshot's differ");
    // SAFETY: allocated above with this layout.
    unsafe { heap.deallocate(p, layout(100, 8)) }.unwrap();
}

/// Churn with contents checked; frees of foreign pointers are refused.
#[test]
fn churn_keeps_contents_and_refuses_foreign_frees() {
    let region = Region::new(256 << 10);
    let mut heap = Heap::new(region.source());
    let mut rng = Rng(0x5eed);
    let mut live: Vec<(NonNull<u8>, Layout, u8)> = Vec::new();
    for step in 0..20_000u32 {
        if !live.is_empty() && (rng.below(2) == 0 || live.len() > 300) {
            let (p, l, tag) = live.swap_remove(rng.below(live.len() as u64) as usize);
            // SAFETY: the block is live and `l.size()` bytes long.
            let bytes = unsafe { std::slice::from_raw_parts(p.as_ptr(), l.size()) };
            assert!(bytes.iter().all(|&b| b == tag), "step {step}: block contents changed");
            // SAFETY: allocated with this layout.
            unsafe { heap.deallocate(p, l) }.unwrap();
        } else {
            let l = layout(1 + rng.below(2048) as usize, 1 << rng.below(5));
            let tag = step as u8;
            if let Ok(p) = heap.allocate(l) {
                assert_eq!(p.as_ptr() as usize % l.align(), 0);
                // SAFETY: a fresh block of `l.size()` bytes.
                unsafe { p.as_ptr().write_bytes(tag, l.size()) };
                live.push((p, l, tag));
            }
        }
    }
    let mut foreign = [0u8; 64];
    let foreign = NonNull::new(foreign.as_mut_ptr()).unwrap();
    // SAFETY: refused before anything is written: the pointer is not ours.
    let refused = unsafe { heap.deallocate(foreign, layout(64, 8)) };
    assert!(matches!(refused, Err(DeallocateError::NotOwned { .. })), "{refused:?}");
    heap.check_invariants();
}

/// Blocks as small as linked_list_allocator's fit as many as it fits.
#[test]
fn small_blocks_fit_as_densely_as_in_linked_list_allocator() {
    for size in [8, 16, 24, 40] {
        let (a, b) = (Region::new(8 << 10), Region::new(8 << 10));
        let mut heap = Heap::new(a.source());
        let mut lla = linked_list_allocator::Heap::empty();
        // SAFETY: the region is the heap's alone while it lives.
        unsafe { lla.init(b.ptr(), b.len()) };
        let l = layout(size, 8);
        let strata = (0..).take_while(|_| heap.allocate(l).is_ok()).count();
        let first_fit = (0..).take_while(|_| lla.allocate_first_fit(l).is_ok()).count();
        assert!(
            strata >= first_fit,
            "{size}-byte blocks: strata {strata}, linked_list_allocator {first_fit}"
        );
    }
}

/// `write!` into the report's writer works for any `fmt::Write` sink.
#[test]
fn the_report_streams_into_any_writer() {
    struct Counter(usize);
    impl Write for Counter {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0 += s.len();
            Ok(())
        }
    }
    let region = Region::new(64 << 10);
    let heap = Heap::new(region.source());
    let mut n = Counter(0);
    heap.write_report(&mut n).unwrap();
    assert_eq!(n.0, heap.report().to_string().len());
}
