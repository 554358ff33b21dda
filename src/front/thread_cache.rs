//! Per-thread caches in front of a [`LockedHeap`](super::LockedHeap)'s lock
//! (feature `std`; inactive with `debug`): glibc's tcache for strata.
//!
//! A thread that frees a block of layer +2 keeps it in a bin of its own,
//! up to [`DEPTH`] blocks per size class; its next request of that class
//! takes it back without the heap lock. Blocks of layer 0 up to
//! [`MEDIUM_MAX`] bytes are kept the same way, up to [`MEDIUM_DEPTH`] per
//! *medium bin* (chunk sizes eight to a power of two, TLSF's spacing): a
//! request takes from the first bin all of whose chunks hold it, so a block
//! may serve a request up to a quarter smaller than its chunk, which layer
//! 0's free check allows for. Blocks in a thread's bins stay allocated as
//! far as the heap knows. They go back through the lock when
//! the thread exits, when the bin is full, and when the thread calls
//! [`LockedHeap::trim`](super::LockedHeap::trim).
//!
//! A thread caches for one heap, the first opted-in heap it frees a small
//! block to ([`LockedHeap::enable_thread_caches`](super::LockedHeap::enable_thread_caches),
//! which needs a `'static` heap: the cache may outlive any borrow); other
//! heaps take the locked path.
//!
//! **What is cached, and where.** Only blocks the heap's own checks would
//! let it free. A medium block must pass layer 0's O(1) check of a free
//! (in its committed window, a chunk in use whose neighbour agrees, of a
//! size that fits the layout), made without the lock on header words that
//! are only ever accessed atomically. A small block must lie in an arena
//! of layer +2: the heap keeps a copy of +2's arena bitmap
//! in atomics outside its lock (an arena mirror), updated under the lock
//! whenever an arena comes or goes, which the cache reads before it keeps a
//! block. Anything else — a foreign pointer, a larger block — takes the
//! locked path, where the heap refuses what is not its own (counted in
//! `refused_frees`). A block is filed by what it is — the size class its
//! pool's header records, read without the lock — never by the layout it
//! is freed with; so every block of a bin holds every request of that bin's
//! class (and blocks of the classes 16-aligned requests use are
//! 16-aligned). A second free of a block this thread still holds, with any
//! layout, finds it in its bin and is refused.

#![cfg_attr(feature = "debug", allow(dead_code))]

extern crate std;

use core::alloc::Layout;
use core::cell::RefCell;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::object::{ARENA_SLOTS, NUM_CLASSES, block_class, class_size, size_class};
use crate::segment::{self, MEDIUM_MAX, WindowBlock, chunk_size};

/// Most blocks a thread keeps per size class.
pub const DEPTH: u16 = 16;

/// Most blocks a thread keeps per medium bin.
pub const MEDIUM_DEPTH: u16 = 8;

/// Medium bins hold layer 0's chunks from `1 << MEDIUM_SHIFT` bytes, eight
/// bins per power of two (TLSF's spacing), up to those that serve
/// [`MEDIUM_MAX`]-byte requests.
const MEDIUM_SHIFT: u32 = 9;
const MEDIUM_BINS: usize = medium_ceil(chunk_size(MEDIUM_MAX).unwrap()) + 1;

/// The medium bin of a chunk of `chunk >= 1 << MEDIUM_SHIFT` bytes: the
/// bin whose range holds it.
#[inline]
const fn medium_bin(chunk: usize) -> usize {
    let fl = usize::BITS - 1 - chunk.leading_zeros();
    (fl - MEDIUM_SHIFT) as usize * 8 + ((chunk >> (fl - 3)) & 7)
}

/// The smallest chunk of medium bin `bin`.
#[inline]
const fn medium_floor(bin: usize) -> usize {
    (8 + bin % 8) << (bin / 8 + MEDIUM_SHIFT as usize - 3)
}

/// The first medium bin all of whose chunks hold `need` bytes.
#[inline]
const fn medium_ceil(need: usize) -> usize {
    let bin = medium_bin(need);
    if medium_floor(bin) < need { bin + 1 } else { bin }
}

// Every chunk a medium bin holds fits every request the bin serves within
// layer 0's slack, so the request's own layout frees it later.
const _: () = {
    let mut need = 1 << MEDIUM_SHIFT;
    while need <= chunk_size(MEDIUM_MAX).unwrap() {
        let bin = medium_ceil(need);
        assert!(bin < MEDIUM_BINS && medium_floor(bin) >= need);
        assert!(medium_floor(bin + 1) - need <= segment::slack(need));
        need += segment::CHUNK_GRANULE;
    }
};

#[derive(Clone, Copy)]
struct Bin {
    head: *mut u8,
    len: u16,
}

impl Bin {
    const EMPTY: Self = Self { head: ptr::null_mut(), len: 0 };

    /// Takes the first block.
    #[inline]
    fn pop(&mut self) -> Option<NonNull<u8>> {
        let block = NonNull::new(self.head)?;
        // SAFETY: cached blocks hold the next link in their first word.
        self.head = unsafe { block.as_ptr().cast::<*mut u8>().read() };
        self.len -= 1;
        Some(block)
    }

    /// Whether `block` is in this bin.
    #[inline]
    fn holds(&self, block: NonNull<u8>) -> bool {
        let mut c = self.head;
        while !c.is_null() {
            if c == block.as_ptr() {
                return true;
            }
            // SAFETY: cached blocks hold the next link in their first word.
            c = unsafe { c.cast::<*mut u8>().read() };
        }
        false
    }

    /// Keeps `block`, unless this bin holds `depth` blocks already.
    ///
    /// # Safety
    ///
    /// `block` must be a block of at least a word, word-aligned, that the
    /// cache may keep.
    #[inline]
    unsafe fn push(&mut self, block: NonNull<u8>, depth: u16) -> Result<(), Declined> {
        if self.len >= depth {
            return Err(Declined::Pass);
        }
        // SAFETY: the caller's promise.
        unsafe { block.as_ptr().cast::<*mut u8>().write(self.head) };
        self.head = block.as_ptr();
        self.len += 1;
        Ok(())
    }
}

/// Gives a cached block back to the heap at the address in the first
/// argument, through its lock.
pub(crate) type Release = unsafe fn(*const (), NonNull<u8>, Layout);

/// A copy of layer +2's arena bitmap that threads read without the heap's
/// lock: one bit per arena slot of the window, written only under the lock.
pub(crate) struct ArenaMirror {
    bits: [AtomicU64; ARENA_SLOTS / 64],
    /// The +2 arena counters the copy was last made at (allocated,
    /// reclaimed), to tell when it must be made again.
    seen: [AtomicU64; 2],
    /// Layer 0's committed window while it holds it, as `(start, len)`
    /// (`len` 0 otherwise): where its medium blocks are.
    window: [AtomicUsize; 2],
}

impl ArenaMirror {
    pub(crate) const fn new() -> Self {
        Self {
            bits: [const { AtomicU64::new(0) }; ARENA_SLOTS / 64],
            seen: [const { AtomicU64::new(0) }; 2],
            window: [const { AtomicUsize::new(0) }; 2],
        }
    }

    /// Records layer 0's committed window (call with the heap locked).
    #[inline]
    pub(crate) fn sync_window(&self, window: Option<(usize, usize)>) {
        let (start, len) = window.unwrap_or((0, 0));
        if self.window[1].load(Ordering::Relaxed) != len || self.window[0].load(Ordering::Relaxed) != start {
            // Length last: a reader that sees it sees the start.
            self.window[1].store(0, Ordering::Release);
            self.window[0].store(start, Ordering::Release);
            self.window[1].store(len, Ordering::Release);
        }
    }

    /// Layer 0's committed window, as last recorded.
    #[inline]
    fn window(&self) -> (usize, usize) {
        let len = self.window[1].load(Ordering::Acquire);
        (self.window[0].load(Ordering::Acquire), len)
    }

    /// Makes the copy again if the arena counters moved (call with the
    /// heap locked).
    #[inline]
    pub(crate) fn sync(&self, counters: (usize, usize), bitmap: impl FnOnce() -> [u64; ARENA_SLOTS / 64]) {
        let (made, freed) = (counters.0 as u64, counters.1 as u64);
        if self.seen[0].load(Ordering::Relaxed) == made && self.seen[1].load(Ordering::Relaxed) == freed {
            return;
        }
        for (word, value) in self.bits.iter().zip(bitmap()) {
            // Release: a thread that sees the bit sees the arena's set-up.
            word.store(value, Ordering::Release);
        }
        self.seen[0].store(made, Ordering::Relaxed);
        self.seen[1].store(freed, Ordering::Relaxed);
    }

    #[inline]
    fn holds(&self, slot: usize) -> bool {
        slot < ARENA_SLOTS && self.bits[slot / 64].load(Ordering::Acquire) & (1 << (slot % 64)) != 0
    }
}

/// What a thread needs to know of the heap it caches for.
#[derive(Clone, Copy)]
pub(crate) struct Owner {
    /// The heap (a `'static` `LockedHeap`; its address is the key the
    /// entry points compare).
    pub(crate) heap: *const (),
    /// Layer +2's threshold and class granularity on that heap.
    pub(crate) threshold: usize,
    pub(crate) class_shift: u32,
    /// Where the arena slots start and how large they are.
    pub(crate) slots_start: usize,
    pub(crate) arena_shift: u32,
    /// Pools are `1 << pool_shift` bytes, aligned to their size.
    pub(crate) pool_shift: u32,
    /// The heap's copy of the arena bitmap.
    pub(crate) mirror: &'static ArenaMirror,
    /// How blocks go back.
    pub(crate) release: Release,
}

impl Owner {
    /// Whether `ptr` lies in an arena of layer +2, as the heap knew at its
    /// last change of arenas.
    #[inline]
    fn owns(&self, ptr: NonNull<u8>) -> bool {
        let slot = (ptr.as_ptr() as usize).wrapping_sub(self.slots_start) >> self.arena_shift;
        self.mirror.holds(slot)
    }

    /// Whether a layout is small (served by +2's classes).
    #[inline]
    fn is_small(&self, layout: Layout) -> bool {
        layout.size().wrapping_sub(1) < self.threshold && layout.align() <= 16
    }
}

struct ThreadCache {
    owner: Option<Owner>,
    bins: [Bin; NUM_CLASSES],
    /// Layer 0's chunks, by size (each holds its chunk size in its third
    /// word while cached).
    medium: [Bin; MEDIUM_BINS],
}

/// Where a cached medium block keeps its chunk size.
const MEDIUM_SIZE_WORD: usize = 2;

impl ThreadCache {
    const EMPTY: Self =
        Self { owner: None, bins: [Bin::EMPTY; NUM_CLASSES], medium: [Bin::EMPTY; MEDIUM_BINS] };

    /// The owner, if this cache serves `heap`.
    #[inline]
    fn owner_of(&self, heap: usize) -> Option<Owner> {
        self.owner.filter(|o| o.heap.addr() == heap)
    }

    /// Gives every cached block back to the owner.
    fn flush(&mut self) {
        let Some(owner) = self.owner else { return };
        for (class, bin) in self.bins.iter_mut().enumerate() {
            let layout =
                Layout::from_size_align(class_size(class, owner.class_shift), 8).expect("class layout");
            while let Some(block) = NonNull::new(bin.head) {
                // SAFETY: cached blocks hold the next link in their first
                // word, and are live blocks of +2 of the owner, holding at
                // least their class's size.
                unsafe {
                    bin.head = block.as_ptr().cast::<*mut u8>().read();
                    (owner.release)(owner.heap, block, layout);
                }
            }
            bin.len = 0;
        }
        for bin in &mut self.medium {
            while let Some(block) = bin.pop() {
                // SAFETY: a cached medium block, which holds its chunk size
                // in this word; freed with the layout its whole chunk
                // serves, a live layer 0 block of the owner.
                unsafe {
                    let chunk = block.as_ptr().cast::<usize>().add(MEDIUM_SIZE_WORD).read();
                    let layout = Layout::from_size_align_unchecked(chunk - segment::CHUNK_WORD, 16);
                    (owner.release)(owner.heap, block, layout);
                }
            }
        }
    }
}

impl ThreadCache {
    /// Keeps a freed block of layer 0 in a medium bin, if the heap's own
    /// free checks would pass it: in layer 0's committed window, not in an
    /// arena of +2, a chunk in use that fits `layout` (read from its header
    /// and its neighbour's, which are accessed atomically).
    ///
    /// # Safety
    ///
    /// As [`put`]; `owner` is this cache's owner.
    #[inline]
    unsafe fn put_medium(&mut self, owner: &Owner, ptr: NonNull<u8>, layout: Layout) -> Result<(), Declined> {
        if medium_need(layout).is_none() || owner.owns(ptr) {
            return Err(Declined::Pass);
        }
        let window = owner.mirror.window();
        if window.1 == 0 {
            return Err(Declined::Pass);
        }
        // SAFETY: the window is layer 0's committed span while it holds it,
        // and it holds it while any of its blocks is live; a pointer the
        // caller did not get from this heap but within the window reads
        // the heap's own memory, which a committed source keeps.
        let WindowBlock::Fits(chunk) = (unsafe { segment::window_block(window, ptr, layout) }) else {
            return Err(Declined::Pass);
        };
        let bin = medium_bin(chunk);
        if bin >= MEDIUM_BINS {
            return Err(Declined::Pass);
        }
        let bin = &mut self.medium[bin];
        if bin.holds(ptr) {
            return Err(Declined::DoubleFree);
        }
        // SAFETY: a live block of layer 0 of at least `1 << MEDIUM_SHIFT`
        // bytes, ours again: its third word keeps the chunk size.
        unsafe {
            bin.push(ptr, MEDIUM_DEPTH)?;
            ptr.as_ptr().cast::<usize>().add(MEDIUM_SIZE_WORD).write(chunk);
        }
        Ok(())
    }
}

/// The chunk a request of `layout` needs in layer 0, if it is one a medium
/// bin serves: at most [`MEDIUM_MAX`] bytes, aligned to at most 16, and a
/// chunk of at least `1 << MEDIUM_SHIFT` bytes. (The caller has checked
/// that it is not small.)
#[inline]
fn medium_need(layout: Layout) -> Option<usize> {
    if layout.size() > MEDIUM_MAX || layout.align() > segment::CHUNK_GRANULE {
        return None;
    }
    chunk_size(layout.size()).filter(|&need| need >= 1 << MEDIUM_SHIFT)
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
            let owner = cache.owner_of(heap)?;
            if owner.is_small(layout) {
                // The class a request needs: its alignment may round it up.
                return cache.bins[size_class(layout.size(), layout.align(), owner.class_shift)].pop();
            }
            let need = medium_need(layout)?;
            cache.medium[medium_ceil(need)].pop()
        })
        .ok()
        .flatten()
}

/// Whether block `ptr` of +2, allocated with `old`, holds `new_size` bytes
/// as it is, by what its layout alone guarantees (its size rounded up to the
/// class granularity), and the new size uses more than half of it: a
/// realloc that needs no lock. `None` when this thread does not cache for
/// `heap`, the layouts are not small, or the block is not of +2.
#[inline]
pub(crate) fn fits_in_place(heap: usize, ptr: NonNull<u8>, old: Layout, new_size: usize) -> Option<bool> {
    CACHE
        .try_with(|cache| {
            let cache = cache.try_borrow().ok()?;
            let owner = cache.owner_of(heap)?;
            let new = Layout::from_size_align(new_size, old.align()).ok()?;
            // Blocks of +2 only: layer 0 checks a block's size on free.
            if !owner.is_small(old) || !owner.is_small(new) || !owner.owns(ptr) {
                return None;
            }
            // SAFETY: in an arena of the owner (just checked), and live:
            // the caller's block.
            let class = unsafe { block_class(crate::source::reach(ptr), owner.pool_shift) }?;
            let size = class_size(class, owner.class_shift);
            Some(new_size <= size && new_size > size / 2)
        })
        .ok()
        .flatten()
}

/// Why [`put`] did not keep a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Declined {
    /// Not for the cache (not small, not a +2 block, another heap's, the
    /// bin full, the thread exiting): the locked path decides.
    Pass,
    /// The block is in this thread's cache already: a double free.
    DoubleFree,
}

/// Keeps a freed block of heap `heap` in this thread's cache. `attach`
/// describes the heap, asked the first time this thread caches for it.
///
/// # Safety
///
/// If the heap owns `ptr`, it must be a live block of it allocated with
/// `layout`, not used afterwards.
#[inline]
pub(crate) unsafe fn put(
    heap: usize,
    ptr: NonNull<u8>,
    layout: Layout,
    attach: impl FnOnce() -> Owner,
) -> Result<(), Declined> {
    CACHE
        .try_with(|cache| {
            let Ok(mut cache) = cache.try_borrow_mut() else { return Err(Declined::Pass) };
            if cache.owner.is_none() {
                cache.owner = Some(attach());
            }
            let Some(owner) = cache.owner_of(heap) else { return Err(Declined::Pass) };
            // Kept with the provenance of the heap's pages, not the
            // caller's: it will serve requests of its whole class.
            let ptr = crate::source::reach(ptr);
            if !owner.is_small(layout) {
                // SAFETY: forwarded contract.
                return unsafe { cache.put_medium(&owner, ptr, layout) };
            }
            if !owner.owns(ptr) {
                return Err(Declined::Pass);
            }
            // Filed by what the block is (its pool's class), never by the
            // layout it is freed with: every block of a bin then holds every
            // request of the bin's class, blocks of 16-multiple classes are
            // 16-aligned, and a second free with another layout finds the
            // block in the same bin.
            // SAFETY: in an arena of the owner (just checked); the caller's
            // live block, so its pool is in use.
            let Some(class) = (unsafe { block_class(ptr, owner.pool_shift) }) else {
                return Err(Declined::Pass);
            };
            let bin = &mut cache.bins[class];
            // A block this thread holds already: freed twice.
            if bin.holds(ptr) {
                return Err(Declined::DoubleFree);
            }
            // SAFETY: the block is ours again, in an arena of +2, and at
            // least 8 bytes long and aligned (every class is).
            unsafe { bin.push(ptr, DEPTH) }
        })
        .unwrap_or(Err(Declined::Pass))
}

/// Gives this thread's cached blocks back to their heap, if it is `heap`.
pub(crate) fn flush(heap: usize) {
    let _ = CACHE.try_with(|cache| {
        if let Ok(mut cache) = cache.try_borrow_mut()
            && cache.owner.is_some_and(|o| o.heap.addr() == heap)
        {
            cache.flush();
        }
    });
}
