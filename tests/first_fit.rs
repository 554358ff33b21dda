//! Layer 0's first fit by address (`segment/fit_tree.rs`), which serves
//! committed heaps under 16 MiB: misuse it refuses, the tree's balance,
//! slivers (free 8-byte units) made and taken back, aligned placement.

mod common;

use std::alloc::Layout;
use std::ptr::NonNull;

use common::Region;
use strata::Heap;
use strata::segment::{Config, DeallocateError, SegmentAllocator};
use strata::source::{PageSource, RegionSource};

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

/// Layer 0 alone over `region`, tuned for its size (first fit under
/// 16 MiB), with its page source.
fn layer_0(region: &Region) -> (RegionSource, SegmentAllocator) {
    let src = region.source();
    let window = src.window();
    let seg = SegmentAllocator::new(Config::for_window(window.1), window).unwrap();
    assert!(Config::for_window(window.1).first_fit);
    (src, seg)
}

/// First fit keeps no header, so a size that does not fit is seen only
/// where it overlaps a free block; what it does see it refuses with the
/// same typed errors, and changes nothing.
#[test]
fn layer_0_first_fit_refuses_foreign_double_and_overlapping_frees() {
    let region = Region::new(4 << 20);
    let (mut src, mut seg) = layer_0(&region);
    // SAFETY: `src` is this layer's one page source.
    let p = unsafe { seg.allocate(layout(1000, 8), &mut src) }.unwrap();
    // SAFETY: as above.
    let q = unsafe { seg.allocate(layout(3000, 16), &mut src) }.unwrap();
    // SAFETY: as above.
    let r = unsafe { seg.allocate(layout(64, 8), &mut src) }.unwrap();
    assert!(seg.stats().first_fit);
    let mut local = 0u64;
    let foreign = NonNull::from(&mut local).cast::<u8>();
    // SAFETY: each call is one the allocator must refuse without touching a
    // block: a pointer outside its window, a misaligned one, a free
    // overlapping a free block, a second free.
    unsafe {
        let r0 = seg.deallocate(foreign, layout(8, 8), &mut src);
        assert_eq!(r0, Err(DeallocateError::NotOwned { ptr: foreign.as_ptr() as usize }));
        let odd = NonNull::new(q.as_ptr().add(3)).unwrap();
        assert_eq!(
            seg.deallocate(odd, layout(8, 1), &mut src),
            Err(DeallocateError::NotAllocated { ptr: odd.as_ptr() as usize })
        );
        let past_end = NonNull::new(q.as_ptr().add(8)).unwrap();
        assert!(seg.deallocate(past_end, layout(8, 16), &mut src).is_err(), "misaligned for its layout");
        seg.deallocate(q, layout(3000, 16), &mut src).unwrap();
        let before = seg.stats();
        for (ptr, size) in [(q, 3000), (q, 8), (NonNull::new(q.as_ptr().add(1024)).unwrap(), 100), (p, 1100)]
        {
            let r1 = seg.deallocate(ptr, layout(size, 8), &mut src);
            assert_eq!(r1, Err(DeallocateError::NotAllocated { ptr: ptr.as_ptr() as usize }), "{size}");
            assert!(!seg.resize_in_place(ptr, layout(size, 8), size * 2, &mut src).unwrap_or(false));
        }
        assert_eq!(seg.stats(), before, "a refused free changed the heap");
        seg.check_invariants();
        seg.deallocate(p, layout(1000, 8), &mut src).unwrap();
        seg.deallocate(r, layout(64, 8), &mut src).unwrap();
        assert_eq!(
            seg.deallocate(r, layout(64, 8), &mut src),
            Err(DeallocateError::NotAllocated { ptr: r.as_ptr() as usize })
        );
    }
    seg.check_invariants();
    let s = seg.stats();
    assert_eq!((s.allocated_bytes, s.free_chunks, s.largest_free), (0, 1, s.span_bytes), "{s:?}");
}

/// The first-fit tree stays balanced whatever order blocks are freed in:
/// every other block of a full heap freed from the bottom up, then the rest
/// from the top down (a tree ordered by address with no balancing would
/// be a list after either), and a reversed, interleaved order. Its height
/// stays within AVL's bound.
#[test]
fn the_first_fit_tree_stays_shallow_in_any_order_of_frees() {
    let region = Region::new(if cfg!(miri) { 64 << 10 } else { 4 << 20 });
    let (mut src, mut seg) = layer_0(&region);
    let l = layout(16, 8);
    let mut blocks = Vec::new();
    // SAFETY: `src` is this layer's one page source.
    while let Ok(p) = unsafe { seg.allocate(l, &mut src) } {
        blocks.push(p);
    }
    assert_eq!(blocks.len(), src.window().1 / 16, "every 16 bytes of the window handed out");
    assert!(blocks.windows(2).all(|w| w[0] < w[1]), "first fit hands out the window in order");
    // An AVL tree of n nodes is under 1.4405·log2(n + 2) high.
    let bound = |holes: usize| (1.4405 * ((holes + 2) as f64).log2()) as usize;
    for order in 0..3 {
        let (first, second): (Vec<_>, Vec<_>) = match order {
            0 => (blocks.iter().step_by(2).collect(), blocks.iter().skip(1).step_by(2).rev().collect()),
            1 => (blocks.iter().rev().step_by(2).collect(), blocks.iter().rev().skip(1).step_by(2).collect()),
            _ => (
                blocks.iter().step_by(3).rev().collect(),
                blocks.iter().enumerate().filter(|(i, _)| i % 3 != 0).map(|(_, p)| p).collect(),
            ),
        };
        for &&p in &first {
            // SAFETY: a live block with its layout.
            unsafe { seg.deallocate(p, l, &mut src) }.unwrap();
        }
        let holes = seg.stats().free_chunks;
        assert_eq!(holes, first.len(), "order {order}: freed blocks apart stay apart");
        let depth = seg.first_fit_depth().unwrap();
        assert!(depth <= bound(holes), "order {order}: depth {depth} for {holes} holes");
        for &&p in &second {
            // SAFETY: as above.
            unsafe { seg.deallocate(p, l, &mut src) }.unwrap();
        }
        seg.check_invariants();
        assert_eq!(seg.stats().free_chunks, 1, "order {order}: all merged");
        for p in blocks.iter_mut() {
            // SAFETY: `src` is this layer's one page source.
            *p = unsafe { seg.allocate(l, &mut src) }.unwrap();
        }
    }
}

/// A first-fit block that shrinks by 8 bytes with no free neighbour
/// leaves a free unit too small for a free block: it becomes a sliver, so
/// the shrink succeeds in place even on a full heap, and the unit comes
/// back when its neighbours are freed (found by a hostile pass: it used to
/// fail with out-of-memory).
#[test]
fn a_first_fit_shrink_by_one_unit_succeeds_on_a_full_heap_and_loses_nothing() {
    for (size, new) in [(24, 16), (40, 32), (41, 40), (24, 17)] {
        let region = Region::new(64 << 10);
        let mut heap = Heap::new(region.source());
        let l = layout(size, 8);
        let mut blocks = Vec::new();
        while let Ok(p) = heap.allocate(l) {
            // SAFETY: a fresh block of `size` bytes.
            unsafe { p.as_ptr().write_bytes(blocks.len() as u8, size) };
            blocks.push(p);
        }
        assert!(heap.stats().segments.first_fit);
        let mut shrunk = Vec::new();
        for (i, p) in blocks.iter_mut().enumerate().skip(1).step_by(7) {
            // SAFETY: a live block with its layout.
            let q =
                unsafe { heap.reallocate(*p, l, new) }.unwrap_or_else(|e| panic!("{size} -> {new}: {e:?}"));
            assert_eq!(q, *p, "{size} -> {new}: moved on a full heap");
            // SAFETY: the block now holds `new` bytes.
            assert!(unsafe { std::slice::from_raw_parts(q.as_ptr(), new) }.iter().all(|&b| b == i as u8));
            shrunk.push(i);
        }
        heap.check_invariants();
        for (i, p) in blocks.into_iter().enumerate() {
            let s = if shrunk.contains(&i) { new } else { size };
            // SAFETY: a live block with its (possibly new) size.
            unsafe { heap.deallocate(p, layout(s, 8)) }.unwrap();
        }
        heap.check_invariants();
        let s = heap.stats().segments;
        assert_eq!((s.allocated_bytes, s.free_chunks, s.largest_free), (0, 1, s.span_bytes), "{size}: {s:?}");
    }
}

/// First fit finds an aligned place wherever one exists: a free block
/// just long enough and already aligned serves a request aligned to 32 or
/// more although the leftmost block long enough cannot align it (found by
/// a hostile pass: such requests failed).
#[test]
fn a_first_fit_aligned_request_takes_any_free_block_it_fits() {
    for align in [32, 64, 128] {
        let region = Region::new(64 << 10);
        let mut heap = Heap::new(region.source());
        let l = layout(24, 8);
        let mut blocks = Vec::new();
        while let Ok(p) = heap.allocate(l) {
            blocks.push(p);
        }
        // A 24-byte hole that a 16-byte block aligned to `align` does not
        // fit (it would start two units or more in), then an aligned one.
        let off = |i: usize| blocks[i].as_ptr().addr() % align;
        let misaligned = (0..blocks.len()).find(|&i| off(i) != 0 && off(i) != align - 8).unwrap();
        let aligned = (misaligned + 2..blocks.len()).find(|&i| off(i) == 0).unwrap();
        for i in [misaligned, aligned] {
            // SAFETY: a live block with its layout.
            unsafe { heap.deallocate(blocks[i], l) }.unwrap();
        }
        let p = heap.allocate(layout(16, align)).unwrap_or_else(|e| panic!("align {align}: {e:?}"));
        assert_eq!(p, blocks[aligned], "align {align}");
        heap.check_invariants();
    }
}

/// An alignment past any window's size (2^35 bytes and more) is served
/// where a free block starts on it (found by a hostile pass: such requests
/// failed before the search for any fitting block). The window is mapped
/// at the first free multiple of 2^35 tried (64-bit targets: a 32-bit
/// address space has none).
#[test]
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
#[cfg_attr(miri, ignore = "maps memory at a fixed address through libc, which Miri does not run")]
fn a_first_fit_alignment_past_every_window_is_served_where_a_block_starts_on_it() {
    const LEN: usize = 64 << 10;
    let base = (35..46)
        .map(|shift| 1usize << shift)
        .find_map(|addr| {
            // SAFETY: a fresh anonymous mapping at an address nothing else
            // holds (MAP_FIXED_NOREPLACE fails rather than replace one).
            let p = unsafe {
                libc::mmap(
                    std::ptr::without_provenance_mut(addr),
                    LEN,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                    -1,
                    0,
                )
            };
            (p as usize == addr).then_some(p.cast::<u8>())
        })
        .expect("a free 2^35-aligned address below 2^46");
    // SAFETY: the mapping is ours until the munmap below.
    let mut src = unsafe { strata::RegionSource::new(base, LEN) };
    let window = src.window();
    let mut seg = SegmentAllocator::new(Config::for_window(window.1), window).unwrap();
    // SAFETY: `src` is this layer's one page source.
    unsafe {
        let x = seg.allocate(layout(24, 8), &mut src).unwrap();
        assert_eq!(x.as_ptr(), base);
        let rest = seg.stats().largest_free;
        let y = seg.allocate(layout(rest, 8), &mut src).unwrap();
        seg.deallocate(x, layout(24, 8), &mut src).unwrap();
        let align = 1 << base.addr().trailing_zeros();
        let p =
            seg.allocate(layout(16, align), &mut src).unwrap_or_else(|e| panic!("align {align:#x}: {e:?}"));
        assert_eq!(p.as_ptr(), base);
        seg.check_invariants();
        seg.deallocate(p, layout(16, align), &mut src).unwrap();
        seg.deallocate(y, layout(rest, 8), &mut src).unwrap();
        assert_eq!(seg.stats().free_chunks, 1);
        libc::munmap(base.cast(), LEN);
    }
}

/// A block grows backwards into a sliver before it, moving its contents,
/// and forwards into a sliver after it, in place (found by a hostile pass:
/// the first did not).
#[test]
fn a_first_fit_block_grows_into_the_slivers_around_it() {
    let region = Region::new(64 << 10);
    let mut heap = Heap::new(region.source());
    let [a, b, c] = [24, 32, 24].map(|size| heap.allocate(layout(size, 8)).unwrap());
    let rest = heap.stats().segments.largest_free;
    let fence = heap.allocate(layout(rest, 8)).unwrap();
    // SAFETY: live blocks with their layouts. On the full heap, `a` and `c`
    // shrink by 8 bytes in place and leave a sliver after each.
    unsafe {
        assert_eq!(heap.reallocate(a, layout(24, 8), 16).unwrap(), a);
        assert_eq!(heap.reallocate(c, layout(24, 8), 16).unwrap(), c);
        assert_eq!(heap.stats().segments.free_chunks, 2, "two slivers");
        b.as_ptr().write_bytes(0xb0, 32);
        let q = heap.reallocate(b, layout(32, 8), 40).expect("b into the sliver before it");
        assert_eq!(q.as_ptr(), b.as_ptr().sub(8), "moved back onto the sliver");
        assert!(std::slice::from_raw_parts(q.as_ptr(), 32).iter().all(|&x| x == 0xb0));
        assert_eq!(heap.reallocate(c, layout(16, 8), 24).expect("c into the sliver after it"), c);
        assert_eq!(heap.stats().segments.free_chunks, 0);
        heap.check_invariants();
        for (p, l) in [(a, layout(16, 8)), (q, layout(40, 8)), (c, layout(24, 8)), (fence, layout(rest, 8))] {
            heap.deallocate(p, l).unwrap();
        }
    }
    let s = heap.stats().segments;
    assert_eq!((s.allocated_bytes, s.free_chunks), (0, 1), "{s:?}");
}

/// Blocks aligned to 16 whose size is an odd number of 8-byte units pack
/// with an 8-byte sliver between them, not a 24-byte gap.
#[test]
fn first_fit_blocks_aligned_above_their_rounding_pack_with_slivers() {
    let region = Region::new(64 << 10);
    let mut heap = Heap::new(region.source());
    let l = layout(40, 16);
    let mut blocks = Vec::new();
    while let Ok(p) = heap.allocate(l) {
        assert!(p.as_ptr().cast::<u128>().is_aligned());
        blocks.push(p);
    }
    assert!(blocks.len() >= (64 << 10) / 48 - 1, "{} blocks of 40 bytes aligned to 16", blocks.len());
    heap.check_invariants();
    for p in blocks {
        // SAFETY: a live block with its layout.
        unsafe { heap.deallocate(p, l) }.unwrap();
    }
    let s = heap.stats().segments;
    assert_eq!((s.allocated_bytes, s.free_chunks), (0, 1), "{s:?}");
}
