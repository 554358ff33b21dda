//! Deferred frees: a few recently freed chunks of each size kept whole, off
//! the free lists, for the next request of their size (dlmalloc's and
//! glibc's fast bins, bounded).
//!
//! A free costs most in its merges: the neighbours' headers, their list
//! links, the merged chunk's list. A program that frees a block and soon
//! asks for one of about its size pays that twice — the merge, then the
//! split that undoes it. So a freed chunk of up to [`MAX`] bytes goes on
//! the deferred list of its size, [`DEPTH`] deep, marked [`DEFERRED`]
//! (with [`IN_USE`], so that its neighbours do not merge with it); the
//! next request whose size that list serves takes it whole, in a few
//! instructions. A full list, a larger chunk, or an engine whose spans go
//! back to their source (where a free must see a span fall wholly free)
//! takes the usual way.
//!
//! What stays the same:
//! - **Capacity.** An allocation that the lists cannot serve gives every
//!   deferred chunk back (merged, as a free would have) before it searches
//!   exhaustively or fails, and [`trim`](crate::segment::SegmentAllocator::trim)
//!   does so before it gives memory back.
//! - **Refusals.** A deferred chunk is no block: a free or realloc of it
//!   is refused as a double free ([`Tlsf::in_use_chunk`]).
//! - **The fit check.** A chunk is taken from the request's own list if
//!   it holds the request, else from the list above ([`bin_ceil`]), all of
//!   whose chunks do; either way it exceeds the request by less than the
//!   request's [`slack`]: a free with the request's layout passes the same
//!   check as a block split to size.
//! - **Counts.** Deferred chunks count as free in [`Tlsf::free_bytes`]
//!   and [`Tlsf::free_chunks`].
//!
//! The cost, measured (`docs/DESIGN.md`): fragmentation, since a deferred
//! chunk merges late; the depth and [`MAX`] are what the fill sweep allows.

use core::ptr::{self, NonNull};

use super::bins::{bin_ceil, bin_floor, bin_of, chunk_bin};
use super::{
    DEFERRED, GRANULE, Heads, IN_USE, MIN_CHUNK, ON, Tlsf, WORD, head, is_deferred, set_head, size_of_head,
};
use crate::segment::window::slack;

/// Largest chunk a free defers (16 KiB).
pub const MAX: usize = 16 << 10;
/// Chunks kept on each deferred list.
const DEPTH: u8 = 4;
/// Deferred lists: one per free list of chunks up to [`MAX`].
pub(super) const LISTS: usize = chunk_bin(MAX) + 1;

/// Deferral's running state, stored where frees can defer.
#[derive(Clone, Copy)]
pub(super) struct State {
    /// Bytes in deferred chunks (headers included).
    bytes: usize,
    /// Largest chunk a free defers: 0 (none) until
    /// [`defer_frees`](Tlsf::defer_frees).
    max: usize,
}

impl State {
    pub(super) const NONE: Self = Self { bytes: 0, max: 0 };
}

/// [`State`]s stored: one, or none without the engine or the
/// [`DEFERRED`] flag (32-bit targets), whose heaps then keep their size.
pub(super) const STORED_STATE: usize = if ON && DEFERRED != 0 { 1 } else { 0 };

// A request of up to MAX bytes is served from the list above its own, and
// every chunk there exceeds it by less than its slack (so the free's fit
// check passes); that list is a deferred one.
const _: () = {
    let mut need = MIN_CHUNK;
    while need <= MAX {
        let list = bin_ceil(need);
        assert!(list < LISTS && bin_floor(list) >= need);
        assert!(bin_floor(list + 1) - GRANULE - need < slack(need));
        // (A chunk of the request's own list that holds it is shorter.)
        assert!(bin_of(need) <= list);
        need += GRANULE;
    }
};

/// The link of deferred chunk `c` to the next on its list: its first
/// payload word.
///
/// # Safety
///
/// `c` must be a chunk of a live span at least [`MIN_CHUNK`] long.
#[cfg_attr(not(strata_unoptimized), inline(always))]
unsafe fn link(c: *mut u8) -> *mut *mut u8 {
    // SAFETY: the caller's promise: the payload holds a word.
    unsafe { c.add(2 * WORD).cast() }
}

impl Tlsf {
    /// Lets frees defer chunks from now on: for an engine whose spans are
    /// held for good (a free need not find a span wholly free).
    /// (Not on targets whose chunks have no room for the [`DEFERRED`]
    /// flag: 32-bit ones.)
    pub fn defer_frees(&mut self) {
        if let Some(state) = self.defer.first_mut() {
            state.max = MAX;
        }
    }

    /// The largest chunk a free defers (0: none).
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn defer_max(&self) -> usize {
        self.defer.first().map_or(0, |state| state.max)
    }

    /// Counts `size` bytes more deferred (only where frees defer).
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn count_deferred(&mut self, size: usize) {
        if let Some(state) = self.defer.first_mut() {
            state.bytes += size;
        }
    }

    /// Counts `size` bytes fewer deferred (only where frees defer).
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn count_undeferred(&mut self, size: usize) {
        if let Some(state) = self.defer.first_mut() {
            state.bytes -= size;
        }
    }

    /// Files block `payload`, being freed, on its deferred list if it is
    /// small enough and the list has room: `true` if it did.
    ///
    /// # Safety
    ///
    /// `payload` must be a block in use of this engine.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub(super) unsafe fn defer(&mut self, payload: NonNull<u8>) -> bool {
        // SAFETY: the caller's promise.
        unsafe { self.defer_with(payload, head(payload.as_ptr().sub(2 * WORD))) }
    }

    /// [`defer`](Self::defer) with the block's header word `h` as read.
    ///
    /// # Safety
    ///
    /// As [`defer`](Self::defer), `h` being the block's header word.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub(super) unsafe fn defer_with(&mut self, payload: NonNull<u8>, h: usize) -> bool {
        let size = size_of_head(h);
        if size > self.defer_max() {
            return false;
        }
        let list = chunk_bin(size);
        // SAFETY: `size <= MAX`, so `list < LISTS`, which is STORED_DEFERRED
        // once frees defer (the engine and the flag are built).
        let len = unsafe { *self.deferred_len.get_unchecked(list) };
        if len >= DEPTH {
            return false;
        }
        let c = payload.as_ptr().wrapping_sub(2 * WORD);
        // SAFETY: the caller's promise: `c` is a chunk in use, its payload
        // at least two words long; `list` is in bounds, as above.
        unsafe {
            // The mark first: a thread checking a free without the lock
            // reads a thread cache's tag, then this header (as in
            // `merge_free`).
            set_head(c, h | DEFERRED);
            #[cfg(feature = "caches")]
            core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
            let first = self.deferred.get_unchecked_mut(list);
            link(c).write(*first);
            *first = c;
            *self.deferred_len.get_unchecked_mut(list) = len + 1;
        }
        self.count_deferred(size);
        true
    }

    /// A deferred chunk for a request of chunk size `need`, taken whole and
    /// marked in use again: its payload. The first chunk of the request's
    /// own list if it is long enough (a block freed and asked for again at
    /// its size), else of the list above, whose chunks all are. `None` if
    /// neither serves.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub(super) fn take_deferred(&mut self, need: usize) -> Option<NonNull<u8>> {
        if need > self.defer_max() {
            return None;
        }
        let own = bin_of(need);
        // SAFETY: `need <= MAX`, so both lists are below LISTS (checked
        // above), which is STORED_DEFERRED once frees defer; a chunk on a
        // deferred list is one of a live span.
        let list = unsafe {
            let c = *self.deferred.get_unchecked(own);
            if !c.is_null() && size_of_head(head(c)) >= need { own } else { bin_ceil(need) }
        };
        // SAFETY: as above.
        let first = unsafe { self.deferred.get_unchecked_mut(list) };
        let c = *first;
        if c.is_null() {
            return None;
        }
        // SAFETY: `c` is a deferred chunk: in use, its first payload word
        // the list's next; `list` is in bounds, as above.
        unsafe {
            *first = link(c).read();
            *self.deferred_len.get_unchecked_mut(list) -= 1;
            let h = head(c);
            set_head(c, h & !DEFERRED);
            self.count_undeferred(size_of_head(h));
            Some(NonNull::new_unchecked(c.add(2 * WORD)))
        }
    }

    /// Takes deferred chunk `c` (header `h`) off its list, marked in use
    /// again, for the caller to free at once. O([`DEPTH`]): a walk of its
    /// list.
    ///
    /// # Safety
    ///
    /// `c` must be a deferred chunk of this engine, `h` its header word.
    pub(super) unsafe fn undefer(&mut self, c: *mut u8, h: usize) {
        let size = size_of_head(h);
        let list = chunk_bin(size);
        assert!(list < self.deferred.len(), "a chunk marked deferred is too long for any deferred list");
        // SAFETY: a deferred chunk is on the list of its size, at most
        // DEPTH deep; links are their chunks' first payload words.
        unsafe {
            let mut slot: *mut *mut u8 = &raw mut self.deferred[list];
            let mut steps = 0;
            while *slot != c {
                assert!(!(*slot).is_null() && steps < DEPTH, "a chunk marked deferred is not on its list");
                slot = link(*slot);
                steps += 1;
            }
            *slot = link(c).read();
            set_head(c, h & !DEFERRED);
        }
        self.deferred_len[list] -= 1;
        self.count_undeferred(size);
    }

    /// Gives every deferred chunk back: freed and merged as a free of it
    /// would have been. O(deferred chunks), at most [`DEPTH`] per list.
    #[cold]
    #[inline(never)]
    pub fn flush_deferred(&mut self) {
        if self.deferred_bytes() == 0 {
            return;
        }
        for list in 0..self.deferred.len() {
            let mut c = core::mem::replace(&mut self.deferred[list], ptr::null_mut());
            self.deferred_len[list] = 0;
            while !c.is_null() {
                // SAFETY: a deferred chunk, in use to its neighbours; what
                // they did since (a neighbour freed before it cleared its
                // "previous in use" flag and wrote its footer) is what a
                // merge reads, so the headers are read now.
                unsafe {
                    let next = link(c).read();
                    let h = head(c) & !DEFERRED;
                    set_head(c, h);
                    let nh = head(c.add(size_of_head(h)));
                    self.merge_free(c, Heads { head: h, next: nh });
                    c = next;
                }
            }
        }
        let bytes = self.deferred_bytes();
        self.count_undeferred(bytes);
    }

    /// How many chunks the deferred lists hold.
    pub(super) fn deferred_chunks(&self) -> usize {
        self.deferred_len.iter().map(|&n| usize::from(n)).sum()
    }

    /// Bytes in deferred chunks.
    pub(crate) fn deferred_bytes(&self) -> usize {
        self.defer.first().map_or(0, |state| state.bytes)
    }

    /// Checks the deferred lists: every chunk marked deferred and in use,
    /// on the list of its size, as many as counted; returns `(bytes,
    /// chunks)`. Panics on a broken one.
    pub(crate) fn check_deferred(&self, in_span: impl Fn(*mut u8) -> bool) -> (usize, usize) {
        let (mut bytes, mut chunks) = (0, 0);
        for list in 0..self.deferred.len() {
            let (mut c, mut len) = (self.deferred[list], 0);
            while !c.is_null() {
                assert!(in_span(c), "deferred list {list} holds {c:p}, outside every span");
                // SAFETY: a chunk of a live span (just checked).
                let h = unsafe { head(c) };
                assert!(h & IN_USE != 0 && is_deferred(h), "chunk {c:p}: not marked deferred");
                assert_eq!(chunk_bin(size_of_head(h)), list, "chunk {c:p} on the wrong deferred list");
                bytes += size_of_head(h);
                len += 1;
                assert!(len <= usize::from(DEPTH), "deferred list {list} longer than {DEPTH} (a cycle?)");
                // SAFETY: as above; its first payload word is the link.
                c = unsafe { link(c).read() };
            }
            assert_eq!(len, usize::from(self.deferred_len[list]), "deferred list {list}: its count");
            chunks += len;
        }
        assert_eq!(bytes, self.deferred_bytes(), "deferred bytes");
        (bytes, chunks)
    }
}
