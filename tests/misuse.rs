//! Misuse of the public API, as a hostile user would try it: each must be
//! refused (or served correctly), counted, and leave the heap sound. (With
//! the `debug` feature the hooks stop at the misuse itself, by policy:
//! `tests/debug.rs` covers that.)
#![cfg(not(feature = "debug"))]

mod common;

use std::alloc::{GlobalAlloc, Layout};
use std::mem::MaybeUninit;

use strata::LockedHeap;

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

fn heap(size: usize) -> &'static LockedHeap {
    let heap: &'static LockedHeap = Box::leak(Box::new(LockedHeap::empty()));
    heap.init_from_slice(Box::leak(vec![MaybeUninit::uninit(); size].into_boxed_slice()));
    heap
}

#[test]
fn realloc_of_a_pointer_no_layer_owns_is_a_counted_null_and_leaks_nothing() {
    let heap = heap(32 << 20);
    let live = heap.stats().segments.allocated_bytes;
    let mut local = [0u8; 64];
    // SAFETY: a pointer the heap does not own: refused before anything is
    // allocated.
    let p = unsafe { heap.realloc(local.as_mut_ptr(), layout(64, 8), 4096) };
    assert!(p.is_null());
    let s = heap.stats();
    assert_eq!(s.front.refused_frees, 1, "the refusal was not counted");
    assert_eq!(s.segments.allocated_bytes, live, "the new block leaked");
    // And a block freed already.
    // SAFETY: a live block, then freed, then reallocated: refused.
    unsafe {
        let q = heap.alloc(layout(3000, 8));
        heap.dealloc(q, layout(3000, 8));
        assert!(heap.realloc(q, layout(3000, 8), 5000).is_null());
    }
    assert_eq!(heap.stats().front.refused_frees, 2);
    heap.with(|h| h.check_invariants());
}

/// A first-fit heap (under 16 MiB) keeps no header, but its free blocks
/// lie in a tree by address: a second free of a block, or a free that
/// overlaps a free block, is refused, counted, and changes nothing — on
/// 64 KiB and on 4 MiB (where TLSF used to check frees).
#[test]
#[cfg(not(feature = "debug"))]
fn a_double_free_on_a_first_fit_heap_is_refused_and_changes_nothing() {
    for size in [64 << 10, 4 << 20] {
        let heap = heap(size);
        let l = layout(24, 8);
        // SAFETY: live blocks, freed once; then the misuses under test,
        // each of which must be refused without touching the heap.
        unsafe {
            let p = heap.alloc(l);
            let q = heap.alloc(layout(100, 8));
            let r = heap.alloc(l);
            assert!(!p.is_null() && !q.is_null() && !r.is_null());
            assert!(heap.stats().segments.first_fit);
            heap.dealloc(q, layout(100, 8));
            let before = heap.stats();
            heap.dealloc(q, layout(100, 8));
            heap.dealloc(q.add(16), layout(16, 8));
            heap.dealloc(p, layout(48, 8));
            let after = heap.stats();
            assert_eq!(after.front.refused_frees, before.front.refused_frees + 3, "{size}");
            assert_eq!(after.segments, before.segments, "{size}: a refused free changed layer 0");
            heap.with(|h| h.check_invariants());
            // The neighbours are intact and free normally.
            heap.dealloc(p, l);
            heap.dealloc(r, l);
        }
        assert_eq!(heap.stats().segments.allocated_bytes, 0, "{size}");
        heap.with(|h| h.check_invariants());
    }
}

#[test]
fn a_region_at_the_top_of_the_address_space_is_an_empty_heap() {
    for addr in [usize::MAX - 3, usize::MAX - 15, usize::MAX - 16, usize::MAX] {
        for len in [0, 1, 3, 16] {
            // SAFETY: an empty (or unusable) region: the source must not touch it.
            let source = unsafe { strata::RegionSource::new(std::ptr::without_provenance_mut(addr), len) };
            assert_eq!(strata::PageSource::window(&source).1, 0, "{addr:#x}+{len}");
        }
    }
}

#[test]
fn arenas_can_live_in_all_of_a_window_that_is_not_a_power_of_two() {
    for len in [6usize << 30, (4usize << 30) + 4096, 3 << 30, (1 << 20) + 16] {
        let g = strata::object::Geometry::for_window(len);
        if g.threshold > 0 {
            assert!(
                len.div_ceil(g.arena_size()) < strata::object::ARENA_SLOTS,
                "{len}: {} arenas of {} do not cover it",
                strata::object::ARENA_SLOTS,
                g.arena_size()
            );
        }
    }
}

#[test]
fn an_immediate_double_free_of_a_small_block_is_refused_and_never_served_twice() {
    let region = common::Region::new(32 << 20);
    let mut heap = strata::Heap::new(region.source());
    heap.set_cold_limit(0);
    let l = layout(48, 8);
    let keep = heap.allocate(l).unwrap();
    let a = heap.allocate(l).unwrap();
    assert_eq!(heap.owner(a.as_ptr()), Some(strata::Layer::Object));
    // SAFETY: `a` is live; the second free is the misuse under test, which
    // must be refused without touching the pool.
    unsafe {
        heap.deallocate(a, l).unwrap();
        let r = heap.deallocate(a, l);
        assert!(matches!(r, Err(strata::segment::DeallocateError::NotAllocated { .. })), "{r:?}");
    }
    let (x, y) = (heap.allocate(l).unwrap(), heap.allocate(l).unwrap());
    assert_ne!(x, y, "one block handed out twice");
    heap.check_invariants();
    // SAFETY: live blocks.
    unsafe {
        for p in [keep, x, y] {
            heap.deallocate(p, l).unwrap();
        }
    }
    heap.check_invariants();
}

#[test]
fn configurations_that_cannot_serve_are_typed_errors() {
    use strata::InvalidConfig;
    use strata::object::{Geometry, GeometryError};
    use strata::segment::{Config, ConfigError};
    let region = common::Region::new(1 << 20);
    let config = Config::for_window(1 << 20);
    let bad = [
        // Pools of 512 bytes cannot hold two 512-byte blocks: they would overlap.
        (
            Geometry { arena_shift: 12, pool_shift: 9, class_shift: 3, threshold: 512 },
            GeometryError::PoolSize(9),
        ),
        // A pool larger than its arena.
        (
            Geometry { arena_shift: 12, pool_shift: 14, class_shift: 3, threshold: 512 },
            GeometryError::ArenaSize(12),
        ),
        (
            Geometry { arena_shift: 20, pool_shift: 12, class_shift: 3, threshold: 512 },
            GeometryError::ArenaSize(20),
        ),
        (
            Geometry { arena_shift: 20, pool_shift: 64, class_shift: 3, threshold: 512 },
            GeometryError::PoolSize(64),
        ),
        (
            Geometry { arena_shift: 20, pool_shift: 14, class_shift: 5, threshold: 512 },
            GeometryError::ClassShift(5),
        ),
        (
            Geometry { arena_shift: 20, pool_shift: 14, class_shift: 3, threshold: 1024 },
            GeometryError::Threshold(1024),
        ),
        (
            Geometry { arena_shift: 20, pool_shift: 14, class_shift: 3, threshold: 100 },
            GeometryError::Threshold(100),
        ),
    ];
    for (geometry, err) in bad {
        let r = strata::Heap::with_geometry(region.source(), geometry, config);
        assert_eq!(r.err(), Some(InvalidConfig::Geometry(err)), "{geometry:?}");
        let r = strata::object::ObjectAllocator::new(geometry, (0, 1 << 20));
        assert_eq!(r.err(), Some(err));
    }
    for span_min in [0, 100, usize::MAX & !4095] {
        let config = Config { span_min, ..config };
        let r = strata::Heap::with_geometry(region.source(), Geometry::CPYTHON, config);
        assert_eq!(r.err(), Some(InvalidConfig::Segment(ConfigError::SpanMin(span_min))));
    }
    // The geometries the heap computes itself are valid, and a valid custom
    // one serves.
    for shift in 12..40.min(usize::BITS - 2) {
        assert!(Geometry::for_window(1 << shift).validate().is_ok());
        assert!(Geometry::for_region(3 << shift).validate().is_ok());
    }
    let g = Geometry { arena_shift: 16, pool_shift: 12, class_shift: 4, threshold: 256 };
    let mut heap = strata::Heap::with_geometry(region.source(), g, config).unwrap();
    heap.set_cold_limit(0);
    let p = heap.allocate(layout(200, 16)).unwrap();
    assert_eq!(heap.owner(p.as_ptr()), Some(strata::Layer::Object));
    // SAFETY: the live block just allocated.
    unsafe { heap.deallocate(p, layout(200, 16)) }.unwrap();
    heap.check_invariants();
}

#[cfg(all(feature = "std", not(feature = "debug")))]
mod thread_caches {
    use super::*;
    use std::collections::HashSet;

    fn cached_heap(size: usize) -> &'static LockedHeap {
        let heap = heap(size);
        heap.with(|h| h.set_cold_limit(0));
        heap.set_thread_caches(true);
        heap
    }

    /// The overflow of the issue: a 328-byte block shrunk in place to 320,
    /// freed as (320, 8), taken for (320, 16), then grown to 328 and 336.
    #[test]
    fn a_cached_block_never_serves_more_than_it_holds() {
        let heap = cached_heap(32 << 20);
        let l328 = layout(328, 8);
        // SAFETY: blocks of this heap, each used within its layout and freed
        // once with its current layout.
        unsafe {
            let blocks: Vec<*mut u8> = (0..200).map(|_| heap.alloc(l328)).collect();
            let set: HashSet<usize> = blocks.iter().map(|&p| p as usize).collect();
            // A 16-aligned block with a live block right after it.
            let &p = blocks
                .iter()
                .find(|&&p| (p as usize).is_multiple_of(16) && set.contains(&(p as usize + 328)))
                .expect("a 16-aligned block with a neighbour");
            let neighbour = p.add(328);
            neighbour.write_bytes(0x5a, 328);
            let q = heap.realloc(p, l328, 320);
            assert_eq!(q, p, "shrunk in place");
            heap.dealloc(q, layout(320, 8));
            let r = heap.alloc(layout(320, 16));
            assert!((r as usize).is_multiple_of(16));
            let r = heap.realloc(r, layout(320, 16), 328);
            let r = heap.realloc(r, layout(328, 16), 336);
            r.write_bytes(0xa5, 336);
            assert!(
                std::slice::from_raw_parts(neighbour, 328).iter().all(|&b| b == 0x5a),
                "the block grew over its neighbour"
            );
            heap.dealloc(r, layout(336, 16));
            for b in blocks.into_iter().filter(|&b| b != p) {
                heap.dealloc(b, l328);
            }
        }
        heap.trim();
        heap.with(|h| h.check_invariants());
    }

    #[test]
    fn the_caches_refuse_what_the_heap_refuses() {
        let heap = cached_heap(32 << 20);
        let other = cached_heap(32 << 20);
        let l = layout(64, 8);
        // SAFETY: the frees below are the misuse under test; each must be
        // refused without the block being cached.
        unsafe {
            // Warm this thread's cache for `heap`.
            let a = heap.alloc(l);
            heap.dealloc(a, l);
            let mut local = [0u64; 8];
            heap.dealloc(local.as_mut_ptr().cast(), l);
            let foreign = other.alloc(l);
            heap.dealloc(foreign, l);
            assert_eq!(heap.stats().front.refused_frees, 2, "foreign frees not refused");
            let mut seen = HashSet::new();
            for _ in 0..40 {
                let p = heap.alloc(l);
                assert!(p != local.as_mut_ptr().cast() && p != foreign, "a foreign block was handed out");
                assert!(seen.insert(p as usize), "a block was handed out twice");
            }
            // A double free: refused, and the block is not handed out twice.
            let b = heap.alloc(l);
            heap.dealloc(b, l);
            heap.dealloc(b, l);
            assert_eq!(heap.stats().front.refused_frees, 3, "a double free not refused");
            let (x, y) = (heap.alloc(l), heap.alloc(l));
            assert_ne!(x, y, "one block handed out twice");
            heap.dealloc(x, l);
            heap.dealloc(y, l);
            for p in seen {
                heap.dealloc(p as *mut u8, l);
            }
            other.dealloc(foreign, l);
        }
        // The flush at trim (and at thread exit) finds nothing it cannot free.
        heap.trim();
        heap.with(|h| h.check_invariants());
        assert_eq!(heap.stats().front.refused_frees, 3);
    }

    /// A block this thread holds, freed again with another layout (which
    /// maps to another class, one that only takes 16-aligned blocks): it
    /// must still be found and refused, never end up both cached and in its
    /// pool's free list.
    #[test]
    fn a_second_free_with_another_layout_is_refused_too() {
        let heap = cached_heap(32 << 20);
        let (l24, l16) = (layout(24, 8), layout(16, 8));
        // SAFETY: live blocks of this heap; the second free of `p` is the
        // misuse under test.
        unsafe {
            let mut keep = Vec::new();
            let mut p = heap.alloc(l24);
            while (p as usize).is_multiple_of(16) {
                keep.push(p);
                p = heap.alloc(l24);
            }
            heap.dealloc(p, l24);
            heap.dealloc(p, l16);
            assert_eq!(heap.stats().front.refused_frees, 1, "the second free was not refused");
            let mut seen = HashSet::new();
            for _ in 0..2000 {
                let q = heap.alloc(l24);
                assert!(seen.insert(q as usize), "{q:p} handed out twice");
                keep.push(q);
            }
            for q in keep {
                heap.dealloc(q, l24);
            }
        }
        heap.trim();
        heap.with(|h| h.check_invariants());
    }

    /// Allocations of `l` on a fresh thread whose cache serves another heap
    /// (so none of them comes from a cache), until `n` or a failure; all
    /// freed again before they are returned.
    #[cfg(all(target_pointer_width = "64", any(target_arch = "x86_64", target_arch = "aarch64")))]
    fn locked_allocations(heap: &'static LockedHeap, l: Layout, n: usize) -> Vec<usize> {
        let other = cached_heap(4 << 20);
        std::thread::spawn(move || {
            // SAFETY: a block of `other`, freed once: this thread's cache
            // now serves `other`.
            unsafe {
                let q = other.alloc(layout(64, 8));
                other.dealloc(q, layout(64, 8));
            }
            // SAFETY: plain allocations, freed once (after all are made).
            let got: Vec<usize> =
                (0..n).map(|_| unsafe { heap.alloc(l) } as usize).take_while(|&p| p != 0).collect();
            for &p in &got {
                // SAFETY: as above.
                unsafe { heap.dealloc(p as *mut u8, l) };
            }
            got
        })
        .join()
        .unwrap()
    }

    /// Findings of the adversarial pass of the default-on caches: a block
    /// cached by one thread, freed (or reallocated) again by a thread whose
    /// cache serves another heap — the locked path must see the block's
    /// tag; and a block an exited thread gave back, freed again before the
    /// heap's next lock — it keeps its tag on the heap's stack of returned
    /// blocks. Each would hand the block out twice. (Tags, which these
    /// refusals need, are on 64-bit x86_64 and aarch64 only.)
    #[test]
    #[cfg(all(target_pointer_width = "64", any(target_arch = "x86_64", target_arch = "aarch64")))]
    fn a_block_in_any_cache_is_refused_by_every_path() {
        for size in [64, 2000] {
            let l = layout(size, 8);
            let heap = cached_heap(32 << 20);
            // SAFETY: blocks of this heap with their layout; the second
            // frees and the realloc are the misuses under test.
            unsafe {
                // Cached by this thread, then freed and reallocated by a
                // thread whose cache serves another heap.
                let p = heap.alloc(l);
                heap.dealloc(p, l);
                let other = cached_heap(4 << 20);
                let pp = p as usize;
                std::thread::spawn(move || {
                    let q = other.alloc(layout(64, 8));
                    other.dealloc(q, layout(64, 8));
                    heap.dealloc(pp as *mut u8, l);
                    assert!(heap.realloc(pp as *mut u8, l, size * 3).is_null());
                })
                .join()
                .unwrap();
                assert_eq!(heap.stats().front.refused_frees, 2, "size {size}");
                let x = heap.alloc(l);
                assert_eq!(x, p, "this thread's cached block");
                assert!(!locked_allocations(heap, l, 5_000).contains(&(x as usize)), "size {size}: twice");
                // Cached by a thread that exits: on the returned stack.
                let m = heap.alloc(l);
                let q = std::thread::spawn(move || {
                    let q = heap.alloc(l);
                    heap.dealloc(q, l);
                    q as usize
                })
                .join()
                .unwrap() as *mut u8;
                heap.dealloc(q, l);
                assert_eq!(heap.stats().front.refused_frees, 3, "size {size}: returned block freed again");
                let y = heap.alloc(l);
                assert!(!locked_allocations(heap, l, 5_000).contains(&(y as usize)), "size {size}: twice");
                heap.dealloc(m, l);
            }
        }
    }

    /// A thread that frees to a heap before it has memory (a foreign
    /// pointer, refused) must not take the empty heap's geometry for its
    /// cache: it would never cache small blocks afterwards, and would take
    /// blocks of +2 for layer 0's.
    #[test]
    fn a_free_to_a_heap_before_init_does_not_set_up_a_cache_for_it() {
        let heap: &'static LockedHeap = Box::leak(Box::new(LockedHeap::empty()));
        std::thread::spawn(move || {
            heap.set_thread_caches(true);
            let mut local = [0u64; 8];
            // SAFETY: a pointer the heap does not own: refused.
            unsafe { heap.dealloc(local.as_mut_ptr().cast(), layout(64, 8)) };
            heap.init_from_slice(Box::leak(vec![MaybeUninit::uninit(); 32 << 20].into_boxed_slice()));
            heap.with(|h| h.set_cold_limit(0));
            let l = layout(64, 8);
            // SAFETY: blocks of this heap, each freed once.
            unsafe {
                let p = heap.alloc(l);
                let before = heap.with(|h| h.class_stats().iter().map(|c| c.blocks_in_use).sum::<usize>());
                heap.dealloc(p, l);
                let after = heap.with(|h| h.class_stats().iter().map(|c| c.blocks_in_use).sum::<usize>());
                assert_eq!(
                    before, after,
                    "the free was not cached: the cache took the empty heap's geometry"
                );
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn eight_threads_with_odd_sized_aligned_blocks_keep_every_byte() {
        let heap = cached_heap(64 << 20);
        let handles: Vec<_> = (0..8u64)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut rng = common::Rng(0x9e37_79b9 ^ (t << 32));
                    let mut live: Vec<(usize, Layout, u8)> = Vec::new();
                    let mut handed: Vec<(usize, Layout, u8)> = Vec::new();
                    for i in 0..20_000u32 {
                        let tag = i as u8;
                        match rng.below(10) {
                            0..=3 => {
                                let align = if rng.below(2) == 0 { 16 } else { 8 };
                                let l = layout(1 + rng.below(600) as usize, align);
                                // SAFETY: a non-zero layout.
                                let p = unsafe { heap.alloc(l) };
                                assert!(!p.is_null() && (p as usize).is_multiple_of(align));
                                // SAFETY: the block holds `l.size()` bytes.
                                unsafe { p.write_bytes(tag, l.size()) };
                                live.push((p as usize, l, tag));
                            }
                            4..=6 if !live.is_empty() => {
                                let (p, l, old) = live.swap_remove(rng.below(live.len() as u64) as usize);
                                let new = 1 + rng.below(600) as usize;
                                // SAFETY: a live block with its layout.
                                let q = unsafe { heap.realloc(p as *mut u8, l, new) };
                                assert!(!q.is_null() && (q as usize).is_multiple_of(l.align()));
                                // SAFETY: the block holds `new` bytes, the first
                                // `min` of them kept.
                                unsafe {
                                    let kept = std::slice::from_raw_parts(q, l.size().min(new));
                                    assert!(kept.iter().all(|&b| b == old), "contents lost across realloc");
                                    q.write_bytes(tag, new);
                                }
                                live.push((q as usize, layout(new, l.align()), tag));
                            }
                            7 if !live.is_empty() => {
                                // Handed to the next thread's queue: freed elsewhere.
                                handed.push(live.swap_remove(rng.below(live.len() as u64) as usize));
                            }
                            _ if !live.is_empty() => {
                                let (p, l, tag) = live.swap_remove(rng.below(live.len() as u64) as usize);
                                // SAFETY: a live block with its layout.
                                unsafe {
                                    let bytes = std::slice::from_raw_parts(p as *const u8, l.size());
                                    assert!(bytes.iter().all(|&b| b == tag), "contents lost");
                                    heap.dealloc(p as *mut u8, l);
                                }
                            }
                            _ => {}
                        }
                    }
                    live.extend(handed);
                    live
                })
            })
            .collect();
        // Every thread's leftovers freed by this one: cross-thread frees.
        for h in handles {
            for (p, l, tag) in h.join().unwrap() {
                // SAFETY: live blocks of `heap` with their layouts.
                unsafe {
                    let bytes = std::slice::from_raw_parts(p as *const u8, l.size());
                    assert!(bytes.iter().all(|&b| b == tag), "contents lost");
                    heap.dealloc(p as *mut u8, l);
                }
            }
        }
        heap.trim();
        let s = heap.stats();
        assert_eq!((s.front.refused_frees, s.front.failed_allocations), (0, 0));
        heap.with(|h| h.check_invariants());
    }
}

/// What a caller gets from `to_string()` and `source()` of a public error.
fn described(e: &dyn std::error::Error) -> (String, Option<String>) {
    (e.to_string(), e.source().map(ToString::to_string))
}

#[test]
fn every_public_error_says_what_went_wrong_and_keeps_its_cause() {
    use strata::cache::CacheError;
    use strata::object::AllocateError as ObjectError;
    use strata::source::PagesError;

    let pages = PagesError::Exhausted { size: 1 << 20, align: 1 << 20 };
    let (text, cause) = described(&ObjectError::NoArena(pages));
    assert!(text.starts_with("no pool has room"), "{text}");
    assert_eq!(cause, Some(pages.to_string()), "layer +2 lost the page source's cause");
    let (text, cause) = described(&ObjectError::ArenaOutsideWindow { addr: 0x1000 });
    assert!(text.contains("0x1000") && cause.is_none(), "{text}");
    for e in [CacheError::OutOfMemory, CacheError::NoConstructor] {
        let (text, cause) = described(&e);
        assert!(!text.is_empty() && !text.contains("Constructor") && cause.is_none(), "{text}");
    }

    #[cfg(all(feature = "paging", target_arch = "x86_64"))]
    {
        use strata::frame::{AllocateError as FrameError, DeallocateError, MemoryMapError};
        use strata::vmm::{AllocateError as VmmError, PageError, ReserveError};
        let reserve = ReserveError::AddressSpaceExhausted { pages: 7 };
        let (text, cause) = described(&VmmError::Reserve(reserve));
        assert!(text.contains("7 pages") && cause == Some(reserve.to_string()), "{text}");
        let (text, cause) = described(&VmmError::Map(PageError::OutOfFrames));
        assert!(text.ends_with("out of physical frames") && cause.is_some(), "{text}");
        let (text, _) = described(&FrameError::OutOfMemory { order: 3 });
        assert!(text.contains("order 3"), "{text}");
        let (text, _) = described(&MemoryMapError::MetadataTooSmall { needed: 10, provided: 4 });
        assert!(text.contains("10") && text.contains('4'), "{text}");
        let (text, _) = described(&DeallocateError::InvalidOrder { order: 99 });
        assert!(text.contains("99"), "{text}");
    }
}

/// `free(a); free(b); free(a)`: the second free of `a` finds it deep in its
/// pool's free list (not at its head, the pool not empty). It must be
/// refused — before free blocks carried a tag, it was taken, and the pool
/// later handed out a block still in use. On the plain locked path, the
/// quick path, and (with `std`) through the thread caches. (Free blocks
/// carry tags on 64-bit x86_64 and aarch64 only, as the README's misuse
/// table says: elsewhere such a free is not seen.)
#[test]
#[cfg(all(target_pointer_width = "64", any(target_arch = "x86_64", target_arch = "aarch64")))]
fn a_double_free_deep_in_a_free_list_is_refused_and_no_live_block_is_handed_out() {
    #[cfg(feature = "std")]
    let modes: [Option<bool>; 2] = [None, Some(true)];
    #[cfg(not(feature = "std"))]
    let modes: [Option<bool>; 1] = [None];
    for caches in modes {
        for size in [16, 64, 500] {
            let heap = heap(32 << 20);
            #[cfg(feature = "std")]
            if let Some(on) = caches {
                heap.set_thread_caches(on);
            }
            let _ = caches;
            let l = layout(size, 8);
            // A class in demand: served from pools, not by layer 0 (cold).
            for _ in 0..200 {
                // SAFETY: a valid layout; the block is freed at once.
                unsafe { heap.dealloc(heap.alloc(l), l) };
            }
            // SAFETY: valid layouts; `a` is freed twice on purpose.
            unsafe {
                let (a, b, c) = (heap.alloc(l), heap.alloc(l), heap.alloc(l));
                c.write_bytes(0xC3, size);
                heap.dealloc(a, l);
                heap.dealloc(b, l);
                heap.dealloc(a, l);
                assert_eq!(heap.stats().front.refused_frees, 1, "size {size}, caches {caches:?}");
                let fresh: Vec<*mut u8> = (0..40).map(|_| heap.alloc(l)).collect();
                assert!(
                    !fresh.contains(&c),
                    "size {size}, caches {caches:?}: the live block c was handed out"
                );
                let mut sorted = fresh.clone();
                sorted.sort();
                sorted.dedup();
                assert_eq!(
                    sorted.len(),
                    fresh.len(),
                    "size {size}, caches {caches:?}: a block handed out twice"
                );
                assert!(std::slice::from_raw_parts(c, size).iter().all(|&x| x == 0xC3));
                for p in fresh {
                    heap.dealloc(p, l);
                }
                heap.dealloc(c, l);
            }
            heap.with(|h| h.check_invariants());
        }
    }
}

/// A small request that fails keeps both causes: why layer +2 had no pool
/// for it, and why layer 0 could not serve it then.
#[test]
fn a_failed_small_request_keeps_layer_2_and_layer_0_causes() {
    use common::Region;
    use strata::Heap;
    use strata::front::AllocateError;

    let region = Region::new(16 << 20);
    let mut heap = Heap::new(region.source());
    assert!(heap.stats().geometry.threshold > 0, "pools serve a 16 MiB region");
    let layout = Layout::from_size_align(512, 8).unwrap();
    let err = loop {
        if let Err(e) = heap.allocate(layout) {
            break e;
        }
    };
    let AllocateError::Small { pools, segment } = err else { panic!("not both causes: {err:?}") };
    let (text, cause) = described(&err);
    assert!(text.contains(&pools.to_string()) && text.contains(&segment.to_string()), "{text}");
    assert_eq!(cause, Some(segment.to_string()));
    heap.check_invariants();
}

/// A pointer into the middle of a live small block (as C code passes by
/// mistake): `free`, `realloc` (with or without a layout) and
/// `malloc_usable_size` refuse it, and no allocation overlaps the live
/// block afterwards.
#[test]
fn a_pointer_into_a_live_small_block_is_refused_by_free_realloc_and_usable_size() {
    let heap = heap(32 << 20);
    heap.with(|h| h.set_cold_limit(0));
    let l = layout(48, 16);
    // SAFETY: `p` is a live block; `inner` points into it, which every
    // call below must refuse without touching the block.
    unsafe {
        let p = heap.alloc(l);
        p.write_bytes(0xA5, 48);
        let inner = p.add(16);
        common::assert_unsized_calls_refused(heap, inner);
        let refused = heap.stats().front.refused_frees;
        assert!(heap.realloc(inner, l, 300).is_null());
        assert_eq!(heap.stats().front.refused_frees, refused + 1, "the sized realloc's refusal is counted");
        let others: Vec<*mut u8> = (0..64).map(|_| heap.alloc(l)).collect();
        for &q in &others {
            let (a, b) = (q as usize, p as usize);
            assert!(a + 48 <= b || b + 48 <= a, "{q:p} overlaps the live block {p:p}");
        }
        assert!((0..48).all(|i| *p.add(i) == 0xA5), "the live block was written");
        for q in others {
            heap.dealloc(q, l);
        }
        heap.dealloc(p, l);
    }
}

/// A pointer 16 bytes into a freed layer 0 block lands on the freed chunk's
/// back link, which holds its list's tag while the chunk heads its list
/// (as it does right after the free): read as a chunk header, the tag must
/// say "not in use". Found by the hostile pass on a tag that set the in-use
/// bit, where the free of such a pointer took the caller's old data for a
/// chunk and corrupted the free lists.
#[test]
fn a_pointer_sixteen_bytes_into_a_freed_block_is_refused() {
    use std::ptr::NonNull;
    use strata::PageSource;
    use strata::object::Geometry;
    use strata::segment::Config;

    let region = common::Region::new(17 << 20);
    let window = region.source().window().1;
    let tlsf = Config { first_fit: false, ..Config::for_window(window) };
    let mut tlsf_heap =
        strata::Heap::with_geometry(region.source(), Geometry::for_region(window), tlsf).unwrap();
    let sizes = || (520..=8192).step_by(8).chain([16 << 10, 65_000, 200_000]);
    let guard = layout(600, 16);
    for fill in [0x02u8, 0xAA, 0xFF] {
        for size in sizes() {
            let l = layout(size, 16);
            // In use on both sides, so that the freed block stands alone at
            // the head of its list.
            let before = tlsf_heap.allocate(guard).unwrap();
            let a = tlsf_heap.allocate(l).unwrap();
            let after = tlsf_heap.allocate(guard).unwrap();
            // SAFETY: `a` is a live block of `size` bytes; then it is freed
            // once, and every call on `inner` below must be refused.
            unsafe {
                a.as_ptr().write_bytes(fill, size);
                tlsf_heap.deallocate(a, l).unwrap();
                let inner = NonNull::new_unchecked(a.as_ptr().add(16));
                assert!(tlsf_heap.usable_size(inner).is_err(), "{size} B, fill {fill:#x}: usable_size");
                assert!(
                    tlsf_heap.deallocate_unsized(inner).is_err(),
                    "{size} B, fill {fill:#x}: unsized free"
                );
                assert!(tlsf_heap.deallocate(inner, layout(size - 16, 16)).is_err(), "{size} B: sized free");
                assert!(
                    tlsf_heap.reallocate(inner, layout(size - 16, 16), size * 2).is_err(),
                    "{size} B: realloc"
                );
            }
            tlsf_heap.check_invariants();
            // SAFETY: the two live guards.
            unsafe {
                tlsf_heap.deallocate(before, guard).unwrap();
                tlsf_heap.deallocate(after, guard).unwrap();
            }
        }
    }
    tlsf_heap.check_invariants();

    // The same through `LockedHeap`'s C-style calls (what strata-malloc's
    // `free` makes), on a heap where TLSF serves by default.
    let locked = heap(17 << 20);
    for size in sizes().step_by(7) {
        let l = layout(size, 16);
        // SAFETY: as above: live blocks, `a` freed once, `inner` refused.
        unsafe {
            let before = locked.alloc(guard);
            let a = locked.alloc(l);
            let after = locked.alloc(guard);
            a.write_bytes(0xFF, size);
            locked.dealloc_unsized(a);
            common::assert_unsized_calls_refused(locked, a.add(16));
            locked.dealloc(before, guard);
            locked.dealloc(after, guard);
        }
    }
    locked.with(|h| h.check_invariants());
}

/// C's `free` of a pointer whose preceding word, in the caller's own data,
/// reads as an in-use header of size 0: the quick free without a layout must
/// refuse it as the full path does (it took the header after the chunk to
/// be the chunk's own, and freed a chunk of size 0 through links the caller
/// wrote). Found by the hostile pass.
#[test]
fn a_free_without_a_layout_refuses_a_header_of_size_zero() {
    let heap = heap(17 << 20);
    let l = layout(8192, 16);
    for word in [3usize, 7] {
        // SAFETY: `a` and `guard` are live blocks; `a + 32` is no block,
        // and every call on it must be refused without touching anything.
        unsafe {
            let a = heap.alloc(l);
            let guard = heap.alloc(l);
            a.write_bytes(0x5A, 8192);
            a.add(24).cast::<usize>().write(word);
            common::assert_unsized_calls_refused(heap, a.add(32));
            heap.with(|h| h.check_invariants());
            assert!((32..8192).all(|i| *a.add(i) == 0x5A), "the live block was written");
            heap.dealloc(a, l);
            heap.dealloc(guard, l);
        }
    }
    heap.with(|h| h.check_invariants());
}

/// Frees, reallocs and `usable_size` of pointers at the edges of layer 0's
/// window — its first bytes, before a payload can start, and its end — are
/// refused and counted, and the heap's blocks stay as they were: the quick
/// calls place a pointer in the window with one comparison against the
/// span of its payloads.
#[test]
#[cfg(not(feature = "debug"))]
fn pointers_at_the_edges_of_the_window_are_refused() {
    use strata::PageSource;

    let heap = heap(32 << 20);
    let l = layout(3000, 8);
    // SAFETY: a live block, written and read whole.
    let keep = unsafe { heap.alloc(l) };
    assert!(!keep.is_null());
    // SAFETY: as above.
    unsafe { keep.write_bytes(0x5A, 3000) };
    let (start, len) = heap.with(|h| h.source().window());
    assert!(len > 0);
    // (A payload starts two words into the window at the earliest.)
    let word = size_of::<usize>();
    let edges = [start, start + word, start + 2 * word - 1, start + len - 8, start + len - 16, start + len];
    for (i, &addr) in edges.iter().enumerate() {
        let p = addr as *mut u8;
        let refused = heap.stats().front.refused_frees;
        // SAFETY: pointers no layer hands out: each call must refuse them
        // without touching a block.
        unsafe {
            heap.dealloc(p, l);
            assert_eq!(
                heap.stats().front.refused_frees,
                refused + 1,
                "free of window start + {:#x}",
                addr - start
            );
            assert!(heap.realloc(p, l, 6000).is_null(), "realloc of window start + {:#x}", addr - start);
        }
        assert_eq!(heap.stats().front.refused_frees, refused + 2, "edge {i}");
        assert!(heap.with(|h| h.usable_size(std::ptr::NonNull::new(p).unwrap())).is_err(), "edge {i}");
    }
    // SAFETY: the live block, unchanged, freed once.
    unsafe {
        assert!(std::slice::from_raw_parts(keep, 3000).iter().all(|&b| b == 0x5A));
        heap.dealloc(keep, l);
    }
    heap.with(|h| h.check_invariants());
}

/// A layer 0 block freed or reallocated with an alignment its address does
/// not have (the README's misuse table: harmless): its header says what it
/// is, so the block itself is freed or resized at its own address, nothing
/// else changes, and the heap stays sound.
#[test]
fn a_layer_0_block_given_an_alignment_it_lacks_is_served_as_itself() {
    let heap = heap(32 << 20);
    let (asked, claimed) = (layout(1000, 64), layout(1000, 128));
    let before = heap.stats().segments.allocated_bytes;
    // SAFETY: blocks of `asked`, each freed once; the misaligned claim is
    // the misuse under test.
    unsafe {
        // Blocks until one lies off a 128-byte boundary.
        let mut kept = Vec::new();
        let p = loop {
            let p = heap.alloc(asked);
            assert!(!p.is_null() && (p as usize).is_multiple_of(64));
            if !(p as usize).is_multiple_of(128) {
                break p;
            }
            kept.push(p);
        };
        let q = heap.alloc(asked);
        // Reallocated with the claim: in place or moved, the contents kept.
        q.write_bytes(0x5a, 1000);
        let r = heap.realloc(q, claimed, 1200);
        assert!(!r.is_null());
        assert!((0..1000).all(|i| *r.add(i) == 0x5a), "contents lost");
        heap.dealloc(r, layout(1200, 64));
        // Freed with the claim: the block goes, the report agrees.
        assert!(heap.usable_size(p).is_some_and(|u| u >= 1000));
        heap.dealloc(p, claimed);
        assert_eq!(heap.usable_size(p), None, "the block was not freed");
        for k in kept {
            heap.dealloc(k, asked);
        }
    }
    let after = heap.stats();
    assert_eq!(after.front.refused_frees, 0);
    assert_eq!(after.segments.allocated_bytes, before, "a block leaked");
    heap.with(|h| h.check_invariants());
}
