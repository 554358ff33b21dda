//! The free path of layer +2: checks that refuse a block not in use, the
//! pool and arena state changes of a free (and the pools kept for their
//! class), and trimming spare arenas.

use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering::Relaxed;

use super::{
    Arena, CLASS_MASK, ObjectAllocator, POOL_HEADER, Pool, UNUSED_CLASS, frozen_word, holds_tag, is_multiple,
};
use crate::source::{PageSource, reach};

impl ObjectAllocator {
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
    #[cfg_attr(not(strata_unoptimized), inline(always))]
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
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub(super) unsafe fn is_free_tagged(&self, block: *mut u8, block_size: u32) -> bool {
        // (No block exists before the first arena, which makes the key.)
        holds_tag(block_size as usize)
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
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub(super) unsafe fn set_free_tag(&self, block: *mut u8, block_size: u32, free: bool) {
        if holds_tag(block_size as usize) {
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
    #[cfg_attr(not(strata_unoptimized), inline(always))]
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
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub unsafe fn deallocate_quick(&mut self, ptr: NonNull<u8>) -> bool {
        // SAFETY: forwarded contract.
        unsafe { self.deallocate_quick_of::<true>(ptr) }
    }

    /// [`deallocate_quick`](Self::deallocate_quick) of a block that
    /// [`may_free`](Self::may_free) has just accepted (a realloc that
    /// moves it): the checks it made are not made again.
    ///
    /// # Safety
    ///
    /// As [`deallocate`](Self::deallocate), and `may_free(ptr)` must hold.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub unsafe fn deallocate_quick_live(&mut self, ptr: NonNull<u8>) -> bool {
        // SAFETY: forwarded contract.
        unsafe { self.deallocate_quick_of::<false>(ptr) }
    }

    /// [`deallocate_quick`](Self::deallocate_quick), checking whether the
    /// block is in use only if `CHECK` (else the caller has).
    ///
    /// # Safety
    ///
    /// As [`deallocate_quick_live`](Self::deallocate_quick_live) unless
    /// `CHECK`, else as [`deallocate`](Self::deallocate).
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    unsafe fn deallocate_quick_of<const CHECK: bool>(&mut self, ptr: NonNull<u8>) -> bool {
        let block = reach(ptr).as_ptr();
        let pool = block.map_addr(|a| a & self.pool_mask).cast::<Pool>();
        // SAFETY: a live block lies in an initialised pool of a live arena.
        let p = unsafe { &mut (*pool).h };
        let (last, block_size) = (p.freeblock, p.block_size);
        // `ref_count > 1`: in use before, and still after; `last` non-null:
        // not full, so on `used[class]` already; no tag: not freed already.
        // (Whether `ptr` starts a block is left to the caller's contract
        // here — a sized free of a pointer into a live block breaks it —
        // and checked by every other free: see `is_block_start`.) A pool's
        // last block goes the full way, which may keep the pool.
        if p.ref_count <= 1
            || last.is_null()
            || CHECK
                && (last == block
                    // SAFETY: a block of this pool, of its block size.
                    || unsafe { self.is_free_tagged(block, block_size) })
        {
            return false;
        }
        // SAFETY: the block is ours again; its second word becomes its tag
        // (written first, so that the header and the key need not be read
        // again after a store to the block), its first the link.
        unsafe {
            self.set_free_tag(block, block_size, true);
            *block.cast::<*mut u8>() = last;
        }
        p.freeblock = block;
        p.ref_count -= 1;
        true
    }

    /// Keeps `pool`, whose last block is being freed, for its class (see
    /// *Kept pools* in the module docs) when that changes no placement: it
    /// is its class's only pool on its `used` list, the class keeps no pool
    /// yet, its arena has another pool in use, and freed it would make its
    /// arena the first of `usable_arenas` — where the class's next pool
    /// would come from. It leaves `used[class]` for `kept[class]`. Returns
    /// whether it did.
    ///
    /// # Safety
    ///
    /// `pool` must be a live pool on its class's `used` list.
    #[inline]
    unsafe fn keep(&mut self, pool: *mut Pool) -> bool {
        let ao = self.arena_of(pool);
        // SAFETY: the caller's promise: a live pool.
        let (alone, class) = unsafe {
            let p = &(*pool).h;
            (p.prev.is_null() && p.next.is_null(), (*pool).class.load(Relaxed) as usize & CLASS_MASK)
        };
        // SAFETY: the arena of a live pool is live.
        let (in_use, first) = unsafe {
            let a = &*ao;
            (a.nfreepools + a.nkept + 2 <= a.ntotalpools, self.first_once_freed(ao))
        };
        if !(alone && in_use && first && self.kept[class].is_null()) {
            return false;
        }
        // SAFETY: as above. Kept, the pool has no class in its header (as
        // a free pool has none): a thread cache that reads the class of a
        // block freed twice leaves the free to the checks under the lock,
        // which refuse it (no block of the pool is in use).
        unsafe {
            (*ao).nkept += 1;
            (*pool).class.store(UNUSED_CLASS, Relaxed);
        }
        // The only pool of `used[class]`: the list empties.
        self.used[class] = ptr::null_mut();
        self.kept[class] = pool;
        true
    }

    /// Gives back every pool kept for its class (to its arena, which goes
    /// back too if that leaves it wholly free), or, with `only_in`, those
    /// of that arena. Returns how many.
    pub(super) fn release_kept(
        &mut self,
        only_in: Option<*mut Arena>,
        source: &mut impl PageSource,
    ) -> usize {
        let mut released = 0;
        for class in 0..self.kept.len() {
            let pool = self.kept[class];
            if !pool.is_null() && only_in.is_none_or(|ao| ao == self.arena_of(pool)) {
                self.release_kept_pool(class, source);
                released += 1;
            }
        }
        released
    }

    /// Gives back `class`'s kept pool (to its arena, which goes back too
    /// if that leaves it wholly free).
    ///
    /// # Panics
    ///
    /// If the class keeps no pool.
    pub(super) fn release_kept_pool(&mut self, class: usize, source: &mut impl PageSource) {
        let pool = self.kept[class];
        assert!(!pool.is_null(), "no pool kept for class {class}");
        self.kept[class] = ptr::null_mut();
        self.class_pools[class] -= 1;
        // SAFETY: a kept pool is live and empty, on no list, and its arena
        // is live.
        unsafe {
            (*self.arena_of(pool)).nkept -= 1;
            (*pool).class.store(UNUSED_CLASS, Relaxed);
            self.insert_to_freepool(pool, source);
        }
    }

    /// A pool was full (`was_full`) or has just become empty.
    #[cold]
    unsafe fn pool_changed_state(&mut self, pool: *mut Pool, was_full: bool, source: &mut impl PageSource) {
        // SAFETY: the caller passes a live pool.
        let class = unsafe { (*pool).class.load(Relaxed) } as usize;
        // SAFETY: an empty pool that was not full is on its `used` list.
        if !was_full && unsafe { (*pool).h.ref_count == 0 && self.keep(pool) } {
            return;
        }
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
        let ao = self.arena_of(pool);
        // SAFETY: the arena of a live pool is live.
        let a = unsafe { &*ao };
        if a.nkept != 0 && a.nfreepools + a.nkept + 1 == a.ntotalpools {
            // The arena's last pool in use: the pools it keeps go first, so
            // that this one leaves it wholly free.
            self.release_kept(Some(ao), source);
        }
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

    /// Gives back the spare — a wholly free arena kept against thrashing —
    /// and every pool kept for its class (with the arenas that leaves
    /// wholly free). Returns how many arenas went back.
    ///
    /// # Safety
    ///
    /// `source` must be the page source this allocator has taken every arena
    /// from: the same one on every call since [`new`](Self::new).
    pub unsafe fn trim(&mut self, source: &mut impl PageSource) -> usize {
        let before = self.counters.reclaimed;
        self.release_kept(None, source);
        let mut freed = self.counters.reclaimed - before;
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
}
