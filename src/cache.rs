//! # Layer +3: object-specific allocators (typed caches)
//!
//! **Takes from below:** blocks from a [`DomainAlloc`] — in practice the
//! front door ([`LockedHeap`](crate::LockedHeap) or the kernel's heap), which
//! serves blocks this small from layer +2 — through [`Domain::CACHE`], so
//! debug mode catches a cache block freed through `GlobalAlloc` (any other
//! allocator fits through [`Untagged`](crate::front::Untagged)).
//!
//! **Gives above:** blocks for one type `T`, from a bounded LIFO free list,
//! like CPython's float, list and dict free lists: a freed object's block is
//! kept (up to `N` of them) and handed out again without going down the
//! stack. The list is threaded through the blocks' first word, so it costs
//! no memory of its own; blocks are at least one pointer in size and
//! alignment.
//!
//! - [`ObjectCache::allocate`] / [`deallocate`](ObjectCache::deallocate): raw blocks;
//! - [`ObjectCache::boxed`] / [`make`](ObjectCache::make): a [`CachedBox`] that
//!   gives its block back to the cache on drop (`make` runs the cache's
//!   constructor);
//! - `&ObjectCache` implements `allocator_api2::alloc::Allocator`, so it backs
//!   `allocator_api2` `Box` and `Vec` on stable Rust: layouts that fit a `T`
//!   block come from the free list, others pass through to the heap;
//! - hits, misses and the cached count are kept for the statistics;
//!   [`clear`](ObjectCache::clear) flushes the list (CPython does it on GC),
//!   and dropping the cache flushes it too.

use core::alloc::Layout;
use core::fmt;
use core::marker::PhantomData;
use core::mem::{ManuallyDrop, MaybeUninit, align_of, size_of};
use core::ops::{Deref, DerefMut};
use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering;

use crate::front::{DefaultLock, Domain, DomainAlloc};
use crate::sync::{AtomicUsize, stat};

/// Why a cache could not provide a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheError {
    /// The free list was empty and the heap returned null.
    OutOfMemory,
    /// [`ObjectCache::make`] was called on a cache without a constructor.
    NoConstructor,
}

impl fmt::Display for CacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfMemory => write!(f, "the cache's free list is empty and the heap is out of memory"),
            Self::NoConstructor => write!(f, "the cache has no constructor to make an object with"),
        }
    }
}

impl core::error::Error for CacheError {}

/// Counters of one cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Blocks served from the free list (0 without the `stats` feature).
    pub hits: usize,
    /// Blocks that had to come from the heap (0 without the `stats` feature).
    pub misses: usize,
    /// Blocks on the free list now.
    pub cached: usize,
    /// Most blocks the free list keeps.
    pub capacity: usize,
}

struct FreeList {
    head: *mut u8,
    len: usize,
}

/// A bounded free list of blocks for values of type `T`, over the heap `A`,
/// keeping up to `N` blocks, behind a lock `L` (the same kind as the heap's:
/// an interrupt-masking lock in a kernel whose interrupt handlers use the
/// cache).
pub struct ObjectCache<'h, T, A: DomainAlloc, const N: usize = 64, L: lock_api::RawMutex = DefaultLock> {
    heap: &'h A,
    free: lock_api::Mutex<L, FreeList>,
    constructor: Option<fn() -> T>,
    hits: AtomicUsize,
    misses: AtomicUsize,
    _type: PhantomData<fn() -> T>,
}

// SAFETY: the free list's blocks belong to the cache and are only touched
// under its lock; values of `T` cross threads only inside `CachedBox`, which
// requires `T: Send` for that.
unsafe impl<T, A: DomainAlloc + Sync, const N: usize, L: lock_api::RawMutex + Sync> Sync
    for ObjectCache<'_, T, A, N, L>
{
}
// SAFETY: as above.
unsafe impl<T, A: DomainAlloc + Sync, const N: usize, L: lock_api::RawMutex + Send> Send
    for ObjectCache<'_, T, A, N, L>
{
}

impl<T, A: DomainAlloc, const N: usize, L: lock_api::RawMutex> fmt::Debug for ObjectCache<'_, T, A, N, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectCache")
            .field("type", &core::any::type_name::<T>())
            .field("stats", &self.stats())
            .finish()
    }
}

impl<'h, T, A: DomainAlloc, const N: usize, L: lock_api::RawMutex> ObjectCache<'h, T, A, N, L> {
    /// The layout of every block the cache keeps: `T`'s, grown to hold the
    /// free-list link.
    pub const BLOCK: Layout = {
        let size = if size_of::<T>() > size_of::<*mut u8>() { size_of::<T>() } else { size_of::<*mut u8>() };
        let align =
            if align_of::<T>() > align_of::<*mut u8>() { align_of::<T>() } else { align_of::<*mut u8>() };
        match Layout::from_size_align(size, align) {
            Ok(l) => l,
            Err(_) => panic!("invalid block layout"),
        }
    };

    /// A cache over `heap`, keeping up to `N` free blocks.
    pub const fn new(heap: &'h A) -> Self {
        Self {
            heap,
            free: lock_api::Mutex::new(FreeList { head: ptr::null_mut(), len: 0 }),
            constructor: None,
            hits: AtomicUsize::new(0),
            misses: AtomicUsize::new(0),
            _type: PhantomData,
        }
    }

    /// A cache whose [`make`](Self::make) builds values with `constructor`.
    pub const fn with_constructor(heap: &'h A, constructor: fn() -> T) -> Self {
        let mut cache = Self::new(heap);
        cache.constructor = Some(constructor);
        cache
    }

    /// Takes a block for one `T`: from the free list if it has one (a hit),
    /// else from the heap (a miss).
    pub fn allocate(&self) -> Result<NonNull<MaybeUninit<T>>, CacheError> {
        {
            let mut free = self.free.lock();
            if let Some(block) = NonNull::new(free.head) {
                // SAFETY: blocks on the list hold the next link in their first word.
                free.head = unsafe { *block.as_ptr().cast::<*mut u8>() };
                free.len -= 1;
                stat!(self.hits.fetch_add(1, Ordering::Relaxed));
                return Ok(block.cast());
            }
        }
        stat!(self.misses.fetch_add(1, Ordering::Relaxed));
        // SAFETY: `BLOCK` has a non-zero size.
        let p = unsafe { self.heap.alloc_in(Self::BLOCK, Domain::CACHE) };
        NonNull::new(p).map(NonNull::cast).ok_or(CacheError::OutOfMemory)
    }

    /// Gives a block back: onto the free list, or to the heap when the list
    /// holds `N` already. The value in it must already be dropped.
    ///
    /// # Safety
    ///
    /// `block` must come from [`allocate`](Self::allocate) of this cache and
    /// not be used afterwards.
    pub unsafe fn deallocate(&self, block: NonNull<MaybeUninit<T>>) {
        let block = block.cast::<u8>().as_ptr();
        {
            let mut free = self.free.lock();
            if free.len < N {
                // SAFETY: the block is ours again and at least a pointer long
                // and aligned (`BLOCK`).
                unsafe { *block.cast::<*mut u8>() = free.head };
                free.head = block;
                free.len += 1;
                return;
            }
        }
        // SAFETY: the block came from `self.heap` with `BLOCK`.
        unsafe { self.heap.dealloc_in(block, Self::BLOCK, Domain::CACHE) };
    }

    /// Moves `value` into a block of the cache.
    pub fn boxed(&self, value: T) -> Result<CachedBox<'_, 'h, T, A, N, L>, CacheError> {
        let block = self.allocate()?;
        // SAFETY: the block is ours, aligned and large enough for a `T`.
        unsafe { block.as_ptr().write(MaybeUninit::new(value)) };
        Ok(CachedBox { ptr: block.cast(), cache: self })
    }

    /// Builds a value with the cache's constructor, in a block of the cache.
    pub fn make(&self) -> Result<CachedBox<'_, 'h, T, A, N, L>, CacheError> {
        let constructor = self.constructor.ok_or(CacheError::NoConstructor)?;
        self.boxed(constructor())
    }

    /// Gives every cached block back to the heap.
    pub fn clear(&self) {
        let mut free = self.free.lock();
        while let Some(block) = NonNull::new(free.head) {
            // SAFETY: list blocks hold the link; each came from `self.heap`
            // with `BLOCK`.
            unsafe {
                free.head = *block.as_ptr().cast::<*mut u8>();
                self.heap.dealloc_in(block.as_ptr(), Self::BLOCK, Domain::CACHE);
            }
            free.len -= 1;
        }
    }

    /// Hits, misses and cached blocks.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            cached: self.free.lock().len,
            capacity: N,
        }
    }

    /// Whether the free list's lock is held.
    pub fn is_locked(&self) -> bool {
        self.free.is_locked()
    }

    /// Releases the free list's lock, held by code that will never run
    /// again (see [`LockedHeap::force_unlock`](crate::LockedHeap::force_unlock)).
    ///
    /// # Safety
    ///
    /// The lock's holder must never resume or touch the cache again.
    pub unsafe fn force_unlock(&self) {
        // SAFETY: the caller's promise: the holder is gone.
        unsafe { self.free.force_unlock() }
    }

    fn fits(layout: Layout) -> bool {
        layout.size() <= Self::BLOCK.size() && layout.align() <= Self::BLOCK.align()
    }
}

impl<T, A: DomainAlloc, const N: usize, L: lock_api::RawMutex> Drop for ObjectCache<'_, T, A, N, L> {
    fn drop(&mut self) {
        self.clear();
    }
}

// SAFETY: blocks are `BLOCK`-sized and aligned, so they satisfy every
// non-zero layout that `fits`; other non-zero layouts are served by the
// heap's own `GlobalAlloc` contract, and zero-sized ones by a dangling
// pointer that `deallocate` ignores. A block is only reused after
// `deallocate` gave it back.
unsafe impl<T, A: DomainAlloc, const N: usize, L: lock_api::RawMutex> allocator_api2::alloc::Allocator
    for &ObjectCache<'_, T, A, N, L>
{
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, allocator_api2::alloc::AllocError> {
        // Zero-sized requests first: collections free zero-sized layouts
        // they never allocated (a `Box` of a zero-sized value, an empty
        // boxed slice), with their own dangling pointers, and shrink to
        // zero by allocating the new layout and forgetting it. Neither may
        // reach the free list.
        let (p, len) = if layout.size() == 0 {
            // A dangling, aligned pointer serves zero-sized requests.
            (
                NonNull::new(core::ptr::without_provenance_mut(layout.align()))
                    .expect("alignment is non-zero"),
                0,
            )
        } else if ObjectCache::<T, A, N, L>::fits(layout) {
            let block = ObjectCache::allocate(*self).map_err(|_| allocator_api2::alloc::AllocError)?;
            (block.cast::<u8>(), ObjectCache::<T, A, N, L>::BLOCK.size())
        } else {
            // SAFETY: the layout has a non-zero size.
            let p = unsafe { self.heap.alloc(layout) };
            (NonNull::new(p).ok_or(allocator_api2::alloc::AllocError)?, layout.size())
        };
        Ok(NonNull::slice_from_raw_parts(p, len))
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() == 0 {
            // A dangling pointer from `allocate`, or the caller's own.
        } else if ObjectCache::<T, A, N, L>::fits(layout) {
            // SAFETY: a fitting layout was served by `ObjectCache::allocate`.
            unsafe { ObjectCache::deallocate(*self, ptr.cast()) };
        } else {
            // SAFETY: served by `self.heap.alloc(layout)`.
            unsafe { self.heap.dealloc(ptr.as_ptr(), layout) };
        }
    }
}

/// A `T` in a block of an [`ObjectCache`]; dropping it drops the value and
/// gives the block back to the cache.
pub struct CachedBox<'c, 'h, T, A: DomainAlloc, const N: usize, L: lock_api::RawMutex = DefaultLock> {
    ptr: NonNull<T>,
    cache: &'c ObjectCache<'h, T, A, N, L>,
}

impl<T, A: DomainAlloc, const N: usize, L: lock_api::RawMutex> CachedBox<'_, '_, T, A, N, L> {
    /// Moves the value out, giving the block back.
    pub fn into_inner(this: Self) -> T {
        let this = ManuallyDrop::new(this);
        // SAFETY: the value is initialised and read exactly once; the block
        // is then given back without dropping the value again.
        unsafe {
            let value = this.ptr.as_ptr().read();
            this.cache.deallocate(this.ptr.cast());
            value
        }
    }
}

impl<T, A: DomainAlloc, const N: usize, L: lock_api::RawMutex> Deref for CachedBox<'_, '_, T, A, N, L> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the box owns an initialised `T`.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T, A: DomainAlloc, const N: usize, L: lock_api::RawMutex> DerefMut for CachedBox<'_, '_, T, A, N, L> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the box owns an initialised `T`, uniquely.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T: fmt::Debug, A: DomainAlloc, const N: usize, L: lock_api::RawMutex> fmt::Debug
    for CachedBox<'_, '_, T, A, N, L>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T, A: DomainAlloc, const N: usize, L: lock_api::RawMutex> Drop for CachedBox<'_, '_, T, A, N, L> {
    fn drop(&mut self) {
        // SAFETY: the value is initialised and dropped once; the block came
        // from the cache.
        unsafe {
            ptr::drop_in_place(self.ptr.as_ptr());
            self.cache.deallocate(self.ptr.cast());
        }
    }
}

// SAFETY: the box owns its `T` uniquely, like `Box<T>`.
unsafe impl<T: Send, A: DomainAlloc + Sync, const N: usize, L: lock_api::RawMutex + Sync> Send
    for CachedBox<'_, '_, T, A, N, L>
{
}
// SAFETY: shared access only hands out `&T`.
unsafe impl<T: Sync, A: DomainAlloc + Sync, const N: usize, L: lock_api::RawMutex + Sync> Sync
    for CachedBox<'_, '_, T, A, N, L>
{
}
