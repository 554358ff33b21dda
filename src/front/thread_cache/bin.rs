//! The bins of a thread's cache: lists of blocks linked through their
//! first word, tagged while cached (see [`Bin`]), and the medium bins'
//! spacing over layer 0's chunk sizes.

use core::ptr::{self, NonNull};

use crate::object::free_tag as tag;
use crate::object::{carries_free_tag, holds_tag};
use crate::segment::{self, MEDIUM_MAX, chunk_size};

use super::{Declined, MEDIUM_SIZE_WORD};

/// Medium bins hold layer 0's chunks from `1 << MEDIUM_SHIFT` bytes, eight
/// bins per power of two (TLSF's spacing), up to those that serve
/// [`MEDIUM_MAX`]-byte requests.
pub(super) const MEDIUM_SHIFT: u32 = 9;
pub(super) const MEDIUM_BINS: usize = medium_ceil(chunk_size(MEDIUM_MAX).unwrap()) + 1;

/// The medium bin of a chunk of `chunk >= 1 << MEDIUM_SHIFT` bytes: the
/// bin whose range holds it.
#[inline]
pub(super) const fn medium_bin(chunk: usize) -> usize {
    let fl = usize::BITS - 1 - chunk.leading_zeros();
    (fl - MEDIUM_SHIFT) as usize * 8 + ((chunk >> (fl - 3)) & 7)
}

/// The smallest chunk of medium bin `bin`.
#[inline]
pub(super) const fn medium_floor(bin: usize) -> usize {
    (8 + bin % 8) << (bin / 8 + MEDIUM_SHIFT as usize - 3)
}

/// The first medium bin all of whose chunks hold `need` bytes.
#[inline]
pub(super) const fn medium_ceil(need: usize) -> usize {
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

/// A bin: a list of blocks linked through their first word. In a *tagged*
/// bin (blocks of at least two words) each block also holds, in its second
/// word, a tag — its address mixed with a per-process key — while it is
/// cached, as glibc's tcache does: a second free of a cached block, by any
/// thread, finds the tag in O(1) instead of walking the bin. Every way out
/// of the bin clears the tag.
#[derive(Clone, Copy)]
pub(super) struct Bin {
    head: *mut u8,
    pub(super) len: u16,
    pub(super) tagged: bool,
}

/// Clears the tag of a block leaving a tagged bin.
///
/// # Safety
///
/// `block` must be a block of at least two words that is ours.
#[cfg_attr(not(strata_unoptimized), inline(always))]
unsafe fn untag(block: NonNull<u8>) {
    // SAFETY: the caller's promise.
    unsafe { block.as_ptr().cast::<usize>().add(1).write(0) };
}

/// Clears the tag a block of layer 0 of `size` bytes kept through its free
/// ([`Heap::deallocate_cached`](crate::front::Heap::deallocate_cached)), if its
/// second word still holds it.
///
/// # Safety
///
/// `block` must be a block of `size` bytes just freed with the heap's lock
/// held, in memory the heap still holds.
#[inline]
pub(crate) unsafe fn clear_tag(block: NonNull<u8>, size: usize) {
    if holds_tag(size) {
        let block = crate::source::reach(block);
        // SAFETY: the caller's promise: the word is the heap's memory,
        // written only under the lock, which is held.
        unsafe {
            if carries_free_tag(block) {
                block.as_ptr().cast::<usize>().add(1).write(0);
            }
        }
    }
}

impl Bin {
    pub(super) const EMPTY: Self = Self { head: ptr::null_mut(), len: 0, tagged: false };

    /// Takes the first block.
    #[inline]
    pub(super) fn pop(&mut self) -> Option<NonNull<u8>> {
        let block = self.pop_tagged()?;
        if self.tagged {
            // SAFETY: a tagged bin's blocks hold their tag in the second word.
            unsafe { untag(block) };
        }
        Some(block)
    }

    /// Takes the first block of a medium bin if its chunk holds `need`
    /// bytes.
    #[inline]
    pub(super) fn pop_holding(&mut self, need: usize) -> Option<NonNull<u8>> {
        let head = NonNull::new(self.head)?;
        // SAFETY: a cached medium block keeps its chunk size there.
        let chunk = unsafe { head.as_ptr().cast::<usize>().add(MEDIUM_SIZE_WORD).read() };
        if chunk < need {
            return None;
        }
        self.pop()
    }

    /// Takes the first block, leaving its tag (if any) in place: for a
    /// block that goes from a cache to its heap's stack of returned blocks,
    /// so that a second free finds it still cached.
    #[inline]
    pub(super) fn pop_tagged(&mut self) -> Option<NonNull<u8>> {
        let block = NonNull::new(self.head)?;
        // SAFETY: cached blocks hold the next link in their first word.
        self.head = unsafe { block.as_ptr().cast::<*mut u8>().read() };
        self.len -= 1;
        Some(block)
    }

    /// Whether `block` is cached: in a tagged bin, in any thread's bin (it
    /// holds its tag); otherwise in this bin.
    ///
    /// # Safety
    ///
    /// `block` must be a live or cached block of this bin's size.
    #[inline]
    pub(super) unsafe fn holds(&self, block: NonNull<u8>) -> bool {
        if self.tagged {
            // SAFETY: the caller's promise: the block has a second word.
            return unsafe { carries_free_tag(block) };
        }
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

    /// Keeps `block`; a full bin (`depth` blocks) first gives up its
    /// older half, returned as a list for the caller to free through the
    /// lock in one trip (jemalloc's tcache flushes the same way), rather
    /// than one trip for every free while the bin stays full.
    ///
    /// # Safety
    ///
    /// As [`push`](Self::push).
    #[inline]
    pub(super) unsafe fn keep(&mut self, block: NonNull<u8>, depth: u16) -> Spill {
        let spill = if self.len >= depth { self.cut(depth / 2) } else { Spill::NONE };
        // SAFETY: the caller's promise; the bin has room now.
        let kept = unsafe { self.push(block, depth) };
        debug_assert!(kept.is_ok());
        spill
    }

    /// Leaves the `keep` most recently cached blocks (`keep >= 1`) and
    /// returns the rest, still linked through their first word and still
    /// tagged (a second free finds them cached until the heap frees them).
    #[cold]
    pub(super) fn cut(&mut self, keep: u16) -> Spill {
        debug_assert!(keep >= 1 && self.len > keep);
        let mut last = self.head;
        for _ in 1..keep {
            // SAFETY: the bin holds more than `keep` blocks, linked through
            // their first word.
            last = unsafe { last.cast::<*mut u8>().read() };
        }
        // SAFETY: as above: `last` is a cached block.
        let rest = unsafe { last.cast::<*mut u8>().replace(ptr::null_mut()) };
        self.len = keep;
        Spill(rest)
    }

    /// Keeps `block`, unless this bin holds `depth` blocks already.
    ///
    /// # Safety
    ///
    /// `block` must be a block of this bin's size, word-aligned, that the
    /// cache may keep.
    #[inline]
    pub(super) unsafe fn push(&mut self, block: NonNull<u8>, depth: u16) -> Result<(), Declined> {
        if self.len >= depth {
            return Err(Declined::Pass);
        }
        // SAFETY: the caller's promise; a tagged bin's blocks have a second
        // word.
        unsafe {
            block.as_ptr().cast::<*mut u8>().write(self.head);
            if self.tagged {
                block.as_ptr().cast::<usize>().add(1).write(tag(block));
            }
        }
        self.head = block.as_ptr();
        self.len += 1;
        Ok(())
    }
}

/// Blocks a full bin gave up to make room ([`Bin::keep`]): a list linked
/// through their first word, null-terminated, each still tagged (if its
/// bin is), for the heap to free through its lock
/// ([`LockedHeap`](crate::LockedHeap) frees them as it frees the blocks
/// of exited threads). Empty when its pointer is null.
#[must_use]
pub(crate) struct Spill(pub(crate) *mut u8);

impl Spill {
    /// No blocks.
    pub(crate) const NONE: Self = Self(ptr::null_mut());
}
