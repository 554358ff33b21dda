//! Layer 0's chunk engine: two-level segregated fit (TLSF) over
//! boundary-tagged chunks, in the memory it manages.
//!
//! **Takes:** spans of memory, each handed over whole with
//! [`Tlsf::add_span`] and taken back, once wholly free, with
//! [`Tlsf::remove_span`].
//!
//! **Gives:** blocks of any size and alignment, in O(1) for requests aligned
//! to at most [`GRANULE`] (a fixed number of bitmap scans), freed in O(1)
//! with immediate coalescing, and resized in place when the next chunk is
//! free.
//!
//! ```text
//!  span ┌────┬──────┬───────────────┬──────┬──────────────────┬────┐
//!       │ p  │ head │ payload …     │ head │ next, prev … foot│ S  │
//!       └────┴──────┴───────────────┴──────┴──────────────────┴────┘
//!        ▲ first chunk (in use)        ▲ free chunk             ▲ sentinel:
//!          p: unused prev-size word      foot = size, read by     size 0,
//!                                        the next chunk           in use
//! ```
//!
//! A *chunk* starts at a [`GRANULE`]-aligned address `c` and is a multiple
//! of [`GRANULE`] long. Its header word at `c + WORD` holds its size and
//! up to four flags: in use, previous chunk in use, first chunk of its
//! span, deferred (freed but kept whole: `deferred.rs`). Its
//! payload starts at `c + 2·WORD` (so payloads are [`GRANULE`]-aligned) and
//! runs to the header of the next chunk — the word at `c + size`, the next
//! chunk's *prev-size* word, belongs to this chunk while it is in use and
//! holds its size (a footer) while it is free. An allocation therefore costs
//! one word plus rounding to [`GRANULE`], as in dlmalloc. A free chunk also
//! holds its free-list links. Every span ends in a sentinel header of size
//! 0 marked in use, so no chunk ever looks past its span.
//!
//! Free chunks sit in segregated lists: one per size up to `LINEAR`
//! granules, then sixteen per power of two (TLSF's second level). A bitmap
//! of non-empty lists (with a summary word over it) finds the first list
//! whose chunks all fit in a few instructions. When
//! that finds nothing, the list the request itself falls in is searched
//! first fit: a request fails only when no free chunk can hold it, which
//! makes the capacity guarantee exact, at the price of a walk on the way to
//! exhaustion only.
//!
//! A free may *defer* instead: a chunk of up to [`DEFER_MAX`] bytes waits
//! unmerged on a short list of its size for the next request of that size
//! (`deferred.rs`), and every such chunk merges before a request fails.
//!
//! **Invariants** ([`Tlsf::check_span`]): chunks tile each span exactly;
//! no two free chunks are adjacent; a chunk's "previous in use" flag matches
//! its predecessor; a free chunk's footer equals its size and it is on the
//! list of its size; the bitmap bit of a list is set exactly when the list
//! is non-empty; a chunk in use is shorter than [`MIN_CHUNK`] plus what its
//! request needs ([`chunk_size`]) unless it fills a span of its own, which
//! is how layer 0 tells a free with the wrong layout (a chunk served whole
//! from a deferred list, up to a quarter longer: the fit check's
//! [`slack`](super::window::slack) allows it).

use core::mem::size_of;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

mod bins;
mod check;
mod deferred;
mod free;

pub use bins::BINS;
use bins::{bin_ceil, bin_of, chunk_bin, fits_address_space};
pub use deferred::MAX as DEFER_MAX;

/// One machine word.
pub const WORD: usize = size_of::<usize>();
/// Chunk granularity and payload alignment: two words.
pub const GRANULE: usize = 2 * WORD;
const GRANULE_SHIFT: u32 = GRANULE.trailing_zeros();
/// The alignment a block keeps when it grows backward
/// ([`Tlsf::grow_backward`]): 16, which C's blocks have, on 32-bit targets
/// too (whose chunks are 8-aligned: there a block grows backward by
/// multiples of 16 bytes only).
pub const BACKWARD_ALIGN: usize = if GRANULE > 16 { GRANULE } else { 16 };
/// How many chunks of the request's own list are looked at for a fit before
/// a chunk of a larger list is split.
const FLOOR_LOOKS: usize = 4;
/// Blocks of up to this many bytes grow into the free chunk before them.
const MAX_SHIFT: usize = 4096;
/// Smallest chunk: a free chunk needs its header, two links and a footer.
pub const MIN_CHUNK: usize = 4 * WORD;
/// What a span loses to chunk structure: the first chunk's unused
/// prev-size word and the sentinel's header.
pub const SPAN_OVERHEAD: usize = GRANULE;
/// Smallest span: its overhead plus one chunk.
pub const MIN_SPAN: usize = SPAN_OVERHEAD + MIN_CHUNK;

const IN_USE: usize = 1;
const PREV_IN_USE: usize = 2;
const FIRST: usize = 4;
/// Set, with [`IN_USE`], on a freed chunk kept on a deferred list
/// (`deferred.rs`): in use to its neighbours, which do not merge with it,
/// and no block to a free or a realloc, which refuse it. The fourth flag
/// bit: none where chunks are multiples of 8 bytes (32-bit targets), which
/// then defer no free.
const DEFERRED: usize = if GRANULE > 8 { 8 } else { 0 };
const FLAGS: usize = IN_USE | PREV_IN_USE | FIRST | DEFERRED;

/// Whether header word `h` marks a deferred chunk.
#[cfg_attr(not(strata_unoptimized), inline(always))]
// (DEFERRED is 0 on 32-bit targets, where no chunk is deferred.)
#[allow(clippy::bad_bit_mask)]
const fn is_deferred(h: usize) -> bool {
    h & DEFERRED != 0
}

/// Whether header word `h` marks a block: in use, and not deferred.
#[cfg_attr(not(strata_unoptimized), inline(always))]
const fn is_block(h: usize) -> bool {
    h & IN_USE != 0 && !is_deferred(h)
}
const _: () = assert!(FLAGS < GRANULE);

const BITS: usize = usize::BITS as usize;
const WORDS: usize = BINS.div_ceil(BITS);
/// Whether the engine is built (the `tlsf` feature). Without it, no span is
/// ever added and its tables take no room.
pub const ON: bool = cfg!(feature = "tlsf");
/// Lists and bitmap words as stored: none when the engine is not built.
const STORED_BINS: usize = if ON { BINS } else { 0 };
const STORED_WORDS: usize = if ON { WORDS } else { 0 };
/// Deferred lists as stored: none without the engine or the flag (32-bit
/// targets).
const STORED_DEFERRED: usize = if ON && DEFERRED != 0 { deferred::LISTS } else { 0 };
const _: () = assert!(WORDS < BITS, "the summary word covers every bitmap word, with a bit to spare");

/// The chunk size that serves a request of `size` bytes: its header word
/// plus the payload, rounded up to [`GRANULE`], at least [`MIN_CHUNK`].
/// `None` if that overflows.
#[inline]
pub const fn chunk_size(size: usize) -> Option<usize> {
    match size.checked_add(WORD + GRANULE - 1) {
        Some(s) => {
            let s = s & !(GRANULE - 1);
            Some(if s < MIN_CHUNK { MIN_CHUNK } else { s })
        }
        None => None,
    }
}

/// [`chunk_size`] of a request that a [`Layout`](core::alloc::Layout)
/// holds, whose size (at most `isize::MAX`) cannot overflow it.
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub const fn layout_chunk(layout: core::alloc::Layout) -> usize {
    let s = (layout.size() + WORD + GRANULE - 1) & !(GRANULE - 1);
    if s < MIN_CHUNK { MIN_CHUNK } else { s }
}

/// The header word of a block in use and that of the chunk after it, as
/// a check read them ([`Tlsf::in_use_head`], [`Tlsf::heads`]): a free made
/// under the same lock takes them rather than reading them again.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Heads {
    head: usize,
    next: usize,
}

impl Heads {
    /// The block's chunk size.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub(crate) const fn chunk(self) -> usize {
        size_of_head(self.head)
    }

    /// The chunk size a header word gives.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub(crate) const fn chunk_of(head_word: usize) -> usize {
        size_of_head(head_word)
    }
}

/// Why a block handed back to the engine was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// The block is not marked in use: freed already, or not the start of
    /// a block.
    NotInUse,
}

/// Reads the header word of chunk `c`.
///
/// Header words are read and written atomically (relaxed: plain moves on
/// the targets strata runs on), because threads check a block they free
/// without the heap's lock (the thread caches) while the lock holder may
/// be flipping the "previous in use" flag in the same word or the next.
///
/// # Safety
///
/// `c` must be a chunk (or the sentinel) of a live span.
#[inline]
unsafe fn head(c: *mut u8) -> usize {
    // SAFETY: the caller's promise; headers are word-aligned, and only ever
    // accessed atomically.
    unsafe { AtomicUsize::from_ptr(c.add(WORD).cast()) }.load(Relaxed)
}

/// Writes the header word of chunk `c`.
///
/// # Safety
///
/// As [`head`].
#[inline]
unsafe fn set_head(c: *mut u8, value: usize) {
    // SAFETY: the caller's promise (see `head`).
    unsafe { AtomicUsize::from_ptr(c.add(WORD).cast()) }.store(value, Relaxed)
}

/// Writes the footer of free chunk `c` (`size` bytes), in the prev-size
/// word of the chunk after it.
///
/// # Safety
///
/// `c` must be a chunk of `size` bytes of a live span.
#[inline]
unsafe fn set_foot(c: *mut u8, size: usize) {
    // SAFETY: the caller's promise: the word at `c + size` is the next
    // chunk's prev-size word, inside the span.
    unsafe { c.add(size).cast::<usize>().write(size) }
}

/// The bit that marks a list head's back link ([`head_tag`]): clear in
/// every chunk's address (chunks are [`GRANULE`]-aligned), and not
/// [`IN_USE`]. The back link lies where a header would for a pointer 16
/// bytes into the freed block (`c + 3·WORD`): read as one, a tag says "not
/// in use", so a free of that pointer is refused, as it was when the word
/// held null.
const HEAD_TAG: usize = PREV_IN_USE;
const HEAD_TAG_SHIFT: u32 = HEAD_TAG.trailing_zeros() + 1;
const _: () = assert!(HEAD_TAG < GRANULE && HEAD_TAG & IN_USE == 0);

/// The back link of a list's first chunk: the list's index, marked with
/// [`HEAD_TAG`].
#[cfg_attr(not(strata_unoptimized), inline(always))]
fn head_tag(bin: usize) -> *mut u8 {
    ptr::without_provenance_mut((bin << HEAD_TAG_SHIFT) | HEAD_TAG)
}

/// The free-list links of free chunk `c`: `(next, prev)` slots (`prev`
/// is the list's [`head_tag`] for the first chunk).
///
/// # Safety
///
/// `c` must be a free chunk of a live span.
#[inline]
unsafe fn links(c: *mut u8) -> (*mut *mut u8, *mut *mut u8) {
    // SAFETY: a free chunk is at least MIN_CHUNK long: both links fit.
    unsafe { (c.add(2 * WORD).cast(), c.add(3 * WORD).cast()) }
}

/// The size of chunk `c` given its header.
#[inline]
const fn size_of_head(h: usize) -> usize {
    h & !FLAGS
}

/// The TLSF engine: free lists and their bitmaps. The chunks themselves
/// live in the spans.
pub struct Tlsf {
    heads: [*mut u8; STORED_BINS],
    bitmap: [usize; STORED_WORDS],
    summary: usize,
    free_bytes: usize,
    /// Where a list's last chunk's successor's back link would be: a slot
    /// written and never read (see [`back_link`](Self::back_link)).
    sink: *mut u8,
    /// Recently freed chunks kept whole, by list (`deferred.rs`).
    deferred: [*mut u8; STORED_DEFERRED],
    /// How many chunks each deferred list holds.
    deferred_len: [u8; STORED_DEFERRED],
    /// Bytes deferred and the largest chunk a free defers, where frees can
    /// defer (none stored on 32-bit targets).
    defer: [deferred::State; deferred::STORED_STATE],
}

impl Tlsf {
    /// An engine with no span.
    pub const fn new() -> Self {
        Self {
            heads: [ptr::null_mut(); STORED_BINS],
            bitmap: [0; STORED_WORDS],
            summary: 0,
            free_bytes: 0,
            sink: ptr::null_mut(),
            deferred: [ptr::null_mut(); STORED_DEFERRED],
            deferred_len: [0; STORED_DEFERRED],
            defer: [deferred::State::NONE; deferred::STORED_STATE],
        }
    }

    /// Bytes in free chunks (headers included), deferred ones among them.
    pub fn free_bytes(&self) -> usize {
        self.free_bytes + self.deferred_bytes()
    }

    /// Number of free chunks, deferred ones among them (a walk of every
    /// list).
    pub fn free_chunks(&self) -> usize {
        let mut n = self.deferred_chunks();
        for &head in &self.heads {
            let mut c = head;
            while !c.is_null() {
                n += 1;
                // SAFETY: chunks on lists are free chunks of live spans.
                c = unsafe { links(c).0.read() };
            }
        }
        n
    }

    /// The size of the largest free chunk (a walk of the highest non-empty
    /// list), or 0.
    pub fn largest_free(&self) -> usize {
        let Some(w) = self.summary.checked_ilog2() else { return 0 };
        let bin = w as usize * BITS + self.bitmap[w as usize].ilog2() as usize;
        let (mut c, mut largest) = (self.heads[bin], 0);
        while !c.is_null() {
            // SAFETY: chunks on lists are free chunks of live spans.
            largest = largest.max(unsafe { size_of_head(head(c)) });
            // SAFETY: as above.
            c = unsafe { links(c).0.read() };
        }
        largest
    }

    #[inline]
    fn mark(&mut self, bin: usize) {
        *self.word_mut(bin) |= 1 << (bin % BITS);
        self.summary |= 1 << (bin / BITS);
    }

    #[inline]
    fn unmark(&mut self, bin: usize) {
        let word = self.word_mut(bin);
        *word &= !(1 << (bin % BITS));
        if *word == 0 {
            self.summary &= !(1 << (bin / BITS));
        }
    }

    /// The first non-empty list at or above `bin`.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn first_nonempty(&self, bin: usize) -> Option<usize> {
        debug_assert!(bin < BINS);
        let w = bin / BITS;
        // SAFETY: `bin < BINS`, so `w < WORDS`.
        let bits = unsafe { self.bitmap.get_unchecked(w) } & (usize::MAX << (bin % BITS));
        if bits != 0 {
            return Some(w * BITS + bits.trailing_zeros() as usize);
        }
        let above = self.summary & (usize::MAX << (w + 1));
        if above == 0 {
            return None;
        }
        let w = above.trailing_zeros() as usize;
        // SAFETY: summary bits are set only for words below WORDS.
        Some(w * BITS + unsafe { self.bitmap.get_unchecked(w) }.trailing_zeros() as usize)
    }

    /// Files free chunk `c` of `size` bytes on its list.
    ///
    /// # Safety
    ///
    /// `c` must be a free chunk of a live span, on no list.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    unsafe fn insert(&mut self, c: *mut u8, size: usize) {
        let bin = chunk_bin(size);
        let next = *self.head_mut(bin);
        // SAFETY: `c` and `next` (if any) are free chunks of live spans.
        unsafe {
            let (n, p) = links(c);
            n.write(next);
            p.write(head_tag(bin));
            if next.is_null() {
                // The list was empty: it is marked now (a list that had a
                // chunk is marked already).
                self.mark(bin);
            } else {
                links(next).1.write(c);
            }
        }
        *self.head_mut(bin) = c;
        self.free_bytes += size;
    }

    /// Takes free chunk `c` of `size` bytes off its list.
    ///
    /// # Safety
    ///
    /// `c` must be a free chunk on the list of its size.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    unsafe fn unlink(&mut self, c: *mut u8, size: usize) {
        // SAFETY: `c` is on a list, so its links and its neighbours' are valid.
        unsafe {
            let (n, p) = links(c);
            let (next, prev) = (n.read(), p.read());
            if prev.addr() & HEAD_TAG != 0 {
                // The list's first chunk: its back link is its list's tag
                // (no need to compute the list from the size). A link that
                // a stray write changed stops here rather than writing past
                // the lists.
                let bin = prev.addr() >> HEAD_TAG_SHIFT;
                assert!(bin < BINS, "a free list's back link is corrupt");
                *self.head_mut(bin) = next;
                if next.is_null() {
                    self.unmark(bin);
                }
            } else {
                links(prev).0.write(next);
            }
            self.back_link(next).write(prev);
        }
        self.free_bytes -= size;
    }

    /// The back link of list successor `next`, or, when `next` is null (a
    /// list's end), [`sink`](Self::sink): a store through it needs no
    /// branch on whether a list goes on, which is as good as random.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn back_link(&mut self, next: *mut u8) -> *mut *mut u8 {
        let sink: *mut *mut u8 = &raw mut self.sink;
        // (Offset with wrapping arithmetic: `next` may be null.)
        let link = next.wrapping_add(3 * WORD).cast();
        if next.is_null() { sink } else { link }
    }

    /// The head of list `bin` (`bin < BINS`, as every list index computed
    /// here is), without a bounds check on the allocation paths.
    #[inline]
    fn head_mut(&mut self, bin: usize) -> &mut *mut u8 {
        debug_assert!(bin < BINS);
        // SAFETY: list indices come from `bin_of` and `bin_ceil`
        // (clamped), `chunk_bin` of a chunk in a span (shorter than the
        // address space: `add_span`), the bitmap, and a first chunk's tag
        // (written from one of these), all below BINS.
        unsafe { self.heads.get_unchecked_mut(bin) }
    }

    /// The bitmap word of list `bin` (`bin < BINS`).
    #[inline]
    fn word_mut(&mut self, bin: usize) -> &mut usize {
        debug_assert!(bin < BINS);
        // SAFETY: `bin < BINS`, so `bin / BITS < WORDS`.
        unsafe { self.bitmap.get_unchecked_mut(bin / BITS) }
    }

    /// Hands the engine a span: `[start, start + len)`, one free chunk and
    /// a sentinel.
    ///
    /// # Safety
    ///
    /// The span must be [`GRANULE`]-aligned, a multiple of it, at least
    /// [`MIN_SPAN`] long, writable, and used by nothing else until
    /// [`remove_span`](Self::remove_span) takes it back.
    pub unsafe fn add_span(&mut self, start: NonNull<u8>, len: usize) {
        // Every list and bitmap index below is in bounds once a span is
        // in: none gets in where the tables are empty.
        if !ON {
            panic!("the TLSF engine is not built (feature `tlsf`)");
        }
        debug_assert!(len >= MIN_SPAN && len.is_multiple_of(GRANULE));
        // Every chunk's list index is then in bounds (`chunk_bin`).
        assert!(fits_address_space(len), "a span longer than the address space");
        let c = start.as_ptr();
        let size = len - SPAN_OVERHEAD;
        // SAFETY: the caller gives us the span; the chunk and the sentinel
        // lie inside it. The first chunk's prev-size word is no chunk's: it
        // keeps the span's length.
        unsafe {
            c.cast::<usize>().write(len);
            set_head(c, size | PREV_IN_USE | FIRST);
            set_foot(c, size);
            set_head(c.add(size), IN_USE);
            self.insert(c, size);
        }
    }

    /// Whether the span at `start` is one free chunk.
    ///
    /// # Safety
    ///
    /// `start` must be the start of a live span of this engine.
    pub unsafe fn span_is_free(&self, start: NonNull<u8>) -> bool {
        let c = start.as_ptr();
        // SAFETY: a live span's first chunk and (if that is free) the chunk
        // after it are readable.
        unsafe {
            let h = head(c);
            h & IN_USE == 0 && size_of_head(head(c.add(size_of_head(h)))) == 0
        }
    }

    /// The length of the span at `start`, as recorded in its first word.
    ///
    /// # Safety
    ///
    /// `start` must be the start of a live span of a `Tlsf`.
    pub unsafe fn span_len(start: NonNull<u8>) -> usize {
        // SAFETY: the caller's promise; `add_span` wrote it.
        unsafe { start.as_ptr().cast::<usize>().read() }
    }

    /// The length of the wholly free span at `start`.
    ///
    /// # Safety
    ///
    /// As [`remove_span`](Self::remove_span).
    pub unsafe fn span_len_if_free(&self, start: NonNull<u8>) -> usize {
        // SAFETY: the caller's promise: the first chunk spans the span.
        unsafe { size_of_head(head(start.as_ptr())) + SPAN_OVERHEAD }
    }

    /// Takes back a wholly free span, returning its length.
    ///
    /// # Safety
    ///
    /// `start` must be the start of a live span of this engine for which
    /// [`span_is_free`](Self::span_is_free) holds.
    pub unsafe fn remove_span(&mut self, start: NonNull<u8>) -> usize {
        let c = start.as_ptr();
        // SAFETY: the caller's promise: the first chunk is free and alone.
        unsafe {
            let size = size_of_head(head(c));
            self.unlink(c, size);
            size + SPAN_OVERHEAD
        }
    }

    /// Allocates `size` bytes aligned to `align` (a power of two).
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub fn allocate(&mut self, size: usize, align: usize) -> Option<NonNull<u8>> {
        let need = chunk_size(size)?;
        if align <= GRANULE {
            if let Some(p) = self.take_deferred(need) {
                return Some(p);
            }
            let (c, have) = self.take_fit_or_flush(need)?;
            // SAFETY: `c` is a free chunk of `have >= need` bytes, just unlinked.
            return Some(unsafe { self.use_chunk(c, have, need) });
        }
        self.allocate_aligned(need, align)
    }

    /// [`allocate`](Self::allocate) for a request aligned to at most
    /// [`GRANULE`], when a list lookup serves it: the same chunk, or `None`
    /// (nothing changed) where `allocate` would search the lists
    /// exhaustively. O(1): the front's quick path.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    #[cfg_attr(feature = "debug", allow(dead_code))]
    pub fn allocate_quick(&mut self, size: usize) -> Option<NonNull<u8>> {
        let need = chunk_size(size)?;
        if let Some(p) = self.take_deferred(need) {
            return Some(p);
        }
        let (c, have) = self.take_fit::<false>(need)?;
        // SAFETY: `c` is a free chunk of `have >= need` bytes, just unlinked.
        Some(unsafe { self.use_chunk(c, have, need) })
    }

    /// Finds and unlinks a free chunk of at least `need` bytes: from the
    /// first list whose chunks all fit, else (if `EXHAUSTIVE`) first fit in
    /// `need`'s own list and up.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn take_fit<const EXHAUSTIVE: bool>(&mut self, need: usize) -> Option<(*mut u8, usize)> {
        let ceil = bin_ceil(need);
        let floor = bin_of(need);
        if floor != ceil && !self.head_mut(floor).is_null() {
            // A chunk just big enough may sit in the request's own list:
            // look at its first few before splitting a larger one.
            let mut c = *self.head_mut(floor);
            for _ in 0..FLOOR_LOOKS {
                if c.is_null() {
                    break;
                }
                // SAFETY: chunks on lists are free chunks of live spans.
                let have = unsafe { size_of_head(head(c)) };
                if have >= need {
                    // SAFETY: `c` is on its list.
                    unsafe { self.unlink(c, have) };
                    return Some((c, have));
                }
                // SAFETY: as above.
                c = unsafe { links(c).0.read() };
            }
        }
        if let Some(bin) = self.first_nonempty(ceil)
            && bin < BINS - 1
        {
            // SAFETY: `bin` is a non-empty list.
            return Some(unsafe { self.pop(bin) });
        }
        if !EXHAUSTIVE {
            return None;
        }
        self.take_first_fit(floor, need, 0)
    }

    /// [`take_fit`](Self::take_fit), exhaustive, with the deferred chunks
    /// given back first if a list lookup finds nothing: a request fails
    /// only when no chunk could hold it with every free chunk merged.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn take_fit_or_flush(&mut self, need: usize) -> Option<(*mut u8, usize)> {
        if self.deferred_bytes() == 0 {
            return self.take_fit::<true>(need);
        }
        if let Some(fit) = self.take_fit::<false>(need) {
            return Some(fit);
        }
        self.flush_deferred();
        self.take_fit::<true>(need)
    }

    /// Takes the head of non-empty list `bin` off it: `(chunk, size)`.
    ///
    /// # Safety
    ///
    /// List `bin` must be non-empty.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    unsafe fn pop(&mut self, bin: usize) -> (*mut u8, usize) {
        let c = *self.head_mut(bin);
        // SAFETY: list heads are free chunks of live spans, as are their
        // successors.
        unsafe {
            let next = links(c).0.read();
            *self.head_mut(bin) = next;
            if next.is_null() {
                self.unmark(bin);
            } else {
                links(next).1.write(head_tag(bin));
            }
            let have = size_of_head(head(c));
            self.free_bytes -= have;
            (c, have)
        }
    }

    /// The exhaustive path: the first chunk, in lists `from` and up, that
    /// holds `need` bytes aligned to `align` (0: no alignment beyond
    /// [`GRANULE`]); unlinked. O(free chunks): only on the way to failure.
    #[cold]
    fn take_first_fit(&mut self, from: usize, need: usize, align: usize) -> Option<(*mut u8, usize)> {
        let mut bin = from;
        while let Some(b) = self.first_nonempty(bin) {
            let mut c = self.heads[b];
            while !c.is_null() {
                // SAFETY: chunks on lists are free chunks of live spans.
                let have = unsafe { size_of_head(head(c)) };
                let fits = if align == 0 { have >= need } else { lead_for(c, have, need, align).is_some() };
                if fits {
                    // SAFETY: `c` is on its list.
                    unsafe { self.unlink(c, have) };
                    return Some((c, have));
                }
                // SAFETY: as above.
                c = unsafe { links(c).0.read() };
            }
            bin = b + 1;
            if bin >= BINS {
                break;
            }
        }
        None
    }

    #[cold]
    #[inline(never)]
    fn allocate_aligned(&mut self, need: usize, align: usize) -> Option<NonNull<u8>> {
        let (c, have) = self.take_aligned_fit_or_flush(need, align)?;
        let lead = lead_for(c, have, need, align).expect("the chunk was chosen to fit");
        // SAFETY: `c` is a free, unlinked chunk of `have` bytes that holds
        // `lead + need` bytes.
        Some(unsafe { self.carve(c, have, lead, need) })
    }

    /// [`allocate`](Self::allocate) for a request aligned past
    /// [`GRANULE`], when a list lookup serves it: the same chunk, or `None`
    /// (nothing changed) where `allocate` would search the lists
    /// exhaustively. O(1): the front's quick path.
    #[cfg_attr(feature = "debug", allow(dead_code))]
    pub fn allocate_aligned_quick(&mut self, size: usize, align: usize) -> Option<NonNull<u8>> {
        let need = chunk_size(size)?;
        let (c, have) = self.take_aligned_fit::<false>(need, align)?;
        let lead = lead_for(c, have, need, align).expect("the chunk was chosen to fit");
        // SAFETY: as in `allocate_aligned`.
        Some(unsafe { self.carve(c, have, lead, need) })
    }

    /// Finds and unlinks a free chunk that holds `need` bytes with a
    /// payload aligned to `align`: from the first list whose chunks all
    /// hold one, else (if `EXHAUSTIVE`) first fit in `need`'s own list and
    /// up.
    fn take_aligned_fit<const EXHAUSTIVE: bool>(
        &mut self,
        need: usize,
        align: usize,
    ) -> Option<(*mut u8, usize)> {
        // A chunk of `need + align + MIN_CHUNK` bytes holds an aligned
        // payload with a leading free chunk (or none) before it.
        let worst = need.checked_add(align)?.checked_add(MIN_CHUNK)?;
        match self.first_nonempty(bin_ceil(worst)).filter(|&b| b < BINS - 1) {
            // SAFETY: `bin` is a non-empty list.
            Some(bin) => Some(unsafe { self.pop(bin) }),
            None if EXHAUSTIVE => self.take_first_fit(bin_of(need), need, align),
            None => None,
        }
    }

    /// [`take_aligned_fit`](Self::take_aligned_fit), exhaustive, with the
    /// deferred chunks given back first if a list lookup finds nothing.
    fn take_aligned_fit_or_flush(&mut self, need: usize, align: usize) -> Option<(*mut u8, usize)> {
        if self.deferred_bytes() != 0 {
            if let Some(fit) = self.take_aligned_fit::<false>(need, align) {
                return Some(fit);
            }
            self.flush_deferred();
        }
        self.take_aligned_fit::<true>(need, align)
    }

    /// Allocates `size` bytes aligned to `align` as high in the chosen free
    /// chunk as it fits, leaving the space below it as one free chunk: for
    /// long-lived blocks (layer +2's arenas), kept away from the low end,
    /// where blocks are placed and grow.
    pub fn allocate_high(&mut self, size: usize, align: usize) -> Option<NonNull<u8>> {
        let need = chunk_size(size)?;
        let align = align.max(GRANULE);
        let (c, have) = self.take_aligned_fit_or_flush(need, align)?;
        let low = if align == GRANULE { 0 } else { lead_for(c, have, need, align)? };
        // The highest aligned payload whose chunk ends inside `c`; a lead
        // too short to stand as a free chunk falls back to the lowest.
        let payload = c as usize + 2 * WORD;
        let top = (payload + (have - need)) & !(align - 1);
        let lead = match top - payload {
            high if high >= MIN_CHUNK && high > low => high,
            _ => low,
        };
        // SAFETY: `c` is a free, unlinked chunk of `have` bytes that holds
        // `lead + need` bytes, with `lead` 0 or at least MIN_CHUNK.
        Some(unsafe { self.carve(c, have, lead, need) })
    }

    /// Marks a chunk of `need` bytes in use `lead` bytes into unlinked free
    /// chunk `c` (`have` bytes), leaving a free chunk before it when `lead`
    /// is not 0 and after it when the rest can stand as one. Returns the
    /// payload.
    ///
    /// # Safety
    ///
    /// `c` must be a free chunk of a live span, on no list, with
    /// `lead + need <= have` and `lead` 0 or at least [`MIN_CHUNK`].
    unsafe fn carve(&mut self, c: *mut u8, have: usize, lead: usize, need: usize) -> NonNull<u8> {
        let payload = if lead == 0 {
            // SAFETY: the caller's promise.
            unsafe { self.use_chunk(c, have, need) }
        } else {
            // SAFETY: the caller's promise: both parts lie in the chunk.
            unsafe {
                let flags = head(c) & (PREV_IN_USE | FIRST);
                set_head(c, lead | flags);
                set_foot(c, lead);
                self.insert(c, lead);
                let nc = c.add(lead);
                set_head(nc, have - lead);
                self.use_chunk(nc, have - lead, need)
            }
        };
        // A thread cache takes a block whose second word holds its tag for
        // one it holds (`front::thread_cache`): a block handed out clears
        // whatever an earlier block left there (a freed block of +2, a
        // cached block of a span since given back, met again at an aligned
        // block's start inside a free chunk).
        // SAFETY: a payload holds at least two words (MIN_CHUNK), ours now.
        #[cfg(feature = "caches")]
        unsafe {
            payload.as_ptr().cast::<usize>().add(1).write(0)
        };
        payload
    }

    /// Marks chunk `c` (`have` bytes, on no list) in use for a request of
    /// chunk size `need`, splitting off the rest as a free chunk when it can
    /// stand as one. Returns the payload.
    ///
    /// # Safety
    ///
    /// `c` must be a chunk of a live span whose header holds its flags, on
    /// no list, followed after `have >= need` bytes by a chunk whose
    /// prev-in-use flag is clear.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    unsafe fn use_chunk(&mut self, c: *mut u8, have: usize, need: usize) -> NonNull<u8> {
        // SAFETY: the caller's promise; the rest (if split) and the next
        // chunk lie inside the span.
        unsafe {
            let flags = head(c) & (PREV_IN_USE | FIRST);
            let rest = have - need;
            if rest >= MIN_CHUNK {
                let r = c.add(need);
                set_head(r, rest | PREV_IN_USE);
                set_foot(r, rest);
                self.insert(r, rest);
                set_head(c, need | IN_USE | flags);
            } else {
                set_head(c, have | IN_USE | flags);
                let n = c.add(have);
                set_head(n, head(n) | PREV_IN_USE);
            }
            NonNull::new_unchecked(c.add(2 * WORD))
        }
    }

    /// Allocates `size` bytes aligned to `align` at the start of the
    /// largest free chunk, so that the block has the most room to grow in
    /// place. `None` if that chunk cannot hold it.
    pub fn allocate_largest(&mut self, size: usize, align: usize) -> Option<NonNull<u8>> {
        let need = chunk_size(size)?;
        let w = self.summary.checked_ilog2()? as usize;
        let bin = w * BITS + self.bitmap[w].ilog2() as usize;
        // The largest chunk of the highest list.
        let mut c = self.heads[bin];
        let (mut best, mut best_size) = (ptr::null_mut(), 0);
        while !c.is_null() {
            // SAFETY: chunks on lists are free chunks of live spans.
            let have = unsafe { size_of_head(head(c)) };
            if have > best_size {
                (best, best_size) = (c, have);
            }
            // SAFETY: as above.
            c = unsafe { links(c).0.read() };
        }
        let lead = if align <= GRANULE {
            (best_size >= need).then_some(0)
        } else {
            lead_for(best, best_size, need, align)
        }?;
        // SAFETY: `best` is on its list and holds `lead + need` bytes.
        unsafe {
            self.unlink(best, best_size);
            Some(self.carve(best, best_size, lead, need))
        }
    }

    /// Reads the header of block `payload`: its chunk size and whether it
    /// is its span's first chunk, or [`ChunkError::NotInUse`].
    ///
    /// # Safety
    ///
    /// `payload` must be [`GRANULE`]-aligned with its header word in a live
    /// span.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub unsafe fn in_use_chunk(payload: NonNull<u8>) -> Result<(usize, bool), ChunkError> {
        // SAFETY: the caller's promise.
        let h = unsafe { head(payload.as_ptr().wrapping_sub(2 * WORD)) };
        if !is_block(h) {
            return Err(ChunkError::NotInUse);
        }
        Ok((size_of_head(h), h & FIRST != 0))
    }

    /// The header after block `payload` (of `chunk` bytes): whether it says
    /// its predecessor is in use, and whether it is the span's sentinel.
    /// The second half of the in-use check, once the caller knows that
    /// header lies in the span.
    ///
    /// # Safety
    ///
    /// `payload`'s chunk must be `chunk` bytes long in a live span, and the
    /// header after it must lie in that span.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub unsafe fn next_head(payload: NonNull<u8>, chunk: usize) -> (bool, bool) {
        let c = payload.as_ptr().wrapping_sub(2 * WORD);
        // SAFETY: the caller's promise.
        let h = unsafe { head(c.add(chunk)) };
        (h & PREV_IN_USE != 0, size_of_head(h) == 0)
    }

    /// The header word of block `payload` if it says "in use" (the first
    /// half of [`Heads`]).
    ///
    /// # Safety
    ///
    /// As [`in_use_chunk`](Self::in_use_chunk).
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub(crate) unsafe fn in_use_head(payload: NonNull<u8>) -> Option<usize> {
        // SAFETY: the caller's promise.
        let h = unsafe { head(payload.as_ptr().wrapping_sub(2 * WORD)) };
        is_block(h).then_some(h)
    }

    /// [`Heads`] of block `payload` whose header word is `head` (from
    /// [`in_use_head`](Self::in_use_head)), if the header after it says its
    /// predecessor is in use.
    ///
    /// # Safety
    ///
    /// As [`next_head`](Self::next_head), `chunk` being `head`'s size.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub(crate) unsafe fn heads(payload: NonNull<u8>, head_word: usize) -> Option<Heads> {
        let c = payload.as_ptr().wrapping_sub(2 * WORD);
        // SAFETY: the caller's promise.
        let next = unsafe { head(c.add(size_of_head(head_word))) };
        (next & PREV_IN_USE != 0).then_some(Heads { head: head_word, next })
    }

    /// Allocates `size` bytes from the span at `start`, which must be one
    /// free chunk: the block takes the whole span (a large block's span of
    /// its own, given back when the block is freed).
    ///
    /// # Safety
    ///
    /// `start` must be the start of a live span of this engine that is
    /// wholly free and at least `chunk_size(size)` + [`SPAN_OVERHEAD`] long.
    pub unsafe fn allocate_whole_span(&mut self, start: NonNull<u8>) -> NonNull<u8> {
        let c = start.as_ptr();
        // SAFETY: the caller's promise: the first chunk is free, alone, and
        // followed by the sentinel.
        unsafe {
            let have = size_of_head(head(c));
            self.unlink(c, have);
            set_head(c, have | IN_USE | PREV_IN_USE | FIRST);
            let n = c.add(have);
            set_head(n, head(n) | PREV_IN_USE);
            NonNull::new_unchecked(c.add(2 * WORD))
        }
    }
}

impl Default for Tlsf {
    fn default() -> Self {
        Self::new()
    }
}

/// Where in free chunk `c` (`have` bytes) a chunk of `need` bytes with a
/// payload aligned to `align` can start: the length of the free chunk left
/// before it (0, or at least [`MIN_CHUNK`]). `None` if it does not fit.
fn lead_for(c: *mut u8, have: usize, need: usize, align: usize) -> Option<usize> {
    let payload = c as usize + 2 * WORD;
    let mut lead = payload.next_multiple_of(align) - payload;
    if lead != 0 && lead < MIN_CHUNK {
        // Too short to stand as a free chunk: the next aligned place
        // (alignments above GRANULE are at least MIN_CHUNK).
        debug_assert!(align >= MIN_CHUNK);
        lead += align;
    }
    (lead.checked_add(need)? <= have).then_some(lead)
}

// SAFETY: the engine owns the spans its pointers point into; it moves
// between threads only as a whole, behind the front door's lock.
unsafe impl Send for Tlsf {}
