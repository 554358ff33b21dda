//! Per-thread caches (feature `std`): freed small blocks are reused by the
//! same thread without the lock, go back on thread exit and on `trim`, and
//! blocks freed on another thread are fine.
#![cfg(all(feature = "std", not(feature = "debug")))]

use std::alloc::{GlobalAlloc, Layout};
use std::thread;

use strata::LockedHeap;
use strata::front::thread_cache::DEPTH;

/// A block handed to another thread.
#[derive(Clone, Copy)]
struct Block(*mut u8);

// SAFETY: a heap block is plain memory; the tests hand each to one thread.
unsafe impl Send for Block {}

/// Churn rounds per thread (fewer under Miri, which runs them a thousand
/// times slower).
const ROUNDS: u32 = if cfg!(miri) { 400 } else { 20_000 };

fn heap() -> &'static LockedHeap {
    let heap: &'static LockedHeap = Box::leak(Box::new(LockedHeap::empty()));
    // Large enough for layer +2 (from 16 MiB), whose classes thread caches
    // serve; left uninitialised (as a real region is), which Miri also
    // needs: a `vec!` of 32 Mi elements would take it hours.
    heap.init_from_slice(Box::leak(Box::<[u8]>::new_uninit_slice(32 << 20)));
    // Every small request from pools at once: the caches hold +2 blocks.
    heap.with(|h| h.set_cold_limit(0));
    heap.enable_thread_caches();
    heap
}

/// Small blocks in use as far as the heap knows: in layer +2's pools, and
/// in layer 0 (the first blocks of a class, until it is worth a pool).
fn in_use(heap: &LockedHeap) -> usize {
    heap.with(|h| {
        h.class_stats().iter().map(|c| c.blocks_in_use).sum::<usize>() + h.stats().front.small_in_layer_0
    })
}

#[test]
fn a_thread_reuses_its_freed_blocks_and_gives_them_back_on_trim() {
    let heap = heap();
    let layout = Layout::from_size_align(40, 8).unwrap();
    // SAFETY: blocks of this heap with their layouts, each freed once.
    unsafe {
        let a = heap.alloc(layout);
        heap.dealloc(a, layout);
        assert_eq!(in_use(heap), 1, "the freed block stays with the thread");
        // Same class (33..=40 bytes, align ≤ 8): the cached block comes back.
        let b = heap.alloc(Layout::from_size_align(35, 4).unwrap());
        assert_eq!(a, b);
        heap.dealloc(b, Layout::from_size_align(35, 4).unwrap());
        // Another class does not take it.
        let c = heap.alloc(Layout::from_size_align(48, 8).unwrap());
        assert_ne!(a, c);
        heap.dealloc(c, Layout::from_size_align(48, 8).unwrap());
        // 16-aligned requests only get blocks of their own classes.
        let d = heap.alloc(Layout::from_size_align(40, 16).unwrap());
        assert_eq!(d as usize % 16, 0);
        heap.dealloc(d, Layout::from_size_align(40, 16).unwrap());
    }
    heap.trim();
    assert_eq!(in_use(heap), 0, "trim flushes the calling thread's cache");
    heap.with(|h| h.check_invariants());
}

#[test]
fn a_block_shrunk_in_place_never_serves_a_16_aligned_request_misaligned() {
    let heap = heap();
    let (big, small, aligned) = (
        Layout::from_size_align(100, 8).unwrap(),
        Layout::from_size_align(60, 8).unwrap(),
        Layout::from_size_align(60, 16).unwrap(),
    );
    // SAFETY: blocks of this heap, each with its current layout, freed once.
    unsafe {
        // Enough blocks of the class for it to be served from pools.
        let warm: Vec<*mut u8> = (0..400).map(|_| heap.alloc(big)).collect();
        // 104-byte blocks alternate between 16- and 8-aligned addresses;
        // shrunk to 60 bytes they stay where they are, and 60 bytes aligned
        // to 8 share a class with 60 bytes aligned to 16.
        let blocks: Vec<*mut u8> = (0..8).map(|_| heap.alloc(big)).collect();
        let shrunk: Vec<*mut u8> = blocks.iter().map(|&p| heap.realloc(p, big, 60)).collect();
        assert_eq!(shrunk, blocks, "the shrink was expected in place");
        assert!(shrunk.iter().any(|&p| !(p as usize).is_multiple_of(16)));
        for &p in &shrunk {
            heap.dealloc(p, small);
        }
        let taken: Vec<*mut u8> = (0..8).map(|_| heap.alloc(aligned)).collect();
        for &p in &taken {
            assert!((p as usize).is_multiple_of(16), "{p:p} is not 16-aligned");
            heap.dealloc(p, aligned);
        }
        for p in warm {
            heap.dealloc(p, big);
        }
    }
}

#[test]
fn a_bin_holds_at_most_depth_blocks_and_an_exiting_thread_gives_its_blocks_back() {
    let heap = heap();
    thread::spawn(move || {
        let layout = Layout::from_size_align(100, 8).unwrap();
        // SAFETY: blocks of this heap with their layout, each freed once.
        let blocks: Vec<*mut u8> = (0..100).map(|_| unsafe { heap.alloc(layout) }).collect();
        for &b in &blocks {
            // SAFETY: as above.
            unsafe { heap.dealloc(b, layout) };
        }
        assert_eq!(in_use(heap), usize::from(DEPTH), "the bin must stop at its depth");
    })
    .join()
    .unwrap();
    assert_eq!(in_use(heap), 0, "the thread's cache went back when it exited");
    heap.with(|h| h.check_invariants());
}

#[test]
fn blocks_freed_on_other_threads_and_large_ones_take_the_locked_path() {
    let heap = heap();
    let small = Layout::from_size_align(24, 8).unwrap();
    let large = Layout::from_size_align(4000, 8).unwrap();
    // SAFETY: blocks of this heap, each freed once, on another thread.
    let blocks: Vec<(Block, Layout)> = (0..200)
        .map(|i| if i % 10 == 0 { large } else { small })
        .map(|l| (Block(unsafe { heap.alloc(l) }), l))
        .collect();
    thread::spawn(move || {
        for (p, l) in blocks {
            // SAFETY: as above.
            unsafe { heap.dealloc(p.0, l) };
        }
    })
    .join()
    .unwrap();
    assert_eq!(in_use(heap), 0);
    let s = heap.stats();
    assert_eq!((s.front.refused_frees, s.front.failed_allocations), (0, 0));
}

#[test]
fn four_threads_churn_through_their_caches() {
    let heap = heap();
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            thread::spawn(move || {
                let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t;
                for i in 0..ROUNDS {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if live.len() > 64 || (x.is_multiple_of(3) && !live.is_empty()) {
                        let (p, l, tag) = live.swap_remove((x % live.len() as u64) as usize);
                        // SAFETY: a live block of this heap with its layout.
                        unsafe {
                            assert!((0..l.size()).all(|k| *p.add(k) == tag), "contents lost");
                            heap.dealloc(p, l);
                        }
                    } else {
                        let l = Layout::from_size_align(1 + (x % 600) as usize, 1 << (x % 5)).unwrap();
                        // SAFETY: a non-zero layout.
                        let p = unsafe { heap.alloc(l) };
                        assert!(!p.is_null() && (p as usize).is_multiple_of(l.align()));
                        let tag = i as u8;
                        // SAFETY: the block is `l.size()` bytes.
                        unsafe { p.write_bytes(tag, l.size()) };
                        live.push((p, l, tag));
                    }
                }
                for (p, l, _) in live {
                    // SAFETY: live blocks with their layouts.
                    unsafe { heap.dealloc(p, l) };
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(in_use(heap), 0, "every thread's cache went back");
    heap.with(|h| h.check_invariants());
}
