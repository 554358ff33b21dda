//! TLSF's free lists by size: which list a chunk is filed on, and from
//! which list up a request is served. One list per size below `LINEAR`
//! granules, then `SL` per power of two.

use super::{GRANULE, GRANULE_SHIFT};

/// Sizes below `LINEAR` granules have a list each.
const LINEAR: usize = 32;
const LINEAR_SHIFT: u32 = LINEAR.trailing_zeros();
/// Lists per power of two above that.
const SL_SHIFT: u32 = 4;
const SL: usize = 1 << SL_SHIFT;
/// Address bits a chunk size can use (user-space and kernel halves of
/// x86_64 are 47 bits each; a 32-bit address space is all of it).
const ADDRESS_BITS: u32 = if usize::BITS == 64 { 48 } else { usize::BITS };
const LEVELS: usize = (ADDRESS_BITS - GRANULE_SHIFT - LINEAR_SHIFT) as usize;
/// Number of free lists (656 on 64-bit targets, 416 on 32-bit ones).
pub const BINS: usize = LINEAR + LEVELS * SL;
const _: () = assert!(BINS == if usize::BITS == 64 { 656 } else { 416 }, "the count above is stale");
/// The list index a level starts from: list `(fl << SL_SHIFT) + (units >>
/// (fl - SL_SHIFT)) - BASE` for `units` in `[2^fl, 2^(fl+1))`, the shifted
/// value being `SL + sl`. With `LINEAR == 2 * SL`, the same formula with
/// `fl` raised to `SL_SHIFT` gives `units` itself below `LINEAR`: one
/// formula, without a branch, for every size (which side of `LINEAR` a
/// chunk falls is as good as random, and a mispredicted branch costs more
/// than the few instructions of the formula).
const BASE: usize = (LINEAR_SHIFT as usize + 1) * SL - LINEAR;
const _: () = assert!(LINEAR == 2 * SL);

/// `log2(units)`, raised to `SL_SHIFT`: the level of `units` granules.
#[cfg_attr(not(strata_unoptimized), inline(always))]
const fn level(units: usize) -> usize {
    // (The operand has bit SL_SHIFT set.)
    log2(units | SL)
}

/// `log2(x)` for `x > 0` (rounded down).
#[cfg_attr(not(strata_unoptimized), inline(always))]
const fn log2(x: usize) -> usize {
    debug_assert!(x > 0);
    // SAFETY: the caller's promise, `x > 0`.
    (usize::BITS - 1 - unsafe { core::num::NonZeroUsize::new_unchecked(x) }.leading_zeros()) as usize
}

/// The free list of a chunk of `size` bytes (a multiple of [`GRANULE`])
/// that lies in a span: shorter than `2^ADDRESS_BITS`, which no list index
/// exceeds (requests, of any size, take [`bin_of`]).
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(super) const fn chunk_bin(size: usize) -> usize {
    let units = size >> GRANULE_SHIFT;
    let fl = level(units);
    let bin = (fl << SL_SHIFT) + (units >> (fl - SL_SHIFT as usize)) - BASE;
    debug_assert!(bin < BINS, "a chunk longer than the address space");
    bin
}

/// Whether `size` is shorter than `2^ADDRESS_BITS` (on 32-bit targets,
/// every size is): whether [`chunk_bin`] takes it.
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(super) const fn fits_address_space(size: usize) -> bool {
    ADDRESS_BITS == usize::BITS || size >> (ADDRESS_BITS % usize::BITS) == 0
}

/// The list of `units` granules for `units >= LINEAR`, clamped to the
/// last: for requests, of any size.
#[cfg_attr(not(strata_unoptimized), inline(always))]
const fn level_bin(units: usize) -> usize {
    // (`units >= LINEAR > 0`.)
    let fl = log2(units);
    let bin = (fl << SL_SHIFT) + (units >> (fl - SL_SHIFT as usize)) - BASE;
    if bin < BINS { bin } else { BINS - 1 }
}

/// The list of a request's chunk size `size`, clamped to the last. (A
/// request's size is the same from call to call more often than a freed
/// chunk's: a branch serves it better than [`chunk_bin`]'s formula.)
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(super) const fn bin_of(size: usize) -> usize {
    let units = size >> GRANULE_SHIFT;
    if units < LINEAR { units } else { level_bin(units) }
}

/// The first list all of whose chunks hold `size` bytes (TLSF's
/// mapping search: `size` rounded up to the next list boundary). Lists at
/// or above it can be taken from without looking at sizes, but the last.
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(super) const fn bin_ceil(size: usize) -> usize {
    let units = size >> GRANULE_SHIFT;
    if units < LINEAR {
        return units;
    }
    // (`units >= LINEAR > 0`.)
    let fl = log2(units);
    // Rounded up to the level's list step; a carry into the next level
    // gives that level's first list by the same formula.
    let rounded = units + (1 << (fl - SL_SHIFT as usize)) - 1;
    let bin = (fl << SL_SHIFT) + (rounded >> (fl - SL_SHIFT as usize)) - BASE;
    if bin < BINS { bin } else { BINS - 1 }
}

/// The smallest chunk size filed in list `bin`.
#[inline]
pub(super) const fn bin_floor(bin: usize) -> usize {
    if bin < LINEAR {
        return bin << GRANULE_SHIFT;
    }
    let i = bin - LINEAR;
    let fl = (i / SL) as u32 + LINEAR_SHIFT;
    ((SL + i % SL) << (fl - SL_SHIFT)) << GRANULE_SHIFT
}

const _: () = {
    let mut bin = 2;
    while bin < BINS {
        assert!(bin_of(bin_floor(bin)) == bin);
        assert!(chunk_bin(bin_floor(bin)) == bin);
        assert!(chunk_bin(bin_floor(bin) - GRANULE) == bin - 1 || bin == 2);
        assert!(bin_of(bin_floor(bin) - GRANULE) == bin - 1 || bin == 2);
        assert!(bin_ceil(bin_floor(bin)) == bin);
        assert!(bin_ceil(bin_floor(bin) + GRANULE) == bin + 1 || bin >= BINS - 2);
        bin += 1;
    }
};
