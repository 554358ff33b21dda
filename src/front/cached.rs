//! [`Cached`]: the hooks of a `std` build — a [`LockedHeap`](super::LockedHeap)
//! serves from the quick path until two threads first meet at its lock, then
//! from each thread's cache ([`thread_cache`]) before the lock.
//!
//! This file is the heap's side of the caches: when they come on, the
//! lock-free copies of the heap's state they read (the arena mirror, layer
//! 0's window), and the blocks that come back through the lock (returned
//! by exiting threads, drained by `trim`, taken back before an allocation
//! fails).

use core::alloc::Layout;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU8, Ordering};

use super::hooks::{Guard, Hooks, Lock, no_unwind, realloc_own_layout};
use super::quick::{
    aligned_past_granule, alloc_locked, alloc_quick, alloc_quick_layer_0, beyond_small, block_or_null,
    free_locked, free_quick, free_quick_layer_0, free_quick_unsized, may_be_small, realloc_locked,
    realloc_quick, realloc_unsized_quick, small_aligned,
};
use super::quick::{free_unsized_locked, usable_layout_locked};
use super::thread_cache::Spill;
use super::{AllocateError, Domain, Heap, HeapStats, thread_cache};
use crate::object::TAGS;
use crate::source::{PageSource, reach};
use crate::sync::stat;

/// The caches are off.
const CACHES_OFF: u8 = 0;
/// They come on the first time two threads meet at the lock.
const CACHES_AUTO: u8 = 1;
/// They are on.
const CACHES_ON: u8 = 2;

/// The thread-cache hooks' state in a [`LockedHeap`](super::LockedHeap).
pub(super) struct Cached {
    /// [`CACHES_AUTO`] until two threads first meet at the lock, then
    /// [`CACHES_ON`]; [`CACHES_OFF`] or on when set so.
    state: AtomicU8,
    /// The heap's identity for the thread caches.
    link: thread_cache::Link,
    /// Layer +2's arena bitmap, for threads to read without the lock.
    arena_mirror: thread_cache::ArenaMirror,
}

/// A heap that goes takes its blocks out of every thread's cache (they are
/// forgotten: their memory goes with the heap) and frees its place in the
/// caches' registry.
impl Drop for Cached {
    fn drop(&mut self) {
        thread_cache::detach(&mut self.link);
    }
}

impl Hooks for Cached {
    const NEW: Self = Self {
        state: AtomicU8::new(CACHES_AUTO),
        link: thread_cache::Link::new(),
        arena_mirror: thread_cache::ArenaMirror::new(),
    };

    /// While the caches wait for a second thread, the lock is tried first:
    /// the first time it is found held by another thread, the caches come
    /// on. Once they have been on, the blocks exiting threads gave back are
    /// freed first, so that whoever holds the lock sees them free.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn lock<'a, S: PageSource, L: lock_api::RawMutex>(&self, heap: &'a Lock<S, L>) -> Guard<'a, S, L> {
        if self.state.load(Ordering::Relaxed) == CACHES_AUTO {
            // No cache has held a block yet: none to free.
            return heap.try_lock().unwrap_or_else(|| self.contended(heap));
        }
        let mut h = heap.lock();
        self.free_returned(&mut h);
        h
    }

    /// With the caches on, first brings the copy of layer +2's arena bitmap
    /// that threads read without the lock up to date.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn settle<S: PageSource, L: lock_api::RawMutex>(&self, heap: Guard<'_, S, L>) {
        if self.on() {
            self.sync_mirror(&heap, false);
        }
    }

    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn alloc<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        layout: Layout,
        domain: Domain,
    ) -> *mut u8 {
        if self.quick_allowed() {
            if may_be_small(layout) {
                if let Some(p) = no_unwind(|| alloc_quick(heap, layout)) {
                    return p.as_ptr();
                }
            } else if beyond_small(layout) {
                if aligned_past_granule(layout) {
                    return self.alloc_beyond_small::<true, _, _>(layout, domain, heap);
                }
                return self.alloc_beyond_small::<false, _, _>(layout, domain, heap);
            } else if small_aligned(layout) {
                return self.alloc_beyond_small::<true, _, _>(layout, domain, heap);
            }
        }
        self.alloc_rest(layout, domain, heap)
    }

    #[cfg_attr(not(strata_unoptimized), inline(always))]
    unsafe fn dealloc<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        p: NonNull<u8>,
        layout: Layout,
        domain: Domain,
    ) {
        if self.quick_allowed() {
            if may_be_small(layout) {
                // SAFETY: forwarded contract.
                if no_unwind(|| unsafe { free_quick(heap, p, layout) }) {
                    return;
                }
            } else if beyond_small(layout) {
                // SAFETY: forwarded contract.
                return unsafe { self.dealloc_beyond_small::<false, _, _>(p, layout, domain, heap) };
            } else if small_aligned(layout) {
                // SAFETY: forwarded contract.
                return unsafe { self.dealloc_beyond_small::<true, _, _>(p, layout, domain, heap) };
            }
        }
        // SAFETY: as above; the quick path left the block as it was.
        unsafe { self.dealloc_rest(p, layout, domain, heap) }
    }

    #[cfg_attr(not(strata_unoptimized), inline(always))]
    unsafe fn realloc<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        p: NonNull<u8>,
        layout: Layout,
        new_size: usize,
    ) -> *mut u8 {
        if self.quick_allowed() {
            // SAFETY: forwarded contract.
            return unsafe { self.realloc_quick_first(heap, p, layout, new_size) };
        }
        // SAFETY: forwarded contract.
        unsafe { self.realloc_rest(heap, p, layout, new_size) }
    }

    unsafe fn realloc_unsized<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        p: NonNull<u8>,
        new_size: usize,
    ) -> *mut u8 {
        if self.quick_allowed()
            // SAFETY: forwarded contract.
            && let Some(q) = no_unwind(|| unsafe { realloc_unsized_quick(heap, p, new_size, || self.quick_allowed()) })
        {
            return q.as_ptr();
        }
        // SAFETY: as above; the quick path left the block as it was.
        unsafe { realloc_own_layout(self, heap, p, new_size) }
    }

    unsafe fn realloc_declined<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        p: NonNull<u8>,
        layout: Layout,
        new_size: usize,
    ) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { self.realloc_rest(heap, p, layout, new_size) }
    }

    unsafe fn dealloc_unsized<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        p: NonNull<u8>,
    ) {
        if self.quick_allowed()
            // SAFETY: forwarded contract; the quick path frees only a +2
            // block that starts where a block of its pool does, or a block
            // of layer 0 that its headers say is in use.
            && no_unwind(|| unsafe { free_quick_unsized(heap, p, || self.quick_allowed()) })
        {
            return;
        }
        if self.on() {
            // Through the sized path, which knows the caches.
            // SAFETY: forwarded contract.
            return match unsafe { self.usable_layout(heap, p) } {
                // SAFETY: forwarded contract; the layout is the block's own.
                Some(layout) => unsafe { self.dealloc(heap, p, layout, Domain::HEAP) },
                None => self.refuse(heap),
            };
        }
        // SAFETY: forwarded contract.
        no_unwind(|| unsafe { free_unsized_locked(self, heap, p) })
    }

    /// Without the lock where the thread caches can tell. A block a thread
    /// has cached is in use as far as the heap knows, but freed as far as
    /// its caller is concerned: not in use (as a free of it would tell).
    unsafe fn usable_layout<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        p: NonNull<u8>,
    ) -> Option<Layout> {
        if !self.on() {
            return usable_layout_locked(self, heap, p);
        }
        // SAFETY: forwarded contract.
        let lock_free = unsafe {
            thread_cache::usable_layout(&self.link, &self.arena_mirror, p, || self.cache_geometry(heap))
        };
        let layout = lock_free.or_else(|| usable_layout_locked(self, heap, p))?;
        let cached = if TAGS {
            thread_cache::cached_anywhere(&self.arena_mirror, p, layout)
        } else {
            // Without tags, only this thread's bins are known: walked, as
            // a second free walks them.
            // SAFETY: forwarded contract.
            unsafe { thread_cache::held_here(&self.link, &self.arena_mirror, p, layout) }
        };
        (!cached).then_some(layout)
    }

    /// Takes back what the caches hold for this heap and, if anything came
    /// back, tries `again`, once, so that no request fails while cached
    /// memory could serve it.
    #[cold]
    #[inline(never)]
    fn failed<S: PageSource>(
        &self,
        heap: &mut Heap<S>,
        e: AllocateError,
        again: impl FnOnce(&mut Heap<S>) -> Result<NonNull<u8>, AllocateError>,
    ) -> *mut u8 {
        if matches!(e, AllocateError::Refused(_) | AllocateError::InvalidLayout { .. }) {
            return heap.or_null(Err(e));
        }
        if !self.take_back(heap) {
            return heap.or_null(Err(e));
        }
        let result = again(heap);
        heap.or_null(result)
    }

    /// Frees every block that threads' caches hold for this heap, and those
    /// that exiting threads gave back.
    fn reclaim<S: PageSource>(&self, heap: &mut Heap<S>) {
        self.take_back(heap);
    }

    /// The reallocs done without the lock, in place or into a cached block.
    fn add_counts(&self, stats: &mut HeapStats) {
        let cached = thread_cache::realloc_counts(&self.link);
        stats.front.realloc_in_place += cached.in_place;
        stats.front.realloc_moved += cached.moved;
    }

    fn set_thread_caches<S: PageSource>(&self, heap: &mut Heap<S>, on: bool) {
        if on {
            self.caches_come_on(heap);
        } else {
            self.state.store(CACHES_OFF, Ordering::Release);
            self.reclaim(heap);
        }
    }

    fn thread_caches_on(&self) -> bool {
        self.on()
    }

    #[cfg(feature = "std")]
    fn fork_prepare(&self) {
        thread_cache::fork_prepare();
    }

    #[cfg(feature = "std")]
    unsafe fn fork_parent(&self) {
        // SAFETY: forwarded contract.
        unsafe { thread_cache::fork_parent() }
    }

    #[cfg(feature = "std")]
    unsafe fn fork_child(&self) {
        // SAFETY: forwarded contract.
        unsafe { thread_cache::fork_child() }
    }
}

impl Cached {
    /// Frees every block that threads' caches hold for this heap, and those
    /// that exiting threads gave back. Returns whether there were any.
    fn take_back<S: PageSource>(&self, heap: &mut Heap<S>) -> bool {
        let mut any = false;
        thread_cache::drain_all(&self.link, &mut |block, layout| {
            any = true;
            // SAFETY: a cached block is a live block of this heap, which
            // `layout` frees, still tagged.
            if unsafe { heap.deallocate_cached(block, layout) }.is_err() {
                heap.stats.refused_frees += 1;
            }
        });
        self.free_returned(heap) || any
    }

    /// Whether threads cache this heap's blocks now.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn on(&self) -> bool {
        self.state.load(Ordering::Acquire) == CACHES_ON
    }

    /// Whether the quick paths may serve a call: only while the caches wait
    /// for a second thread. (Once they have been on, blocks that exiting
    /// threads gave back wait for the full lock to free them; while on, the
    /// caches serve first.)
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn quick_allowed(&self) -> bool {
        self.state.load(Ordering::Relaxed) == CACHES_AUTO
    }

    /// Every allocation the quick path leaves: through this thread's cache
    /// when the caches are on, else under the lock. (The arguments come in
    /// the order the caller holds them, so the quick path moves no register
    /// to make this call.)
    #[inline(never)]
    fn alloc_rest<S: PageSource, L: lock_api::RawMutex>(
        &self,
        layout: Layout,
        domain: Domain,
        heap: &Lock<S, L>,
    ) -> *mut u8 {
        no_unwind(|| {
            if domain == Domain::HEAP && self.on() {
                return match thread_cache::take(&self.link, layout) {
                    Some(p) => p.as_ptr(),
                    None => self.alloc_stocking(heap, layout, None),
                };
            }
            alloc_locked(self, heap, layout)
        })
    }

    /// An allocation [`beyond_small`] (or, `ALIGNED`, one aligned past 16)
    /// while the quick paths serve: layer 0's quick call, else
    /// [`alloc_rest`](Self::alloc_rest) (out of line, so that the small
    /// request's path keeps its few registers).
    #[inline(never)]
    fn alloc_beyond_small<const ALIGNED: bool, S: PageSource, L: lock_api::RawMutex>(
        &self,
        layout: Layout,
        domain: Domain,
        heap: &Lock<S, L>,
    ) -> *mut u8 {
        match no_unwind(|| alloc_quick_layer_0::<ALIGNED, _, _>(heap, layout)) {
            Some(p) => p.as_ptr(),
            None => self.alloc_rest(layout, domain, heap),
        }
    }

    /// A free [`beyond_small`] while the quick paths serve, as
    /// [`alloc_beyond_small`](Self::alloc_beyond_small).
    ///
    /// # Safety
    ///
    /// As [`Hooks::dealloc`].
    #[inline(never)]
    unsafe fn dealloc_beyond_small<const ALIGNED: bool, S: PageSource, L: lock_api::RawMutex>(
        &self,
        p: NonNull<u8>,
        layout: Layout,
        domain: Domain,
        heap: &Lock<S, L>,
    ) {
        // SAFETY: forwarded contract; the quick call left the block as it
        // was if it declined.
        if !no_unwind(|| unsafe {
            free_quick_layer_0::<ALIGNED, _, _>(heap, p, layout, || self.quick_allowed())
        }) {
            // SAFETY: as above.
            unsafe { self.dealloc_rest(p, layout, domain, heap) }
        }
    }

    /// A realloc while the quick paths serve: the quick calls for its new
    /// size ([`realloc_quick`]), else [`realloc_rest`](Self::realloc_rest)
    /// (out of line, in a frame of its own).
    ///
    /// # Safety
    ///
    /// As [`Hooks::realloc`].
    #[inline(never)]
    unsafe fn realloc_quick_first<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        p: NonNull<u8>,
        layout: Layout,
        new_size: usize,
    ) -> *mut u8 {
        // SAFETY: forwarded contract; a quick call left the block as it was
        // if it declined.
        match no_unwind(|| unsafe { realloc_quick(heap, p, layout, new_size, || self.quick_allowed()) }) {
            Some(q) => q.as_ptr(),
            // SAFETY: as above.
            None => unsafe { self.realloc_rest(heap, p, layout, new_size) },
        }
    }

    /// Every realloc the quick paths leave: through this thread's cache
    /// when the caches are on, else under the lock.
    ///
    /// # Safety
    ///
    /// As [`Hooks::realloc`].
    #[inline(never)]
    unsafe fn realloc_rest<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        p: NonNull<u8>,
        layout: Layout,
        new_size: usize,
    ) -> *mut u8 {
        no_unwind(|| {
            if self.on() {
                // SAFETY: forwarded contract.
                match unsafe { thread_cache::realloc(&self.link, &self.arena_mirror, p, layout, new_size) } {
                    // A block freed into a cache (this thread's or
                    // another's): refused, as the heap refuses a block it
                    // has freed.
                    thread_cache::Realloc::Cached => {
                        self.refuse(heap);
                        return ptr::null_mut();
                    }
                    thread_cache::Realloc::Locked => {}
                    thread_cache::Realloc::InPlace => return reach(p).as_ptr(),
                    thread_cache::Realloc::Refill { new } => {
                        let new = self.alloc_stocking(heap, new, Some(p));
                        if !new.is_null() {
                            // SAFETY: both blocks are live, distinct, and at
                            // least this long; the old one is freed once,
                            // and not used afterwards.
                            unsafe {
                                ptr::copy_nonoverlapping(p.as_ptr(), new, layout.size().min(new_size));
                                self.dealloc(heap, p, layout, Domain::HEAP);
                            }
                        }
                        return new;
                    }
                    thread_cache::Realloc::Moved { new, free_old } => {
                        if free_old {
                            // SAFETY: the old block, live until now, freed once.
                            unsafe { free_locked(self, heap, p, layout) };
                        }
                        return new.as_ptr();
                    }
                }
            }
            // SAFETY: forwarded contract.
            unsafe { realloc_locked(self, heap, p, layout, new_size) }
        })
    }

    /// Every free the quick path leaves, as [`alloc_rest`](Self::alloc_rest).
    ///
    /// # Safety
    ///
    /// As [`Hooks::dealloc`].
    #[inline(never)]
    unsafe fn dealloc_rest<S: PageSource, L: lock_api::RawMutex>(
        &self,
        p: NonNull<u8>,
        layout: Layout,
        domain: Domain,
        heap: &Lock<S, L>,
    ) {
        no_unwind(|| {
            if domain == Domain::HEAP && self.on() {
                // SAFETY: `GlobalAlloc`'s contract: a live block of this
                // heap with `layout`, not used after this call.
                match unsafe {
                    thread_cache::put(&self.link, &self.arena_mirror, p, layout, || self.cache_geometry(heap))
                } {
                    Ok(Spill(spill)) => {
                        if !spill.is_null() {
                            self.free_spill(heap, spill);
                        }
                        return;
                    }
                    Err(thread_cache::Declined::DoubleFree) => return self.refuse(heap),
                    Err(thread_cache::Declined::Pass) => {}
                }
            }
            // SAFETY: `GlobalAlloc`'s contract: `p` came from this
            // allocator with `layout`.
            unsafe { free_locked(self, heap, p, layout) };
        })
    }

    /// An allocation this thread's cache could not serve: through the lock,
    /// and, for a small request from a pool, up to
    /// [`thread_cache::REFILL`] more blocks of its class from the same pool
    /// go into the cache under the same lock, for the requests to come.
    ///
    /// `moving`: the block of a realloc that moves (counted as such). It is
    /// checked under the lock first, as the heap checks a block it frees: a
    /// block the heap has freed already is refused (null, counted), and
    /// nothing is allocated.
    #[inline(never)]
    fn alloc_stocking<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        layout: Layout,
        moving: Option<NonNull<u8>>,
    ) -> *mut u8 {
        let stocking = thread_cache::attached(&self.link, || self.cache_geometry(heap));
        let mut h = self.lock(heap);
        if let Some(old) = moving
            // SAFETY: `may_free` is asked of a block start of an arena of ours.
            && !(h.object.owns(old.as_ptr()) && unsafe { h.object.is_block_start(old) && h.object.may_free(old) })
        {
            h.stats.refused_frees += 1;
            self.settle(h);
            return ptr::null_mut();
        }
        let result = h.allocate(layout);
        let p = block_or_null(self, &mut h, result, |h| h.allocate(layout));
        if moving.is_some() && !p.is_null() {
            stat!(h.stats.realloc_moved += 1);
        }
        if stocking && h.is_small(layout) && h.object.owns(p) {
            let object = &mut h.object;
            // SAFETY: blocks fresh from the pools of the class of `layout`.
            unsafe {
                thread_cache::stock(&self.link, layout, || {
                    object.allocate_from_pools(layout.size(), layout.align())
                })
            };
        }
        self.settle(h);
        p
    }

    /// Two threads met at the lock while the caches waited for it: takes
    /// the lock and switches the caches on.
    #[cold]
    #[inline(never)]
    fn contended<'a, S: PageSource, L: lock_api::RawMutex>(&self, heap: &'a Lock<S, L>) -> Guard<'a, S, L> {
        let h = heap.lock();
        if self.state.load(Ordering::Relaxed) == CACHES_AUTO {
            self.caches_come_on(&h);
        }
        h
    }

    /// Brings the lock-free copies of the heap's state up to date, then
    /// lets threads cache (with the lock held): a thread that sees the
    /// caches on sees the copies made.
    fn caches_come_on<S: PageSource>(&self, heap: &Heap<S>) {
        self.sync_mirror(heap, true);
        self.state.store(CACHES_ON, Ordering::Release);
    }

    /// Brings the lock-free copies of the heap's state up to date (with the
    /// lock held): the arena bitmap if its counters moved (or, `always`,
    /// whatever they say) and layer 0's window.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn sync_mirror<S: PageSource>(&self, heap: &Heap<S>, always: bool) {
        let c = heap.object.counters();
        let counters = (c.allocated_total, c.reclaimed);
        if always {
            self.arena_mirror.force_sync(|| heap.object.arena_bitmap(), counters);
        } else {
            self.arena_mirror.sync(counters, || heap.object.arena_bitmap());
        }
        self.arena_mirror.sync_window(heap.segment.committed_window());
        self.arena_mirror.sync_spans(heap.segment.span_slots());
    }

    /// Frees, with the lock held, the blocks that exiting threads gave back.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn free_returned<S: PageSource>(&self, heap: &mut Heap<S>) -> bool {
        let block = thread_cache::take_returned(&self.link);
        if !block.is_null() {
            Self::free_returned_list(block, heap);
        }
        !block.is_null()
    }

    /// Frees, through the lock in one trip, the blocks a full bin of this
    /// thread's cache gave up ([`thread_cache::Spill`]).
    #[cold]
    #[inline(never)]
    fn free_spill<S: PageSource, L: lock_api::RawMutex>(&self, heap: &Lock<S, L>, spill: *mut u8) {
        let mut h = self.lock(heap);
        Self::free_returned_list(spill, &mut h);
        self.settle(h);
    }

    /// Frees a list of returned blocks (see [`free_returned`](Self::free_returned)),
    /// or of blocks a bin spilled.
    #[cold]
    #[inline(never)]
    fn free_returned_list<S: PageSource>(mut block: *mut u8, heap: &mut Heap<S>) {
        while let Some(b) = NonNull::new(block) {
            // SAFETY: returned blocks are linked through their first word,
            // and are live blocks of this heap, still tagged: small ones of
            // +2 (freed by pool, whatever the layout), medium ones of layer
            // 0 keeping their chunk size.
            unsafe {
                block = b.as_ptr().cast::<*mut u8>().read();
                let layout = if heap.object.owns(b.as_ptr()) {
                    Layout::new::<u8>()
                } else {
                    thread_cache::medium_layout(b)
                };
                if heap.deallocate_cached(b, layout).is_err() {
                    heap.stats.refused_frees += 1;
                }
            }
        }
    }

    /// What a thread cache needs to know of this heap's layer +2.
    #[cold]
    fn cache_geometry<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
    ) -> Option<thread_cache::Geometry> {
        let h = self.lock(heap);
        let g = h.object.geometry();
        // A heap before `init` has no memory, and not yet its geometry.
        let geometry = (h.source.window().1 != 0).then(|| thread_cache::Geometry {
            threshold: g.threshold,
            class_shift: g.class_shift,
            slots_start: h.object.slots_start(),
            arena_shift: g.arena_shift,
            pool_shift: g.pool_shift,
        });
        self.settle(h);
        geometry
    }
}
