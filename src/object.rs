//! # Layer +2: the object allocator (pymalloc)
//!
//! **Takes from below:** arenas — runs of pages aligned to their own size —
//! from a [`PageSource`].
//!
//! **Gives above:** blocks of up to [`SMALL_REQUEST_THRESHOLD`] bytes, aligned
//! to [`ALIGNMENT`], in O(1) for the common case, as CPython's
//! `Objects/obmalloc.c` does:
//!
//! ```text
//!  arena (size-aligned)                                       pool (one size class)
//!  ┌────────┬────────┬────────┬───────────┬─────────────┐     ┌──────┬─────┬─────┬────┄
//!  │ pool 0 │ pool 1 │ pool 2 │  …carved  │  uncarved   │     │header│block│block│…   │
//!  │+arena  │        │        │   lazily  │             │     └──────┴─────┴─────┴────┄
//!  └────────┴────────┴────────┴───────────┴─────────────┘       free list threaded
//!    ▲ pool_address: next pool to carve                          through free blocks
//! ```
//!
//! - Size class `c` serves `g·(c+1)` bytes, `g` the class granularity: 64
//!   classes of 8 bytes up to 512 (32 classes of 16 on heaps under 1 MiB).
//!   A request aligned to 16 is rounded to a multiple of 16, whose blocks
//!   are 16-aligned; see *Size classes* below.
//! - A block's pool is `addr & !(POOL_SIZE-1)` and its arena `addr &
//!   !(ARENA_SIZE-1)`; no lookup, no walk. The arena header sits in pool 0,
//!   after that pool's header.
//! - `used[c]` lists the pools of class `c` with a free block; allocation
//!   pops the first pool's free list, or carves the next block (pools are
//!   carved lazily, blocks are touched only when first handed out).
//! - A pool that fills leaves `used[c]`; one that empties goes on its arena's
//!   free-pool list and keeps its class, so reuse for the same class skips
//!   initialisation — unless it is kept (below).
//! - `usable_arenas` holds the arenas with free pools, sorted by free-pool
//!   count, most used first, so allocation comes from the fullest arenas and
//!   nearly empty ones drain. `nfp2lasta[n]` points at the last arena with `n`
//!   free pools, keeping the re-sort O(1) (CPython bpo-37029).
//! - Out of arenas, `ObjectAllocator::borrow` serves a request from the
//!   smallest larger class with a free block (the front door decides when:
//!   a close fit before falling back to layer 0, any fit as a last resort).
//! - A wholly free arena goes back to the page source unless it is the last
//!   in `usable_arenas`: one spare is kept against thrashing (bpo-37257).
//! - Ownership: one bit per arena-sized slot of the page source's window says
//!   whether an arena lives there, so `ObjectAllocator::owns` is O(1) and
//!   reads no memory that might not be mapped.
//!
//! **Kept pools.** A class whose few blocks come and go (one object freed
//! and made again, as a loop does) would empty its only pool on every free
//! and take a pool again on the next allocation, both on the slow path. So
//! a pool whose last block is freed, while it is its class's only pool on
//! `used[c]`, stays with its class (`kept[c]`, empty) when that changes no
//! placement: its arena has another pool in use (kept pools never hold an
//! arena back from draining) and, freed, it would make its arena the first
//! of `usable_arenas`, where the class's next pool would come from anyway.
//! The class's next allocation takes it back in O(1) if that still holds;
//! else it goes back to its arena first. Kept pools go back to their arena
//! when its last pool in use empties, when no arena has a free pool for a
//! new one, and on `trim`. mimalloc keeps the only page of a size class the
//! same way (`_mi_page_retire`).
//!
//! **Size classes.** CPython rounds every request to 16 bytes (since 3.8,
//! bpo-27987) because C's `malloc` cannot know which requests need
//! `max_align_t`. Rust's allocator API passes each request's alignment, so
//! strata rounds requests aligned to at most 8 to 8 bytes and only the others
//! to 16: `class = ((size - 1) | 8·[align = 16]) >> 3`. Every block of a
//! 16-multiple class is 16-aligned (pool headers are 16-multiples), so the
//! 16-byte guarantee holds for every request that asks for it, and the
//! quantization loss halves (see *Measured choices* in `docs/DESIGN.md`).
//! Heaps under 1 MiB keep
//! 32 classes of 16 bytes so that their few pools are not spread over 64
//! classes.
//!
//! **Geometry.** CPython uses 1 MiB arenas of 16 KiB pools. Those fit a
//! kernel or a large region, but a 64 KiB firmware heap would be swallowed
//! by one arena, so [`Geometry::for_window`] scales them with the window:
//! 1 MiB / 16 KiB from 16 MiB up, down to 8 KiB arenas of 2 KiB pools for a
//! 64 KiB heap (pools stay large enough for two 512-byte blocks, arenas hold
//! 4 to 64 pools).
//!
//! **Files.** The allocation path is here; `free` holds the free path and
//! the trimming of spare arenas, `geometry` the sizes, `stats` the walks
//! over every pool (statistics, invariants), `tag` the double-free tags and
//! `blocks` the checks made without the lock.

use core::fmt;
use core::mem::size_of;
use core::ptr::{self, NonNull};

use crate::source::{PageSource, PagesError, reach};
use crate::sync::AtomicU32;
use core::sync::atomic::Ordering::Relaxed;

mod blocks;
mod free;
mod geometry;
mod stats;
mod tag;

#[cfg_attr(not(feature = "caches"), allow(unused_imports))]
pub(crate) use blocks::block_class;
use blocks::is_multiple;
use geometry::MAX_ARENA_SHIFT;
pub use geometry::{Geometry, GeometryError};
pub use stats::{ArenaCounters, ArenaUsage, ClassStats};
pub(crate) use tag::{KEY, TAGS, frozen_word, holds_tag, make_key};
#[cfg_attr(not(feature = "caches"), allow(unused_imports))]
pub(crate) use tag::{carries_free_tag, free_tag};

/// Largest alignment served by this layer; requests aligned above it go to layer 0.
pub const ALIGNMENT: usize = 16;
/// Largest request served by this layer (CPython's); larger ones go to layer
/// 0. Small heaps use a lower threshold (see [`Geometry::for_window`]).
pub const SMALL_REQUEST_THRESHOLD: usize = 512;
/// Most size classes (with the 8-byte granularity).
pub const NUM_CLASSES: usize = SMALL_REQUEST_THRESHOLD / 8;
/// Most pools in one arena.
pub const MAX_POOLS_PER_ARENA: usize = 64;
/// On a committed page source (a region), layer +2 serves small requests
/// from regions of this size up ([`Geometry::for_region`]).
pub const REGION_POOLS_FROM: usize = 16 << 20;
/// Arena slots tracked in the ownership bitmap (window / arena size at most).
pub const ARENA_SLOTS: usize = 4096;
const UNUSED_CLASS: u32 = u32::MAX;
/// Whether this layer is built (the `pools` feature). Without it the
/// layer serves nothing ([`Geometry::threshold`] is 0 in every geometry),
/// owns nothing, and its tables take no room.
pub(crate) const ON: bool = cfg!(feature = "pools");
/// Entries of the per-class tables as stored: every class, or none when
/// the layer is not built.
pub(crate) const CLASS_TABLE: usize = if ON { NUM_CLASSES } else { 0 };
/// Words of the arena ownership bitmap as stored.
pub(crate) const ARENA_MAP_WORDS: usize = if ON { ARENA_SLOTS / 64 } else { 0 };
/// Index masks of those tables (both sizes are powers of two, or 0).
const ARENA_MAP_MASK: usize = ARENA_MAP_WORDS.saturating_sub(1);
const CLASS_MASK: usize = CLASS_TABLE.saturating_sub(1);
const _: () = assert!(ARENA_MAP_WORDS.is_power_of_two() || !ON);
const _: () = assert!(CLASS_TABLE.is_power_of_two() || !ON);
/// Entries of the arenas-by-free-pools table as stored.
const NFP_TABLE: usize = if ON { MAX_POOLS_PER_ARENA + 1 } else { 0 };
/// Bytes at the end of every arena that this layer leaves unused. Where
/// arenas are blocks of layer 0 (on a committed page source), layer 0 keeps
/// the boundary tag of the chunk after an arena there, so arenas can sit
/// side by side; the last pool of an arena stops short of it.
pub(crate) const ARENA_TAIL: usize = 2 * size_of::<usize>();

const _: () = assert!(NUM_CLASSES == 64 && SMALL_REQUEST_THRESHOLD.is_multiple_of(ALIGNMENT));
const _: () = assert!(POOL_HEADER.is_multiple_of(ALIGNMENT) && ARENA_HEADER.is_multiple_of(ALIGNMENT));
// The last pool loses the tail where pool 0 loses the arena header: the
// two-blocks-per-pool check below covers both.
const _: () = assert!(ARENA_TAIL <= ARENA_HEADER);
// Every computed geometry is valid (so its pools hold two of their largest
// blocks after both headers, and a pool on a `used` list always has a free or
// carvable block after a pop), and its arenas can lie anywhere in the window.
const _: () = {
    let mut shift = 12;
    while shift < usize::BITS - 1 {
        let mut len = 1 << shift;
        while len < (1 << shift) + (1 << (shift - 1)) + 1 {
            let mut i = 0;
            while i < 2 {
                let g = if i == 0 { Geometry::for_window(len) } else { Geometry::for_region(len) };
                assert!(g.validate().is_ok());
                let covered = shift < MAX_ARENA_SHIFT + ARENA_SLOTS.trailing_zeros();
                assert!(len.div_ceil(g.arena_size()) <= ARENA_SLOTS || g.threshold == 0 || !covered);
                i += 1;
            }
            len += 1 << (shift - 1);
        }
        shift += 1;
    }
};

/// The size class serving `size` bytes aligned to `align` (at most 16) with
/// class granularity `1 << class_shift` (8 or 16). A size of 0 is served as 1.
#[inline]
pub(crate) const fn size_class(size: usize, align: usize, class_shift: u32) -> usize {
    (size.saturating_sub(1) | ((align >> 1) & 8)) >> class_shift
}

/// Block size of size class `class` with granularity `1 << class_shift`.
#[inline]
pub(crate) const fn class_size(class: usize, class_shift: u32) -> usize {
    (class + 1) << class_shift
}

/// Header at the start of every pool: what the lock holder updates (through
/// `&mut`), then the pool's class, apart, because thread caches read it
/// without the lock ([`block_class`]) — a `&mut` over the whole header
/// would race with that read.
#[repr(C)]
struct Pool {
    h: PoolHead,
    /// Size class, or `UNUSED_CLASS` for a pool with no block in use (a
    /// free or kept pool). Written only under the lock, while the pool has
    /// no block in use.
    class: AtomicU32,
}

#[cfg(target_pointer_width = "64")]
const _: () = assert!(size_of::<Pool>() == 48, "the pool header stays three 16-byte units");

/// The part of a pool's header only the lock holder touches.
#[repr(C)]
struct PoolHead {
    /// First free block, or null when the pool is full.
    freeblock: *mut u8,
    /// Next pool in `used[class]` or in the arena's free-pool list.
    next: *mut Pool,
    /// Previous pool in `used[class]`.
    prev: *mut Pool,
    /// Blocks handed out.
    ref_count: u32,
    /// Offset of the next never-used block.
    next_offset: u32,
    /// Last offset at which a whole block still fits.
    max_next_offset: u32,
    /// Block size of the class.
    block_size: u32,
}

/// Read access to the head through a shared reference (statistics and
/// invariant walks); updates go through `&mut (*pool).h` only.
impl core::ops::Deref for Pool {
    type Target = PoolHead;
    fn deref(&self) -> &PoolHead {
        &self.h
    }
}

/// Header of an arena, in pool 0 right after that pool's header.
#[repr(C)]
struct Arena {
    /// Empty pools that were carved before.
    freepools: *mut Pool,
    /// Neighbours in `usable_arenas`.
    next: *mut Arena,
    prev: *mut Arena,
    /// Next pool to carve.
    pool_address: *mut u8,
    /// Free pools, carved or not.
    nfreepools: u32,
    /// Pools in the arena.
    ntotalpools: u32,
    /// Pools of the arena kept empty for their class (see `kept`).
    nkept: u32,
}

const POOL_HEADER: usize = size_of::<Pool>().next_multiple_of(ALIGNMENT);
const ARENA_HEADER: usize = size_of::<Arena>().next_multiple_of(ALIGNMENT);

/// Why layer +2 could not allocate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocateError {
    /// No pool has room and no new arena could be had from the page source.
    NoArena(PagesError),
    /// The page source handed out an arena outside its own window.
    ArenaOutsideWindow {
        /// The arena's address.
        addr: usize,
    },
}

impl fmt::Display for AllocateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoArena(e) => write!(f, "no pool has room and no arena could be had: {e}"),
            Self::ArenaOutsideWindow { addr } => {
                write!(f, "the page source handed out an arena at {addr:#x}, outside its window")
            }
        }
    }
}

impl core::error::Error for AllocateError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::NoArena(e) => Some(e),
            Self::ArenaOutsideWindow { .. } => None,
        }
    }
}

/// Layer +2: arenas → pools → size-classed blocks.
///
/// The layer's engine, public for the layer tests and benchmarks and hidden
/// from the API: programs use it through [`Heap`](crate::Heap).
#[doc(hidden)]
pub struct ObjectAllocator {
    used: [*mut Pool; CLASS_TABLE],
    /// Per class, the pool kept empty when its last block was freed, or
    /// null: see *Kept pools* in the module docs.
    kept: [*mut Pool; CLASS_TABLE],
    usable_arenas: *mut Arena,
    nfp2lasta: [*mut Arena; NFP_TABLE],
    pool_mask: usize,
    arena_mask: usize,
    geometry: Geometry,
    window_start: usize,
    window_slots: usize,
    arena_map: [u64; ARENA_MAP_WORDS],
    counters: ArenaCounters,
    /// Pools holding at least one block, or kept, per class.
    class_pools: [u32; CLASS_TABLE],
    /// The key free blocks are tagged with ([`KEY`]), made with the first
    /// arena (before any block exists); unused where tags cannot be read
    /// ([`TAGS`]).
    key: usize,
}

// SAFETY: the allocator owns the arenas its pointers point into; it moves
// between threads only as a whole, behind the front door's lock.
unsafe impl Send for ObjectAllocator {}

impl fmt::Debug for ObjectAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectAllocator")
            .field("geometry", &self.geometry)
            .field("arenas", &self.counters)
            .finish()
    }
}

impl ObjectAllocator {
    /// An allocator for pages from a source whose window is `(start, len)`,
    /// or why `geometry` cannot serve ([`Geometry::validate`]).
    pub const fn new(geometry: Geometry, window: (usize, usize)) -> Result<Self, GeometryError> {
        match geometry.validate() {
            Ok(geometry) => Ok(Self::with_valid(geometry, window)),
            Err(e) => Err(e),
        }
    }

    /// [`new`](Self::new) with a geometry that passed [`Geometry::validate`].
    const fn with_valid(geometry: Geometry, window: (usize, usize)) -> Self {
        let mut object = Self::UNSET;
        object.set_window(geometry, window);
        object
    }

    /// An allocator of no window and no geometry, all zeros (so that a heap
    /// static lies in `.bss`): it serves and owns nothing until
    /// [`set_window`](Self::set_window).
    pub(crate) const UNSET: Self = Self {
        used: [ptr::null_mut(); CLASS_TABLE],
        kept: [ptr::null_mut(); CLASS_TABLE],
        usable_arenas: ptr::null_mut(),
        nfp2lasta: [ptr::null_mut(); NFP_TABLE],
        pool_mask: 0,
        arena_mask: 0,
        geometry: Geometry { arena_shift: 0, pool_shift: 0, class_shift: 0, threshold: 0 },
        window_start: 0,
        window_slots: 0,
        arena_map: [0; ARENA_MAP_WORDS],
        counters: ArenaCounters { allocated_total: 0, reclaimed: 0, high_water: 0, current: 0, borrowed: 0 },
        class_pools: [0; CLASS_TABLE],
        key: 0,
    };

    /// Gives an allocator that has never had an arena the window of its
    /// page source and a geometry that passed [`Geometry::validate`], in
    /// place (field by field: no table is a temporary on the stack).
    ///
    /// # Panics
    ///
    /// If it has had an arena.
    pub(crate) const fn set_window(&mut self, geometry: Geometry, window: (usize, usize)) {
        assert!(self.counters.allocated_total == 0, "layer +2 has had arenas");
        self.geometry = geometry;
        // Where the layer is not built, nothing else is read (and its map
        // is empty: no slot at all).
        if ON {
            self.set_slots(window);
        }
    }

    /// The masks of the geometry, and the arena slots that cover `window`.
    const fn set_slots(&mut self, window: (usize, usize)) {
        let arena_size = self.geometry.arena_size();
        // Slots are counted from the arena boundary at or below the window.
        let start = window.0 & !(arena_size - 1);
        let end = window.0.saturating_add(window.1);
        let slots = (end - start).div_ceil(arena_size);
        self.pool_mask = !(self.geometry.pool_size() - 1);
        self.arena_mask = !(arena_size - 1);
        self.window_start = start;
        self.window_slots = if slots > ARENA_SLOTS { ARENA_SLOTS } else { slots };
    }

    /// The arena and pool sizes.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Largest request this layer serves.
    #[inline]
    pub fn threshold(&self) -> usize {
        if ON { self.geometry.threshold } else { 0 }
    }

    /// Arena counters.
    pub fn counters(&self) -> ArenaCounters {
        self.counters
    }

    /// Whether `ptr` lies in one of this allocator's arenas. O(1), reads no
    /// arena memory.
    #[inline]
    pub fn owns(&self, ptr: *const u8) -> bool {
        if !ON {
            return false;
        }
        let slot = (ptr as usize).wrapping_sub(self.window_start) >> self.geometry.arena_shift;
        // (The mask keeps the index in the table at the cost of an `and`:
        // `window_slots` never exceeds it, which the compiler cannot see.)
        slot < self.window_slots && self.arena_map[(slot / 64) & ARENA_MAP_MASK] & (1 << (slot % 64)) != 0
    }

    /// The ownership bitmap: one bit per arena slot from
    /// [`slots_start`](Self::slots_start) (for a copy threads read without
    /// the heap's lock).
    #[cfg(all(feature = "caches", not(feature = "debug")))]
    pub(crate) fn arena_bitmap(&self) -> [u64; ARENA_MAP_WORDS] {
        self.arena_map
    }

    /// The address arena slot 0 starts at.
    #[cfg(all(feature = "caches", not(feature = "debug")))]
    pub(crate) fn slots_start(&self) -> usize {
        self.window_start
    }

    fn set_slot(&mut self, base: usize, present: bool) {
        let slot = (base - self.window_start) >> self.geometry.arena_shift;
        if present {
            self.arena_map[slot / 64] |= 1 << (slot % 64);
        } else {
            self.arena_map[slot / 64] &= !(1 << (slot % 64));
        }
    }

    /// Allocates a block of `size` bytes aligned to `align`
    /// (`size <= self.threshold()`, `align <= ALIGNMENT`): from a pool of
    /// its class, or from a new pool.
    ///
    /// # Safety
    ///
    /// `source` must be the page source this allocator has taken every arena
    /// from: the same one on every call since [`new`](Self::new).
    #[inline]
    pub unsafe fn allocate(
        &mut self,
        size: usize,
        align: usize,
        source: &mut impl PageSource,
    ) -> Result<NonNull<u8>, AllocateError> {
        match self.allocate_from_pools(size, align) {
            Some(p) => Ok(p),
            // SAFETY: the caller's promise about `source`.
            None => unsafe { self.allocate_new_pool(size, align, source) },
        }
    }

    /// The fast path of [`allocate`](Self::allocate): a block from a pool of
    /// the class that has one free, or `None`.
    #[inline]
    pub fn allocate_from_pools(&mut self, size: usize, align: usize) -> Option<NonNull<u8>> {
        debug_assert!(size <= self.geometry.threshold && align <= ALIGNMENT);
        // (Masked as in `owns`: a small request's class is in the table.)
        let class = size_class(size, align, self.geometry.class_shift) & CLASS_MASK;
        let mut pool = self.used[class];
        if pool.is_null() {
            pool = self.kept[class];
            // A kept pool serves where a new pool would come from its arena
            // (else `allocate_new_pool` gives it back first).
            // SAFETY: the arena of a live pool is live.
            if pool.is_null() || !unsafe { self.first_once_freed(self.arena_of(pool)) } {
                return None;
            }
            // SAFETY: a kept pool is a live, empty pool of class `class`.
            unsafe { self.take_kept(pool, class) };
        }
        // SAFETY: pools on `used[class]` are live pools of class `class`
        // with a free or carvable block.
        Some(unsafe { self.pop(pool, class) })
    }

    /// Puts `class`'s kept pool, `pool`, back on `used[class]` (empty
    /// then, which is not: the caller pops a block from it).
    ///
    /// # Safety
    ///
    /// `pool` must be `kept[class]`, non-null.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    unsafe fn take_kept(&mut self, pool: *mut Pool, class: usize) {
        self.kept[class] = ptr::null_mut();
        // SAFETY: the arena of a live pool is live; a kept pool was the
        // only one on `used[class]`, and is still linked to none. Its class
        // is written back while none of its blocks is in use.
        unsafe {
            (*self.arena_of(pool)).nkept -= 1;
            (*pool).class.store(class as u32, Relaxed);
        }
        self.used[class] = pool;
    }

    /// Whether arena `ao`, given back one more free pool, would be the
    /// first of `usable_arenas` (where new pools come from): wholly
    /// allocated (off the list; then first, with one free pool), or first
    /// already and not tied with the next.
    ///
    /// # Safety
    ///
    /// `ao` must be a live arena.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    unsafe fn first_once_freed(&self, ao: *mut Arena) -> bool {
        // SAFETY: the caller's promise; arenas on the list are live.
        unsafe {
            let a = &*ao;
            a.nfreepools == 0
                || (ao == self.usable_arenas && (a.next.is_null() || (*a.next).nfreepools > a.nfreepools))
        }
    }

    /// The header of the arena `pool` lies in.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn arena_of(&self, pool: *mut Pool) -> *mut Arena {
        pool.cast::<u8>().map_addr(|a| (a & self.arena_mask) + POOL_HEADER).cast::<Arena>()
    }

    /// The slow path of [`allocate`](Self::allocate): a block from a new pool
    /// of its class (taking an arena from `source` if none has a free pool).
    ///
    /// # Safety
    ///
    /// `source` must be the page source this allocator has taken every arena
    /// from: the same one on every call since [`new`](Self::new).
    #[cold]
    pub unsafe fn allocate_new_pool(
        &mut self,
        size: usize,
        align: usize,
        source: &mut impl PageSource,
    ) -> Result<NonNull<u8>, AllocateError> {
        if let Some(p) = self.allocate_from_pools(size, align) {
            return Ok(p);
        }
        let class = size_class(size, align, self.geometry.class_shift);
        if !self.kept[class].is_null() {
            // Kept where a new pool would not come from: it goes back.
            self.release_kept_pool(class, source);
        }
        self.allocate_from_new_pool(class, source)
    }

    /// Whether a new pool needs a new arena (no arena has a free pool).
    pub fn needs_arena(&self) -> bool {
        self.usable_arenas.is_null()
    }

    /// How many pools serve the class of `size` bytes aligned to `align`
    /// now (pools holding at least one block).
    pub fn pools_in_use(&self, size: usize, align: usize) -> usize {
        self.class_pools[size_class(size, align, self.geometry.class_shift)] as usize
    }

    /// Takes a block from `pool`, the head of `used[class]`.
    ///
    /// # Safety
    ///
    /// `pool` must be the head of `used[class]` (or about to become it, with
    /// `freeblock` non-null).
    #[inline]
    unsafe fn pop(&mut self, pool: *mut Pool, class: usize) -> NonNull<u8> {
        // SAFETY: the caller passes a live pool header.
        let p = unsafe { &mut (*pool).h };
        let block = p.freeblock;
        p.ref_count += 1;
        // SAFETY: `block` is a free block of this pool: its first word is the
        // free-list link, its second (if it has one) its tag, cleared now.
        let next = unsafe {
            self.set_free_tag(block, p.block_size, false);
            *block.cast::<*mut u8>()
        };
        if !next.is_null() {
            p.freeblock = next;
        } else if p.next_offset <= p.max_next_offset {
            // The free list ran dry: carve the next never-used block.
            // SAFETY: `next_offset <= max_next_offset` keeps the block inside
            // the pool.
            let fresh = unsafe { pool.cast::<u8>().add(p.next_offset as usize) };
            p.next_offset += p.block_size;
            // SAFETY: `fresh` is a block of this pool that nobody uses.
            unsafe { *fresh.cast::<*mut u8>() = ptr::null_mut() };
            p.freeblock = fresh;
        } else {
            // Full: the pool leaves `used[class]`.
            p.freeblock = ptr::null_mut();
            self.used[class] = p.next;
            if !p.next.is_null() {
                // SAFETY: pools on `used` lists are live.
                unsafe { (*p.next).h.prev = ptr::null_mut() };
            }
            p.next = ptr::null_mut();
        }
        // SAFETY: `block` came from the pool's free list, never null.
        unsafe { NonNull::new_unchecked(block) }
    }

    #[cold]
    fn allocate_from_new_pool(
        &mut self,
        class: usize,
        source: &mut impl PageSource,
    ) -> Result<NonNull<u8>, AllocateError> {
        if self.usable_arenas.is_null() {
            // Every arena's pools are in use or kept: the kept ones serve
            // before a new arena is taken.
            self.release_kept(None, source);
        }
        if self.usable_arenas.is_null() {
            let arena = self.new_arena(source)?;
            self.usable_arenas = arena;
            // SAFETY: `new_arena` returns an initialised arena header.
            let nf = unsafe { (*arena).nfreepools } as usize;
            self.nfp2lasta[nf] = arena;
        }
        let ao = self.usable_arenas;
        // SAFETY: arenas on `usable_arenas` are live, initialised headers.
        let pool = unsafe { self.take_pool(ao) };
        // SAFETY: `take_pool` gives a pool of a live arena that is on no
        // list; after `lay_out`, it has a free block.
        unsafe {
            self.lay_out(pool, class);
            self.push_used(pool, class);
            Ok(self.pop(pool, class))
        }
    }

    /// Takes an empty pool from arena `ao` (one it has carved before, else
    /// the next it has not), and keeps `usable_arenas` sorted by free
    /// pools: `ao`, the first arena, becomes the last with one fewer, or
    /// leaves the list when it has none left.
    ///
    /// # Safety
    ///
    /// `ao` is the first arena of `usable_arenas`.
    unsafe fn take_pool(&mut self, ao: *mut Arena) -> *mut Pool {
        // SAFETY: the caller's promise: a live arena header.
        let a = unsafe { &mut *ao };
        let nf = a.nfreepools as usize;
        if self.nfp2lasta[nf] == ao {
            self.nfp2lasta[nf] = ptr::null_mut();
        }
        if nf > 1 {
            self.nfp2lasta[nf - 1] = ao;
        }
        let pool = if !a.freepools.is_null() {
            let pool = a.freepools;
            // SAFETY: pools on an arena's free list are live headers.
            a.freepools = unsafe { (*pool).h.next };
            pool
        } else {
            let pool = a.pool_address.cast::<Pool>();
            // SAFETY: an arena with free pools and none on its list has
            // room for the next pool at `pool_address`, inside the arena.
            unsafe {
                a.pool_address = a.pool_address.add(self.geometry.pool_size());
                ptr::write(&raw mut (*pool).class, AtomicU32::new(UNUSED_CLASS));
            }
            pool
        };
        a.nfreepools -= 1;
        if a.nfreepools == 0 {
            // Wholly allocated: it leaves `usable_arenas`.
            // SAFETY: `ao` is on the list.
            unsafe { self.unlink_arena(ao) };
        }
        pool
    }

    /// Lays out pool `pool` for `class`, unless it was last used for that
    /// class (then all its carved blocks are on its free list already).
    ///
    /// # Safety
    ///
    /// `pool` is a live, empty pool of a live arena.
    unsafe fn lay_out(&mut self, pool: *mut Pool, class: usize) {
        // SAFETY: the caller's promise.
        if unsafe { (*pool).class.load(Relaxed) } == class as u32 {
            return;
        }
        // Fresh, or last used for another class: lay out its first block.
        let first = if pool.addr() & self.arena_mask == pool.addr() {
            POOL_HEADER + ARENA_HEADER
        } else {
            POOL_HEADER
        };
        let size = class_size(class, self.geometry.class_shift);
        let end = self.pool_end(pool.addr());
        // SAFETY: the caller's promise: the pool's header and its first
        // block (the pool holds at least one of any class) are ours.
        unsafe {
            let block = pool.cast::<u8>().add(first);
            *block.cast::<*mut u8>() = ptr::null_mut();
            (*pool).class.store(class as u32, Relaxed);
            let p = &mut (*pool).h;
            p.block_size = size as u32;
            p.ref_count = 0;
            p.freeblock = block;
            p.next_offset = (first + size) as u32;
            p.max_next_offset = (end - size) as u32;
        }
    }

    /// Puts pool `pool` at the head of `class`'s list of used pools.
    ///
    /// # Safety
    ///
    /// `pool` is a live pool laid out for `class`, on no list.
    unsafe fn push_used(&mut self, pool: *mut Pool, class: usize) {
        self.class_pools[class] += 1;
        let next = self.used[class];
        // SAFETY: the caller's promise; pools on `used` lists are live.
        unsafe {
            (*pool).h.next = next;
            (*pool).h.prev = ptr::null_mut();
            if !next.is_null() {
                (*next).h.prev = pool;
            }
        }
        self.used[class] = pool;
    }

    /// Takes arena `ao` off `usable_arenas`.
    ///
    /// # Safety
    ///
    /// `ao` is a live arena on the list (whose neighbours are live too).
    unsafe fn unlink_arena(&mut self, ao: *mut Arena) {
        // SAFETY: the caller's promise.
        unsafe {
            let a = &mut *ao;
            if a.prev.is_null() {
                self.usable_arenas = a.next;
            } else {
                (*a.prev).next = a.next;
            }
            if !a.next.is_null() {
                (*a.next).prev = a.prev;
            }
            a.next = ptr::null_mut();
            a.prev = ptr::null_mut();
        }
    }

    /// Puts arena `ao` on `usable_arenas` right after `after`, or at the
    /// front if `after` is null.
    ///
    /// # Safety
    ///
    /// `ao` is a live arena on no list; `after` is null or a live arena on
    /// the list.
    unsafe fn link_arena_after(&mut self, ao: *mut Arena, after: *mut Arena) {
        // SAFETY: the caller's promise; arenas on the list are live.
        unsafe {
            let a = &mut *ao;
            a.prev = after;
            a.next = if after.is_null() { self.usable_arenas } else { (*after).next };
            if !a.next.is_null() {
                (*a.next).prev = ao;
            }
            if after.is_null() {
                self.usable_arenas = ao;
            } else {
                (*after).next = ao;
            }
        }
    }

    /// For a request of `size` bytes aligned to `align` when
    /// [`allocate`](Self::allocate) fails: a free block of the smallest
    /// larger class that has one, of at most `max_block` bytes (a class of
    /// 16-byte multiples for a 16-aligned request), rather than a failure
    /// while free blocks sit in other classes' pools. `None` if there is
    /// none. The block frees like any other (its pool knows its class), and
    /// the front door's realloc and the thread caches already treat a block
    /// larger than its layout's class. O(classes): for the out-of-memory
    /// path only. Counted in [`ArenaCounters::borrowed`].
    #[cold]
    pub fn borrow(&mut self, size: usize, align: usize, max_block: usize) -> Option<NonNull<u8>> {
        debug_assert!(size <= self.geometry.threshold && align <= ALIGNMENT);
        let class = size_class(size, align, self.geometry.class_shift);
        // With 8-byte classes, the odd ones are the 16-byte multiples.
        let step = if self.geometry.class_shift == 3 && align == ALIGNMENT { 2 } else { 1 };
        // The largest class whose blocks are at most `max_block` bytes.
        let last = (max_block.min(self.geometry.threshold) >> self.geometry.class_shift).saturating_sub(1);
        let larger = (class + step..=last).step_by(step);
        let (c, pool) = larger.map(|c| (c, self.used[c])).find(|(_, pool)| !pool.is_null())?;
        self.counters.borrowed += 1;
        // SAFETY: `pool` heads `used[c]`, so it has a free or carvable block.
        Some(unsafe { self.pop(pool, c) })
    }

    fn new_arena(&mut self, source: &mut impl PageSource) -> Result<*mut Arena, AllocateError> {
        // Every block's tag is made with the key, before any block is freed.
        if TAGS && self.key == 0 {
            if KEY.load(Relaxed) == 0 {
                make_key();
            }
            self.key = KEY.load(Relaxed);
        }
        let size = self.geometry.arena_size();
        let base = source.allocate_pages(size, size).map_err(AllocateError::NoArena)?;
        let addr = base.as_ptr() as usize;
        let slot = addr.wrapping_sub(self.window_start) >> self.geometry.arena_shift;
        if slot >= self.window_slots {
            // SAFETY: the pages were just allocated from `source` with this size.
            unsafe { source.deallocate_pages(base, size) };
            return Err(AllocateError::ArenaOutsideWindow { addr });
        }
        self.set_slot(addr, true);
        // The statistics walk arenas from the ownership bitmap (`arenas`).
        let _ = base.as_ptr().expose_provenance();
        // SAFETY: the arena's pages are ours; its header lies in pool 0.
        let arena = unsafe { base.as_ptr().add(POOL_HEADER) }.cast::<Arena>();
        let pools = self.geometry.pools_per_arena() as u32;
        // SAFETY: the arena's pages are ours; the header fits in pool 0 after
        // that pool's header.
        unsafe {
            arena.write(Arena {
                freepools: ptr::null_mut(),
                next: ptr::null_mut(),
                prev: ptr::null_mut(),
                pool_address: base.as_ptr(),
                nfreepools: pools,
                ntotalpools: pools,
                nkept: 0,
            })
        };
        let c = &mut self.counters;
        c.allocated_total += 1;
        c.current += 1;
        c.high_water = c.high_water.max(c.current);
        Ok(arena)
    }

    /// `layout` (a small one) rounded up to the block size of its class.
    pub fn class_layout(&self, layout: core::alloc::Layout) -> core::alloc::Layout {
        let shift = self.geometry.class_shift;
        let size = class_size(size_class(layout.size(), layout.align(), shift), shift);
        core::alloc::Layout::from_size_align(size, layout.align()).unwrap_or(layout)
    }

    /// Size of the block that holds `ptr` (a block of this allocator).
    ///
    /// # Safety
    ///
    /// `ptr` must be a live block of this allocator.
    #[inline]
    pub unsafe fn block_size(&self, ptr: NonNull<u8>) -> usize {
        let pool = reach(ptr).as_ptr().map_addr(|a| a & self.pool_mask).cast::<Pool>();
        // SAFETY: a live block's pool header is initialised.
        unsafe { (*pool).h.block_size as usize }
    }

    /// Where the first block of the pool at `pool` starts: after the pool's
    /// header, and in an arena's pool 0 after the arena's header too.
    fn first_offset(&self, pool: usize) -> usize {
        if pool & self.arena_mask == pool { POOL_HEADER + ARENA_HEADER } else { POOL_HEADER }
    }

    /// Where the blocks of the pool at `pool` must end: the pool's end, or
    /// for an arena's last pool, [`ARENA_TAIL`] bytes before it.
    fn pool_end(&self, pool: usize) -> usize {
        let size = self.geometry.pool_size();
        if (pool + size) & !self.arena_mask == 0 { size - ARENA_TAIL } else { size }
    }
}
