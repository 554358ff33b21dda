//! The firmware's mixed workload on a 64 KiB region on the host: where the
//! memory is when strata first fails, and how far linked_list_allocator gets.
use std::alloc::Layout;
use std::ptr::NonNull;

use strata::Heap;
use strata::source::PageSource;
use strata_bench::Region;

fn run(
    seed: u32,
    alloc: &mut dyn FnMut(Layout) -> Option<NonNull<u8>>,
    dealloc: &mut dyn FnMut(NonNull<u8>, Layout),
) -> (u32, usize, Layout) {
    let mut live: Vec<(NonNull<u8>, Layout)> = Vec::new();
    let mut x = seed;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let (mut ops, mut bytes) = (0, 0);
    loop {
        if !live.is_empty() && (next() % 3 == 0 || live.len() == 1024) {
            let i = next() as usize % live.len();
            let (p, l) = live.swap_remove(i);
            dealloc(p, l);
            bytes -= l.size();
            continue;
        }
        let size = match next() % 20 {
            0..=9 => 4 + next() % 61,
            10..=15 => 65 + next() % 192,
            16..=18 => 257 + next() % 768,
            _ => 1025 + next() % 3072,
        } as usize;
        let layout = Layout::from_size_align(size, if next() % 2 == 0 { 4 } else { 8 }).unwrap();
        match alloc(layout) {
            Some(p) => {
                live.push((p, layout));
                ops += 1;
                bytes += size;
            }
            None => return (ops, bytes, layout),
        }
    }
}

fn main() {
    let region = Region::new(64 << 10);
    // SAFETY: the region outlives the heap.
    let heap =
        std::cell::RefCell::new(Heap::new(unsafe { strata::RegionSource::new(region.ptr(), region.size()) }));
    let (ops, live, failed) =
        run(0x2545_f491, &mut |l| heap.borrow_mut().allocate(l).ok(), &mut |p, l| unsafe {
            heap.borrow_mut().deallocate(p, l).unwrap()
        });
    let h = heap.borrow();
    let s = h.stats();
    println!("strata: {ops} allocations, {live} B live, failed on {failed:?}");
    println!("  window {} B, source out {} B", h.source().window().1, h.source().bytes_out());
    println!("  segments {:?}", s.segments);
    println!("  arenas {:?} geometry {:?}", s.arenas, s.geometry);
    for c in h.class_stats().iter().filter(|c| c.pools > 0) {
        println!(
            "  class {} B: {} pools, {} in use, {} free",
            c.block_size, c.pools, c.blocks_in_use, c.blocks_free
        );
    }
    let region2 = Region::new(64 << 10);
    let mut lla = linked_list_allocator::Heap::empty();
    // SAFETY: the region outlives the heap.
    unsafe { lla.init(region2.ptr(), region2.size()) };
    let lla = std::cell::RefCell::new(lla);
    let (ops, live, failed) =
        run(0x2545_f491, &mut |l| lla.borrow_mut().allocate_first_fit(l).ok(), &mut |p, l| unsafe {
            lla.borrow_mut().deallocate(p, l)
        });
    println!(
        "linked_list_allocator: {ops} allocations, {live} B live, failed on {failed:?}, free {}",
        lla.borrow().free()
    );
    let (mut st, mut ll) = (0, 0);
    for seed in 1..=16u32 {
        let seed = seed.wrapping_mul(0x9e37_79b9);
        let r = Region::new(64 << 10);
        // SAFETY: the region outlives the heap.
        let h = std::cell::RefCell::new(Heap::new(unsafe { strata::RegionSource::new(r.ptr(), r.size()) }));
        let (a, _, _) = run(seed, &mut |l| h.borrow_mut().allocate(l).ok(), &mut |p, l| unsafe {
            h.borrow_mut().deallocate(p, l).unwrap()
        });
        let r2 = Region::new(64 << 10);
        let mut l2 = linked_list_allocator::Heap::empty();
        // SAFETY: as above.
        unsafe { l2.init(r2.ptr(), r2.size()) };
        let l2 = std::cell::RefCell::new(l2);
        let (b, _, _) = run(seed, &mut |l| l2.borrow_mut().allocate_first_fit(l).ok(), &mut |p, l| unsafe {
            l2.borrow_mut().deallocate(p, l)
        });
        println!("seed {seed:#010x}: strata {a}, linked_list_allocator {b}");
        st += a;
        ll += b;
    }
    println!("16 seeds: strata {st}, linked_list_allocator {ll}");
}
