//! Arena, pool and class sizes: [`Geometry`], chosen for the size of the
//! window, and checked before use.

use core::fmt;

use super::{
    ALIGNMENT, ARENA_HEADER, ARENA_SLOTS, MAX_POOLS_PER_ARENA, ON, POOL_HEADER, REGION_POOLS_FROM,
    SMALL_REQUEST_THRESHOLD,
};
use crate::source::PAGE_SIZE;

/// log2 of the smallest pool (2 KiB).
pub(super) const MIN_POOL_SHIFT: u32 = 11;
/// log2 of the largest arena: the most pools of the largest size.
pub(super) const MAX_ARENA_SHIFT: u32 = 31 + MAX_POOLS_PER_ARENA.trailing_zeros();

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
            // (A 32-bit target cannot hold an arena of 4 GiB or more.)
            || self.arena_shift >= usize::BITS
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
    /// [`MAX_POOLS_PER_ARENA`] pools, is not whole pages, or is larger
    /// than the address space can hold (4 GiB or more on a 32-bit target).
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
