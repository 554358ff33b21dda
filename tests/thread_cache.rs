//! Per-thread caches (feature `std`): freed small blocks are reused by the
//! same thread without the lock, go back on thread exit and on `trim`, and
//! blocks freed on another thread are fine.
#![cfg(all(feature = "std", not(feature = "debug")))]

use std::alloc::{GlobalAlloc, Layout};
use std::thread;

use std::mem::MaybeUninit;
use std::sync::mpsc::channel;
use strata::LockedHeap;
use strata::front::thread_cache::{DEPTH, HEAPS, MEDIUM_DEPTH, REFILL};

mod common;

use common::caches::{Block, cached_heap, heap, in_use, init_tlsf, plain_heap};

/// Churn rounds per thread (fewer under Miri, which runs them a thousand
/// times slower).
const ROUNDS: u32 = if cfg!(miri) { 400 } else { 20_000 };

/// The default layer 0 of a region under 16 MiB is first fit, which keeps
/// no header: its heap takes the locked path, caches asked for or not.
#[test]
fn a_first_fit_heap_has_no_thread_caches() {
    let heap: &'static LockedHeap = Box::leak(Box::new(LockedHeap::empty()));
    heap.init_from_slice(Box::leak(Box::<[u8]>::new_uninit_slice(2 << 20)));
    heap.set_thread_caches(true);
    assert!(heap.stats().segments.first_fit);
    thread::spawn(move || assert!(!a_free_is_cached(heap), "a first-fit block cached")).join().unwrap();
    heap.with(|h| h.check_invariants());
}

#[test]
fn a_thread_reuses_its_freed_blocks_and_gives_them_back_on_trim() {
    let heap = heap();
    let layout = Layout::from_size_align(40, 8).unwrap();
    // SAFETY: blocks of this heap with their layouts, each freed once.
    unsafe {
        let a = heap.alloc(layout);
        heap.dealloc(a, layout);
        // The first miss stocked the bin with the pool's next blocks too.
        assert_eq!(in_use(heap), 1 + REFILL, "the freed block stays with the thread");
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

/// How many blocks a bin holding `left` blocks holds after `frees` frees:
/// a free that finds it at `depth` first gives up the older half.
fn cached_after(frees: usize, left: usize, depth: u16) -> usize {
    let depth = usize::from(depth);
    (0..frees).fold(left, |bin, _| if bin == depth { depth / 2 + 1 } else { bin + 1 })
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
        // The last refill left some blocks in the bin (a miss takes one
        // block and REFILL more); then a full bin gives up its older half
        // at each free that finds it full.
        let n = blocks.len();
        let left = (REFILL + 1 - n % (REFILL + 1)) % (REFILL + 1);
        assert_eq!(
            in_use(heap),
            cached_after(n, left, DEPTH),
            "the bin must stop at its depth and spill half"
        );
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
    // (Trim takes back what this thread's last refill left in its bin.)
    heap.trim();
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

#[test]
fn reallocs_through_the_cache_are_counted_in_place_and_moved() {
    let heap = heap();
    let (l64, l24) = (Layout::from_size_align(64, 8).unwrap(), Layout::from_size_align(24, 8).unwrap());
    // SAFETY: blocks of this heap with their current layouts, each freed once.
    unsafe {
        // A 64-byte block in this thread's cache, for the move below.
        let x = heap.alloc(l64);
        heap.dealloc(x, l64);
        let y = heap.alloc(l24);
        let before = heap.stats().front;
        let y2 = heap.realloc(y, l24, 20);
        assert_eq!(y2, y, "a shrink within the class stays in place");
        let z = heap.realloc(y2, Layout::from_size_align(20, 8).unwrap(), 60);
        assert_eq!(z, x, "the grown block comes from the thread's cache");
        let after = heap.stats().front;
        assert_eq!(after.realloc_in_place - before.realloc_in_place, 1);
        assert_eq!(after.realloc_moved - before.realloc_moved, 1, "a move through the cache not counted");
        heap.dealloc(z, Layout::from_size_align(60, 8).unwrap());
    }
}

#[test]
fn a_miss_stocks_the_bin_with_the_neighbouring_blocks_of_its_pool() {
    let heap = heap();
    thread::spawn(move || {
        let layout = Layout::from_size_align(48, 8).unwrap();
        // SAFETY: blocks of this heap with their layout, each freed once.
        unsafe {
            let first = heap.alloc(layout);
            assert_eq!(in_use(heap), 1 + REFILL, "the miss did not stock the bin");
            let next: Vec<*mut u8> = (0..REFILL).map(|_| heap.alloc(layout)).collect();
            assert_eq!(in_use(heap), 1 + REFILL, "the stocked blocks did not serve the next requests");
            // A fresh pool is carved in address order: the thread got the
            // blocks that follow its first, not blocks among other threads'.
            let mut offsets: Vec<usize> = next.iter().map(|&p| p as usize - first as usize).collect();
            offsets.sort_unstable();
            assert_eq!(offsets, (1..=REFILL).map(|k| k * 48).collect::<Vec<_>>());
            for p in next.into_iter().chain([first]) {
                heap.dealloc(p, layout);
            }
        }
    })
    .join()
    .unwrap();
    assert_eq!(in_use(heap), 0);
    heap.with(|h| h.check_invariants());
}

#[test]
fn a_realloc_into_a_class_whose_bin_is_empty_moves_and_caches_the_old_block() {
    let heap = heap();
    let (small, large) = (Layout::from_size_align(24, 8).unwrap(), Layout::from_size_align(200, 8).unwrap());
    // SAFETY: blocks of this heap with their current layouts, each freed once.
    unsafe {
        let p = heap.alloc(small);
        for i in 0..24 {
            p.add(i).write(i as u8 ^ 0x5a);
        }
        let before = heap.stats().front;
        let q = heap.realloc(p, small, 200);
        assert!(!q.is_null() && q != p);
        assert!((0..24).all(|i| q.add(i).read() == i as u8 ^ 0x5a), "contents lost in the move");
        assert_eq!(heap.stats().front.realloc_moved - before.realloc_moved, 1, "the move was not counted");
        assert_eq!(heap.alloc(small), p, "the old block went to this thread's cache");
        heap.dealloc(p, small);
        heap.dealloc(q, large);
    }
}

/// A dirty block freed and handed out again by `alloc_zeroed` is zero.
fn zeroed_reuse(heap: &LockedHeap) {
    for size in [8, 24, 100, 512, 1000, 4000] {
        let layout = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: blocks of this heap with their layout, each freed once.
        unsafe {
            let p = heap.alloc(layout);
            p.write_bytes(0xa5, size);
            heap.dealloc(p, layout);
            let q = heap.alloc_zeroed(layout);
            assert!(!q.is_null());
            assert!((0..size).all(|i| q.add(i).read() == 0), "size {size}: a reused block is not zeroed");
            heap.dealloc(q, layout);
        }
    }
}

#[test]
fn alloc_zeroed_zeroes_blocks_reused_from_a_cache_and_from_the_quick_path() {
    zeroed_reuse(heap());
    // Caches waiting for a second thread: the quick path serves.
    let plain = plain_heap(32 << 20);
    plain.with(|h| h.set_cold_limit(0));
    zeroed_reuse(plain);
    assert!(!plain.thread_caches_on());
}

#[test]
fn reallocs_counted_by_a_thread_that_exits_are_kept() {
    let heap = heap();
    let before = heap.stats().front.realloc_in_place;
    thread::spawn(move || {
        let l24 = Layout::from_size_align(24, 8).unwrap();
        // SAFETY: a block of this heap with its current layout, freed once.
        unsafe {
            let p = heap.alloc(l24);
            let mut now = 24;
            for size in [20, 24, 18, 22, 17] {
                assert_eq!(heap.realloc(p, Layout::from_size_align(now, 8).unwrap(), size), p);
                now = size;
            }
            heap.dealloc(p, Layout::from_size_align(now, 8).unwrap());
        }
    })
    .join()
    .unwrap();
    assert_eq!(heap.stats().front.realloc_in_place - before, 5);
}

/// `trim` gives the spare arena back to layer 0: the copy of the arena
/// bitmap threads read must lose it at once, or blocks layer 0 later carves
/// from that memory would be taken for pool blocks by the caches (and their
/// flush refused by layer 0: a leak).
#[test]
fn memory_of_an_arena_given_back_by_trim_is_never_cached_as_pool_blocks() {
    let heap = cached_heap(32 << 20);
    let l48 = Layout::from_size_align(48, 8).unwrap();
    let big = Layout::from_size_align(64 << 10, 8).unwrap();
    // SAFETY: blocks of this heap with their layouts, each freed once.
    unsafe {
        // Enough 48-byte blocks for the class to get pools: an arena.
        let small: Vec<*mut u8> = (0..400).map(|_| heap.alloc(l48)).collect();
        let arena_size = heap.stats().geometry.arena_size();
        let in_arena = *small.last().unwrap();
        assert_eq!(heap.with(|h| h.owner(in_arena)), Some(strata::Layer::Object));
        let arena = (in_arena as usize) & !(arena_size - 1);
        for p in small {
            heap.dealloc(p, l48);
        }
        heap.trim();
        assert_eq!(heap.stats().arenas.current, 0, "trim kept the spare arena");
        // Through `with` (the heap's own API, no thread cache), fill layer
        // 0, then free only what covers the old arena: the next blocks land
        // there.
        let mut fill = Vec::new();
        while let Ok(p) = heap.with(|h| h.allocate(big)) {
            fill.push(p);
        }
        let (there, elsewhere): (Vec<_>, Vec<_>) = fill.into_iter().partition(|p| {
            let p = p.as_ptr() as usize;
            p < arena + arena_size && p + (64 << 10) > arena
        });
        assert!(!there.is_empty(), "no filler block over the old arena");
        heap.with(|h| there.iter().for_each(|&p| h.deallocate(p, big).unwrap()));
        // Small blocks of many classes, in layer 0 (layer 0 is nearly full:
        // no new arena), inside the old arena's memory.
        let mut blocks = Vec::new();
        for size in (8..=512).step_by(8).cycle().take(4000) {
            let l = Layout::from_size_align(size, 8).unwrap();
            if let Ok(p) = heap.with(|h| h.allocate(l)) {
                // Zeros: where a pool header was, they read as class 0.
                p.as_ptr().write_bytes(0, size);
                blocks.push((p.as_ptr(), l));
            }
        }
        assert!(
            blocks.iter().any(|&(p, _)| (p as usize).wrapping_sub(arena) < arena_size
                && heap.with(|h| h.owner(p)) == Some(strata::Layer::Segment)),
            "no layer 0 block in the old arena's memory"
        );
        // The first free through `GlobalAlloc` (the thread cache decides
        // first): a block whose would-be pool header reads as class 0, a
        // word inside another zeroed block. With a stale copy of the arena
        // bitmap the cache would keep it as an 8-byte pool block.
        let pool_size = 1usize << heap.stats().geometry.pool_shift;
        let ends: std::collections::BTreeMap<usize, usize> =
            blocks.iter().map(|&(q, l)| (q as usize, q as usize + l.size())).collect();
        let covered = |a: usize| ends.range(..=a).next_back().is_some_and(|(_, &end)| a + 8 <= end);
        let first = blocks
            .iter()
            .position(|&(p, _)| {
                let pool = (p as usize) & !(pool_size - 1);
                (p as usize).wrapping_sub(arena) < arena_size && pool != p as usize && covered(pool + 32)
            })
            .expect("a block whose pool header would read zeros");
        let (p, l) = blocks.swap_remove(first);
        let lent = heap.stats().segments.allocated_bytes;
        heap.dealloc(p, l);
        assert!(heap.stats().segments.allocated_bytes < lent, "a layer 0 block was cached as a pool block");
        for (p, l) in blocks {
            heap.dealloc(p, l);
        }
        heap.with(|h| elsewhere.iter().for_each(|&p| h.deallocate(p, big).unwrap()));
    }
    heap.trim();
    let s = heap.stats();
    assert_eq!(s.front.refused_frees, 0, "a flushed block was refused: {s:?}");
    assert_eq!(in_use(heap), 0);
    assert_eq!(
        s.segments.allocated_bytes,
        s.arenas.current * s.geometry.arena_size(),
        "layer 0 leaked: {s:?}"
    );
    heap.with(|h| h.check_invariants());
}

/// Blocks of layer 0 up to 4 KiB are cached too, in bins of chunk sizes: a
/// block serves requests a little smaller than the one it was made for,
/// and is freed with their layout; a bin stops at its depth, a second free
/// is refused, and an exiting thread gives every block back.
#[test]
fn medium_blocks_are_reused_without_the_lock_and_go_back_when_the_thread_exits() {
    let heap = heap();
    let l1000 = Layout::from_size_align(1000, 8).unwrap();
    let l900 = Layout::from_size_align(900, common::CHUNK_ALIGN).unwrap();
    // One block to take the window: layer 0's bytes in use from here on.
    // SAFETY: blocks of this heap with their layouts, each freed once
    // (the second free below is the refusal under test).
    let first = unsafe { heap.alloc(l1000) };
    let base = heap.stats().segments.allocated_bytes;
    thread::spawn(move || unsafe {
        let blocks: Vec<*mut u8> = (0..20).map(|_| heap.alloc(l1000)).collect();
        let held = heap.stats().segments.allocated_bytes;
        for &b in &blocks {
            heap.dealloc(b, l1000);
        }
        let cached = heap.stats().segments.allocated_bytes;
        assert!(cached > base, "no block was cached");
        let chunk = (held - base) / 20;
        assert_eq!(
            held - cached,
            chunk * (20 - cached_after(20, 0, MEDIUM_DEPTH)),
            "the bin must stop at its depth and spill half"
        );
        // The last block freed comes back first, to a smaller request too,
        // without layer 0 allocating anything.
        let p = heap.alloc(l900);
        assert_eq!(p, blocks[19]);
        assert!((p as usize).is_multiple_of(l900.align()));
        assert_eq!(heap.stats().segments.allocated_bytes, cached);
        p.write_bytes(7, 900);
        heap.dealloc(p, l900);
        // A second free of a cached block is refused, and the block is
        // still handed out only once.
        heap.dealloc(p, l900);
        assert_eq!(heap.stats().front.refused_frees, 1);
        let (a, b) = (heap.alloc(l1000), heap.alloc(l1000));
        assert_ne!(a, b);
        heap.dealloc(a, l1000);
        heap.dealloc(b, l1000);
    })
    .join()
    .unwrap();
    assert_eq!(
        heap.stats().segments.allocated_bytes,
        base,
        "the thread's medium blocks went back when it exited"
    );
    // SAFETY: as above.
    unsafe { heap.dealloc(first, l1000) };
    heap.trim();
    assert_eq!(heap.stats().segments.allocated_bytes, 0);
    heap.with(|h| h.check_invariants());
}

/// Over a page source that maps pages when asked (as the kernel's VMM
/// does), layer 0's medium blocks are cached as well: the caches find them
/// through a lock-free copy of layer 0's span map. A full bin gives its
/// older half back in one trip to the lock; a second free of a cached
/// block is refused; trim takes every block back and every span goes back
/// to the source.
/// Windows of 64 MiB and of 4 GiB (the kernel's, whose map slots are as
/// large as its spans, or larger when the window is not aligned; 1 GiB on
/// 32-bit targets).
#[test]
fn medium_blocks_over_a_page_mapping_source_are_cached_and_spill_in_halves() {
    for window in [64 << 20, common::LARGE] {
        thread::spawn(move || medium_blocks_over_a_page_mapping_source(window)).join().unwrap();
    }
}

fn medium_blocks_over_a_page_mapping_source(window: usize) {
    // Leaked with the heap: this thread's cache may refer to it until the
    // thread exits.
    let region: &'static common::Region = Box::leak(Box::new(common::Region::new(window)));
    let heap: &'static LockedHeap<common::Mapped> =
        Box::leak(Box::new(LockedHeap::new(region.mapped(), (region.ptr() as usize, region.len()))));
    heap.set_thread_caches(true);
    let l = Layout::from_size_align(1000, 8).unwrap();
    let depth = usize::from(MEDIUM_DEPTH);
    // SAFETY: blocks of this heap with their layout, each freed once (the
    // second free below is the refusal under test).
    unsafe {
        let blocks: Vec<*mut u8> = (0..=depth).map(|_| heap.alloc(l)).collect();
        assert!(blocks.iter().all(|p| !p.is_null()));
        let held = heap.stats().segments.allocated_bytes;
        let chunk = held / blocks.len();
        for &b in &blocks[..depth] {
            heap.dealloc(b, l);
        }
        assert_eq!(heap.stats().segments.allocated_bytes, held, "a full bin's worth of frees was cached");
        // One more: the bin gives up its older half, then keeps this one.
        heap.dealloc(blocks[depth], l);
        assert_eq!(heap.stats().segments.allocated_bytes, held - chunk * (depth / 2));
        assert_eq!(heap.alloc(l), blocks[depth], "the last block freed comes back first");
        heap.dealloc(blocks[depth], l);
        heap.dealloc(blocks[depth], l);
        assert_eq!(heap.stats().front.refused_frees, 1, "a second free of a cached block");
        // The older half went back to layer 0: a free of one of them now
        // is refused by the locked path.
        heap.dealloc(blocks[0], l);
        assert_eq!(heap.stats().front.refused_frees, 2, "a second free of a spilled block");
    }
    heap.trim();
    let s = heap.stats();
    assert_eq!(s.segments.allocated_bytes, 0, "trim takes the cached blocks back: {s:?}");
    heap.with(|h| h.check_invariants());
    assert_eq!(heap.with(|h| h.source().0.bytes_out()), 0, "every span went back to the source");
}

/// Whether this thread's free of a 1000-byte block of `heap` stayed in its
/// cache (layer 0 still counts the block in use).
fn a_free_is_cached(heap: &LockedHeap) -> bool {
    let l = Layout::from_size_align(1000, 8).unwrap();
    // SAFETY: a block of this heap with its layout, freed once.
    unsafe {
        let p = heap.alloc(l);
        assert!(!p.is_null());
        let before = heap.stats().segments.allocated_bytes;
        heap.dealloc(p, l);
        let cached = heap.stats().segments.allocated_bytes == before;
        // Take it back out, so the heap has nothing cached when it goes.
        let q = heap.alloc(l);
        heap.dealloc(q, l);
        cached
    }
}

/// Caches need no `'static` heap: heaps made and dropped one after another
/// each get them, far more heaps than the registry has entries, because a
/// dropped heap gives its entry back.
#[test]
fn heaps_made_and_dropped_in_turn_each_get_thread_caches() {
    for round in 0..2 * HEAPS {
        let heap = Box::new(LockedHeap::empty());
        init_tlsf(&heap, Box::leak(Box::<[u8]>::new_uninit_slice(2 << 20)));
        heap.set_thread_caches(true);
        // A fresh thread: its cache serves the first heap it frees to.
        thread::scope(|s| {
            s.spawn(|| assert!(a_free_is_cached(&heap), "round {round}: no cache"));
        });
        drop(heap);
    }
}

/// By default the caches wait for a second thread: a heap used by one
/// thread keeps the plain locked path; the first time a thread finds the
/// lock held by another, the caches come on, with no call to make.
#[test]
fn caches_come_on_by_themselves_when_two_threads_meet_at_the_lock() {
    let heap = plain_heap(2 << 20);
    assert!(!heap.thread_caches_on());
    thread::spawn(move || assert!(!a_free_is_cached(heap), "cached with one thread")).join().unwrap();
    assert!(!heap.thread_caches_on());
    let (held, wait) = channel::<()>();
    let holder = thread::spawn(move || {
        heap.with(|_| {
            held.send(()).unwrap();
            // Long enough for the other thread to find the lock held.
            thread::sleep(std::time::Duration::from_millis(200));
        })
    });
    wait.recv().unwrap();
    let l = Layout::from_size_align(1000, 8).unwrap();
    // SAFETY: a block of this heap, freed once.
    unsafe { heap.dealloc(heap.alloc(l), l) };
    holder.join().unwrap();
    assert!(heap.thread_caches_on(), "two threads met at the lock: the caches should be on");
    thread::spawn(move || assert!(a_free_is_cached(heap), "not cached after the caches came on"))
        .join()
        .unwrap();
}

/// A heap dropped while a thread's cache holds its blocks: the cache forgets
/// them, and a new heap in the same place never gets them (a cache keyed by
/// the heap's address would hand the new heap's callers the old memory).
#[test]
fn a_new_heap_where_a_dropped_one_was_never_gets_its_cached_blocks() {
    let l = Layout::from_size_align(1000, 8).unwrap();
    let slot: &mut MaybeUninit<LockedHeap> = Box::leak(Box::new(MaybeUninit::uninit()));
    // (Each heap's caches are switched on below, as there is one thread.)
    let old_region: &'static mut [MaybeUninit<u8>] = Box::leak(Box::<[u8]>::new_uninit_slice(2 << 20));
    let old_range = old_region.as_ptr_range();
    let old_range = old_range.start as usize..old_range.end as usize;
    let new_region: &'static mut [MaybeUninit<u8>] = Box::leak(Box::<[u8]>::new_uninit_slice(2 << 20));
    let new_range = new_region.as_ptr_range();
    let new_range = new_range.start as usize..new_range.end as usize;
    thread::spawn(move || {
        let old = slot.write(LockedHeap::empty());
        init_tlsf(old, old_region);
        old.set_thread_caches(true);
        // SAFETY: blocks of the heap in use with their layout, each freed
        // once; the old heap is dropped with one of its blocks cached.
        unsafe {
            let p = old.alloc(l);
            old.dealloc(p, l);
            slot.assume_init_drop();
            let new = slot.write(LockedHeap::empty());
            init_tlsf(new, new_region);
            new.set_thread_caches(true);
            let q = new.alloc(l);
            assert!(new_range.contains(&(q as usize)), "{q:p} is not the new heap's");
            assert!(!old_range.contains(&(q as usize)));
            new.dealloc(q, l);
            assert!(a_free_is_cached(new), "this thread's cache did not move to the new heap");
            slot.assume_init_drop();
        }
    })
    .join()
    .unwrap();
}

/// Blocks another thread holds in its cache come back before an allocation
/// fails, and on `trim`, while that thread lives on; and the thread finds
/// its cache empty afterwards (nothing is handed out twice).
#[test]
fn blocks_cached_by_a_live_thread_come_back_before_an_allocation_fails_and_on_trim() {
    // Layer 0 alone (2 MiB: no +2 arenas), so that filling it is quick.
    let heap = cached_heap(2 << 20);
    let l = Layout::from_size_align(3000, common::CHUNK_ALIGN).unwrap();
    let (go, wait) = channel::<()>();
    let (done, inbox) = channel::<Vec<Block>>();
    let worker = thread::spawn(move || {
        for _ in 0..2 {
            // SAFETY: blocks of this heap with their layout, each freed
            // once; while its cache holds them the thread waits.
            unsafe {
                let blocks: Vec<*mut u8> = (0..usize::from(MEDIUM_DEPTH)).map(|_| heap.alloc(l)).collect();
                assert!(blocks.iter().all(|p| !p.is_null()));
                for &b in &blocks {
                    heap.dealloc(b, l);
                }
                done.send(blocks.into_iter().map(Block).collect()).unwrap();
                wait.recv().unwrap();
            }
        }
        // Its cache was drained: these come from the heap, each once.
        // SAFETY: plain allocations.
        (0..usize::from(MEDIUM_DEPTH)).map(|_| Block(unsafe { heap.alloc(l) })).collect::<Vec<_>>()
    });
    // Round 1: fill the heap. Every block the worker holds must be handed
    // out here, once, as the heap's again, before an allocation fails.
    let cached: Vec<*mut u8> = inbox.recv().unwrap().into_iter().map(|b| b.0).collect();
    let mut mine = Vec::new();
    loop {
        // SAFETY: a plain allocation.
        let p = unsafe { heap.alloc(l) };
        if p.is_null() {
            break;
        }
        mine.push(p);
    }
    for p in &cached {
        assert!(mine.contains(p), "a block cached by the other thread never came back");
    }
    assert_eq!(heap.stats().front.failed_allocations, 1);
    // SAFETY: this thread's blocks, freed once.
    unsafe {
        for p in mine {
            heap.dealloc(p, l);
        }
    }
    go.send(()).unwrap();
    // Round 2: `trim` takes the worker's blocks back.
    inbox.recv().unwrap();
    let held = heap.stats().segments.allocated_bytes;
    heap.trim();
    assert!(heap.stats().segments.allocated_bytes < held, "trim left the other thread's blocks cached");
    go.send(()).unwrap();
    let again = worker.join().unwrap();
    let mut seen = std::collections::HashSet::new();
    for b in &again {
        assert!(!b.0.is_null() && seen.insert(b.0), "a block handed out twice");
        // SAFETY: the worker's live blocks.
        unsafe { heap.dealloc(b.0, l) };
    }
    heap.trim();
    assert_eq!(heap.stats().segments.allocated_bytes, 0);
    assert_eq!(heap.stats().front.refused_frees, 0);
    heap.with(|h| h.check_invariants());
}

/// Caches can be switched off: the blocks they hold come back at once, and
/// frees go to the heap.
#[test]
fn switching_the_caches_off_gives_their_blocks_back() {
    let heap = heap();
    assert!(a_free_is_cached(heap));
    let l = Layout::from_size_align(1000, 8).unwrap();
    // SAFETY: a block of this heap, freed once.
    unsafe {
        let p = heap.alloc(l);
        heap.dealloc(p, l);
    }
    let held = heap.stats().segments.allocated_bytes;
    heap.set_thread_caches(false);
    assert!(heap.stats().segments.allocated_bytes < held);
    assert!(!a_free_is_cached(heap));
    heap.set_thread_caches(true);
    assert!(a_free_is_cached(heap));
}

/// The heap of [`a_first_free_from_a_key_destructor_leaves_no_cache_behind`].
#[cfg(unix)]
static KEY_HEAP: std::sync::atomic::AtomicPtr<LockedHeap> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// Frees the 32-byte block a thread held under a `pthread_key`.
#[cfg(unix)]
extern "C" fn free_key_block(block: *mut libc::c_void) {
    // SAFETY: set before any thread sets the key.
    let heap = unsafe { &*KEY_HEAP.load(std::sync::atomic::Ordering::Acquire) };
    // SAFETY: a live block of this heap, with this layout, freed once.
    unsafe { heap.dealloc(block.cast(), Layout::from_size_align(32, 8).unwrap()) };
}

/// A thread whose first call to the heap is a free from a `pthread_key`
/// destructor — after its thread-local destructors have run, too late for
/// one of them to see the thread go — still gives its cache back when it
/// exits. (A cache left on the registry's list in the storage of a dead
/// thread became a cycle once a new thread reused that storage: `trim`,
/// and every thread's exit, then looped for ever; or, with the storage
/// unmapped, read freed memory.)
#[cfg(unix)]
#[test]
fn a_first_free_from_a_key_destructor_leaves_no_cache_behind() {
    let heap = heap();
    KEY_HEAP.store(std::ptr::from_ref(heap).cast_mut(), std::sync::atomic::Ordering::Release);
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: `key` is written by the call; the destructor is a plain fn.
    assert_eq!(unsafe { libc::pthread_key_create(&mut key, Some(free_key_block)) }, 0);
    let layout = Layout::from_size_align(32, 8).unwrap();
    // This thread caches for the heap.
    // SAFETY: a block of this heap, freed once.
    unsafe { heap.dealloc(heap.alloc(layout), layout) };
    // More threads than the caches have slots, one after another, each
    // reusing the last one's stack: none calls the heap but from the key's
    // destructor.
    for _ in 0..2 * strata::front::thread_cache::THREADS {
        // SAFETY: a non-zero layout.
        let block = Block(unsafe { heap.alloc(layout) });
        assert!(!block.0.is_null());
        thread::spawn(move || {
            let block = block;
            // SAFETY: a key of this process; the destructor frees the block.
            assert_eq!(unsafe { libc::pthread_setspecific(key, block.0.cast()) }, 0);
        })
        .join()
        .unwrap();
    }
    // `trim` drains every cache on the registry's list: it comes back, and
    // every block is free.
    let (done, finished) = channel();
    thread::spawn(move || {
        heap.trim();
        done.send(in_use(heap)).unwrap();
    });
    let left = finished.recv_timeout(std::time::Duration::from_secs(60)).expect("trim came back");
    assert_eq!(left, 0, "blocks still in use after trim");
    // SAFETY: no thread uses the key any more.
    unsafe { libc::pthread_key_delete(key) };
}
