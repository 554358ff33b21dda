//! Per-thread caches in front of a [`LockedHeap`](super::LockedHeap)'s lock
//! (feature `std`; inactive with `debug`): glibc's tcache for strata.
//!
//! A thread that frees a small block (one layer +2's classes serve: at most
//! the heap's small-request threshold, aligned to at most 16) keeps it in a
//! bin of its own for that size class, up to [`DEPTH`] blocks per class;
//! its next request of that class takes it back without the heap lock.
//! Blocks in a thread's bins stay allocated as far as the heap knows. They
//! go back through the lock when the thread exits, when the bin is full, and
//! when the thread calls [`LockedHeap::trim`](super::LockedHeap::trim).
//!
//! A thread caches for one heap, the first opted-in heap it frees a small
//! block to ([`LockedHeap::enable_thread_caches`](super::LockedHeap::enable_thread_caches),
//! which needs a `'static` heap: the cache may outlive any borrow); other
//! heaps take the locked path.
//!
//! Every block cached in a class can serve every request of that class: a
//! +2 block is at least the class size (realloc may have shrunk its layout
//! in place inside a larger block), and layer 0's fallback blocks are
//! 16-granular and 16-aligned, so the same class's requests round to the
//! same block size there too. The classes 16-aligned requests map to take
//! only 16-aligned blocks. On flush each block is freed with its class's
//! layout, which both layers accept (+2 frees by ownership; layer 0 rounds
//! both layouts to the same 16-byte multiple).

#![cfg_attr(feature = "debug", allow(dead_code))]

extern crate std;

use core::alloc::Layout;
use core::cell::RefCell;
use core::ptr::{self, NonNull};

use crate::object::{NUM_CLASSES, class_size, size_class};

/// Most blocks a thread keeps per size class.
pub const DEPTH: u16 = 16;

#[derive(Clone, Copy)]
struct Bin {
    head: *mut u8,
    len: u16,
}

/// Gives a cached block back to the heap at the address in the first
/// argument, through its lock.
pub(crate) type Release = unsafe fn(usize, NonNull<u8>, Layout);

/// What a thread needs to know of the heap it caches for.
#[derive(Clone, Copy)]
pub(crate) struct Owner {
    /// The heap's address.
    pub(crate) heap: usize,
    /// Layer +2's threshold and class granularity on that heap.
    pub(crate) threshold: usize,
    pub(crate) class_shift: u32,
    /// How blocks go back.
    pub(crate) release: Release,
}

struct ThreadCache {
    owner: Option<Owner>,
    bins: [Bin; NUM_CLASSES],
}

impl ThreadCache {
    const EMPTY: Self = Self { owner: None, bins: [Bin { head: ptr::null_mut(), len: 0 }; NUM_CLASSES] };

    /// The size class of `layout` if this cache serves `heap` and the
    /// layout is small.
    fn class(&self, heap: usize, layout: Layout) -> Option<(usize, Owner)> {
        let owner = self.owner.filter(|o| o.heap == heap)?;
        if layout.size().wrapping_sub(1) >= owner.threshold || layout.align() > 16 {
            return None;
        }
        Some((size_class(layout.size(), layout.align(), owner.class_shift), owner))
    }

    /// Gives every cached block back to the owner.
    fn flush(&mut self) {
        let Some(owner) = self.owner else { return };
        for (class, bin) in self.bins.iter_mut().enumerate() {
            let layout =
                Layout::from_size_align(class_size(class, owner.class_shift), 8).expect("class layout");
            while let Some(block) = NonNull::new(bin.head) {
                // SAFETY: cached blocks hold the next link in their first
                // word, and are live blocks of the owner of this class.
                unsafe {
                    bin.head = block.as_ptr().cast::<*mut u8>().read();
                    (owner.release)(owner.heap, block, layout);
                }
            }
            bin.len = 0;
        }
    }
}

impl Drop for ThreadCache {
    fn drop(&mut self) {
        self.flush();
    }
}

std::thread_local! {
    static CACHE: RefCell<ThreadCache> = const { RefCell::new(ThreadCache::EMPTY) };
}

/// A cached block for `layout` of heap `heap`, if this thread has one.
#[inline]
pub(crate) fn take(heap: usize, layout: Layout) -> Option<NonNull<u8>> {
    CACHE
        .try_with(|cache| {
            let mut cache = cache.try_borrow_mut().ok()?;
            let (class, _) = cache.class(heap, layout)?;
            let bin = &mut cache.bins[class];
            let block = NonNull::new(bin.head)?;
            // SAFETY: cached blocks hold the next link in their first word.
            bin.head = unsafe { block.as_ptr().cast::<*mut u8>().read() };
            bin.len -= 1;
            Some(block)
        })
        .ok()
        .flatten()
}

/// The size classes of `old` and `new` if this thread caches small blocks
/// of heap `heap` and both layouts are small.
#[inline]
pub(crate) fn classes(heap: usize, old: Layout, new: Layout) -> Option<(usize, usize)> {
    CACHE
        .try_with(|cache| {
            let cache = cache.try_borrow().ok()?;
            Some((cache.class(heap, old)?.0, cache.class(heap, new)?.0))
        })
        .ok()
        .flatten()
}

/// Keeps a freed block of heap `heap` in this thread's cache; `false` when
/// it must go back through the lock (not small, bin full, another heap's
/// cache, or the thread is exiting). `attach` describes the heap, asked the
/// first time this thread caches for it.
///
/// # Safety
///
/// `ptr` must be a live block of heap `heap` allocated with `layout`, not
/// used afterwards.
#[inline]
pub(crate) unsafe fn put(
    heap: usize,
    ptr: NonNull<u8>,
    layout: Layout,
    attach: impl FnOnce() -> Owner,
) -> bool {
    CACHE
        .try_with(|cache| {
            let Ok(mut cache) = cache.try_borrow_mut() else { return false };
            if cache.owner.is_none() {
                cache.owner = Some(attach());
            }
            let Some((class, owner)) = cache.class(heap, layout) else { return false };
            let bin = &mut cache.bins[class];
            // The classes 16-aligned requests map to (odd ones, with 8-byte
            // classes) hand out 16-aligned blocks only: a block that
            // realloc shrank in place inside a larger, 8-aligned block of
            // an even class must not land there.
            let odd = class % 2 == 1;
            if bin.len >= DEPTH
                || (owner.class_shift == 3 && odd && !(ptr.as_ptr() as usize).is_multiple_of(16))
            {
                return false;
            }
            // SAFETY: the block is ours again and at least 8 bytes long and
            // aligned (every class is).
            unsafe { ptr.as_ptr().cast::<*mut u8>().write(bin.head) };
            bin.head = ptr.as_ptr();
            bin.len += 1;
            true
        })
        .unwrap_or(false)
}

/// Gives this thread's cached blocks back to their heap, if it is `heap`.
pub(crate) fn flush(heap: usize) {
    let _ = CACHE.try_with(|cache| {
        if let Ok(mut cache) = cache.try_borrow_mut()
            && cache.owner.is_some_and(|o| o.heap == heap)
        {
            cache.flush();
        }
    });
}
