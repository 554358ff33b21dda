//! Free-block tags: how layer +2 and the thread caches tell a block freed
//! twice, wherever it sits in a free list.

use core::ptr::NonNull;
use core::sync::atomic::Ordering::Relaxed;

use crate::sync::AtomicUsize;

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

/// Whether a free block of `size` bytes holds a tag: tags are on
/// ([`TAGS`]) and the block has a second word for it (blocks of one word,
/// the 8-byte class, have none).
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(crate) const fn holds_tag(size: usize) -> bool {
    TAGS && size >= 2 * size_of::<usize>()
}

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
#[cfg_attr(not(strata_unoptimized), inline(always))]
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
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(crate) unsafe fn frozen_word(_: *const usize) -> usize {
    0
}

/// The tag a free block holds in its second word (see [`KEY`]).
#[cfg_attr(not(feature = "caches"), allow(dead_code))]
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(crate) fn free_tag(block: NonNull<u8>) -> usize {
    KEY.load(Relaxed) ^ block.as_ptr() as usize
}

/// Whether `block` holds its [`free_tag`] in its second word: a free block
/// some cache holds (or, for the word's owner, data that reads as one).
///
/// # Safety
///
/// `block` must be valid for reading two words, and aligned to one.
#[cfg_attr(not(feature = "caches"), allow(dead_code))]
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(crate) unsafe fn carries_free_tag(block: NonNull<u8>) -> bool {
    // SAFETY: the caller's promise.
    unsafe { frozen_word(block.as_ptr().cast::<usize>().add(1)) == free_tag(block) }
}
