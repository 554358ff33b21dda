//! Per-thread caches in front of a [`LockedHeap`](super::LockedHeap)'s lock
//! (feature `std`; per CPU in a `no_std` kernel with `cpu-caches`; inactive
//! with `debug`): glibc's tcache for strata.
//!
//! **Per CPU** (`cpu-caches`): the same caches, one per CPU instead of one
//! per thread, once the kernel has said how to find the running CPU
//! (`set_cpu_home`, up to `CPUS` CPUs). An interrupt handler that
//! allocates while the code it interrupted is using the bins takes the
//! locked path, and a CPU that drains the caches under the heap's lock
//! waits for another CPU's bins only for a bounded time (that CPU may be in
//! such a handler, waiting for the lock); CPUs never exit, so nothing is
//! returned on exit.
//!
//! A thread that frees a block of layer +2 keeps it in a bin of its own,
//! up to [`DEPTH`] blocks per size class; its next request of that class
//! takes it back without the heap lock. Blocks of layer 0 up to
//! [`MEDIUM_MAX`] bytes are kept the same way, up to [`MEDIUM_DEPTH`] per
//! *medium bin* (chunk sizes eight to a power of two, TLSF's spacing): a
//! request takes from the first bin all of whose chunks hold it, else the
//! latest block of its own bin if that one holds it (as a block freed by a
//! request of the same size does), so a block may serve a request up to a
//! quarter smaller than its chunk, which layer 0's free check allows for. Blocks in a thread's bins stay allocated as
//! far as the heap knows. A bin that is full gives up its older half to
//! the heap in one trip to the lock (jemalloc's tcache flushes the same
//! way), so a thread that frees more than it allocates takes the lock once
//! every few frees, not at every one. A request that finds its small bin empty takes the
//! lock once for itself and [`REFILL`] more blocks of its class, the next
//! ones of the same pool (jemalloc's tcache fills half a bin the same way):
//! fewer trips to the lock, and a thread's blocks lie next to each other
//! rather than interleaved with other threads' on shared cache lines. A
//! realloc into a class whose bin is empty goes the same way, and copies
//! outside the lock.
//!
//! **On by default, for any heap**, from the first time two threads meet at
//! the heap's lock (before that the locked path is as fast; see
//! [`LockedHeap::set_thread_caches`](super::LockedHeap::set_thread_caches)).
//! A thread caches for one heap at a time,
//! the first it frees a block to; other heaps take the locked path. A heap
//! is known to the caches by an id that is never reused (so a heap may be
//! moved, and a new heap at a dropped one's address is a stranger), and
//! has an entry in a registry ([`HEAPS`] at once) that also lists every
//! thread's cache (with `std`, a slot of a static table, `THREADS` at
//! once, so that the list never leads into a dead thread's storage).
//! Through it the blocks get back:
//! - a thread that exits pushes its blocks onto its heap's stack of
//!   returned blocks (lock-free), which the heap frees at its next locked
//!   operation;
//! - [`LockedHeap::trim`](super::LockedHeap::trim), an allocation about to
//!   fail, and switching the caches off take every block every thread holds
//!   for the heap: a thread uses its bins between one compare-and-swap and
//!   a store, and the heap drains them in between;
//! - a heap that is dropped makes every cache forget its blocks (their
//!   memory goes with it) and frees its entry.
//!
//! **What is cached, and where.** Only blocks the heap's own checks would
//! let it free. A medium block must pass layer 0's O(1) check of a free
//! (in its committed window, a chunk in use whose neighbour agrees, of a
//! size that fits the layout), made without the lock on header words that
//! are only ever accessed atomically. A small block must lie in an arena
//! of layer +2: the heap keeps a copy of +2's arena bitmap
//! in atomics outside its lock (an arena mirror), updated under the lock
//! whenever an arena comes or goes, which the cache reads before it keeps a
//! block. Anything else — a foreign pointer, a larger block — takes the
//! locked path, where the heap refuses what is not its own (counted in
//! `refused_frees`). A block is filed by what it is — the size class its
//! pool's header records, read without the lock — never by the layout it
//! is freed with; so every block of a bin holds every request of that bin's
//! class (and blocks of the classes 16-aligned requests use are
//! 16-aligned). A second free of a block this thread still holds, with any
//! layout, finds it in its bin and is refused.

#![cfg_attr(feature = "debug", allow(dead_code))]

#[cfg(feature = "std")]
extern crate std;

use core::alloc::Layout;
use core::cell::{Cell, UnsafeCell};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicU8, AtomicU64, AtomicUsize, Ordering};

use crate::object::{KEY, NUM_CLASSES, TAGS, block_class, class_size, make_key, size_class};
use crate::segment::{self, MEDIUM_MAX, WindowBlock, chunk_size};

mod bin;
#[cfg(feature = "std")]
mod fork;
mod mirror;
mod realloc;

/// Where a thread finds its cache: a slot it takes with `std`, this CPU's
/// slot with `cpu-caches`.
#[cfg(feature = "std")]
#[path = "thread_cache/thread_home.rs"]
mod home;
#[cfg(not(feature = "std"))]
#[path = "thread_cache/cpu_home.rs"]
mod home;

pub(crate) use bin::Spill;
pub(crate) use bin::clear_tag;
use bin::{Bin, MEDIUM_BINS, MEDIUM_SHIFT, medium_bin, medium_ceil, medium_floor};
#[cfg(feature = "std")]
pub(crate) use fork::{fork_child, fork_parent, fork_prepare};
#[cfg(feature = "std")]
pub use home::THREADS;
#[cfg(not(feature = "std"))]
pub use home::{CPUS, CpuHome, set_cpu_home};
use mirror::cached_in;
pub(crate) use mirror::{ArenaMirror, cached_anywhere};
#[cfg_attr(feature = "debug", allow(unused_imports))]
pub(crate) use realloc::{Realloc, realloc};

/// Most blocks a thread keeps per size class.
pub const DEPTH: u16 = 32;

/// Most blocks a thread keeps per medium bin.
pub const MEDIUM_DEPTH: u16 = 16;

/// What a thread needs to know of the heap it caches for: its identity and
/// layer +2's geometry (fixed for the heap's life).
#[derive(Clone, Copy)]
pub(crate) struct Owner {
    /// The heap's [`Link`] id.
    id: u64,
    /// The heap's registry entry.
    #[cfg_attr(not(feature = "std"), allow(dead_code))]
    entry: usize,
    /// Layer +2's threshold and class granularity on that heap.
    pub(crate) threshold: usize,
    pub(crate) class_shift: u32,
    /// Where the arena slots start and how large they are.
    pub(crate) slots_start: usize,
    pub(crate) arena_shift: u32,
    /// Pools are `1 << pool_shift` bytes, aligned to their size.
    pub(crate) pool_shift: u32,
}

/// Layer +2's geometry as a cache needs it: the fields of [`Owner`] that
/// the heap fills in.
#[derive(Clone, Copy)]
pub(crate) struct Geometry {
    pub(crate) threshold: usize,
    pub(crate) class_shift: u32,
    pub(crate) slots_start: usize,
    pub(crate) arena_shift: u32,
    pub(crate) pool_shift: u32,
}

impl Owner {
    /// No heap.
    const NONE: Self =
        Self { id: 0, entry: 0, threshold: 0, class_shift: 0, slots_start: 0, arena_shift: 0, pool_shift: 0 };

    /// Whether `ptr` lies in an arena of layer +2, as the heap knew at its
    /// last change of arenas.
    #[inline]
    fn owns(&self, mirror: &ArenaMirror, ptr: NonNull<u8>) -> bool {
        let slot = (ptr.as_ptr() as usize).wrapping_sub(self.slots_start) >> self.arena_shift;
        mirror.holds(slot)
    }

    /// Layer +2's geometry, as [`block_class`] takes it.
    #[inline]
    fn blocks(&self) -> crate::object::Geometry {
        crate::object::Geometry {
            arena_shift: self.arena_shift,
            pool_shift: self.pool_shift,
            class_shift: self.class_shift,
            threshold: self.threshold,
        }
    }

    /// Whether a layout is small (served by +2's classes).
    #[inline]
    fn is_small(&self, layout: Layout) -> bool {
        layout.size().wrapping_sub(1) < self.threshold && layout.align() <= 16
    }
}

/// A heap's tie to the thread caches, kept in the heap: an identity that
/// survives the heap being moved and is never given to another heap, and
/// the heap's entry in the registry.
pub(crate) struct Link {
    /// 0 until a thread first caches for the heap.
    id: AtomicU64,
    /// The registry entry plus one; 0 for none. Written under the registry
    /// lock.
    entry: AtomicUsize,
}

impl Link {
    pub(crate) const fn new() -> Self {
        Self { id: AtomicU64::new(0), entry: AtomicUsize::new(0) }
    }

    #[inline]
    fn id(&self) -> u64 {
        self.id.load(Ordering::Relaxed)
    }

    /// The registry entry, if the heap has one.
    #[inline]
    fn entry(&self) -> Option<usize> {
        self.entry.load(Ordering::Acquire).checked_sub(1)
    }
}

/// How many heaps threads can cache for at once; a heap beyond them takes
/// the locked path (and gets an entry when one is free again).
pub const HEAPS: usize = 64;

/// Ids for [`Link`]s: never reused, so a cache never mistakes a new heap
/// for a dropped one at the same address.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Blocks that exiting threads gave back, one stack per registry entry,
/// linked through their first word: the heap frees them under its lock at
/// its next locked operation ([`take_returned`]). Pushed only under the
/// registry lock, emptied whole with a swap: no ABA.
static RETURNED: [AtomicPtr<u8>; HEAPS] = [const { AtomicPtr::new(ptr::null_mut()) }; HEAPS];

/// Which heaps have entries, and every thread's cache: what a heap that
/// drains the caches (on [`trim`](super::LockedHeap::trim), or before an
/// allocation fails) and a thread that exits need to find each other.
struct Registry {
    /// The id of each entry's heap, 0 when free.
    heaps: [u64; HEAPS],
    /// Every thread's cache, linked through [`ThreadCache::next`].
    caches: *const ThreadCache,
}

// SAFETY: the list's caches unlink themselves under the registry's lock
// before their thread's storage goes; only the lock holder walks it.
unsafe impl Send for Registry {}

impl Registry {
    /// Runs `f` on the bins and owner of every cache that serves heap `id`,
    /// each taken in state `DRAINING` (waiting, yielding, for a thread in
    /// the middle of using its cache — except `skip`, this thread's own,
    /// which is left as it is if it is in use). A cache whose owner `f`
    /// clears stops serving the heap.
    ///
    /// # Safety
    ///
    /// The registry's lock must be held (this is its guarded value).
    unsafe fn each_cache_of(
        &self,
        id: u64,
        skip: *const ThreadCache,
        mut f: impl FnMut(&mut Bins, &mut Owner),
    ) {
        let mut c = self.caches;
        while !c.is_null() {
            // SAFETY: a cache on the list, live while it is.
            let cache = unsafe { &*c };
            if cache.owner_id.load(Ordering::Relaxed) == id {
                let mut turns = 0;
                let taken = loop {
                    match cache.state.compare_exchange(IDLE, DRAINING, Ordering::Acquire, Ordering::Relaxed) {
                        Ok(_) => break true,
                        // This thread, interrupted in its own cache.
                        Err(_) if c == skip => break false,
                        // (A CPU that may wait for us: left for next time.)
                        Err(_) if !home::keep_waiting(&mut turns) => break false,
                        Err(_) => {}
                    }
                };
                if taken {
                    // SAFETY: in state DRAINING the bins and the owner are
                    // ours alone.
                    let (bins, owner) = unsafe { (&mut *cache.bins.get(), &mut *cache.owner.get()) };
                    f(bins, owner);
                    if owner.id == 0 {
                        cache.owner_id.store(0, Ordering::Relaxed);
                    }
                    cache.state.store(IDLE, Ordering::Release);
                }
            }
            c = cache.next.get();
        }
    }
}

static REGISTRY: spin::mutex::SpinMutex<Registry, home::Relax> =
    spin::mutex::SpinMutex::new(Registry { heaps: [0; HEAPS], caches: ptr::null() });

/// A cache's state: its thread using it, another thread draining it, or
/// neither.
const IDLE: u8 = 0;
const OWNER: u8 = 1;
const DRAINING: u8 = 2;

/// One thread's cache. Its thread uses the bins in state `OWNER` (entered
/// with one compare-and-swap, so that a thread draining the caches can take
/// them in state `DRAINING` meanwhile), everything else under the registry
/// lock. On cache lines of its own: the CPU caches lie side by side.
#[repr(align(128))]
struct ThreadCache {
    state: AtomicU8,
    /// The id of the heap the bins belong to (0: none).
    owner_id: AtomicU64,
    /// The heap the bins serve (id 0: none). Written by the thread when
    /// it attaches (not in state `OWNER`) and by a heap that goes (in state
    /// `DRAINING`), both under the registry lock.
    owner: UnsafeCell<Owner>,
    bins: UnsafeCell<Bins>,
    /// The next cache of the registry's list (registry lock).
    next: Cell<*const ThreadCache>,
    /// Whether this cache is on the registry's list (registry lock).
    registered: Cell<bool>,
}

struct Bins {
    small: [Bin; NUM_CLASSES],
    /// Layer 0's chunks, by size (each holds its chunk size in its third
    /// word while cached).
    medium: [Bin; MEDIUM_BINS],
    /// The reallocs this thread did for the heap without its lock: in
    /// place, and moved into a cached block. Counted here, not in shared
    /// counters, so that threads do not contend for one cache line; summed
    /// by [`realloc_counts`], kept for the heap when the thread exits.
    reallocs: Reallocs,
}

/// Counts of reallocs done in the caches: in place, and moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Reallocs {
    pub(crate) in_place: usize,
    pub(crate) moved: usize,
}

/// The reallocs of threads that have exited, per registry entry (the heap
/// holding it).
static EXITED_REALLOCS: [[AtomicUsize; 2]; HEAPS] =
    [const { [AtomicUsize::new(0), AtomicUsize::new(0)] }; HEAPS];

/// The reallocs every thread has done in its cache for the heap of `link`
/// (see [`Bins::reallocs`]).
pub(crate) fn realloc_counts(link: &Link) -> Reallocs {
    let Some(entry) = link.entry() else { return Reallocs::default() };
    let registry = REGISTRY.lock();
    let exited = &EXITED_REALLOCS[entry];
    let mut sum =
        Reallocs { in_place: exited[0].load(Ordering::Relaxed), moved: exited[1].load(Ordering::Relaxed) };
    // SAFETY: the registry's lock is held.
    unsafe {
        registry.each_cache_of(link.id(), ptr::null(), |bins, _| {
            sum.in_place += bins.reallocs.in_place;
            sum.moved += bins.reallocs.moved;
        });
    }
    sum
}

/// Where a cached medium block keeps its chunk size.
const MEDIUM_SIZE_WORD: usize = 2;

impl Bins {
    /// Hands every block to `free` with a layout that frees it (the class's
    /// size, the chunk's), leaving the bins empty. The blocks keep their
    /// tags (see [`Bin::pop_tagged`]): the heap frees them with
    /// [`Heap::deallocate_cached`](super::Heap::deallocate_cached).
    fn drain(&mut self, owner: &Owner, free: &mut dyn FnMut(NonNull<u8>, Layout)) {
        let pop = Bin::pop_tagged;
        for (class, bin) in self.small.iter_mut().enumerate() {
            let layout =
                Layout::from_size_align(class_size(class, owner.class_shift), 8).expect("class layout");
            while let Some(block) = pop(bin) {
                free(block, layout);
            }
        }
        for bin in &mut self.medium {
            while let Some(block) = pop(bin) {
                // SAFETY: a cached medium block.
                free(block, unsafe { medium_layout(block) });
            }
        }
    }

    /// Forgets every block (their heap is gone).
    fn forget(&mut self) {
        self.small = [Bin::EMPTY; NUM_CLASSES];
        self.medium = [Bin::EMPTY; MEDIUM_BINS];
        self.reallocs = Reallocs::default();
    }

    /// The class of `ptr`, if it is a block of an arena of `owner` (else
    /// `None`), and whether this cache's bin of that class holds it: the
    /// lookup a free, a realloc and [`held_here`] make of a small block.
    ///
    /// # Safety
    ///
    /// If `ptr` lies in an arena of `owner`, it is a live block there or
    /// one this cache holds (so its pool is in use).
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    unsafe fn small_class_held(
        &self,
        mirror: &ArenaMirror,
        owner: &Owner,
        ptr: NonNull<u8>,
    ) -> Option<(usize, bool)> {
        if !owner.owns(mirror, ptr) {
            return None;
        }
        // Filed by what the block is (its pool's class), never by the
        // layout it is freed with (see `put`).
        // SAFETY: in an arena of the owner (just checked), live or cached,
        // so its pool is in use.
        let class = unsafe { block_class(ptr, owner.blocks()) }?;
        // SAFETY: a block of the class's size.
        Some((class, unsafe { self.small[class].holds(ptr) }))
    }

    /// Whether `ptr`, a block of layer 0 freed with `layout`, is cached.
    ///
    /// # Safety
    ///
    /// As [`put`].
    #[inline]
    unsafe fn holds_medium(
        &self,
        mirror: &ArenaMirror,
        owner: &Owner,
        ptr: NonNull<u8>,
        layout: Layout,
    ) -> bool {
        let Some(window) = medium_window(mirror, owner, ptr, layout) else { return false };
        // SAFETY: forwarded contract.
        match unsafe { medium_chunk(window, ptr, layout) } {
            // SAFETY: a block of the bin's size.
            Some((_, bin)) => unsafe { self.medium[bin].holds(ptr) },
            None => false,
        }
    }

    /// Keeps a freed block of layer 0 in a medium bin, if the heap's own
    /// free checks would pass it: in layer 0's committed window, not in an
    /// arena of +2, a chunk in use that fits `layout` (read from its header
    /// and its neighbour's, which are accessed atomically).
    ///
    /// # Safety
    ///
    /// As [`put`]; `owner` is this cache's owner.
    #[inline]
    unsafe fn put_medium(
        &mut self,
        owner: &Owner,
        mirror: &ArenaMirror,
        ptr: NonNull<u8>,
        layout: Layout,
    ) -> Result<Spill, Declined> {
        let Some(window) = medium_window(mirror, owner, ptr, layout) else { return Err(Declined::Pass) };
        // The tag first, then the chunk's header (in `medium_chunk`): a
        // block that the heap is freeing from a cache meanwhile keeps its
        // tag until its header says free (`Heap::deallocate_cached`), so
        // one of the two tells, whenever this free comes.
        if cached_in(window, ptr, layout) {
            return Err(Declined::DoubleFree);
        }
        core::sync::atomic::fence(Ordering::Acquire);
        // SAFETY: forwarded contract.
        let Some((chunk, bin)) = (unsafe { medium_chunk(window, ptr, layout) }) else {
            return Err(Declined::Pass);
        };
        let bin = &mut self.medium[bin];
        // SAFETY: the caller's block, of this bin's size.
        if unsafe { bin.holds(ptr) } {
            return Err(Declined::DoubleFree);
        }
        // SAFETY: a live block of layer 0 of at least `1 << MEDIUM_SHIFT`
        // bytes, ours again: its third word keeps the chunk size.
        unsafe {
            ptr.as_ptr().cast::<usize>().add(MEDIUM_SIZE_WORD).write(chunk);
            Ok(bin.keep(ptr, MEDIUM_DEPTH))
        }
    }
}

/// Layer 0's memory around `ptr` that a free of it with `layout` may read
/// without the lock, as [`ArenaMirror::medium_window`] gives it: `None`
/// for a layout no medium bin serves, a pointer in an arena of +2, or one
/// outside layer 0's memory as last recorded.
#[inline]
fn medium_window(
    mirror: &ArenaMirror,
    owner: &Owner,
    ptr: NonNull<u8>,
    layout: Layout,
) -> Option<(usize, usize)> {
    if medium_need(layout).is_none() || owner.owns(mirror, ptr) {
        return None;
    }
    let window = mirror.medium_window(ptr.as_ptr() as usize);
    (window.1 != 0).then_some(window)
}

/// The chunk size and medium bin of `ptr`, freed with `layout`, if layer
/// 0's free checks would pass it (made without the lock, on header words
/// accessed atomically): a chunk in use in `window` that fits `layout`, of
/// a size a medium bin holds.
///
/// # Safety
///
/// If the heap owns `ptr`, it must be a live block of it allocated with
/// `layout`; `window` is what [`medium_window`] gave for it.
#[inline]
unsafe fn medium_chunk(window: (usize, usize), ptr: NonNull<u8>, layout: Layout) -> Option<(usize, usize)> {
    // SAFETY: the window is layer 0's committed span while it holds it,
    // and it holds it while any of its blocks is live; a pointer the
    // caller did not get from this heap but within the window reads the
    // heap's own memory, which a committed source keeps. Over a
    // page-mapping source it is memory of spans that the copy of layer 0's
    // map says are held; a live block's span stays held, so only a free
    // of a block already freed, racing with the release of its span,
    // could find it gone (and fault rather than corrupt).
    let WindowBlock::Fits(chunk) = (unsafe { segment::window_block(window, ptr, layout) }) else {
        return None;
    };
    let bin = medium_bin(chunk);
    (bin < MEDIUM_BINS).then_some((chunk, bin))
}

/// The layout that frees a medium block from a cache: its whole chunk's.
///
/// # Safety
///
/// `block` must be a medium block taken from a cache's bin.
pub(crate) unsafe fn medium_layout(block: NonNull<u8>) -> Layout {
    // SAFETY: the caller's promise: the block keeps its chunk size here.
    let chunk = unsafe { block.as_ptr().cast::<usize>().add(MEDIUM_SIZE_WORD).read() };
    Layout::from_size_align(chunk - segment::CHUNK_WORD, 16).expect("a chunk's layout")
}

/// The chunk a request of `layout` needs in layer 0, if it is one a medium
/// bin serves: at most [`MEDIUM_MAX`] bytes, aligned to at most 16, and a
/// chunk of at least `1 << MEDIUM_SHIFT` bytes. (The caller has checked
/// that it is not small.)
#[inline]
fn medium_need(layout: Layout) -> Option<usize> {
    if layout.size() > MEDIUM_MAX || layout.align() > segment::CHUNK_GRANULE {
        return None;
    }
    chunk_size(layout.size()).filter(|&need| need >= 1 << MEDIUM_SHIFT)
}

impl ThreadCache {
    const fn new() -> Self {
        Self {
            state: AtomicU8::new(IDLE),
            owner_id: AtomicU64::new(0),
            owner: UnsafeCell::new(Owner::NONE),
            bins: UnsafeCell::new(Bins {
                small: [Bin::EMPTY; NUM_CLASSES],
                medium: [Bin::EMPTY; MEDIUM_BINS],
                reallocs: Reallocs { in_place: 0, moved: 0 },
            }),
            next: Cell::new(ptr::null()),
            registered: Cell::new(false),
        }
    }

    /// Runs `f` on the bins if they belong to the heap of `link` and no
    /// other thread is draining them; `default` otherwise.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn enter<R>(&self, link: &Link, default: R, f: impl FnOnce(&mut Bins, &Owner) -> R) -> R {
        if self.state.compare_exchange(IDLE, OWNER, Ordering::Acquire, Ordering::Relaxed).is_err() {
            return default;
        }
        // SAFETY: in state OWNER the bins and the owner are this
        // thread's alone, and the owner is not written.
        let (bins, owner) = unsafe { (&mut *self.bins.get(), &*self.owner.get()) };
        // Ids start at 1: a cache that serves no heap (id 0) serves none.
        let r = if owner.id == link.id() { f(bins, owner) } else { default };
        self.state.store(IDLE, Ordering::Release);
        r
    }

    /// Whether this cache serves a heap, attaching it to the heap of `link`
    /// if it serves none (with the heap's `geometry`; a heap with no memory
    /// yet has none to cache by).
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn attached(&self, link: &Link, geometry: impl FnOnce() -> Option<Geometry>) -> bool {
        self.owner_id.load(Ordering::Relaxed) != 0 || geometry().is_some_and(|g| self.attach(link, g))
    }

    /// Makes this cache serve the heap of `link` (it serves none): gives
    /// the heap an entry in the registry if it has none, and puts this
    /// cache on the registry's list. False if every entry is taken.
    /// (The thread's exit hooks are in place: `home` registers them before
    /// it hands out a cache.)
    #[cold]
    fn attach(&self, link: &Link, geometry: Geometry) -> bool {
        let mut registry = REGISTRY.lock();
        let entry = match link.entry() {
            Some(entry) => entry,
            None => {
                let Some(entry) = registry.heaps.iter().position(|&id| id == 0) else { return false };
                let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                registry.heaps[entry] = id;
                link.id.store(id, Ordering::Relaxed);
                link.entry.store(entry + 1, Ordering::Release);
                entry
            }
        };
        if !self.registered.get() {
            self.next.set(registry.caches);
            registry.caches = self;
            self.registered.set(true);
        }
        let id = link.id();
        if KEY.load(Ordering::Relaxed) == 0 {
            make_key();
        }
        // SAFETY: this thread is not using the bins, and no other thread
        // drains them without the registry lock, held here.
        unsafe {
            let bins = &mut *self.bins.get();
            for (class, bin) in bins.small.iter_mut().enumerate() {
                bin.tagged = crate::object::holds_tag(class_size(class, geometry.class_shift));
            }
            for bin in &mut bins.medium {
                bin.tagged = TAGS;
            }
            *self.owner.get() = Owner {
                id,
                entry,
                threshold: geometry.threshold,
                class_shift: geometry.class_shift,
                slots_start: geometry.slots_start,
                arena_shift: geometry.arena_shift,
                pool_shift: geometry.pool_shift,
            };
        }
        self.owner_id.store(id, Ordering::Relaxed);
        true
    }
}

impl ThreadCache {
    /// The thread exits: its blocks go to their heap's stack of returned
    /// blocks (if the heap is still there), and the cache leaves the list
    /// and serves no heap again (a later destructor that frees takes the
    /// locked path). Runs from the thread's exit hooks (see `home`), with
    /// `&self`: other threads may be reading this cache through the list
    /// until it is unlinked.
    #[cfg(feature = "std")]
    fn exit(&self) {
        self.exit_locked(&mut REGISTRY.lock());
    }

    /// Makes a cache that has left ([`exit_locked`](Self::exit_locked)) as
    /// [`new`](Self::new) made it, for another thread to take.
    ///
    /// # Safety
    ///
    /// The cache must be off the registry's list, with its bins emptied,
    /// and no thread may use it during the call.
    #[cfg(feature = "std")]
    unsafe fn reset(&self) {
        // SAFETY: the caller's promise: nobody else reaches the cache.
        unsafe {
            (*self.bins.get()).forget();
            *self.owner.get() = Owner::NONE;
        }
        self.owner_id.store(0, Ordering::Relaxed);
        self.next.set(ptr::null());
        self.registered.set(false);
        self.state.store(IDLE, Ordering::Relaxed);
    }

    /// [`exit`](Self::exit) with the registry's lock held: also how a
    /// child process after `fork` retires the caches of the threads it did
    /// not inherit ([`fork_child`]).
    #[cfg(feature = "std")]
    fn exit_locked(&self, registry: &mut Registry) {
        if self.registered.get() {
            let me: *const ThreadCache = self;
            let mut link = &mut registry.caches;
            while !link.is_null() {
                if *link == me {
                    *link = self.next.get();
                    break;
                }
                // SAFETY: a cache on the list, live while it is (it unlinks
                // itself under this lock before it goes).
                link = unsafe { &mut *(**link).next.as_ptr() };
            }
            self.registered.set(false);
        }
        // SAFETY: off the list, under the registry lock, and not in state
        // OWNER (this thread is here, not in its cache): the bins and owner
        // are this thread's alone.
        let (bins, owner) = unsafe { (&mut *self.bins.get(), &mut *self.owner.get()) };
        let heap = *owner;
        *owner = Owner::NONE;
        // Never attaches again (attaching needs `owner_id` 0).
        self.owner_id.store(u64::MAX, Ordering::Relaxed);
        if heap.id == 0 {
            return;
        }
        if registry.heaps[heap.entry] != heap.id {
            return bins.forget();
        }
        // The heap is alive while its entry is (it frees the entry, under
        // this lock, when it is dropped): its blocks can still be written.
        let exited = &EXITED_REALLOCS[heap.entry];
        exited[0].fetch_add(bins.reallocs.in_place, Ordering::Relaxed);
        exited[1].fetch_add(bins.reallocs.moved, Ordering::Relaxed);
        bins.reallocs = Reallocs::default();
        let stack = &RETURNED[heap.entry];
        bins.drain(&heap, &mut |block, _| {
            let mut head = stack.load(Ordering::Relaxed);
            loop {
                // SAFETY: a block of the heap, ours to link through.
                unsafe { block.as_ptr().cast::<*mut u8>().write(head) };
                match stack.compare_exchange_weak(head, block.as_ptr(), Ordering::Release, Ordering::Relaxed)
                {
                    Ok(_) => break,
                    Err(now) => head = now,
                }
            }
        });
    }
}

/// A cached block for `layout` of the heap of `link`, if this thread has one.
#[inline]
pub(crate) fn take(link: &Link, layout: Layout) -> Option<NonNull<u8>> {
    home::with(|cache| {
        cache.enter(link, None, |bins, owner| {
            if owner.is_small(layout) {
                // The class a request needs: its alignment may round it up.
                return bins.small[size_class(layout.size(), layout.align(), owner.class_shift)].pop();
            }
            let need = medium_need(layout)?;
            let bin = medium_ceil(need);
            // Else the bin of `need` itself, whose latest block may hold it
            // (a block freed by a request of the same size does).
            bins.medium[bin].pop().or_else(|| {
                // (`need` lies in bin `bin - 1` when that bin's floor is
                // below it.)
                (medium_floor(bin) > need).then(|| bins.medium[bin - 1].pop_holding(need)).flatten()
            })
        })
    })
    .ok()
    .flatten()
}

/// The layout of block `ptr` of the heap of `link`, found without its own
/// and without the heap's lock, as [`Heap::usable_layout`] finds it: a
/// block in an arena of +2 by its pool's class, a block of layer 0's
/// committed window by its chunk header (header words are read
/// atomically). `None` where that takes the lock (another block, a +2
/// block a cache holds, or this thread's cache serving no heap yet);
/// `geometry` as for [`put`].
///
/// [`Heap::usable_layout`]: super::Heap::usable_layout
///
/// # Safety
///
/// If the heap owns `ptr`, it must be a live block of it; `mirror` is the
/// heap's.
pub(crate) unsafe fn usable_layout(
    link: &Link,
    mirror: &ArenaMirror,
    ptr: NonNull<u8>,
    geometry: impl FnOnce() -> Option<Geometry>,
) -> Option<Layout> {
    home::with_taking(|cache| {
        if !cache.attached(link, geometry) {
            return None;
        }
        cache.enter(link, None, |_, owner| {
            let ptr = crate::source::reach(ptr);
            let size = if owner.owns(mirror, ptr) {
                // SAFETY: in an arena of the owner; the caller's live
                // block, so its pool is in use.
                let size = class_size(unsafe { block_class(ptr, owner.blocks()) }?, owner.class_shift);
                // A block a cache holds (any thread's) carries its tag: left
                // to the lock, which refuses it as a free of it is refused.
                // SAFETY: a block of at least two words of an arena held
                // while the caller's block is live.
                if crate::object::holds_tag(size) && unsafe { crate::object::carries_free_tag(ptr) } {
                    return None;
                }
                size
            } else {
                let window = mirror.window();
                if window.1 == 0 {
                    return None;
                }
                // SAFETY: the window is layer 0's committed span while
                // it holds it, and it holds it while any of its blocks
                // is live (see `medium_chunk`).
                let chunk = unsafe { segment::window_chunk(segment::payloads(window), ptr) }?;
                super::layer_0_usable(chunk - segment::CHUNK_WORD, owner.threshold, owner.class_shift)
            };
            Some(super::usable_layout(ptr, size))
        })
    })
    .ok()
    .flatten()
}

/// Whether this thread's cache holds block `ptr` of the heap of `link`,
/// freed with `layout`: found in its bin, as a second free of it made on
/// this thread finds it ([`put`]). What targets without tags ([`TAGS`])
/// ask before they call a block in use; with tags, [`cached_anywhere`]
/// finds any thread's cached block in O(1).
///
/// # Safety
///
/// If the heap owns `ptr`, it must be a live block of it, or one this
/// thread's cache holds; `mirror` is the heap's.
pub(crate) unsafe fn held_here(link: &Link, mirror: &ArenaMirror, ptr: NonNull<u8>, layout: Layout) -> bool {
    home::with_taking(|cache| {
        cache.enter(link, false, |bins, owner| {
            let ptr = crate::source::reach(ptr);
            // SAFETY: forwarded contract.
            unsafe {
                if owner.is_small(layout) {
                    bins.small_class_held(mirror, owner, ptr).is_some_and(|(_, held)| held)
                } else {
                    bins.holds_medium(mirror, owner, ptr, layout)
                }
            }
        })
    })
    .unwrap_or(false)
}

/// How many blocks beyond the one requested a miss in a small bin brings
/// from the heap, under one lock: fewer trips to the lock, and blocks that
/// lie next to each other go to one thread (blocks of a pool handed out to
/// threads in turn would share cache lines between them).
pub const REFILL: usize = DEPTH as usize / 2;

/// Whether this thread's cache serves the heap of `link`, attaching it if
/// it serves none yet (`geometry` as for [`put`]). Call without the heap's
/// lock: `geometry` may take it.
pub(crate) fn attached(link: &Link, geometry: impl FnOnce() -> Option<Geometry>) -> bool {
    home::with_taking(|cache| {
        cache.attached(link, geometry) && cache.owner_id.load(Ordering::Relaxed) == link.id()
    })
    .unwrap_or(false)
}

/// Stocks this thread's bin of the small class of `layout` with up to
/// [`REFILL`] blocks that `fill` takes from the heap of `link` (the caller
/// holds the heap's lock). `fill` is called only while the bin has room,
/// and not at all if this thread's cache does not serve that heap or is
/// being drained, so no block taken comes back. Returns how many it
/// stocked.
///
/// # Safety
///
/// Every block `fill` returns must be a fresh block of layer +2 of that
/// heap, of the class of `layout`.
pub(crate) unsafe fn stock(
    link: &Link,
    layout: Layout,
    mut fill: impl FnMut() -> Option<NonNull<u8>>,
) -> usize {
    home::with(|cache| {
        cache.enter(link, 0, |bins, owner| {
            if !owner.is_small(layout) {
                return 0;
            }
            let bin = &mut bins.small[size_class(layout.size(), layout.align(), owner.class_shift)];
            let mut n = 0;
            while n < REFILL
                && bin.len < DEPTH
                && let Some(block) = fill()
            {
                // SAFETY: the caller's promise: a fresh block of this
                // bin's class; the bin has room (checked).
                let kept = unsafe { bin.push(block, DEPTH) };
                debug_assert!(kept.is_ok());
                n += 1;
            }
            n
        })
    })
    .unwrap_or(0)
}

/// Why [`put`] did not keep a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Declined {
    /// Not for the cache (not small or medium, not the heap's, another
    /// heap's cache, the thread exiting): the locked path decides.
    Pass,
    /// The block is in a cache already (this thread's or, by its tag,
    /// another's): a double free.
    DoubleFree,
}

/// Keeps a freed block of the heap of `link` in this thread's cache; if
/// its bin was full, returns the older half of the bin for the caller to
/// free through the lock. `geometry` describes the heap, asked when this
/// thread's cache serves no heap yet (`None` while the heap has no memory:
/// nothing is cached).
///
/// # Safety
///
/// If the heap owns `ptr`, it must be a live block of it allocated with
/// `layout`, not used afterwards; `mirror` is the heap's.
#[inline]
pub(crate) unsafe fn put(
    link: &Link,
    mirror: &ArenaMirror,
    ptr: NonNull<u8>,
    layout: Layout,
    geometry: impl FnOnce() -> Option<Geometry>,
) -> Result<Spill, Declined> {
    let r = home::with_taking(|cache| {
        if !cache.attached(link, geometry) {
            return Err(Declined::Pass);
        }
        cache.enter(link, Err(Declined::Pass), |bins, owner| {
            // Kept with the provenance of the heap's pages, not the
            // caller's: it will serve requests of its whole class.
            let ptr = crate::source::reach(ptr);
            if !owner.is_small(layout) {
                // SAFETY: forwarded contract.
                return unsafe { bins.put_medium(owner, mirror, ptr, layout) };
            }
            // Filed by what the block is (its pool's class), never by
            // the layout it is freed with: every block of a bin then
            // holds every request of the bin's class, blocks of
            // 16-multiple classes are 16-aligned, and a second free with
            // another layout finds the block in the same bin.
            // SAFETY: the caller's live block.
            let Some((class, held)) = (unsafe { bins.small_class_held(mirror, owner, ptr) }) else {
                return Err(Declined::Pass);
            };
            // A block cached already: freed twice.
            if held {
                return Err(Declined::DoubleFree);
            }
            // SAFETY: the block is ours again, in an arena of +2, and at
            // least 8 bytes long and aligned (every class is).
            Ok(unsafe { bins.small[class].keep(ptr, DEPTH) })
        })
    })
    .unwrap_or(Err(Declined::Pass));
    match r {
        // In another thread's cache (or none serves this heap here): freed
        // already.
        Err(Declined::Pass) if cached_anywhere(mirror, ptr, layout) => Err(Declined::DoubleFree),
        r => r,
    }
}

/// Takes every block that every thread's cache holds for the heap of
/// `link` and hands it to `free`, with a layout that frees it, still
/// tagged ([`Heap::deallocate_cached`](super::Heap::deallocate_cached)
/// frees it). For the
/// heap, with its lock held: on `trim`, before an allocation fails, when
/// caching is switched off. Waits (yielding) for a thread that is in the
/// middle of using its cache; never for its own.
pub(crate) fn drain_all(link: &Link, free: &mut dyn FnMut(NonNull<u8>, Layout)) {
    let id = link.id();
    if id == 0 {
        return;
    }
    let mine = home::with(|c| c as *const ThreadCache).unwrap_or(ptr::null());
    let registry = REGISTRY.lock();
    // SAFETY: the registry's lock is held.
    unsafe {
        registry.each_cache_of(id, mine, |bins, owner| bins.drain(owner, free));
    }
}

/// The blocks exiting threads gave back to the heap of `link`, linked
/// through their first word (null if none). For the heap, with its lock
/// held.
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(crate) fn take_returned(link: &Link) -> *mut u8 {
    let Some(stack) = link.entry().and_then(|entry| RETURNED.get(entry)) else { return ptr::null_mut() };
    if stack.load(Ordering::Relaxed).is_null() {
        return ptr::null_mut();
    }
    stack.swap(ptr::null_mut(), Ordering::Acquire)
}

/// The heap of `link` goes: every cache forgets its blocks (their memory
/// goes with the heap), and its registry entry is freed.
pub(crate) fn detach(link: &mut Link) {
    let Some(entry) = link.entry() else { return };
    let id = link.id();
    let mut registry = REGISTRY.lock();
    // SAFETY: the registry's lock is held.
    unsafe {
        registry.each_cache_of(id, ptr::null(), |bins, owner| {
            bins.forget();
            *owner = Owner::NONE;
        });
    }
    registry.heaps[entry] = 0;
    RETURNED[entry].store(ptr::null_mut(), Ordering::Relaxed);
    for count in &EXITED_REALLOCS[entry] {
        count.store(0, Ordering::Relaxed);
    }
    *link = Link::new();
}
