//! Layer +3: typed object caches over a `LockedHeap`.

use std::alloc::Layout;

use strata::{LockedHeap, ObjectCache};

fn heap() -> &'static LockedHeap {
    let heap = Box::leak(Box::new(LockedHeap::empty()));
    heap.init_from_slice(Box::leak(Box::<[u8]>::new_uninit_slice(32 << 20)));
    heap
}

#[derive(Debug, Default, PartialEq)]
struct Task {
    id: u64,
    name: [u64; 5],
    priority: i32,
}

/// Small blocks in use, in layer +2's pools or (for classes not yet worth a
/// pool) in layer 0.
fn blocks_in_use(heap: &LockedHeap) -> usize {
    heap.with(|h| {
        h.class_stats().iter().map(|c| c.blocks_in_use).sum::<usize>() + h.stats().front.small_in_layer_0
    })
}

#[test]
fn freed_objects_are_reused_up_to_the_bound() {
    let heap = heap();
    let cache: ObjectCache<'_, Task, LockedHeap, 4> = ObjectCache::new(heap);
    let boxes: Vec<_> = (0..6).map(|i| cache.boxed(Task { id: i, ..Task::default() }).unwrap()).collect();
    assert_eq!(cache.stats().misses, 6);
    let addrs: Vec<*const Task> = boxes.iter().map(|b| &**b as *const Task).collect();
    assert_eq!(blocks_in_use(heap), 6);
    drop(boxes);
    let s = cache.stats();
    assert_eq!(s.cached, 4, "the free list must stop at its bound");
    assert_eq!(blocks_in_use(heap), 4, "blocks past the bound go back to the heap");
    let again = cache.boxed(Task { id: 99, ..Task::default() }).unwrap();
    assert_eq!(cache.stats().hits, 1);
    assert!(addrs.contains(&(&*again as *const Task)), "a hit must reuse a cached block");
    assert_eq!(again.id, 99);
    drop(again);
    cache.clear();
    assert_eq!(cache.stats().cached, 0);
    assert_eq!(blocks_in_use(heap), 0, "clear must return every block to the heap");
}

#[test]
fn the_constructor_builds_values_and_drop_runs() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static DROPS: AtomicUsize = AtomicUsize::new(0);
    struct Counted(u32);
    impl Drop for Counted {
        fn drop(&mut self) {
            DROPS.fetch_add(1, Ordering::SeqCst);
        }
    }
    let heap = heap();
    let cache = ObjectCache::<Counted, _>::with_constructor(heap, || Counted(7));
    let a = cache.make().unwrap();
    assert_eq!(a.0, 7);
    drop(a);
    assert_eq!(DROPS.load(Ordering::SeqCst), 1);
    let plain = ObjectCache::<Counted, _>::new(heap);
    assert_eq!(plain.make().err(), Some(strata::cache::CacheError::NoConstructor));
    let b = cache.boxed(Counted(3)).unwrap();
    let inner = strata::cache::CachedBox::into_inner(b);
    assert_eq!(inner.0, 3);
    assert_eq!(DROPS.load(Ordering::SeqCst), 1, "into_inner must not drop the value");
}

#[test]
fn the_cache_backs_allocator_api2_box_and_vec() {
    use allocator_api2::boxed::Box as ABox;
    use allocator_api2::vec::Vec as AVec;
    let heap = heap();
    let cache: ObjectCache<'_, Task, LockedHeap, 16> = ObjectCache::new(heap);
    let first = ABox::new_in(Task { id: 1, ..Task::default() }, &cache);
    let p = &*first as *const Task;
    drop(first);
    let second = ABox::new_in(Task { id: 2, ..Task::default() }, &cache);
    assert_eq!(&*second as *const Task, p, "Box through the cache must reuse the freed block");
    assert_eq!(cache.stats().hits, 1);
    // A Vec's buffers larger than one Task pass through to the heap.
    let mut v: AVec<Task, _> = AVec::new_in(&cache);
    for i in 0..100 {
        v.push(Task { id: i, ..Task::default() });
    }
    assert_eq!(v.iter().map(|t| t.id).sum::<u64>(), 4950);
    drop(v);
    drop(second);
    assert_eq!(cache.stats().cached, 1);
    assert_eq!(Layout::new::<Task>().size(), ObjectCache::<Task, LockedHeap>::BLOCK.size());
}

#[test]
fn zero_sized_and_tiny_types_get_link_sized_blocks() {
    let heap = heap();
    let unit = ObjectCache::<(), _>::new(heap);
    let a = unit.boxed(()).unwrap();
    let b = unit.boxed(()).unwrap();
    assert_ne!(&*a as *const (), &*b as *const (), "two live blocks must differ");
    let bytes = ObjectCache::<u8, LockedHeap>::BLOCK;
    assert!(bytes.size() >= std::mem::size_of::<usize>());
}

/// Collections free zero-sized layouts they never allocated, with their own
/// dangling pointers (`allocator_api2`'s `Box` of a zero-sized value, an
/// empty boxed slice), and shrink to zero by allocating the new layout and
/// forgetting it: none of it may reach the free list or take a block.
#[test]
fn zero_sized_layouts_through_allocator_api2_take_no_block() {
    use allocator_api2::boxed::Box as ABox;
    use allocator_api2::vec::Vec as AVec;
    #[repr(align(8))]
    struct Aligned8;
    let heap = heap();
    let cache: ObjectCache<'_, [u64; 4], LockedHeap, 4> = ObjectCache::new(heap);
    drop(ABox::new_in((), &cache));
    drop(ABox::new_in(Aligned8, &cache));
    drop(AVec::<u8, _>::new_in(&cache).into_boxed_slice());
    assert_eq!(cache.stats().cached, 0, "a dangling pointer went on the free list");
    assert_eq!(heap.stats().front.refused_frees, 0, "a dangling pointer went to the heap");
    // A real block then comes from the heap, not from a dangling address.
    let b = cache.boxed([7; 4]).unwrap();
    assert_eq!(*b, [7; 4]);
    drop(b);
    cache.clear();
    let before = blocks_in_use(heap);
    let taken = |s: strata::cache::CacheStats| s.hits + s.misses;
    let taken_before = taken(cache.stats());
    for _ in 0..1000 {
        let mut v: AVec<u8, _> = AVec::new_in(&cache);
        v.push(1);
        v.clear();
        v.shrink_to_fit();
        assert_eq!(v.capacity(), 0);
    }
    cache.clear();
    assert_eq!(blocks_in_use(heap), before, "shrinking to zero lost blocks");
    assert_eq!(taken(cache.stats()) - taken_before, 1000, "one block per round, for its one byte");
}
