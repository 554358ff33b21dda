//! Heaps with thread caches (feature `std`), shared by
//! `tests/thread_cache.rs` and `tests/thread_cache_model.rs`.

use std::mem::MaybeUninit;

use strata::LockedHeap;

/// A block handed to another thread.
#[derive(Clone, Copy)]
pub struct Block(pub *mut u8);

// SAFETY: a heap block is plain memory; the tests hand each to one thread.
unsafe impl Send for Block {}

/// A heap over a fresh region of `size` bytes, left uninitialised (as a
/// real region is, which Miri also needs: a `vec!` of 32 Mi elements would
/// take it hours), its thread caches on from the start rather than when
/// two threads first meet at the lock (tested in `tests/thread_cache.rs`).
pub fn cached_heap(size: usize) -> &'static LockedHeap {
    let heap = plain_heap(size);
    heap.set_thread_caches(true);
    heap
}

/// As [`cached_heap`], its caches left to come on by themselves.
pub fn plain_heap(size: usize) -> &'static LockedHeap {
    let heap: &'static LockedHeap = Box::leak(Box::new(LockedHeap::empty()));
    init_tlsf(heap, Box::leak(Box::<[u8]>::new_uninit_slice(size)));
    heap
}

/// Initialises `heap` over `mem` with layer 0 by TLSF at any size: under
/// 16 MiB a region is served by first fit by default, whose blocks carry
/// no header for a cache to check, so it has no thread caches (checked in
/// `a_first_fit_heap_has_no_thread_caches`).
pub fn init_tlsf(heap: &LockedHeap, mem: &'static mut [MaybeUninit<u8>]) {
    // SAFETY: a leaked slice: valid and the heap's alone forever.
    let source = unsafe { strata::RegionSource::new(mem.as_mut_ptr().cast(), mem.len()) };
    let window = strata::PageSource::window(&source).1;
    let config = strata::segment::Config { first_fit: false, ..strata::segment::Config::for_window(window) };
    let geometry = strata::object::Geometry::for_window(window);
    heap.init_heap(strata::Heap::with_geometry(source, geometry, config).unwrap());
}

/// A heap with caches on and layer +2 serving every small request.
pub fn heap() -> &'static LockedHeap {
    // Large enough for layer +2 (from 16 MiB), whose classes thread caches
    // serve.
    let heap = cached_heap(32 << 20);
    // Every small request from pools at once: the caches hold +2 blocks.
    heap.with(|h| h.set_cold_limit(0));
    heap
}

/// Small blocks in use as far as the heap knows: in layer +2's pools, and
/// in layer 0 (the first blocks of a class, until it is worth a pool).
pub fn in_use(heap: &LockedHeap) -> usize {
    heap.with(|h| {
        h.class_stats().iter().map(|c| c.blocks_in_use).sum::<usize>() + h.stats().front.small_in_layer_0
    })
}
