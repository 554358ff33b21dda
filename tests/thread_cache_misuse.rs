//! Misuse that meets the per-thread caches (feature `std`): second frees
//! (into a kept pool, racing with a bin's spill, after the heap took the
//! block back), pointers into blocks, and tags left in memory by blocks
//! since gone — each refused, counted, or (a stale tag) never taken for a
//! cached block, and no block handed out twice.
#![cfg(all(feature = "std", not(feature = "debug")))]

use std::alloc::{GlobalAlloc, Layout};
use std::thread;

use strata::LockedHeap;
#[cfg(all(target_pointer_width = "64", any(target_arch = "x86_64", target_arch = "aarch64")))]
use strata::front::thread_cache::MEDIUM_DEPTH;
use strata::front::thread_cache::{DEPTH, REFILL};

mod common;

use common::caches::{cached_heap, heap, in_use};

#[test]
fn a_second_free_into_a_pool_kept_for_its_class_is_refused() {
    let heap = heap();
    let (anchor, eight) = (Layout::from_size_align(48, 8).unwrap(), Layout::from_size_align(8, 8).unwrap());
    // SAFETY: blocks of this heap with their layouts; the block freed
    // twice is the misuse under test, which the heap must refuse.
    unsafe {
        let keep_arena = heap.alloc(anchor);
        // Another thread takes the 8-byte class's blocks, frees its one
        // and exits: its cache gives them back, and the next lock holder
        // frees them, which empties the class's pool. The anchor keeps the
        // arena in use, so the pool is kept for its class (empty).
        let x = thread::spawn(move || {
            let x = heap.alloc(eight);
            heap.dealloc(x, eight);
            x as usize
        })
        .join()
        .unwrap() as *mut u8;
        heap.with(|h| h.check_invariants());
        // (In use: the anchor, and the blocks its miss stocked this
        // thread's cache with.)
        assert_eq!(in_use(heap), 1 + REFILL, "the exiting thread's blocks did not come back");
        // An 8-byte block has no tag: the cache must not take the block
        // freed again by its class alone (a kept pool's header has none).
        let refused = heap.stats().front.refused_frees;
        heap.dealloc(x, eight);
        assert_eq!(heap.stats().front.refused_frees, refused + 1, "a block freed twice was taken");
        let (p, q) = (heap.alloc(eight), heap.alloc(eight));
        assert_ne!(p, q, "one block handed out twice");
        heap.dealloc(p, eight);
        heap.dealloc(q, eight);
        heap.dealloc(keep_arena, anchor);
    }
    heap.trim();
    heap.with(|h| h.check_invariants());
}

/// Finding of the adversarial pass: a block freed to the heap (its bin
/// spilled) and then reallocated into a class whose bin is empty must be
/// refused, as the locked path refuses it, not moved and cached while it
/// is still on its pool's free list (it would be handed out twice).
/// (Tags, which find the block on its pool's free list, are on 64-bit
/// x86_64 and aarch64 only.)
#[test]
#[cfg(all(target_pointer_width = "64", any(target_arch = "x86_64", target_arch = "aarch64")))]
fn a_realloc_of_a_block_the_heap_has_freed_is_refused_on_the_refill_path() {
    // Each on a thread of its own, whose cache serves its heap. (A realloc
    // that stays within the class is done in place without the lock, and
    // does not see a block its pool has taken back: not caught.)
    for (size, new) in [(64, 200), (200, 64), (48, 480), (24, 8)] {
        thread::spawn(move || refused_realloc_of_a_freed_block(size, new)).join().unwrap();
    }
}

#[cfg(all(target_pointer_width = "64", any(target_arch = "x86_64", target_arch = "aarch64")))]
fn refused_realloc_of_a_freed_block(size: usize, new: usize) {
    let heap = heap();
    let layout = Layout::from_size_align(size, 8).unwrap();
    // SAFETY: blocks of this heap with their layout, each freed once —
    // but `p`, reallocated after its free to see it refused.
    unsafe {
        let live: Vec<*mut u8> = (0..40).map(|_| heap.alloc(layout)).collect();
        let p = heap.alloc(layout);
        // `p` first: the bin fills, and gives up its older half, `p` with
        // it, back to its pool.
        heap.dealloc(p, layout);
        for &b in &live[..usize::from(DEPTH)] {
            heap.dealloc(b, layout);
        }
        let keep = heap.alloc(layout);
        let refused = heap.stats().front.refused_frees;
        assert!(heap.realloc(p, layout, new).is_null(), "{size} -> {new}: a freed block was moved");
        assert_eq!(heap.stats().front.refused_frees, refused + 1, "{size} -> {new}: not counted");
        let again: Vec<*mut u8> = (0..60).map(|_| heap.alloc(layout)).collect();
        assert_eq!(again.iter().filter(|&&q| q == p).count(), 1, "{size} -> {new}: handed out twice");
        for q in again.into_iter().chain(live[usize::from(DEPTH)..].iter().copied()).chain([keep]) {
            heap.dealloc(q, layout);
        }
    }
    heap.trim();
    assert_eq!(in_use(heap), 0, "{size} -> {new}");
    heap.with(|h| h.check_invariants());
}

/// With the caches on, a pointer into a live small block is refused by
/// every unsized call (the caches check that a block starts there from its
/// pool's class), and a freed block a cache holds has no usable size.
#[test]
fn the_caches_refuse_a_pointer_into_a_block_and_know_a_cached_block_is_free() {
    let heap = heap();
    let l = Layout::from_size_align(48, 16).unwrap();
    // SAFETY: `p` is a live block; `inner` points into it and must be
    // refused; `q` is freed into this thread's cache.
    unsafe {
        let p = heap.alloc(l);
        p.write_bytes(0x5A, 48);
        let inner = p.add(16);
        common::assert_unsized_calls_refused(heap, inner);
        for _ in 0..2 * DEPTH as usize {
            let q = heap.alloc(l);
            let (a, b) = (q as usize, p as usize);
            assert!(a + 48 <= b || b + 48 <= a, "{q:p} overlaps the live block {p:p}");
        }
        assert!((0..48).all(|i| *p.add(i) == 0x5A), "the live block was written");
        let q = heap.alloc(Layout::from_size_align(200, 8).unwrap());
        assert_eq!(heap.usable_size(q), Some(200));
        heap.dealloc(q, Layout::from_size_align(200, 8).unwrap());
        assert_eq!(heap.usable_size(q), None, "a block in this thread's cache is not in use");
        heap.dealloc(p, l);
    }
}

/// Over a page-mapping source too, where layer 0's memory is spans rather
/// than one window: a small block in a cache (this thread's, or another
/// live thread's) has no usable size. (The caches once looked for a
/// cached block's tag in layer 0's memory only: found by the fourth
/// hostile pass.)
/// (Tags, which find a block in another thread's cache, are on 64-bit
/// x86_64 and aarch64 only.)
#[test]
#[cfg(all(target_pointer_width = "64", any(target_arch = "x86_64", target_arch = "aarch64")))]
fn over_a_page_mapping_source_a_cached_block_has_no_usable_size() {
    let region: &'static common::Region = Box::leak(Box::new(common::Region::new(64 << 20)));
    let heap: &'static LockedHeap<common::Mapped> =
        Box::leak(Box::new(LockedHeap::new(region.mapped(), (region.ptr() as usize, region.len()))));
    heap.set_thread_caches(true);
    // (Every class served by its pools from the first request.)
    heap.with(|h| h.set_cold_limit(0));
    for (size, align) in [(40, 8), (200, 16), (1000, 8)] {
        let l = Layout::from_size_align(size, align).unwrap();
        // SAFETY: blocks of this heap, each freed once with its layout; the
        // size queries after the frees ask about cached blocks.
        unsafe {
            let q = heap.alloc(l);
            assert!(heap.usable_size(q) >= Some(size));
            heap.dealloc(q, l);
            assert_eq!(heap.usable_size(q), None, "{l:?}: a block in this thread's cache");
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let q = heap.alloc(l) as usize;
            let other = thread::spawn(move || {
                heap.dealloc(q as *mut u8, l);
                rx.recv().unwrap();
            });
            while heap.usable_size(q as *mut u8).is_some() && !other.is_finished() {
                thread::yield_now();
            }
            assert_eq!(heap.usable_size(q as *mut u8), None, "{l:?}: a block in another thread's cache");
            tx.send(()).unwrap();
            other.join().unwrap();
        }
    }
}

/// A second free made on another thread while the block's first free is
/// on its way from a cache to the heap (a full bin giving its older half
/// back) is refused, whenever it comes: the block keeps its tag until the
/// heap has marked it free. (Before, a window between the two let such a
/// free through, and the block was then handed out twice.)
/// (Tags are on 64-bit x86_64 and aarch64 only.)
#[test]
#[cfg(all(target_pointer_width = "64", any(target_arch = "x86_64", target_arch = "aarch64")))]
fn a_double_free_racing_with_a_spill_is_refused() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
    for size in [1000, 64] {
        let region: &'static common::Region = Box::leak(Box::new(common::Region::new(64 << 20)));
        let heap: &'static LockedHeap<common::Mapped> =
            Box::leak(Box::new(LockedHeap::new(region.mapped(), (region.ptr() as usize, region.len()))));
        heap.set_thread_caches(true);
        let l = Layout::from_size_align(size, 8).unwrap();
        let depth = usize::from(if size > 512 { MEDIUM_DEPTH } else { DEPTH });
        let targets: &'static [AtomicUsize] =
            Box::leak((0..depth / 2).map(|_| AtomicUsize::new(0)).collect());
        let (round, done, stop) = (
            &*Box::leak(Box::new(AtomicUsize::new(0))),
            &*Box::leak(Box::new(AtomicUsize::new(0))),
            &*Box::leak(Box::new(AtomicBool::new(false))),
        );
        let attempts = &*Box::leak(Box::new(AtomicUsize::new(0)));
        let ack = &*Box::leak(Box::new(AtomicUsize::new(0)));
        let before = heap.stats().front.refused_frees;
        let second = thread::spawn(move || {
            // SAFETY: this thread's cache serves the heap from here on; the
            // frees below are the second frees under test.
            unsafe { heap.dealloc(heap.alloc(l), l) };
            let mut seen = 0;
            while !stop.load(Acquire) {
                let r = round.load(Acquire);
                if r == seen {
                    std::hint::spin_loop();
                    continue;
                }
                while done.load(Acquire) != r {
                    for t in targets {
                        // SAFETY: a block freed already: refused.
                        unsafe { heap.dealloc(t.load(Relaxed) as *mut u8, l) };
                        attempts.fetch_add(1, Relaxed);
                    }
                }
                seen = r;
                ack.store(r, Release);
            }
        });
        let mut kept = Vec::new();
        for r in 1..=200 {
            // SAFETY: blocks of this heap with their layout, each freed once
            // here (the other thread's frees are the second ones).
            unsafe {
                let blocks: Vec<*mut u8> = (0..=depth).map(|_| heap.alloc(l)).collect();
                for &p in &blocks[..depth] {
                    heap.dealloc(p, l);
                }
                // The bin is full: the next free gives back its older half,
                // which the other thread frees again meanwhile.
                for (t, &p) in targets.iter().zip(&blocks) {
                    t.store(p as usize, Relaxed);
                }
                round.store(r, Release);
                thread::sleep(std::time::Duration::from_micros(20));
                heap.dealloc(blocks[depth], l);
                thread::sleep(std::time::Duration::from_micros(20));
                done.store(r, Release);
                // (The other thread is done with this round's blocks.)
                while ack.load(Acquire) != r {
                    std::hint::spin_loop();
                }
                // Empty the bin, holding its blocks until the end (so no
                // block freed above is handed out while the other thread
                // frees it again).
                kept.extend((0..depth / 2 + 1).map(|_| heap.alloc(l)));
            }
        }
        stop.store(true, Release);
        second.join().unwrap();
        let refused = heap.stats().front.refused_frees - before;
        assert_eq!(refused, attempts.load(Relaxed), "{size} B: a second free was taken");
        // Nothing is handed out twice: every block held is distinct from
        // every block the heap hands out now.
        // SAFETY: blocks of this heap with their layout, each freed once.
        unsafe {
            let fresh: Vec<*mut u8> = (0..2000).map(|_| heap.alloc(l)).collect();
            let mut all: Vec<usize> = kept.iter().chain(&fresh).map(|&p| p as usize).collect();
            all.sort_unstable();
            assert!(all.windows(2).all(|w| w[1] - w[0] >= size), "{size} B: a block handed out twice");
            for p in kept.into_iter().chain(fresh) {
                heap.dealloc(p, l);
            }
        }
        heap.trim();
        heap.with(|h| h.check_invariants());
    }
}

/// A block's tag left in memory that is no longer that block — a freed
/// block of +2 whose arena went back to layer 0, a cached block of a span
/// given back — is never taken for a cached block: layer 0 clears the
/// second word of every block it hands out. (Before, an aligned block
/// carved inside a free chunk, whose second word its program had not
/// written yet, was refused at its free and at its realloc.)
#[test]
fn stale_tags_never_refuse_a_valid_free_or_realloc() {
    fn rounds<S: strata::PageSource>(heap: &LockedHeap<S>, len: usize, first: usize) {
        heap.set_thread_caches(true);
        for (size, align) in [(64, 64), (200, 128), (1000, 64), (32, 32)] {
            // Blocks of +2 (or of layer 0) filled, freed, given back.
            let l1 = Layout::from_size_align(first, 8).unwrap();
            // SAFETY: blocks of this heap with their layouts, each freed
            // once; the aligned blocks' second words left unwritten.
            unsafe {
                let v: Vec<*mut u8> = (0..len / 2 / first.max(16))
                    .map(|_| heap.alloc(l1))
                    .take_while(|p| !p.is_null())
                    .collect();
                for &p in &v {
                    p.write_bytes(0xaa, first);
                }
                for p in v {
                    heap.dealloc(p, l1);
                }
                heap.trim();
                let l2 = Layout::from_size_align(size, align).unwrap();
                let w: Vec<*mut u8> = (0..len / 2 / (size + align))
                    .map(|_| heap.alloc(l2))
                    .take_while(|p| !p.is_null())
                    .collect();
                let before = heap.stats().front.refused_frees;
                for (i, p) in w.into_iter().enumerate() {
                    if i % 2 == 0 {
                        heap.dealloc(p, l2);
                    } else {
                        let q = heap.realloc(p, l2, 2 * size);
                        assert!(!q.is_null(), "{size}/{align}: a valid realloc was refused");
                        heap.dealloc(q, Layout::from_size_align(2 * size, align).unwrap());
                    }
                }
                assert_eq!(
                    heap.stats().front.refused_frees,
                    before,
                    "{size}/{align}: a valid free was refused"
                );
            }
            heap.trim();
            assert_eq!(heap.stats().segments.allocated_bytes, 0, "{size}/{align}: blocks leaked");
            heap.with(|h| h.check_invariants());
        }
    }
    for first in [16, 1024] {
        let region: &'static common::Region = Box::leak(Box::new(common::Region::new(1 << 20)));
        let mapped: &'static LockedHeap<common::Mapped> =
            Box::leak(Box::new(LockedHeap::new(region.mapped(), (region.ptr() as usize, region.len()))));
        rounds(mapped, 1 << 20, first);
    }
    rounds(cached_heap(16 << 20), 16 << 20, 16);
}
