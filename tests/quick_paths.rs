//! The quick paths of `LockedHeap` (`front/quick.rs`, `segment/quick.rs`):
//! the calls they serve without the full path place every block where the
//! full path (`Heap`'s own calls) places it, keep its contents, count what
//! it counts, and refuse every misuse it refuses. (The debug hooks have no
//! quick paths, and stop at a misuse by policy: not built with `debug`.)
#![cfg(not(feature = "debug"))]

mod common;

use std::alloc::{GlobalAlloc, Layout, alloc, alloc_zeroed, dealloc};
use std::ptr::NonNull;

use common::Rng;
use strata::LockedHeap;

/// A region aligned to 4 MiB, so that two heaps over two of them lay out
/// their arenas alike.
struct Aligned {
    ptr: *mut u8,
    layout: Layout,
}

impl Aligned {
    fn new(size: usize) -> Self {
        let layout = Layout::from_size_align(size, 4 << 20).unwrap();
        // SAFETY: non-zero size. (Zeroed under Miri, as `common::Region`:
        // the misuse cases make layer 0 read words no block wrote.)
        let ptr = unsafe { if cfg!(miri) { alloc_zeroed(layout) } else { alloc(layout) } };
        assert!(!ptr.is_null());
        Self { ptr, layout }
    }

    /// A heap over the region (which must outlive it).
    fn heap(&self) -> Box<LockedHeap> {
        let heap = Box::new(LockedHeap::empty());
        // SAFETY: the region is ours, and each test drops its heap first.
        unsafe { heap.init(self.ptr, self.layout.size()) };
        heap
    }

    fn offset(&self, p: *mut u8) -> Option<usize> {
        (!p.is_null()).then(|| p as usize - self.ptr as usize)
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// A request size: mostly small (layer +2), a third between the small
/// threshold and 8 KiB, some up to 256 KiB.
fn size(rng: &mut Rng) -> usize {
    match rng.below(10) {
        0..=5 => 1 + rng.below(512) as usize,
        6..=8 => 513 + rng.below(8 << 10) as usize,
        // (Up to 16 KiB under Miri, which checks every byte it copies.)
        _ => 1 + rng.below(if cfg!(miri) { 16 << 10 } else { 256 << 10 }) as usize,
    }
}

fn align(rng: &mut Rng) -> usize {
    match rng.below(16) {
        0 => 1 << (5 + rng.below(8)),
        1..=7 => 16,
        _ => 8,
    }
}

/// The alignment that marks a block reallocated without its layout, which
/// the test then frees and reallocates without one only.
const UNSIZED: usize = 1;

fn unsized_only(layout: Layout) -> bool {
    layout.align() == UNSIZED
}

/// Fills `len` bytes of a block with a pattern of its tag.
unsafe fn fill(p: *mut u8, len: usize, tag: u64) {
    // SAFETY: the caller's block.
    unsafe { std::ptr::write_bytes(p, tag as u8, len) };
}

/// Whether the first `len` bytes of a block still hold its pattern.
unsafe fn holds(p: *mut u8, len: usize, tag: u64) -> bool {
    // SAFETY: the caller's block.
    unsafe { std::slice::from_raw_parts(p, len) }.iter().all(|&b| b == tag as u8)
}

/// Reallocates the block at `off` of two heaps (each over its region) to
/// `new_size` bytes: `quick` through `GlobalAlloc` (or C's `realloc`,
/// `without` a layout) and `full` through `Heap`'s call. The offsets of the
/// results.
///
/// # Safety
///
/// `off` must be a live block of each heap, allocated with `layout`.
unsafe fn realloc_both(
    (ra, quick): (&Aligned, &LockedHeap),
    (rb, full): (&Aligned, &LockedHeap),
    off: usize,
    layout: Layout,
    new_size: usize,
    without: bool,
) -> (Option<usize>, Option<usize>) {
    // SAFETY: the caller's promise.
    unsafe {
        let b = NonNull::new_unchecked(rb.ptr.add(off));
        let (a, b) = if without {
            (
                quick.realloc_unsized(ra.ptr.add(off), new_size),
                full.with(|h| h.reallocate_unsized(b, new_size)),
            )
        } else {
            (
                quick.realloc(ra.ptr.add(off), layout, new_size),
                full.with(|h| h.reallocate(b, layout, new_size)),
            )
        };
        (ra.offset(a), rb.offset(b.map_or(std::ptr::null_mut(), NonNull::as_ptr)))
    }
}

/// Replays one random program on two heaps of `region` bytes: `quick`
/// through `GlobalAlloc` and the unsized calls of C (its quick paths serve
/// what they can) and `full` through `Heap`'s calls under its lock (never a
/// quick path), checking that every block lands at the same offset.
fn replay(region: usize, seed: u64, steps: usize, unsized_calls: bool) {
    let (ra, rb) = (Aligned::new(region), Aligned::new(region));
    let (quick, full) = (ra.heap(), rb.heap());
    let mut rng = Rng(seed);
    // (offset, layout, tag) of each live block.
    let mut live: Vec<(usize, Layout, u64)> = Vec::new();
    // `Heap`'s calls return failures; `GlobalAlloc` counts them.
    let mut failures = 0;
    for step in 0..steps {
        let choice = rng.below(10);
        if live.is_empty() || choice < 4 {
            let layout = Layout::from_size_align(size(&mut rng), align(&mut rng)).unwrap();
            // SAFETY: a non-zero size.
            let a = ra.offset(unsafe { quick.alloc(layout) });
            let b =
                rb.offset(full.with(|h| h.allocate(layout)).map_or(std::ptr::null_mut(), NonNull::as_ptr));
            assert_eq!(a, b, "step {step}: alloc {layout:?} placed differently");
            failures += usize::from(b.is_none());
            if let Some(off) = a {
                // SAFETY: a fresh block of `layout`.
                unsafe { fill(ra.ptr.add(off), layout.size(), step as u64) };
                live.push((off, layout, step as u64));
            }
        } else if choice < 7 {
            let (off, layout, tag) = live.swap_remove(rng.below(live.len() as u64) as usize);
            // SAFETY: live blocks of each heap with their layout (or
            // without one: C's `free`).
            unsafe {
                assert!(holds(ra.ptr.add(off), layout.size(), tag), "step {step}: contents lost");
                let b = NonNull::new_unchecked(rb.ptr.add(off));
                if unsized_only(layout) || (unsized_calls && rng.below(2) == 0) {
                    quick.dealloc_unsized(ra.ptr.add(off));
                    full.with(|h| h.deallocate_unsized(b)).unwrap();
                } else {
                    quick.dealloc(ra.ptr.add(off), layout);
                    full.with(|h| h.deallocate(b, layout)).unwrap();
                }
            }
        } else {
            let i = rng.below(live.len() as u64) as usize;
            let (off, layout, tag) = live[i];
            let new_size = size(&mut rng);
            let without = unsized_only(layout) || (unsized_calls && rng.below(4) == 0);
            // SAFETY: live blocks of each heap with their layout.
            let (a, b) = unsafe { realloc_both((&ra, &quick), (&rb, &full), off, layout, new_size, without) };
            assert_eq!(a, b, "step {step}: realloc of {layout:?} to {new_size} placed differently");
            failures += usize::from(b.is_none());
            if let Some(new) = a {
                let kept = layout.size().min(new_size);
                // SAFETY: the block, live at its new offset.
                unsafe { assert!(holds(ra.ptr.add(new), kept, tag), "step {step}: realloc lost contents") };
                // A block reallocated without its layout has the alignment
                // `malloc` promises, no more: it is freed without one too.
                let align = if without { UNSIZED } else { layout.align() };
                let layout = Layout::from_size_align(new_size, align).unwrap();
                // SAFETY: as above, `new_size` long.
                unsafe { fill(ra.ptr.add(new), new_size, tag) };
                live[i] = (new, layout, tag);
            }
        }
    }
    quick.with(|h| h.check_invariants());
    full.with(|h| h.check_invariants());
    let counted = |heap: &LockedHeap| {
        let mut stats = heap.stats();
        stats.front.failed_allocations = 0;
        (heap.stats().front.failed_allocations, stats)
    };
    assert_eq!(counted(&quick), (failures, counted(&full).1), "the counters differ");
    for (off, layout, _) in live {
        // SAFETY: live blocks with their layout.
        unsafe {
            let b = NonNull::new_unchecked(rb.ptr.add(off));
            if unsized_only(layout) {
                quick.dealloc_unsized(ra.ptr.add(off));
                full.with(|h| h.deallocate_unsized(b)).unwrap();
            } else {
                quick.dealloc(ra.ptr.add(off), layout);
                full.with(|h| h.deallocate(b, layout)).unwrap();
            }
        }
    }
    assert_eq!(counted(&quick), (failures, counted(&full).1), "the counters differ once all is freed");
    drop((quick, full));
}

#[test]
fn quick_paths_place_blocks_as_the_full_path_does() {
    for seed in 1..=if cfg!(miri) { 1 } else { 4 } {
        replay(32 << 20, seed, if cfg!(miri) { 40 } else { 20_000 }, true);
    }
}

/// Under 16 MiB first fit serves layer 0: its quick calls decline every
/// block, and the heap behaves as before. (Its blocks keep no size, so C's
/// calls without one are not made.)
#[test]
fn first_fit_heaps_take_the_full_path_alike() {
    replay(4 << 20, 7, if cfg!(miri) { 40 } else { 10_000 }, false);
}

/// A heap near exhaustion: the quick calls decline what only the full
/// path's last resorts serve, and failures come at the same step.
#[test]
fn an_exhausted_heap_fails_alike() {
    replay(17 << 20, 11, if cfg!(miri) { 40 } else { 20_000 }, true);
}

/// Buffers doubling from 8 bytes to 1 MiB (a `Vec` growing), three at a
/// time among other blocks, with and without their layout: on the
/// doubling that promotes such a buffer the quick path leaves it to the
/// full path, and past it it resizes the buffer in place or backward where
/// the full path would, leaving its moves (to layer 0's largest free
/// chunk) to it.
#[test]
fn growing_buffers_are_placed_as_the_full_path_places_them() {
    const TOP: usize = if cfg!(miri) { 64 << 10 } else { 1 << 20 };
    let (ra, rb) = (Aligned::new(64 << 20), Aligned::new(64 << 20));
    let (quick, full) = (ra.heap(), rb.heap());
    let mut rng = Rng(5);
    // (offset, layout, tag): the buffers growing, and other blocks.
    let mut buffers: Vec<(usize, Layout, u64)> = Vec::new();
    let mut others: Vec<(usize, Layout, u64)> = Vec::new();
    let (mut grown, mut backward) = (0, 0);
    for step in 0..if cfg!(miri) { 300 } else { 6_000 } {
        let choice = rng.below(8);
        if buffers.len() < 3 || choice < 3 {
            if buffers.len() < 3 {
                let layout = Layout::from_size_align(8, 8).unwrap();
                // SAFETY: a non-zero size.
                let a = ra.offset(unsafe { quick.alloc(layout) }).unwrap();
                let b = rb.offset(full.with(|h| h.allocate(layout)).unwrap().as_ptr());
                assert_eq!(Some(a), b, "step {step}: a new buffer placed differently");
                // SAFETY: a fresh block of `layout`.
                unsafe { fill(ra.ptr.add(a), 8, step as u64) };
                buffers.push((a, layout, step as u64));
                continue;
            }
            let i = rng.below(buffers.len() as u64) as usize;
            let (off, layout, tag) = buffers[i];
            let new_size = layout.size() * 2;
            let without = unsized_only(layout) || rng.below(4) == 0;
            // SAFETY: live blocks of each heap with their layout.
            let (a, b) = unsafe { realloc_both((&ra, &quick), (&rb, &full), off, layout, new_size, without) };
            let a = a.expect("a buffer's growth failed");
            assert_eq!(
                Some(a),
                b,
                "step {step}: buffer of {layout:?} grown to {new_size} placed differently"
            );
            grown += usize::from(a == off);
            backward += usize::from(a < off && off - a < new_size);
            // SAFETY: the block, live at its new offset, `new_size` long.
            unsafe {
                assert!(
                    holds(ra.ptr.add(a), layout.size(), tag),
                    "step {step}: the buffer lost its contents"
                );
                fill(ra.ptr.add(a), new_size, tag);
            }
            // (Freed and grown without a layout from then on, as C does.)
            let layout = Layout::from_size_align(new_size, if without { UNSIZED } else { 8 }).unwrap();
            buffers[i] = (a, layout, tag);
            if new_size >= TOP {
                let (off, ..) = buffers.swap_remove(i);
                // SAFETY: live blocks of each heap.
                unsafe {
                    quick.dealloc_unsized(ra.ptr.add(off));
                    full.with(|h| h.deallocate_unsized(NonNull::new_unchecked(rb.ptr.add(off)))).unwrap();
                }
            }
        } else if choice < 6 || others.is_empty() {
            let layout = Layout::from_size_align(size(&mut rng), 16).unwrap();
            // SAFETY: a non-zero size.
            let a = ra.offset(unsafe { quick.alloc(layout) }).unwrap();
            let b = rb.offset(full.with(|h| h.allocate(layout)).unwrap().as_ptr());
            assert_eq!(Some(a), b, "step {step}: alloc {layout:?} placed differently");
            others.push((a, layout, step as u64));
        } else {
            let (off, layout, _) = others.swap_remove(rng.below(others.len() as u64) as usize);
            // SAFETY: live blocks of each heap with their layout.
            unsafe {
                quick.dealloc(ra.ptr.add(off), layout);
                full.with(|h| h.deallocate(NonNull::new_unchecked(rb.ptr.add(off)), layout)).unwrap();
            }
        }
    }
    quick.with(|h| h.check_invariants());
    full.with(|h| h.check_invariants());
    assert_eq!(quick.stats(), full.stats(), "the counters differ");
    // Past their promotion the buffers grew in place and backward both (a
    // few steps under Miri: in place).
    let enough = if cfg!(miri) { grown > 0 } else { grown > 100 && backward > 0 };
    assert!(enough, "in place {grown}, backward {backward}: not the case tested");
}

/// Every misuse the full path refuses with a layout past the small sizes
/// (served by layer 0's quick calls when used correctly) is refused,
/// counted, and leaves the heap whole.
#[test]
fn quick_paths_refuse_what_the_full_path_refuses() {
    let region = Aligned::new(32 << 20);
    let heap = region.heap();
    let layout = Layout::from_size_align(4096, 16).unwrap();
    let mut refused = 0;
    let mut check = |heap: &LockedHeap, what: &str| {
        refused += 1;
        assert_eq!(heap.stats().front.refused_frees, refused, "{what} was not refused");
        heap.with(|h| h.check_invariants());
    };
    // SAFETY (all below): misuse the heap must refuse, on pointers whose
    // memory is ours (the region, or a live block of the test).
    unsafe {
        let keep = heap.alloc(layout);
        let p = heap.alloc(layout);
        let after = heap.alloc(layout);
        assert!(!keep.is_null() && !p.is_null() && !after.is_null());
        // A wrong size, larger and smaller: the block stays live.
        heap.dealloc(p, Layout::from_size_align(20_000, 16).unwrap());
        check(&heap, "a free with too large a size");
        heap.dealloc(p, Layout::from_size_align(1024, 16).unwrap());
        check(&heap, "a free with too small a size");
        // Interior pointers.
        heap.dealloc(p.add(16), Layout::from_size_align(1024, 16).unwrap());
        check(&heap, "a free of an interior pointer");
        assert!(heap.realloc(p.add(64), Layout::from_size_align(1024, 16).unwrap(), 8192).is_null());
        check(&heap, "a realloc of an interior pointer");
        // A foreign pointer.
        let mut foreign = vec![0u8; 8192];
        heap.dealloc(foreign.as_mut_ptr().add(16), layout);
        check(&heap, "a foreign free");
        assert!(heap.realloc(foreign.as_mut_ptr().add(16), layout, 10_000).is_null());
        check(&heap, "a foreign realloc");
        // The block is intact, then freed twice.
        std::ptr::write_bytes(p, 0xa5, 4096);
        let q = heap.realloc(p, layout, 6000);
        assert!(!q.is_null());
        assert!(std::slice::from_raw_parts(q, 4096).iter().all(|&b| b == 0xa5));
        let layout = Layout::from_size_align(6000, 16).unwrap();
        heap.dealloc(q, layout);
        heap.dealloc(q, layout);
        check(&heap, "a double free");
        assert!(heap.realloc(q, layout, 9000).is_null());
        check(&heap, "a realloc of a freed block");
        // A freed +2 block, reallocated past the small sizes.
        let small = Layout::from_size_align(64, 8).unwrap();
        let s = heap.alloc(small);
        let s2 = heap.alloc(small);
        heap.dealloc(s, small);
        assert!(heap.realloc(s, small, 4096).is_null());
        check(&heap, "a realloc of a freed small block");
        assert!(heap.realloc_unsized(s, 4096).is_null());
        check(&heap, "an unsized realloc of a freed small block");
        heap.dealloc(s2, small);
        // C's calls, without a layout.
        let u = heap.alloc(Layout::from_size_align(8192, 16).unwrap());
        assert!(!u.is_null());
        heap.dealloc_unsized(u.add(32));
        check(&heap, "an unsized free of an interior pointer");
        assert!(heap.realloc_unsized(u.add(32), 10_000).is_null());
        check(&heap, "an unsized realloc of an interior pointer");
        heap.dealloc_unsized(u);
        heap.dealloc_unsized(u);
        check(&heap, "an unsized double free");
        assert!(heap.realloc_unsized(u, 10_000).is_null());
        check(&heap, "an unsized realloc of a freed block");
        heap.dealloc(keep, Layout::from_size_align(4096, 16).unwrap());
        heap.dealloc(after, Layout::from_size_align(4096, 16).unwrap());
    }
    heap.with(|h| h.check_invariants());
}

/// A block grown backward into the free chunk before it leaves its old
/// address behind: a free or realloc of the old pointer is refused (its
/// header went out of use as it moved), on the quick path and the full.
#[test]
fn the_old_pointer_of_a_block_grown_backward_is_refused() {
    let l = |size| Layout::from_size_align(size, 16).unwrap();
    for quick in [true, false] {
        let region = Aligned::new(32 << 20);
        let heap = region.heap();
        // SAFETY (all below): blocks of this heap with their layouts, the
        // misuse being the point (refused before anything is read past
        // the heap's own headers).
        unsafe {
            // (`a` is too long for a deferred list: its free merges at once,
            // and leaves the free chunk the block grows back into.)
            let (a, b, n, c) =
                (heap.alloc(l(20000)), heap.alloc(l(600)), heap.alloc(l(600)), heap.alloc(l(4000)));
            assert!(!a.is_null() && !b.is_null() && !n.is_null() && !c.is_null());
            std::ptr::write_bytes(b, 0x5a, 600);
            heap.dealloc(a, l(20000));
            heap.dealloc(n, l(600));
            let grown = if quick {
                heap.realloc(b, l(600), 1300)
            } else {
                heap.with(|h| h.reallocate(NonNull::new_unchecked(b), l(600), 1300)).unwrap().as_ptr()
            };
            assert!(grown < b, "the block was to grow backward");
            assert!(std::slice::from_raw_parts(grown, 600).iter().all(|&x| x == 0x5a));
            if quick {
                assert!(heap.realloc(b, l(600), 700).is_null(), "a realloc of the old pointer was served");
                heap.dealloc(b, l(600));
            } else {
                assert!(heap.with(|h| h.reallocate(NonNull::new_unchecked(b), l(600), 700)).is_err());
                assert!(heap.with(|h| h.deallocate(NonNull::new_unchecked(b), l(600))).is_err());
            }
            if quick {
                assert_eq!(heap.stats().front.refused_frees, 2, "the old pointer was not refused");
            }
            heap.with(|h| h.check_invariants());
            // Nothing handed out over the grown block.
            let d = heap.alloc(l(3000));
            assert!(d.is_null() || d >= grown.add(1300) || d.add(3000) <= grown);
            assert!(std::slice::from_raw_parts(grown, 600).iter().all(|&x| x == 0x5a));
            heap.dealloc(grown, l(1300));
            heap.dealloc(c, l(4000));
            if !d.is_null() {
                heap.dealloc(d, l(3000));
            }
            heap.with(|h| h.check_invariants());
        }
    }
}

/// A small block reallocated with a layout larger than the block is
/// refused, with the thread caches off (quick and full paths) and on: the
/// move would copy past the block, into its neighbours.
#[test]
fn a_small_block_reallocated_with_a_larger_layout_is_refused() {
    let small = Layout::from_size_align(64, 16).unwrap();
    // (Thread caches come with `std`.)
    let modes: &[bool] = if cfg!(feature = "std") { &[false, true] } else { &[false] };
    for &caches in modes {
        for new_size in [200, 4096] {
            let region = Aligned::new(32 << 20);
            let heap = region.heap();
            #[cfg(feature = "std")]
            heap.set_thread_caches(caches);
            // SAFETY: blocks of this heap; the wrong layout is the misuse.
            unsafe {
                let v: Vec<*mut u8> = (0..300).map(|_| heap.alloc(small)).collect();
                assert!(v.iter().all(|p| !p.is_null()));
                let p = v[200];
                let before = heap.stats().front.refused_frees;
                let q = heap.realloc(p, Layout::from_size_align(256, 16).unwrap(), new_size);
                assert!(q.is_null(), "caches {caches}, to {new_size}: a realloc past the block was served");
                assert_eq!(heap.stats().front.refused_frees, before + 1, "caches {caches}: not counted");
                for p in v {
                    heap.dealloc(p, small);
                }
            }
            heap.with(|h| h.check_invariants());
        }
    }
}
