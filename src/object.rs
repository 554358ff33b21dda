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
//!   initialisation.
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

use core::fmt;
use core::mem::size_of;
use core::ptr::{self, NonNull};

use crate::source::{PAGE_SIZE, PageSource, PagesError, reach};
use crate::sync::{AtomicU32, AtomicUsize};
use core::sync::atomic::Ordering::Relaxed;

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

/// A free block of at least two words holds a *tag* in its second word —
/// a key made once per process, XOR its address — from the time it is
/// freed (onto its pool's free list, or into a thread's cache) until it is
/// handed out again, which clears it: a second free of a block finds its
/// tag and is refused, wherever the block sits in the free list (glibc's
/// tcache keeps such a key). A live block never holds its own tag — it is
/// cleared when the block leaves a pool or a cache, and no other block's
/// tag matches its address.
///
/// The key of the tags, made once per process from addresses that differ
/// from run to run (ASLR); 0 until then.
pub(crate) static KEY: AtomicUsize = AtomicUsize::new(0);

/// Makes [`KEY`] if it is not made yet.
#[cold]
pub(crate) fn make_key() {
    let here = 0u8;
    let mut x = (&raw const here as usize as u64) ^ (&raw const KEY as usize as u64).rotate_left(29);
    // splitmix64's finaliser.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    let _ = KEY.compare_exchange(0, (x as usize) | 1, Relaxed, Relaxed);
}

/// Whether bins can be tagged: a block's second word is read with a frozen
/// load (see [`frozen_word`]), which needs inline assembly; elsewhere, and
/// under Miri, a second free is found by walking a thread's bin, and
/// pools do not tag.
pub(crate) const TAGS: bool =
    cfg!(all(not(miri), target_pointer_width = "64", any(target_arch = "x86_64", target_arch = "aarch64")));

/// The word at `p` as whatever bits it holds, initialised or not: a cached
/// block's tag, or (in a block that is not cached) the caller's data, which
/// may be uninitialised or padding. A plain read of uninitialised memory as
/// an integer is undefined behaviour in Rust; a load in inline assembly
/// yields the bits there, as glibc's C reads them.
///
/// # Safety
///
/// `p` must be valid for reading a word and aligned to one.
#[cfg(all(not(miri), target_pointer_width = "64", any(target_arch = "x86_64", target_arch = "aarch64")))]
#[inline(always)]
pub(crate) unsafe fn frozen_word(p: *const usize) -> usize {
    let v: usize;
    // SAFETY: the caller's promise; the load only reads.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        core::arch::asm!("mov {v}, qword ptr [{p}]", p = in(reg) p, v = out(reg) v,
            options(nostack, preserves_flags, readonly));
    }
    // SAFETY: as above.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        core::arch::asm!("ldr {v}, [{p}]", p = in(reg) p, v = out(reg) v, options(nostack, preserves_flags, readonly));
    }
    v
}

/// Never called: bins are not tagged where frozen loads are unavailable.
///
/// # Safety
///
/// None needed.
#[cfg(not(all(
    not(miri),
    target_pointer_width = "64",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
#[inline(always)]
pub(crate) unsafe fn frozen_word(_: *const usize) -> usize {
    0
}

/// The tag a free block holds in its second word (see [`KEY`]).
#[cfg_attr(not(feature = "caches"), allow(dead_code))]
#[inline(always)]
pub(crate) fn free_tag(block: NonNull<u8>) -> usize {
    KEY.load(Relaxed) ^ block.as_ptr() as usize
}

/// Whether `x` is a multiple of `d`, a block size (a multiple of 8 up to
/// 1 KiB), without a division (it sits on the free paths): with
/// `d = m·2^k`, `m` odd, `x` is a multiple exactly when `x·m⁻¹ mod 2^32`
/// rotated right by `k` is at most `⌊(2^32 − 1) / d⌋` (Lemire, Kaser and
/// Kurz's test), from a table made at compile time.
#[inline(always)]
pub(crate) const fn is_multiple(d: u32, x: u32) -> bool {
    let (inverse, k, limit) = BLOCK_DIVISORS[(d as usize / 8).wrapping_sub(1) & 127];
    x.wrapping_mul(inverse).rotate_right(k) <= limit
}

/// For every multiple of 8 up to 1 KiB (the block sizes of every class of
/// either granularity): [`odd_inverse`], the power of two, and the limit
/// of [`is_multiple`].
const BLOCK_DIVISORS: [(u32, u32, u32); 128] = {
    let mut t = [(0, 0, 0); 128];
    let mut i = 0;
    while i < 128 {
        let d = 8 * (i as u32 + 1);
        t[i] = (odd_inverse(d), d.trailing_zeros(), u32::MAX / d);
        i += 1;
    }
    t
};
const _: () = assert!(class_size(NUM_CLASSES - 1, 4) <= 8 * BLOCK_DIVISORS.len());

/// The inverse modulo 2^32 of the odd part of `d` (not 0), by Newton's
/// iteration: an odd `m` is its own inverse to 3 bits, and each step
/// doubles the bits.
pub(crate) const fn odd_inverse(d: u32) -> u32 {
    let m = d >> d.trailing_zeros();
    let mut inv = m;
    let mut i = 0;
    while i < 4 {
        inv = inv.wrapping_mul(2u32.wrapping_sub(m.wrapping_mul(inv)));
        i += 1;
    }
    inv
}

/// The size class of the block that starts at `ptr`, read from its pool's
/// header without the allocator's lock (a thread cache files a freed block
/// by what it is, not by the layout it was freed with); `None` for a pool
/// not in use, or a pointer that is not where a block of its pool's class
/// starts (inside a block, or in the headers) — found from the address and
/// the class alone, as no other field of the header may be read without
/// the lock. (A pointer at a block boundary of the pool's tail not yet
/// carved is not told apart: that takes the lock.)
///
/// # Safety
///
/// `ptr` must lie in a live arena of an allocator of geometry `g`, in a
/// pool with a block in use (so its class is not being written), and carry
/// the provenance of the arena's pages.
#[cfg_attr(not(feature = "caches"), allow(dead_code))]
#[inline(always)]
pub(crate) unsafe fn block_class(ptr: NonNull<u8>, g: Geometry) -> Option<usize> {
    let addr = ptr.as_ptr() as usize;
    let pool = addr & !((1usize << g.pool_shift) - 1);
    // SAFETY: the caller's promise: a live pool header, whose class only
    // changes while none of its blocks is in use; atomic, so this read does
    // not race with the lock holder's writes to other pools' headers.
    let class = unsafe { (*ptr.as_ptr().with_addr(pool).cast::<Pool>()).class.load(Relaxed) } as usize;
    if class >= NUM_CLASSES {
        return None;
    }
    let at_arena_start = pool & ((1usize << g.arena_shift) - 1) == 0;
    let first = if at_arena_start { POOL_HEADER + ARENA_HEADER } else { POOL_HEADER };
    let size = class_size(class, g.class_shift);
    let offset = addr - pool;
    (offset >= first && is_multiple(size as u32, (offset - first) as u32)).then_some(class)
}

const MIN_POOL_SHIFT: u32 = 11;
const MAX_ARENA_SHIFT: u32 = 31 + MAX_POOLS_PER_ARENA.trailing_zeros();

/// Arena and pool sizes, fixed when the allocator is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// log2 of the arena size.
    pub arena_shift: u32,
    /// log2 of the pool size.
    pub pool_shift: u32,
    /// log2 of the size-class granularity: 3 (64 classes of 8 bytes) or 4
    /// (32 classes of 16 bytes).
    pub class_shift: u32,
    /// Largest request this layer serves (512, less on small heaps, 0 when
    /// the layer is off).
    pub threshold: usize,
}

impl Geometry {
    /// CPython's geometry: 1 MiB arenas of 16 KiB pools, 16-byte classes.
    pub const CPYTHON: Self = Self { arena_shift: 20, pool_shift: 14, class_shift: 4, threshold: 512 };

    /// The geometry for a page source whose window is `len` bytes.
    ///
    /// From 1 MiB up: 512-byte threshold, 8-byte classes, arenas of about 1/8
    /// of the window (at most 1 MiB unless the window needs bigger arenas to
    /// fit [`ARENA_SLOTS`]), pools of 16 KiB (from 16 MiB) or 4 KiB.
    ///
    /// Small heaps cannot afford a pool per size class of CPython's 32 (that
    /// alone would fill 64 KiB). From 256 KiB to 1 MiB this layer serves
    /// requests of up to 256 bytes from 2 KiB pools in 8 KiB arenas. Under
    /// 256 KiB it is off (threshold 0) and every request goes to layer 0's
    /// first fit: segregating even the smallest requests into pools serves
    /// fewer allocations before the first failure, because small objects no
    /// longer fill the holes that first fit leaves between larger ones
    /// (*Measured choices* in `docs/DESIGN.md`).
    ///
    /// Without the `pools` feature the layer is off at every size.
    pub const fn for_window(len: usize) -> Self {
        let log = if len == 0 { 0 } else { usize::BITS - 1 - len.leading_zeros() };
        if log < 18 || !ON {
            return Self { arena_shift: 11, pool_shift: 9, class_shift: 3, threshold: 0 };
        }
        if log < 20 {
            return Self { arena_shift: 13, pool_shift: MIN_POOL_SHIFT, class_shift: 4, threshold: 256 };
        }
        let mut pool_shift = if log >= 24 { 14 } else { 12 };
        let mut arena_shift = log.saturating_sub(3);
        if arena_shift > 20 {
            arena_shift = 20;
        }
        if arena_shift < pool_shift + 2 {
            arena_shift = pool_shift + 2;
        }
        if arena_shift > pool_shift + 6 {
            arena_shift = pool_shift + 6;
        }
        // The ownership bitmap covers the whole window with ARENA_SLOTS
        // slots (log2 rounded up: a 6 GiB window needs 2 MiB arenas). A
        // window not aligned to arenas spans one slot more, a partial one,
        // that no arena fits in.
        let log_ceil = if len.is_power_of_two() { log } else { log + 1 };
        let slots_shift = ARENA_SLOTS.trailing_zeros();
        if log_ceil > arena_shift + slots_shift {
            arena_shift = log_ceil - slots_shift;
        }
        // Pools stay within `u32` offsets: windows past 2^49 bytes (more
        // than any x86_64 address space) are covered only in part.
        if arena_shift > MAX_ARENA_SHIFT {
            arena_shift = MAX_ARENA_SHIFT;
        }
        if arena_shift > pool_shift + 6 {
            pool_shift = arena_shift - 6;
        }
        // Arenas come from the page source in whole, aligned pages.
        if arena_shift < PAGE_SIZE.trailing_zeros() {
            arena_shift = PAGE_SIZE.trailing_zeros();
        }
        Self { arena_shift, pool_shift, class_shift: 3, threshold: SMALL_REQUEST_THRESHOLD }
    }

    /// The geometry for a [committed](crate::PageSource::COMMITTED) page
    /// source (a region) whose window is `len` bytes: [`for_window`]'s
    /// from [`REGION_POOLS_FROM`] up, and this layer off below it, where
    /// layer 0 serves every request: on a smaller region a pool per size
    /// class strands more memory than layer 0's headers cost (*Measured
    /// choices* in `docs/DESIGN.md`).
    ///
    /// Without the `pools` feature the layer is off at every size.
    ///
    /// [`for_window`]: Self::for_window
    pub const fn for_region(len: usize) -> Self {
        if len < REGION_POOLS_FROM || !ON {
            return Self { arena_shift: 11, pool_shift: 9, class_shift: 3, threshold: 0 };
        }
        Self::for_window(len)
    }

    /// Bytes per arena.
    pub const fn arena_size(&self) -> usize {
        1 << self.arena_shift
    }

    /// Bytes per pool.
    pub const fn pool_size(&self) -> usize {
        1 << self.pool_shift
    }

    /// Pools per arena.
    pub const fn pools_per_arena(&self) -> usize {
        1 << (self.arena_shift - self.pool_shift)
    }

    /// Number of size classes in use.
    pub const fn classes(&self) -> usize {
        self.threshold >> self.class_shift
    }

    /// Checks that this geometry can serve: 8- or 16-byte classes; a
    /// threshold of at most [`SMALL_REQUEST_THRESHOLD`], a multiple of 16;
    /// pools of at most 2 GiB that hold both headers and two of the largest
    /// blocks; arenas of whole pages (once the layer is on) holding 4 to
    /// [`MAX_POOLS_PER_ARENA`] pools. Every geometry of [`for_window`] and
    /// [`for_region`] passes (checked at compile time).
    ///
    /// [`for_window`]: Self::for_window
    /// [`for_region`]: Self::for_region
    pub const fn validate(self) -> Result<Self, GeometryError> {
        if self.class_shift != 3 && self.class_shift != 4 {
            return Err(GeometryError::ClassShift(self.class_shift));
        }
        if self.threshold > SMALL_REQUEST_THRESHOLD
            || !self.threshold.is_multiple_of(ALIGNMENT)
            || (self.threshold > 0 && !ON)
        {
            return Err(GeometryError::Threshold(self.threshold));
        }
        if self.pool_shift > 31
            || (1usize << self.pool_shift) < POOL_HEADER + ARENA_HEADER + 2 * self.threshold
        {
            return Err(GeometryError::PoolSize(self.pool_shift));
        }
        let min_arena = if self.threshold > 0 { PAGE_SIZE.trailing_zeros() } else { MIN_POOL_SHIFT };
        if self.arena_shift < self.pool_shift + 2
            || self.arena_shift > self.pool_shift + MAX_POOLS_PER_ARENA.trailing_zeros()
            || self.arena_shift < min_arena
        {
            return Err(GeometryError::ArenaSize(self.arena_shift));
        }
        Ok(self)
    }
}

/// Why a [`Geometry`] cannot serve (see [`Geometry::validate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeometryError {
    /// `class_shift` is neither 3 nor 4.
    ClassShift(u32),
    /// `threshold` is above [`SMALL_REQUEST_THRESHOLD`], not a multiple of
    /// 16, or not 0 in a build without the `pools` feature.
    Threshold(usize),
    /// A pool of `1 << pool_shift` bytes is over 2 GiB, or cannot hold its
    /// headers and two blocks of the threshold's size.
    PoolSize(u32),
    /// An arena of `1 << arena_shift` bytes holds fewer than 4 or more than
    /// [`MAX_POOLS_PER_ARENA`] pools, or is not whole pages.
    ArenaSize(u32),
}

impl fmt::Display for GeometryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClassShift(s) => write!(f, "class_shift {s} is neither 3 nor 4"),
            Self::Threshold(t) if !ON && *t > 0 => {
                write!(f, "threshold {t}: layer +2 is not built (feature `pools`)")
            }
            Self::Threshold(t) => {
                write!(f, "threshold {t} is over {SMALL_REQUEST_THRESHOLD} or not a multiple of 16")
            }
            Self::PoolSize(s) => write!(f, "pools of 2^{s} bytes cannot hold two blocks of the threshold"),
            Self::ArenaSize(s) => {
                write!(f, "arenas of 2^{s} bytes do not hold 4 to {MAX_POOLS_PER_ARENA} pools")
            }
        }
    }
}

impl core::error::Error for GeometryError {}

/// Header at the start of every pool: what the lock holder updates (through
/// `&mut`), then the pool's class, apart, because thread caches read it
/// without the lock ([`block_class`]) — a `&mut` over the whole header
/// would race with that read.
#[repr(C)]
struct Pool {
    h: PoolHead,
    /// Size class, or `UNUSED_CLASS` for a pool with no block in use.
    /// Written only under the lock, while the pool has no block in use.
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

/// Arena counters, as `sys._debugmallocstats()` reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaCounters {
    /// Arenas ever taken from the page source.
    pub allocated_total: usize,
    /// Arenas given back to the page source.
    pub reclaimed: usize,
    /// Most arenas held at once.
    pub high_water: usize,
    /// Arenas held now.
    pub current: usize,
    /// Blocks served from a larger size class because their own class had
    /// no free block and no arena could be had
    /// (`ObjectAllocator::borrow`).
    pub borrowed: usize,
}

/// Where every byte of the arenas goes, as `sys._debugmallocstats()` shows
/// it. The identity `allocated + available + unused_pools + pool_headers +
/// arena_headers + quantization == arena_bytes` always holds (checked by
/// `ObjectAllocator::check_invariants`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaUsage {
    /// Bytes in blocks handed out (block sizes, not requested sizes).
    pub allocated: usize,
    /// Bytes in free blocks of pools in use, carved or not.
    pub available: usize,
    /// Bytes in pools holding no block (free or never carved).
    pub unused_pools: usize,
    /// Bytes in the headers of pools in use.
    pub pool_headers: usize,
    /// Bytes in arena headers (CPython counts its arena alignment loss here).
    pub arena_headers: usize,
    /// Bytes at the end of pools in use too small for another block.
    pub quantization: usize,
    /// Arenas × arena size.
    pub arena_bytes: usize,
}

impl ArenaUsage {
    /// Whether the accounting identity holds.
    pub fn balances(&self) -> bool {
        self.allocated
            + self.available
            + self.unused_pools
            + self.pool_headers
            + self.arena_headers
            + self.quantization
            == self.arena_bytes
    }
}

/// Per-size-class counts from a walk of every arena.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Pools currently assigned to the class (with at least one block in use).
    pub pools: usize,
    /// Block size of the class.
    pub block_size: usize,
    /// Blocks in use.
    pub blocks_in_use: usize,
    /// Free blocks in those pools, carved or not.
    pub blocks_free: usize,
}

/// Layer +2: arenas → pools → size-classed blocks.
///
/// The layer's engine, public for the layer tests and benchmarks and hidden
/// from the API: programs use it through [`Heap`](crate::Heap).
#[doc(hidden)]
pub struct ObjectAllocator {
    used: [*mut Pool; CLASS_TABLE],
    usable_arenas: *mut Arena,
    nfp2lasta: [*mut Arena; NFP_TABLE],
    pool_mask: usize,
    arena_mask: usize,
    geometry: Geometry,
    window_start: usize,
    window_slots: usize,
    arena_map: [u64; ARENA_MAP_WORDS],
    counters: ArenaCounters,
    /// Pools holding at least one block, per class.
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
        let pool = self.used[class];
        // SAFETY: pools on `used[class]` are live pools of class `class`
        // with a free or carvable block.
        (!pool.is_null()).then(|| unsafe { self.pop(pool, class) })
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
        let class = size_class(size, align, self.geometry.class_shift);
        match NonNull::new(self.used[class]) {
            // SAFETY: as in `allocate_from_pools`.
            Some(pool) => Ok(unsafe { self.pop(pool.as_ptr(), class) }),
            None => self.allocate_from_new_pool(class, source),
        }
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

    /// Frees a block. Returns `false`, changing nothing, on the double
    /// frees this layer can see without a walk: the block's pool has no
    /// block in use (a double free that emptied it), or the block is the
    /// pool's last freed one (`free(p); free(p)`).
    ///
    /// # Safety
    ///
    /// `ptr` must be a live block returned by [`allocate`](Self::allocate) of
    /// this allocator (check with [`owns`](Self::owns) first), and `source`
    /// the page source of every call (see [`allocate`](Self::allocate)).
    #[inline]
    pub unsafe fn deallocate(&mut self, ptr: NonNull<u8>, source: &mut impl PageSource) -> bool {
        // SAFETY: the caller's promise: a pointer into an arena of ours,
        // checked to be a block of its pool before `may_free` asks more.
        if !unsafe { self.is_block_start(ptr) && self.may_free(ptr) } {
            return false;
        }
        // SAFETY: a live block of ours (just checked).
        unsafe { self.release(ptr, source) };
        true
    }

    /// [`deallocate`](Self::deallocate) for a block that a thread cache
    /// held, which holds its tag (the mark of a free block, see [`KEY`])
    /// and keeps it: a second free racing with this one, made without the
    /// lock, finds the block tagged at every moment. Checked as
    /// `deallocate` checks a block, but for the tag.
    ///
    /// # Safety
    ///
    /// As [`deallocate`](Self::deallocate); the block may hold its tag.
    #[cfg(feature = "caches")]
    #[cfg_attr(feature = "debug", allow(dead_code))]
    pub(crate) unsafe fn deallocate_cached(
        &mut self,
        ptr: NonNull<u8>,
        source: &mut impl PageSource,
    ) -> bool {
        // SAFETY: as in `deallocate`.
        if !unsafe { self.is_block_start(ptr) && self.may_free_untagged(ptr) } {
            return false;
        }
        // SAFETY: a block of ours that a cache held live (just checked).
        unsafe { self.release(ptr, source) };
        true
    }

    /// Puts block `ptr` on its pool's free list (tagged), and the pool on
    /// the lists its new state calls for.
    ///
    /// # Safety
    ///
    /// `ptr` must be a live block of an arena of ours.
    #[inline(always)]
    unsafe fn release(&mut self, ptr: NonNull<u8>, source: &mut impl PageSource) {
        let block = reach(ptr).as_ptr();
        let pool = block.map_addr(|a| a & self.pool_mask).cast::<Pool>();
        // SAFETY: a live block lies in an initialised pool of a live arena.
        let p = unsafe { &mut (*pool).h };
        let last = p.freeblock;
        // SAFETY: the block is ours again; its first word becomes the link,
        // its second its tag.
        unsafe {
            *block.cast::<*mut u8>() = last;
            self.set_free_tag(block, p.block_size, true);
        }
        p.freeblock = block;
        p.ref_count -= 1;
        if !last.is_null() && p.ref_count != 0 {
            return;
        }
        // SAFETY: `pool` is live, and its list membership is as its state says.
        unsafe { self.pool_changed_state(pool, last.is_null(), source) };
    }

    /// Whether `block` (of `block_size` bytes) holds its tag: it is free
    /// (see [`KEY`]). Blocks of one word (the 8-byte class) have no tag.
    ///
    /// # Safety
    ///
    /// `block` must be a block of an arena of ours, word-aligned, of
    /// `block_size` bytes.
    #[inline(always)]
    unsafe fn is_free_tagged(&self, block: *mut u8, block_size: u32) -> bool {
        // (No block exists before the first arena, which makes the key.)
        TAGS && block_size as usize >= 2 * size_of::<usize>()
            // SAFETY: the caller's promise: the block has a second word.
            && unsafe { frozen_word(block.cast::<usize>().add(1)) } == self.key ^ block as usize
    }

    /// Writes the tag of `block` (of `block_size` bytes: it is free now),
    /// or clears it (`free` false: it is handed out).
    ///
    /// # Safety
    ///
    /// `block` must be a block of an arena of ours, word-aligned, of
    /// `block_size` bytes, that is ours to write.
    #[inline(always)]
    unsafe fn set_free_tag(&self, block: *mut u8, block_size: u32, free: bool) {
        if TAGS && block_size as usize >= 2 * size_of::<usize>() {
            let tag = if free { self.key ^ block as usize } else { 0 };
            // SAFETY: the caller's promise; the block has a second word.
            unsafe { block.cast::<usize>().add(1).write(tag) };
        }
    }

    /// Whether `ptr` is where a block of its pool starts, among the blocks
    /// the pool has handed out at least once: a pointer into a pool header
    /// or into the middle of a block is not. Every free and realloc checks
    /// it (the thread caches from the class alone: [`block_class`]) but
    /// the quick path's sized free, where the caller's layout contract
    /// rules such a pointer out: the check would cost that path a tenth
    /// of its instructions.
    ///
    /// # Safety
    ///
    /// `ptr` must lie in an arena of this allocator (see [`owns`](Self::owns)).
    #[inline(always)]
    pub unsafe fn is_block_start(&self, ptr: NonNull<u8>) -> bool {
        let addr = ptr.as_ptr() as usize;
        let pool = addr & self.pool_mask;
        // SAFETY: a pool of a live arena (the caller's promise) has an
        // initialised header.
        let pool_ref = unsafe { &*ptr::with_exposed_provenance::<Pool>(pool) };
        let (p, first, offset) = (&pool_ref.h, self.first_offset(pool), addr - pool);
        p.ref_count != 0
            && p.block_size != 0
            && offset >= first
            && offset < p.next_offset as usize
            && is_multiple(p.block_size, (offset - first) as u32)
    }

    /// Whether [`deallocate`](Self::deallocate) would take `ptr` now: its
    /// pool has a block in use, and `ptr` is not the pool's last freed
    /// block (the double frees this layer can see without a walk).
    ///
    /// # Safety
    ///
    /// `ptr` must lie in an arena of this allocator (see
    /// [`owns`](Self::owns)), at a block of its pool.
    #[inline]
    pub unsafe fn may_free(&self, ptr: NonNull<u8>) -> bool {
        let pool = ptr.as_ptr().map_addr(|a| a & self.pool_mask).cast::<Pool>();
        // SAFETY: a pool of a live arena (the caller's promise) has an
        // initialised header.
        let p = unsafe { &(*pool).h };
        // SAFETY: the caller's promise; a block of the pool.
        unsafe { self.may_free_untagged(ptr) && !self.is_free_tagged(reach(ptr).as_ptr(), p.block_size) }
    }

    /// [`may_free`](Self::may_free) but for the tag (a cached block's).
    ///
    /// # Safety
    ///
    /// As [`may_free`](Self::may_free).
    #[inline]
    unsafe fn may_free_untagged(&self, ptr: NonNull<u8>) -> bool {
        let pool = ptr.as_ptr().map_addr(|a| a & self.pool_mask).cast::<Pool>();
        // SAFETY: a pool of a live arena (the caller's promise) has an
        // initialised header.
        let p = unsafe { &(*pool).h };
        p.ref_count != 0 && p.freeblock != ptr.as_ptr()
    }

    /// The common case of [`deallocate`](Self::deallocate), in a few
    /// instructions and without the page source: frees `ptr` when its pool
    /// stays on the lists it is on (it was not full, and keeps a block in
    /// use). Returns `false`, touching nothing, for everything else — a
    /// pool changing state, and every block `deallocate` refuses — which
    /// the caller then passes to `deallocate`.
    ///
    /// # Safety
    ///
    /// As [`deallocate`](Self::deallocate).
    #[inline(always)]
    pub unsafe fn deallocate_quick(&mut self, ptr: NonNull<u8>) -> bool {
        let block = reach(ptr).as_ptr();
        let pool = block.map_addr(|a| a & self.pool_mask).cast::<Pool>();
        // SAFETY: a live block lies in an initialised pool of a live arena.
        let p = unsafe { &mut (*pool).h };
        let last = p.freeblock;
        // `ref_count > 1`: in use before, and still after; `last` non-null:
        // not full, so on `used[class]` already; no tag: not freed already.
        // (Whether `ptr` starts a block is left to the caller's contract
        // here — a sized free of a pointer into a live block breaks it —
        // and checked by every other free: see `is_block_start`.)
        if p.ref_count <= 1
            || last.is_null()
            || last == block
            // SAFETY: a block of this pool, of its block size.
            || unsafe { self.is_free_tagged(block, p.block_size) }
        {
            return false;
        }
        // SAFETY: the block is ours again; its first word becomes the link,
        // its second its tag.
        unsafe {
            *block.cast::<*mut u8>() = last;
            self.set_free_tag(block, p.block_size, true);
        }
        p.freeblock = block;
        p.ref_count -= 1;
        true
    }

    /// A pool was full (`was_full`) or has just become empty.
    #[cold]
    unsafe fn pool_changed_state(&mut self, pool: *mut Pool, was_full: bool, source: &mut impl PageSource) {
        // SAFETY: the caller passes a live pool.
        let class = unsafe { (*pool).class.load(Relaxed) } as usize;
        // SAFETY: as above; the head only, which no thread reads unlocked.
        let p = unsafe { &mut (*pool).h };
        if p.ref_count != 0 {
            // Was full, has a free block again: back to the front of `used`.
            p.next = self.used[class];
            p.prev = ptr::null_mut();
            if !p.next.is_null() {
                // SAFETY: pools on `used` lists are live.
                unsafe { (*p.next).h.prev = pool };
            }
            self.used[class] = pool;
            return;
        }
        self.class_pools[class] -= 1;
        if !was_full {
            // Empty: leave `used[class]`.
            if p.prev.is_null() {
                self.used[class] = p.next;
            } else {
                // SAFETY: as above.
                unsafe { (*p.prev).h.next = p.next };
            }
            if !p.next.is_null() {
                // SAFETY: as above.
                unsafe { (*p.next).h.prev = p.prev };
            }
        }
        // Empty: it has no class until it is laid out again. A thread cache
        // reading the class of a block freed twice then sees the pool is
        // not in use and leaves the free to the checks under the lock.
        // SAFETY: as above.
        unsafe { (*pool).class.store(UNUSED_CLASS, Relaxed) };
        // SAFETY: the pool is live and empty.
        unsafe { self.insert_to_freepool(pool, source) };
    }

    /// Puts an empty pool on its arena's free list and re-sorts the arena,
    /// freeing the arena when it is wholly free and not the spare.
    ///
    /// # Safety
    ///
    /// `pool` is a live, empty pool, on no list.
    unsafe fn insert_to_freepool(&mut self, pool: *mut Pool, source: &mut impl PageSource) {
        let base = pool.cast::<u8>().map_addr(|a| a & self.arena_mask);
        let ao = base.wrapping_add(POOL_HEADER).cast::<Arena>();
        // SAFETY: the arena of a live pool is live.
        let a = unsafe { &mut *ao };
        // SAFETY: the caller's promise.
        unsafe { (*pool).h.next = a.freepools };
        a.freepools = pool;
        let nf = a.nfreepools as usize + 1;
        a.nfreepools = nf as u32;
        // The last arena with `nf - 1` free pools, before this one moves.
        let lastnf = self.nfp2lasta[nf - 1];
        if lastnf == ao {
            let prev = a.prev;
            // SAFETY: arenas on the list are live.
            let prev_same = !prev.is_null() && unsafe { (*prev).nfreepools } as usize == nf - 1;
            self.nfp2lasta[nf - 1] = if prev_same { prev } else { ptr::null_mut() };
        }
        if nf == a.ntotalpools as usize && !a.next.is_null() {
            // Wholly free, and not the last arena: give it back.
            // SAFETY: `ao` is on the list (it had a free pool before, or
            // `next` would be null).
            unsafe { self.unlink_arena(ao) };
            self.free_arena(base, source);
            return;
        }
        if self.nfp2lasta[nf].is_null() {
            self.nfp2lasta[nf] = ao;
        }
        if nf == 1 {
            // Was wholly allocated (on no list): it rejoins at the front.
            // SAFETY: `ao` is live and on no list.
            unsafe { self.link_arena_after(ao, ptr::null_mut()) };
        } else if ao != lastnf {
            // Move it right after `lastnf`, the last arena with `nf - 1`
            // (still in order if it was that arena).
            // SAFETY: both are live arenas on the list; `ao` comes off it
            // before it goes back.
            unsafe {
                self.unlink_arena(ao);
                self.link_arena_after(ao, lastnf);
            }
        }
    }

    fn free_arena(&mut self, base: *mut u8, source: &mut impl PageSource) {
        self.set_slot(base.addr(), false);
        self.counters.current -= 1;
        self.counters.reclaimed += 1;
        let size = self.geometry.arena_size();
        // SAFETY: the arena came from `source` with this size, and none of
        // its blocks is live.
        unsafe { source.deallocate_pages(NonNull::new_unchecked(base), size) };
    }

    /// Gives back the spare: a wholly free arena kept against thrashing.
    /// Returns how many arenas went back.
    ///
    /// # Safety
    ///
    /// `source` must be the page source this allocator has taken every arena
    /// from: the same one on every call since [`new`](Self::new).
    pub unsafe fn trim(&mut self, source: &mut impl PageSource) -> usize {
        let mut freed = 0;
        let mut ao = self.usable_arenas;
        while !ao.is_null() {
            // SAFETY: arenas on the list are live.
            let a = unsafe { &mut *ao };
            let next = a.next;
            if a.nfreepools == a.ntotalpools {
                let nf = a.nfreepools as usize;
                if self.nfp2lasta[nf] == ao {
                    let prev = a.prev;
                    // SAFETY: as above.
                    let same = !prev.is_null() && unsafe { (*prev).nfreepools } as usize == nf;
                    self.nfp2lasta[nf] = if same { prev } else { ptr::null_mut() };
                }
                if a.prev.is_null() {
                    self.usable_arenas = next;
                } else {
                    // SAFETY: as above.
                    unsafe { (*a.prev).next = next };
                }
                if !next.is_null() {
                    // SAFETY: as above.
                    unsafe { (*next).prev = a.prev };
                }
                self.free_arena(ao.cast::<u8>().map_addr(|a| a & self.arena_mask), source);
                freed += 1;
            }
            ao = next;
        }
        freed
    }

    /// Base addresses of the live arenas, from the ownership bitmap (for the
    /// statistics and the invariant walk, which read arena and pool headers
    /// through the provenance `new_arena` exposed: the bitmap keeps bits,
    /// not pointers).
    fn arenas(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.window_slots)
            .filter(|&s| self.arena_map[s / 64] & (1 << (s % 64)) != 0)
            .map(|s| self.window_start + (s << self.geometry.arena_shift))
    }

    /// Walks every carved pool of every arena.
    fn for_each_pool(&self, mut f: impl FnMut(usize, &Pool, &Arena)) {
        for base in self.arenas() {
            // SAFETY: live arenas have initialised headers, and pools below
            // `pool_address` have initialised headers.
            unsafe {
                let a = &*ptr::with_exposed_provenance::<Arena>(base + POOL_HEADER);
                let mut pool = base;
                while pool < a.pool_address.addr() {
                    f(pool, &*ptr::with_exposed_provenance::<Pool>(pool), a);
                    pool += self.geometry.pool_size();
                }
            }
        }
    }

    fn first_offset(&self, pool: usize) -> usize {
        if pool & self.arena_mask == pool { POOL_HEADER + ARENA_HEADER } else { POOL_HEADER }
    }

    /// Where the blocks of the pool at `pool` must end: the pool's end, or
    /// for an arena's last pool, [`ARENA_TAIL`] bytes before it.
    fn pool_end(&self, pool: usize) -> usize {
        let size = self.geometry.pool_size();
        if (pool + size) & !self.arena_mask == 0 { size - ARENA_TAIL } else { size }
    }

    /// Where the arenas' bytes go (a walk of every arena, O(pools)).
    pub fn usage(&self) -> ArenaUsage {
        let pool_size = self.geometry.pool_size();
        let mut u = ArenaUsage::default();
        for base in self.arenas() {
            u.arena_bytes += self.geometry.arena_size();
            u.arena_headers += ARENA_HEADER;
            // Uncarved pools (pool 0's share net of the arena header).
            // SAFETY: live arenas have initialised headers.
            let a = unsafe { &*ptr::with_exposed_provenance::<Arena>(base + POOL_HEADER) };
            let uncarved = (base + self.geometry.arena_size() - a.pool_address.addr()) / pool_size;
            u.unused_pools += uncarved * pool_size;
            if a.pool_address.addr() == base {
                u.unused_pools -= ARENA_HEADER;
            }
        }
        self.for_each_pool(|addr, p, _| {
            let first = self.first_offset(addr);
            let arena_header = first - POOL_HEADER;
            if p.ref_count == 0 {
                u.unused_pools += pool_size - arena_header;
                return;
            }
            let bs = p.block_size as usize;
            let capacity = (self.pool_end(addr) - first) / bs;
            u.pool_headers += POOL_HEADER;
            u.allocated += p.ref_count as usize * bs;
            u.available += (capacity - p.ref_count as usize) * bs;
            u.quantization += pool_size - first - capacity * bs;
        });
        u
    }

    /// Pools, blocks in use and free blocks of one size class (a walk of
    /// every arena, O(pools)).
    pub fn class_stat(&self, class: usize) -> ClassStats {
        let mut s = ClassStats::default();
        self.for_each_pool(|addr, p, _| {
            if p.ref_count == 0 || p.class.load(Relaxed) as usize != class {
                return;
            }
            let capacity = (self.pool_end(addr) - self.first_offset(addr)) / p.block_size as usize;
            s.block_size = p.block_size as usize;
            s.pools += 1;
            s.blocks_in_use += p.ref_count as usize;
            s.blocks_free += capacity - p.ref_count as usize;
        });
        s
    }

    /// Pools, blocks in use and free blocks per size class (a walk of every
    /// arena, O(pools)).
    pub fn class_stats(&self) -> [ClassStats; NUM_CLASSES] {
        let mut out = [ClassStats::default(); NUM_CLASSES];
        self.for_each_pool(|addr, p, _| {
            if p.ref_count == 0 {
                return;
            }
            let class = p.class.load(Relaxed) as usize;
            let capacity = (self.pool_end(addr) - self.first_offset(addr)) / p.block_size as usize;
            let s = &mut out[class];
            s.block_size = p.block_size as usize;
            s.pools += 1;
            s.blocks_in_use += p.ref_count as usize;
            s.blocks_free += capacity - p.ref_count as usize;
        });
        out
    }

    /// Checks every list, count and free list, panicking on a broken
    /// invariant. O(blocks): for tests and debug builds.
    pub fn check_invariants(&self) {
        if !ON {
            return;
        }
        let pool_size = self.geometry.pool_size();
        // `used` lists: live pools of the right class, with a free block.
        let mut in_used = 0;
        for (class, &head) in self.used.iter().enumerate() {
            let mut prev: *mut Pool = ptr::null_mut();
            let mut pool = head;
            while !pool.is_null() {
                assert!(self.owns(pool as *const u8), "used pool outside every arena");
                // SAFETY: checked to lie in a live arena.
                let p = unsafe { &*pool };
                assert_eq!(p.class.load(Relaxed) as usize, class, "pool on the wrong used list");
                assert!(p.ref_count > 0, "empty pool on a used list");
                assert!(!p.freeblock.is_null(), "full pool on a used list");
                assert_eq!(p.prev, prev, "used list back link");
                in_used += 1;
                prev = pool;
                pool = p.next;
            }
        }
        // Every carved pool: its free list is consistent with its counts.
        let mut partial = 0;
        let mut arenas = 0;
        let mut class_pools = [0u32; NUM_CLASSES];

        self.for_each_pool(|addr, p, _| {
            if p.class.load(Relaxed) == UNUSED_CLASS {
                return;
            }
            let size = p.block_size as usize;
            assert_eq!(
                size,
                class_size(p.class.load(Relaxed) as usize, self.geometry.class_shift),
                "pool block size"
            );
            let first = self.first_offset(addr);
            let carved = (p.next_offset as usize - first) / size;
            let mut free = 0;
            let mut block = p.freeblock;
            while !block.is_null() {
                let off = block as usize - addr;
                assert!(off >= first && off < p.next_offset as usize, "free block outside its pool");
                assert_eq!((off - first) % size, 0, "free block misaligned in its pool");
                free += 1;
                assert!(free <= carved, "free list longer than the carved blocks (a cycle?)");
                // SAFETY: free blocks hold the link in their first word.
                block = unsafe { *block.cast::<*mut u8>() };
            }
            assert_eq!(free + p.ref_count as usize, carved, "free list and ref count disagree");
            let capacity = (self.pool_end(addr) - first) / size;
            assert!(p.ref_count as usize <= capacity, "more blocks in use than fit");
            // A pool in use with a free block must be on its `used` list.
            if p.ref_count > 0 && !p.freeblock.is_null() {
                partial += 1;
            }
            if p.ref_count > 0 {
                class_pools[p.class.load(Relaxed) as usize] += 1;
            }
        });
        assert_eq!(class_pools[..CLASS_TABLE], self.class_pools, "pools in use per class");
        assert_eq!(in_used, partial, "pools on used lists vs pools in use with a free block");
        // `usable_arenas`: sorted by free pools, `nfp2lasta` marks each run's end.
        let mut prev: *mut Arena = ptr::null_mut();
        let mut ao = self.usable_arenas;
        let mut last_nf = 0;
        let mut runs: u128 = 0;
        while !ao.is_null() {
            // SAFETY: arenas on the list are live.
            let a = unsafe { &*ao };
            let nf = a.nfreepools as usize;
            assert!(nf > 0, "full arena on usable_arenas");
            assert!(nf >= last_nf, "usable_arenas out of order");
            assert_eq!(a.prev, prev, "usable_arenas back link");
            let next_nf = if a.next.is_null() {
                usize::MAX
            } else {
                // SAFETY: as above.
                unsafe { (*a.next).nfreepools as usize }
            };
            if next_nf != nf {
                assert_eq!(self.nfp2lasta[nf], ao, "nfp2lasta[{nf}] is not the run's last arena");
            }
            runs |= 1 << nf;
            last_nf = nf;
            prev = ao;
            ao = a.next;
            arenas += 1;
        }
        for n in 0..=MAX_POOLS_PER_ARENA {
            if runs & (1 << n) == 0 {
                assert!(self.nfp2lasta[n].is_null(), "nfp2lasta[{n}] set with no such arena");
            }
        }
        let _ = arenas;
        // Free-pool counts and the ownership bitmap.
        let mut live = 0;
        for base in self.arenas() {
            live += 1;
            // SAFETY: live arena.
            let a = unsafe { &*ptr::with_exposed_provenance::<Arena>(base + POOL_HEADER) };
            let uncarved = (base + self.geometry.arena_size() - a.pool_address.addr()) / pool_size;
            let mut free = 0;
            let mut pool = a.freepools;
            while !pool.is_null() {
                // SAFETY: pools on an arena's free list are carved pools of it.
                let p = unsafe { &*pool };
                assert_eq!(p.ref_count, 0, "non-empty pool on a free-pool list");
                assert_eq!(pool.addr() & self.arena_mask, base, "free pool of another arena");
                free += 1;
                pool = p.next;
            }
            assert_eq!(free + uncarved, a.nfreepools as usize, "arena free-pool count");
        }
        assert_eq!(live, self.counters.current, "arena count and bitmap disagree");
        let usage = self.usage();
        assert!(usage.balances(), "arena accounting identity broken: {usage:?}");
        assert_eq!(usage.arena_bytes, live * self.geometry.arena_size());
    }
}

#[cfg(test)]
mod tests {
    use super::is_multiple;

    #[test]
    fn is_multiple_agrees_with_the_remainder() {
        for d in (8..=1024u32).step_by(8) {
            for x in (0..70_000u32)
                .chain((0..200).map(|i| u32::MAX - i))
                .chain((1..64).map(|i| d.wrapping_mul(i * 1021)))
            {
                assert_eq!(is_multiple(d, x), x % d == 0, "{x} / {d}");
            }
        }
    }
}
