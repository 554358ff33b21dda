//! Where blocks start: a division-free multiple test, and the class of a
//! block read from its pool's header without the lock.

use core::ptr::NonNull;
use core::sync::atomic::Ordering::Relaxed;

use super::{ARENA_HEADER, Geometry, NUM_CLASSES, POOL_HEADER, Pool, class_size};

/// Whether `x` is a multiple of `d`, a block size (a multiple of 8 up to
/// 1 KiB), without a division (it sits on the free paths): with
/// `d = m·2^k`, `m` odd, `x` is a multiple exactly when `x·m⁻¹ mod 2^32`
/// rotated right by `k` is at most `⌊(2^32 − 1) / d⌋` (Lemire, Kaser and
/// Kurz's test), from a table made at compile time.
#[cfg_attr(not(strata_unoptimized), inline(always))]
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
#[cfg_attr(not(strata_unoptimized), inline(always))]
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

#[cfg(test)]
mod tests {
    use super::is_multiple;

    #[test]
    fn is_multiple_agrees_with_the_remainder() {
        // (Fewer under Miri, where the full sweep takes over ten minutes.)
        let top = if cfg!(miri) { 2_000 } else { 70_000 };
        for d in (8..=1024u32).step_by(8) {
            for x in (0..top)
                .chain((0..200).map(|i| u32::MAX - i))
                .chain((1..64).map(|i| d.wrapping_mul(i * 1021)))
            {
                assert_eq!(is_multiple(d, x), x % d == 0, "{x} / {d}");
            }
        }
    }
}
