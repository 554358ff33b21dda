//! [`LockedHeap`]: a [`Heap`] behind a lock, as `GlobalAlloc` and
//! [`DomainAlloc`] — the quick paths, the thread caches, `fork`.

use core::alloc::{GlobalAlloc, Layout};
use core::fmt;
use core::mem::MaybeUninit;
use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering;

#[cfg(feature = "debug")]
use super::debug;
#[cfg(all(feature = "std", not(feature = "debug")))]
use super::thread_cache;
use super::{AllocateError, Domain, DomainAlloc, Heap, HeapStats};
#[cfg(all(feature = "std", not(feature = "debug")))]
use crate::object;
use crate::object::ALIGNMENT;
#[cfg(not(feature = "debug"))]
use crate::source::reach;
use crate::source::{PageSource, RegionSource};
#[cfg(all(feature = "std", not(feature = "debug")))]
use crate::sync::stat;
use crate::sync::{AtomicBool, Padded};

/// How a waiter for the heap lock passes time: yielding to the OS with the
/// `std` feature, spinning otherwise.
#[cfg(all(feature = "std", not(feature = "critical-section")))]
type Relax = spin::Yield;
#[cfg(all(not(feature = "std"), not(feature = "critical-section")))]
type Relax = spin::Spin;

/// The lock [`LockedHeap`] uses unless told otherwise: a spin lock (which
/// yields to the OS scheduler with the `std` feature). Where threads
/// outnumber cores and meet at the lock often, a
/// [`FutexLock`](crate::sync::FutexLock) (Linux, `std`) does better; its
/// unlock is an exchange where this one's is a store, which costs the
/// single-threaded quick path more (*Measured choices* in
/// `docs/DESIGN.md`), so it is not the default.
#[cfg(not(feature = "critical-section"))]
pub type DefaultLock = spin::mutex::SpinMutex<(), Relax>;
/// The lock [`LockedHeap`] uses unless told otherwise: with the
/// `critical-section` feature, a critical section.
#[cfg(feature = "critical-section")]
pub type DefaultLock = crate::sync::CriticalSectionLock;

/// strata's allocator stack behind a lock: a drop-in replacement for
/// `linked_list_allocator::LockedHeap`.
///
/// `S` is the page source (a [`RegionSource`] over a caller's region by
/// default; the kernel uses its VMM) and `L` the lock, any
/// [`lock_api::RawMutex`]: a spin lock by default, an interrupt-masking lock
/// in the kernel, a critical section on single-core microcontrollers.
///
/// ```
/// use core::alloc::{GlobalAlloc, Layout};
/// use core::mem::MaybeUninit;
///
/// static HEAP: strata::LockedHeap = strata::LockedHeap::empty();
/// static mut MEMORY: [MaybeUninit<u8>; 256 * 1024] = [MaybeUninit::uninit(); 256 * 1024];
///
/// // SAFETY: MEMORY is used for nothing else.
/// HEAP.init_from_slice(unsafe { &mut *(&raw mut MEMORY) });
/// let layout = Layout::new::<[u64; 4]>();
/// let p = unsafe { HEAP.alloc(layout) };
/// assert!(!p.is_null());
/// unsafe { HEAP.dealloc(p, layout) };
/// ```
pub struct LockedHeap<S = RegionSource, L: lock_api::RawMutex = DefaultLock> {
    /// The heap, on lines of its own: the lock holder's writes do not
    /// slow the threads that read the fields below from their caches.
    heap: Padded<lock_api::Mutex<L, Heap<S>>>,
    initialized: AtomicBool,
    /// Whether threads cache this heap's blocks (`std`): [`CACHES_AUTO`]
    /// until two threads first meet at the lock, then [`CACHES_ON`];
    /// [`CACHES_OFF`] or on when set so.
    #[cfg(feature = "std")]
    #[cfg_attr(feature = "debug", allow(dead_code))]
    thread_caches: core::sync::atomic::AtomicU8,
    /// The heap's identity for the thread caches.
    #[cfg(all(feature = "std", not(feature = "debug")))]
    link: thread_cache::Link,
    /// Layer +2's arena bitmap, for threads to read without the lock.
    #[cfg(all(feature = "std", not(feature = "debug")))]
    arena_mirror: thread_cache::ArenaMirror,
}

impl<S, L: lock_api::RawMutex> fmt::Debug for LockedHeap<S, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockedHeap").field("initialized", &self.initialized).finish()
    }
}

impl<L: lock_api::RawMutex> Default for LockedHeap<RegionSource, L> {
    fn default() -> Self {
        Self::empty_with_lock()
    }
}

impl LockedHeap {
    /// A heap with no memory; call [`init`](Self::init) or
    /// [`init_from_slice`](Self::init_from_slice) once before use.
    pub const fn empty() -> Self {
        Self::empty_with_lock()
    }
}

impl<L: lock_api::RawMutex> LockedHeap<RegionSource, L> {
    /// [`empty`](LockedHeap::empty) with another lock `L`.
    pub const fn empty_with_lock() -> Self {
        Self {
            heap: Padded(lock_api::Mutex::new(Heap::empty())),
            initialized: AtomicBool::new(false),
            #[cfg(feature = "std")]
            thread_caches: core::sync::atomic::AtomicU8::new(CACHES_AUTO),
            #[cfg(all(feature = "std", not(feature = "debug")))]
            link: thread_cache::Link::new(),
            #[cfg(all(feature = "std", not(feature = "debug")))]
            arena_mirror: thread_cache::ArenaMirror::new(),
        }
    }

    /// Gives the heap the region `[heap_bottom, heap_bottom + heap_size)`.
    ///
    /// # Panics
    ///
    /// On a second call: re-initialising a heap in use would corrupt it.
    ///
    /// # Safety
    ///
    /// The region must be valid for reads and writes and used by nothing else
    /// for the rest of the program (`'static`).
    pub unsafe fn init(&self, heap_bottom: *mut u8, heap_size: usize) {
        if self.initialized.swap(true, Ordering::AcqRel) {
            panic!("strata::LockedHeap::init called twice");
        }
        let mut heap = self.heap.lock();
        heap.assert_unused();
        // SAFETY: forwarded from the caller; the source has never had memory.
        unsafe { heap.source.reset(heap_bottom, heap_size) };
        heap.configure();
    }

    /// Gives the heap a static region: the safe form of [`init`](Self::init).
    ///
    /// # Panics
    ///
    /// On a second call.
    pub fn init_from_slice(&self, mem: &'static mut [MaybeUninit<u8>]) {
        // SAFETY: a `'static mut` slice is valid and ours alone forever.
        unsafe { self.init(mem.as_mut_ptr().cast(), mem.len()) }
    }
}

impl<S: PageSource, L: lock_api::RawMutex> LockedHeap<S, L> {
    /// A heap over `source`, whose window is `window` (as
    /// [`PageSource::window`] will report it), usable at once.
    pub const fn new(source: S, window: (usize, usize)) -> Self {
        Self {
            heap: Padded(lock_api::Mutex::new(Heap::new_in_window(source, window))),
            initialized: AtomicBool::new(true),
            #[cfg(feature = "std")]
            thread_caches: core::sync::atomic::AtomicU8::new(CACHES_AUTO),
            #[cfg(all(feature = "std", not(feature = "debug")))]
            link: thread_cache::Link::new(),
            #[cfg(all(feature = "std", not(feature = "debug")))]
            arena_mirror: thread_cache::ArenaMirror::new(),
        }
    }

    /// Gives a heap made over a source with no memory yet (its window
    /// empty: [`OsSource::unreserved`](crate::source::OsSource::unreserved),
    /// [`RegionSource::empty`]) the source that has it: the form of
    /// [`init`](LockedHeap::init) for any page source.
    ///
    /// # Panics
    ///
    /// If the heap has a window already: replacing a heap in use would
    /// corrupt it.
    pub fn init_with(&self, source: S) {
        self.heap.lock().install(source);
        self.initialized.store(true, Ordering::Release);
    }

    /// [`init_with`](Self::init_with) for a heap built with its own
    /// geometry and tunables ([`Heap::with_geometry`]).
    ///
    /// # Panics
    ///
    /// As [`init_with`](Self::init_with).
    pub fn init_heap(&self, new: Heap<S>) {
        let mut heap = self.heap.lock();
        heap.assert_unused();
        *heap = new;
        self.initialized.store(true, Ordering::Release);
    }

    /// Before `fork()` (register with `pthread_atfork` as *prepare*, and
    /// [`fork_parent`](Self::fork_parent) and
    /// [`fork_child`](Self::fork_child) as the others): takes the heap's
    /// lock and, with thread caches, every thread's cache, so that the
    /// child inherits neither half-changed. The lock is held until the fork
    /// is over.
    ///
    /// # Panics
    ///
    /// If another heap's fork hooks are running: the caches' registry is
    /// one per process, so one heap per process uses these hooks (the C
    /// library's `malloc`).
    #[cfg(feature = "std")]
    pub fn fork_prepare(&self) {
        assert!(!FORKING.swap(true, Ordering::Acquire), "strata: fork hooks of two heaps");
        core::mem::forget(self.heap.lock());
        #[cfg(not(feature = "debug"))]
        thread_cache::fork_prepare();
    }

    /// After `fork()`, in the parent: releases what
    /// [`fork_prepare`](Self::fork_prepare) took.
    ///
    /// # Safety
    ///
    /// Once after each `fork_prepare`, on the thread that called it.
    #[cfg(feature = "std")]
    pub unsafe fn fork_parent(&self) {
        // SAFETY: the caller's promise: after `fork_prepare`.
        unsafe {
            #[cfg(not(feature = "debug"))]
            thread_cache::fork_parent();
            self.heap.force_unlock();
        }
        FORKING.store(false, Ordering::Release);
    }

    /// After `fork()`, in the child, where only the forking thread lives
    /// on: the blocks the other threads' caches held go back to the heap
    /// (as when a thread exits), and the heap's lock is released.
    ///
    /// # Safety
    ///
    /// As [`fork_parent`](Self::fork_parent), in the child.
    #[cfg(feature = "std")]
    pub unsafe fn fork_child(&self) {
        // SAFETY: the caller's promise: after `fork_prepare`, in the child.
        unsafe {
            #[cfg(not(feature = "debug"))]
            thread_cache::fork_child();
            self.heap.force_unlock();
        }
        FORKING.store(false, Ordering::Release);
    }

    /// Runs `f` with the heap locked.
    pub fn with<R>(&self, f: impl FnOnce(&mut Heap<S>) -> R) -> R {
        let mut heap = self.lock();
        let r = f(&mut heap);
        self.settle(heap);
        r
    }

    /// Whether the heap's lock is held.
    pub fn is_locked(&self) -> bool {
        self.heap.is_locked()
    }

    /// Releases the heap's lock, held by code that will never run again: a
    /// kernel test case abandoned by a panic or a fault, whose stack was
    /// dropped without unwinding.
    ///
    /// # Safety
    ///
    /// The lock's holder must never resume or touch the heap again. It may
    /// have been abandoned in the middle of an operation; the caller accepts
    /// the heap as it was left (a test framework reports the case as failed
    /// and checks the invariants).
    pub unsafe fn force_unlock(&self) {
        // SAFETY: the caller's promise: the holder is gone.
        unsafe { self.heap.force_unlock() }
    }

    /// Counters of every layer (with thread caches, including the reallocs
    /// they did without the lock, in place or into a cached block).
    pub fn stats(&self) -> HeapStats {
        #[allow(unused_mut)]
        let mut stats = self.lock().stats();
        #[cfg(all(feature = "std", not(feature = "debug")))]
        {
            let cached = thread_cache::realloc_counts(&self.link);
            stats.front.realloc_in_place += cached.in_place;
            stats.front.realloc_moved += cached.moved;
        }
        stats
    }

    /// The bytes the caller may use of block `ptr` (C's
    /// `malloc_usable_size`): at least the size it was allocated with, as
    /// [`Heap::usable_size`] finds it (with `debug`, exactly that size, from
    /// the block's debug header). `None` for null, a pointer no layer owns,
    /// a block not in use (as far as a free would tell), or a block of a
    /// first-fit heap, which keeps no sizes.
    ///
    /// # Safety
    ///
    /// If the heap owns `ptr`, it must be a live block of it (with thread
    /// caches, its size is read without the lock).
    pub unsafe fn usable_size(&self, ptr: *const u8) -> Option<usize> {
        let p = NonNull::new(ptr.cast_mut())?;
        // SAFETY: forwarded contract.
        unsafe { self.usable_layout(p) }.map(|l| l.size())
    }

    /// Frees a block without its layout (C's `free`): null is ignored, and
    /// what [`Heap::deallocate_unsized`] refuses is refused (counted in
    /// `refused_frees`; with `debug`, checked and reported as a violation
    /// like any free).
    ///
    /// # Safety
    ///
    /// If the heap owns `ptr`, it must be a live block of it, not used after
    /// this call.
    pub unsafe fn dealloc_unsized(&self, ptr: *mut u8) {
        let Some(p) = NonNull::new(ptr) else { return };
        // SAFETY: forwarded contract; the quick path frees only a +2 block
        // that starts where a block of its pool does.
        #[cfg(not(feature = "debug"))]
        if no_unwind(|| unsafe { self.free_quick_unsized(p) }) {
            return;
        }
        #[cfg(all(feature = "std", not(feature = "debug")))]
        if self.caches_on() {
            // Through the sized path, which knows the caches.
            // SAFETY: forwarded contract.
            return match unsafe { self.usable_layout(p) } {
                // SAFETY: forwarded contract; the layout is the block's own.
                Some(layout) => unsafe { self.dealloc(ptr, layout) },
                None => self.refuse(),
            };
        }
        no_unwind(|| {
            let mut heap = self.lock();
            // Debug mode checks and reports any pointer; one without a
            // header of this heap is checked as a byte, and refused.
            #[cfg(feature = "debug")]
            // SAFETY: forwarded contract; the checks verify the layout.
            let refused = unsafe {
                let layout = heap.debug_layout(p).map_or(Layout::new::<u8>(), |(layout, _)| layout);
                heap.debug_deallocate(p, layout, Domain::HEAP)
            }
            .is_err();
            // SAFETY: forwarded contract.
            #[cfg(not(feature = "debug"))]
            let refused = unsafe { heap.deallocate_unsized(p) }.is_err();
            if refused {
                heap.stats.refused_frees += 1;
            }
            self.settle(heap);
        })
    }

    /// Resizes a block without its layout (C's `realloc`), keeping its first
    /// bytes: the new block, or null (the old one unchanged) when memory
    /// runs out, when `new_size` is 0 or overflows a layout, or when the
    /// block is refused as [`dealloc_unsized`](Self::dealloc_unsized)
    /// refuses it. Null `ptr` is an allocation, as in C.
    ///
    /// # Safety
    ///
    /// As [`dealloc_unsized`](Self::dealloc_unsized); on success the old
    /// block is not used again.
    pub unsafe fn realloc_unsized(&self, ptr: *mut u8, new_size: usize) -> *mut u8 {
        let Some(p) = NonNull::new(ptr) else {
            return match Layout::from_size_align(new_size, ALIGNMENT) {
                // SAFETY: a layout of non-zero size.
                Ok(layout) if new_size != 0 => unsafe { self.alloc(layout) },
                _ => ptr::null_mut(),
            };
        };
        if new_size == 0 {
            return ptr::null_mut();
        }
        // Debug mode checks and reports any block it is given, as `realloc`.
        #[cfg(feature = "debug")]
        let layout = self.with(|heap| heap.debug_layout(p).map(|(layout, _)| layout));
        // SAFETY: forwarded contract.
        #[cfg(not(feature = "debug"))]
        let layout = unsafe { self.usable_layout(p) };
        match layout {
            // SAFETY: forwarded contract; the layout is the block's own,
            // the size not zero (`realloc` refuses one that overflows).
            Some(layout) => unsafe { self.realloc(ptr, layout, new_size) },
            None => {
                self.refuse();
                ptr::null_mut()
            }
        }
    }

    /// The layout block `p` answers to ([`Heap::usable_layout`]; with
    /// `debug`, the one its header records): without the lock where the
    /// thread caches can tell.
    ///
    /// # Safety
    ///
    /// As [`usable_size`](Self::usable_size).
    unsafe fn usable_layout(&self, p: NonNull<u8>) -> Option<Layout> {
        #[cfg(all(feature = "std", not(feature = "debug")))]
        if self.caches_on()
            // SAFETY: forwarded contract.
            && let Some(layout) = unsafe {
                thread_cache::usable_layout(&self.link, &self.arena_mirror, p, || self.cache_geometry())
            }
        {
            return Some(layout);
        }
        let heap = self.lock();
        #[cfg(feature = "debug")]
        let layout = heap.debug_layout(p).and_then(|(layout, live)| live.then_some(layout));
        #[cfg(not(feature = "debug"))]
        let layout = heap.usable_layout(p).ok();
        self.settle(heap);
        layout
    }

    /// Gives the spares back to the page source (see [`Heap::trim`]), after
    /// every block that threads' caches hold for this heap (with thread
    /// caches).
    pub fn trim(&self) -> (usize, usize) {
        let mut heap = self.lock();
        #[cfg(all(feature = "std", not(feature = "debug")))]
        Self::reclaim_cached(&self.link, &mut heap);
        let r = heap.trim();
        // The spare arena may have gone: threads must stop caching its blocks.
        self.settle(heap);
        r
    }
}

/// Whether a heap's fork hooks are between *prepare* and *parent* or
/// *child*.
#[cfg(feature = "std")]
static FORKING: AtomicBool = AtomicBool::new(false);

/// [`LockedHeap`]'s thread caches are off.
#[cfg(feature = "std")]
#[cfg_attr(feature = "debug", allow(dead_code))]
const CACHES_OFF: u8 = 0;
/// They come on the first time two threads meet at the lock.
#[cfg(feature = "std")]
const CACHES_AUTO: u8 = 1;
/// They are on.
#[cfg(feature = "std")]
const CACHES_ON: u8 = 2;

/// A heap that goes takes its blocks out of every thread's cache (they
/// are forgotten: their memory goes with the heap) and frees its place in
/// the caches' registry.
#[cfg(all(feature = "std", not(feature = "debug")))]
impl<S, L: lock_api::RawMutex> Drop for LockedHeap<S, L> {
    fn drop(&mut self) {
        thread_cache::detach(&mut self.link);
    }
}

// SAFETY: every method takes the lock, and `Heap` upholds the `GlobalAlloc`
// contract: blocks are aligned to `layout.align()`, at least `layout.size()`
// long, and disjoint while live; failures return null. In debug mode the
// block handed out is the data part of a larger block of the same heap.
unsafe impl<S: PageSource, L: lock_api::RawMutex> GlobalAlloc for LockedHeap<S, L> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { self.alloc_in(layout, Domain::HEAP) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { self.dealloc_in(ptr, layout, Domain::HEAP) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // The block as `alloc` finds it (the quick path, a thread's cache),
        // zeroed outside the lock.
        #[cfg(not(feature = "debug"))]
        {
            // SAFETY: forwarded contract.
            let p = unsafe { self.alloc(layout) };
            if !p.is_null() {
                // SAFETY: a fresh block at least `layout.size()` long.
                unsafe { ptr::write_bytes(p, 0, layout.size()) };
            }
            p
        }
        #[cfg(feature = "debug")]
        no_unwind(|| {
            let mut heap = self.lock();
            let result = heap.debug_allocate(layout, Domain::HEAP, true);
            let p = self.block_or_null(&mut heap, result, |h| h.allocate_zeroed(layout));
            self.settle(heap);
            p
        })
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        no_unwind(|| {
            let Some(p) = NonNull::new(ptr) else {
                return ptr::null_mut();
            };
            #[cfg(all(feature = "std", not(feature = "debug")))]
            if self.caches_on() {
                // SAFETY: forwarded contract.
                match unsafe { thread_cache::realloc(&self.link, &self.arena_mirror, p, layout, new_size) } {
                    // A block freed into a cache (this thread's or
                    // another's): refused, as the heap refuses a block it
                    // has freed.
                    thread_cache::Realloc::Cached => {
                        self.refuse();
                        return ptr::null_mut();
                    }
                    thread_cache::Realloc::Locked => {}
                    thread_cache::Realloc::InPlace => {
                        return reach(p).as_ptr();
                    }
                    thread_cache::Realloc::Refill { new } => {
                        let new = self.alloc_stocking(new, Some(p));
                        if !new.is_null() {
                            // SAFETY: both blocks are live, distinct, and at
                            // least this long; the old one is freed once,
                            // and not used afterwards.
                            unsafe {
                                ptr::copy_nonoverlapping(p.as_ptr(), new, layout.size().min(new_size));
                                self.dealloc_in(p.as_ptr(), layout, Domain::HEAP);
                            }
                        }
                        return new;
                    }
                    thread_cache::Realloc::Moved { new, free_old } => {
                        if free_old {
                            // SAFETY: the old block, live until now, freed once.
                            unsafe { self.free_locked(p, layout) };
                        }
                        return new.as_ptr();
                    }
                }
            }
            let mut heap = self.lock();
            // SAFETY: `GlobalAlloc`'s contract: a live block of ours with `layout`.
            #[cfg(feature = "debug")]
            let result = unsafe { heap.debug_reallocate(p, layout, new_size, Domain::HEAP) };
            // SAFETY: as above.
            #[cfg(not(feature = "debug"))]
            let result = unsafe { heap.reallocate(p, layout, new_size) };
            // SAFETY: as above: a failed realloc left the block as it was.
            let p = self.block_or_null(&mut heap, result, |h| unsafe { h.reallocate(p, layout, new_size) });
            self.settle(heap);
            p
        })
    }
}

/// Runs an allocator entry point so that a panic inside it aborts the
/// program instead of unwinding out of it (undefined behaviour under
/// `GlobalAlloc`'s contract): for instance `linked_list_allocator`'s own
/// check of a double free on a first-fit heap. Free on the normal path; with
/// `panic = "abort"` (the kernel, firmware) the guard never runs.
#[inline(always)]
fn no_unwind<R>(f: impl FnOnce() -> R) -> R {
    /// Dropped only while a panic unwinds through the entry point: its own
    /// panic is a panic during unwinding, which aborts.
    struct Abort;
    impl Drop for Abort {
        fn drop(&mut self) {
            panic!("strata: a panic inside the allocator cannot unwind out of GlobalAlloc; aborting");
        }
    }
    let guard = Abort;
    let r = f();
    core::mem::forget(guard);
    r
}

// SAFETY: as the `GlobalAlloc` impl, of which this is the general form.
unsafe impl<S: PageSource, L: lock_api::RawMutex> DomainAlloc for LockedHeap<S, L> {
    #[inline]
    unsafe fn alloc_in(&self, layout: Layout, domain: Domain) -> *mut u8 {
        #[cfg(not(feature = "debug"))]
        if let Some(p) = no_unwind(|| self.alloc_quick(layout)) {
            return p.as_ptr();
        }
        self.alloc_rest(layout, domain)
    }

    #[inline]
    unsafe fn dealloc_in(&self, ptr: *mut u8, layout: Layout, domain: Domain) {
        let Some(p) = NonNull::new(ptr) else { return };
        // SAFETY: `GlobalAlloc`'s contract: `ptr` came from this allocator
        // with `layout`, and is not used after this call.
        #[cfg(not(feature = "debug"))]
        if no_unwind(|| unsafe { self.free_quick(p) }) {
            return;
        }
        // SAFETY: as above; the quick path left the block as it was.
        unsafe { self.dealloc_rest(p, layout, domain) }
    }
}

impl<S: PageSource, L: lock_api::RawMutex> LockedHeap<S, L> {
    /// Every allocation the quick path leaves: through this thread's cache
    /// when the caches are on, else under the lock.
    #[inline(never)]
    fn alloc_rest(&self, layout: Layout, domain: Domain) -> *mut u8 {
        no_unwind(|| {
            #[cfg(all(feature = "std", not(feature = "debug")))]
            if domain == Domain::HEAP && self.caches_on() {
                return match thread_cache::take(&self.link, layout) {
                    Some(p) => p.as_ptr(),
                    None => self.alloc_stocking(layout, None),
                };
            }
            self.alloc_locked(layout, domain)
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
    #[cfg(all(feature = "std", not(feature = "debug")))]
    #[inline(never)]
    fn alloc_stocking(&self, layout: Layout, moving: Option<NonNull<u8>>) -> *mut u8 {
        let stocking = thread_cache::attached(&self.link, || self.cache_geometry());
        let mut heap = self.lock();
        if let Some(old) = moving
            // SAFETY: `may_free` is asked of a block of an arena of ours.
            && !(heap.object.owns(old.as_ptr()) && unsafe { heap.object.may_free(old) })
        {
            heap.stats.refused_frees += 1;
            self.settle(heap);
            return ptr::null_mut();
        }
        let result = heap.allocate(layout);
        let p = self.block_or_null(&mut heap, result, |h| h.allocate(layout));
        if moving.is_some() && !p.is_null() {
            stat!(heap.stats.realloc_moved += 1);
        }
        if stocking && heap.is_small(layout) && heap.object.owns(p) {
            let object = &mut heap.object;
            // SAFETY: blocks fresh from the pools of the class of `layout`.
            unsafe {
                thread_cache::stock(&self.link, layout, || {
                    object.allocate_from_pools(layout.size(), layout.align())
                })
            };
        }
        self.settle(heap);
        p
    }

    /// Every free the quick path leaves, as [`alloc_rest`](Self::alloc_rest).
    ///
    /// # Safety
    ///
    /// As [`DomainAlloc::dealloc_in`].
    #[inline(never)]
    unsafe fn dealloc_rest(&self, p: NonNull<u8>, layout: Layout, domain: Domain) {
        no_unwind(|| {
            #[cfg(all(feature = "std", not(feature = "debug")))]
            if domain == Domain::HEAP && self.caches_on() {
                // SAFETY: `GlobalAlloc`'s contract: a live block of this heap
                // with `layout`, not used after this call.
                match unsafe {
                    thread_cache::put(&self.link, &self.arena_mirror, p, layout, || self.cache_geometry())
                } {
                    Ok(()) => return,
                    Err(thread_cache::Declined::DoubleFree) => return self.refuse(),
                    Err(thread_cache::Declined::Pass) => {}
                }
            }
            #[cfg(feature = "debug")]
            {
                let mut heap = self.lock();
                // SAFETY: `GlobalAlloc`'s contract: `ptr` came from this
                // allocator with `layout` (through `domain`, which debug mode
                // checks).
                if unsafe { heap.debug_deallocate(p, layout, domain) }.is_err() {
                    heap.stats.refused_frees += 1;
                }
                self.settle(heap);
            }
            #[cfg(not(feature = "debug"))]
            {
                let _ = domain;
                // SAFETY: `GlobalAlloc`'s contract: `ptr` came from this
                // allocator with `layout`.
                unsafe { self.free_locked(p, layout) };
            }
        })
    }
}

impl<S: PageSource, L: lock_api::RawMutex> LockedHeap<S, L> {
    /// Whether the quick paths may serve a call: with `std`, only while the
    /// thread caches wait for a second thread. (Once they have been on,
    /// blocks that exiting threads gave back wait for the full lock to free
    /// them; while on, the caches serve first.)
    #[cfg(not(feature = "debug"))]
    #[inline(always)]
    fn quick_allowed(&self) -> bool {
        #[cfg(feature = "std")]
        return self.thread_caches.load(Ordering::Relaxed) == CACHES_AUTO;
        #[cfg(not(feature = "std"))]
        return true;
    }

    /// The common allocation, kept small enough to need no stack frame: a
    /// small request served from the head pool of its class, under the lock
    /// if it is free. `None` (nothing done) sends the call on to
    /// [`alloc_rest`](Self::alloc_rest), which does everything else —
    /// the same choice [`Heap::allocate`] makes, so the quick path changes
    /// no block's placement.
    #[cfg(not(feature = "debug"))]
    #[inline(always)]
    fn alloc_quick(&self, layout: Layout) -> Option<NonNull<u8>> {
        if !self.quick_allowed() {
            return None;
        }
        let mut heap = self.heap.try_lock()?;
        if !heap.is_small(layout) {
            return None;
        }
        heap.object.allocate_from_pools(layout.size(), layout.align())
    }

    /// The common free, as [`alloc_quick`](Self::alloc_quick): a block of
    /// layer +2 whose pool stays on its lists. `false` (nothing done) sends
    /// the call on to [`dealloc_rest`](Self::dealloc_rest).
    ///
    /// # Safety
    ///
    /// As [`Heap::deallocate`].
    #[cfg(not(feature = "debug"))]
    #[inline(always)]
    unsafe fn free_quick(&self, ptr: NonNull<u8>) -> bool {
        if !self.quick_allowed() {
            return false;
        }
        let Some(mut heap) = self.heap.try_lock() else { return false };
        // SAFETY: a block of an arena of ours is, by the caller's contract,
        // a live +2 block.
        heap.object.owns(ptr.as_ptr()) && unsafe { heap.object.deallocate_quick(ptr) }
    }

    /// [`free_quick`](Self::free_quick) for a free without a layout: the
    /// block must also start where a block of its pool does.
    ///
    /// # Safety
    ///
    /// As [`Heap::deallocate_unsized`].
    #[cfg(not(feature = "debug"))]
    #[inline(always)]
    unsafe fn free_quick_unsized(&self, ptr: NonNull<u8>) -> bool {
        if !self.quick_allowed() {
            return false;
        }
        let Some(mut heap) = self.heap.try_lock() else { return false };
        let ptr = reach(ptr);
        // SAFETY: a pointer into an arena of ours, checked to be a block of
        // its pool, is by the caller's contract a live +2 block.
        heap.object.owns(ptr.as_ptr())
            && unsafe { heap.object.is_block_start(ptr) && heap.object.deallocate_quick(ptr) }
    }

    /// Allocates through the lock.
    #[inline(always)]
    fn alloc_locked(&self, layout: Layout, domain: Domain) -> *mut u8 {
        let mut heap = self.lock();
        #[cfg(feature = "debug")]
        let result = heap.debug_allocate(layout, domain, false);
        #[cfg(not(feature = "debug"))]
        let result = {
            let _ = domain;
            heap.allocate(layout)
        };
        let p = self.block_or_null(&mut heap, result, |h| h.allocate(layout));
        self.settle(heap);
        p
    }

    /// Frees `ptr` through the lock, counting a refusal in `refused_frees`.
    ///
    /// # Safety
    ///
    /// As [`Heap::deallocate`].
    #[cfg(not(feature = "debug"))]
    #[inline(always)]
    unsafe fn free_locked(&self, ptr: NonNull<u8>, layout: Layout) {
        let mut heap = self.lock();
        // SAFETY: forwarded contract.
        if unsafe { heap.deallocate(ptr, layout) }.is_err() {
            heap.stats.refused_frees += 1;
        }
        self.settle(heap);
    }

    /// Takes the lock. With thread caches, first frees the blocks that
    /// exiting threads gave back, so that whoever holds the lock sees them
    /// free.
    ///
    /// While the caches wait for a second thread ([`CACHES_AUTO`]), the
    /// lock is tried first: the first time it is found held by another
    /// thread, the caches come on.
    #[inline(always)]
    fn lock(&self) -> lock_api::MutexGuard<'_, L, Heap<S>> {
        #[cfg(all(feature = "std", not(feature = "debug")))]
        if self.thread_caches.load(Ordering::Relaxed) == CACHES_AUTO {
            // No cache has held a block yet: none to free.
            return self.heap.try_lock().unwrap_or_else(|| self.contended());
        }
        #[allow(unused_mut)]
        let mut heap = self.heap.lock();
        #[cfg(all(feature = "std", not(feature = "debug")))]
        Self::free_returned(&self.link, &mut heap);
        heap
    }

    /// Two threads met at the lock while the caches waited for it: takes
    /// the lock and switches the caches on.
    #[cfg(all(feature = "std", not(feature = "debug")))]
    #[cold]
    #[inline(never)]
    fn contended(&self) -> lock_api::MutexGuard<'_, L, Heap<S>> {
        let heap = self.heap.lock();
        if self.thread_caches.load(Ordering::Relaxed) == CACHES_AUTO {
            self.caches_come_on(&heap);
        }
        heap
    }

    /// Brings the lock-free copies of the heap's state up to date, then
    /// lets threads cache (with the lock held): a thread that sees the
    /// caches on sees the copies made.
    #[cfg(all(feature = "std", not(feature = "debug")))]
    fn caches_come_on(&self, heap: &Heap<S>) {
        self.sync_mirror(heap, true);
        self.thread_caches.store(CACHES_ON, Ordering::Release);
    }

    /// Brings the lock-free copies of the heap's state up to date (with the
    /// lock held): the arena bitmap if its counters moved (or, `always`,
    /// whatever they say) and layer 0's window.
    #[cfg(all(feature = "std", not(feature = "debug")))]
    #[inline(always)]
    fn sync_mirror(&self, heap: &Heap<S>, always: bool) {
        let c = heap.object.counters();
        let counters = (c.allocated_total, c.reclaimed);
        if always {
            self.arena_mirror.force_sync(|| heap.object.arena_bitmap(), counters);
        } else {
            self.arena_mirror.sync(counters, || heap.object.arena_bitmap());
        }
        self.arena_mirror.sync_window(heap.segment.committed_window());
    }

    /// Whether threads cache this heap's blocks now.
    #[cfg(all(feature = "std", not(feature = "debug")))]
    #[inline(always)]
    fn caches_on(&self) -> bool {
        self.thread_caches.load(Ordering::Acquire) == CACHES_ON
    }

    /// Acts on a violation the debug checks found, once the lock is released
    /// (a panicking policy must not leave the heap locked).
    ///
    /// With thread caches, it first brings the copy of layer +2's arena
    /// bitmap that threads read without the lock up to date.
    #[inline(always)]
    #[allow(unused_mut)]
    fn settle(&self, mut heap: lock_api::MutexGuard<'_, L, Heap<S>>) {
        #[cfg(all(feature = "std", not(feature = "debug")))]
        if self.caches_on() {
            self.sync_mirror(&heap, false);
        }
        #[cfg(feature = "debug")]
        {
            let mut heap = heap;
            if let Some((violation, policy)) = heap.take_violation() {
                drop(heap);
                policy.apply(&violation);
            }
        }
        #[cfg(not(feature = "debug"))]
        drop(heap);
    }

    /// Switches the thread caches on or off for good. By default (with
    /// `std`) they come on by themselves the first time two threads meet at
    /// the heap's lock: a program that allocates from one thread keeps the
    /// plain locked path, which is as fast when nobody waits. Off, every
    /// call takes the lock, and the blocks threads' caches hold for this
    /// heap come back at once. With the `debug` feature the caches are
    /// always off: every block must pass through the debug hooks.
    #[cfg(feature = "std")]
    pub fn set_thread_caches(&self, on: bool) {
        #[allow(unused_mut)]
        let mut heap = self.lock();
        #[cfg(all(feature = "std", not(feature = "debug")))]
        if on {
            self.caches_come_on(&heap);
        } else {
            self.thread_caches.store(CACHES_OFF, Ordering::Release);
            Self::reclaim_cached(&self.link, &mut heap);
        }
        #[cfg(feature = "debug")]
        let _ = on;
        self.settle(heap);
    }

    /// Whether threads cache this heap's blocks now (see
    /// [`set_thread_caches`](Self::set_thread_caches)).
    #[cfg(feature = "std")]
    pub fn thread_caches_on(&self) -> bool {
        cfg!(not(feature = "debug")) && self.thread_caches.load(Ordering::Acquire) == CACHES_ON
    }

    /// Counts a refused free (or realloc) found before the heap was asked.
    #[cold]
    fn refuse(&self) {
        let mut heap = self.lock();
        heap.stats.refused_frees += 1;
        self.settle(heap);
    }

    /// Frees, with the lock held, the blocks that exiting threads gave back.
    #[cfg(all(feature = "std", not(feature = "debug")))]
    #[inline(always)]
    fn free_returned(link: &thread_cache::Link, heap: &mut Heap<S>) {
        let block = thread_cache::take_returned(link);
        if !block.is_null() {
            Self::free_returned_list(block, heap);
        }
    }

    /// Frees a list of returned blocks (see [`free_returned`](Self::free_returned)).
    #[cfg(all(feature = "std", not(feature = "debug")))]
    #[cold]
    #[inline(never)]
    fn free_returned_list(mut block: *mut u8, heap: &mut Heap<S>) {
        while let Some(b) = NonNull::new(block) {
            // SAFETY: returned blocks are linked through their first word,
            // and are live blocks of this heap: small ones of +2 (freed by
            // address), medium ones of layer 0 keeping their chunk size.
            unsafe {
                block = b.as_ptr().cast::<*mut u8>().read();
                let layout = if heap.object.owns(b.as_ptr()) {
                    let g = heap.object.geometry();
                    let class = object::block_class(reach(b), g.pool_shift).unwrap_or(0);
                    Layout::from_size_align_unchecked(object::class_size(class, g.class_shift), 8)
                } else {
                    thread_cache::medium_layout(b)
                };
                thread_cache::untag_returned(b, layout.size());
                if heap.deallocate(b, layout).is_err() {
                    heap.stats.refused_frees += 1;
                }
            }
        }
    }

    /// Frees, with the lock held, every block that threads' caches hold for
    /// this heap, and those that exiting threads gave back.
    #[cfg(all(feature = "std", not(feature = "debug")))]
    fn reclaim_cached(link: &thread_cache::Link, heap: &mut Heap<S>) {
        thread_cache::drain_all(link, &mut |block, layout| {
            // SAFETY: a cached block is a live block of this heap, which
            // `layout` frees.
            if unsafe { heap.deallocate(block, layout) }.is_err() {
                heap.stats.refused_frees += 1;
            }
        });
        Self::free_returned(link, heap);
    }

    /// The block of an allocation's `result`, or null, counted.
    #[inline(always)]
    fn block_or_null(
        &self,
        heap: &mut Heap<S>,
        result: Result<NonNull<u8>, AllocateError>,
        again: impl FnOnce(&mut Heap<S>) -> Result<NonNull<u8>, AllocateError>,
    ) -> *mut u8 {
        match result {
            Ok(p) => p.as_ptr(),
            Err(e) => self.failed(heap, e, again),
        }
    }

    /// An allocation failed with `e`: with thread caches, takes back what
    /// they hold for this heap and tries `again`, once, so that no request
    /// fails while cached memory could serve it; else null, counted.
    #[cold]
    #[inline(never)]
    fn failed(
        &self,
        heap: &mut Heap<S>,
        e: AllocateError,
        again: impl FnOnce(&mut Heap<S>) -> Result<NonNull<u8>, AllocateError>,
    ) -> *mut u8 {
        #[cfg(all(feature = "std", not(feature = "debug")))]
        if !matches!(e, AllocateError::Refused(_) | AllocateError::InvalidLayout { .. }) {
            Self::reclaim_cached(&self.link, heap);
            let result = again(heap);
            return heap.or_null(result);
        }
        let _ = again;
        heap.or_null(Err(e))
    }

    /// What a thread cache needs to know of this heap's layer +2.
    #[cfg(all(feature = "std", not(feature = "debug")))]
    #[cold]
    fn cache_geometry(&self) -> Option<thread_cache::Geometry> {
        let heap = self.lock();
        let g = heap.object.geometry();
        // A heap before `init` has no memory, and not yet its geometry.
        let geometry = (heap.source.window().1 != 0).then(|| thread_cache::Geometry {
            threshold: g.threshold,
            class_shift: g.class_shift,
            slots_start: heap.object.slots_start(),
            arena_shift: g.arena_shift,
            pool_shift: g.pool_shift,
        });
        self.settle(heap);
        geometry
    }

    /// Debug mode: sets what the heap does with a violation (a panic by
    /// default).
    #[cfg(feature = "debug")]
    pub fn set_debug_policy(&self, policy: debug::Policy) {
        self.heap.lock().set_debug_policy(policy);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;

    /// The event counters count with the `stats` feature and cost nothing
    /// (read 0) without it; `make test` runs this both ways.
    #[test]
    fn event_counters_follow_the_stats_feature() {
        let mut buf = vec![0u8; 8 << 20];
        // SAFETY: the buffer outlives the heap and is used by nothing else.
        let source = unsafe { RegionSource::new(buf.as_mut_ptr(), buf.len()) };
        let mut heap = Heap::new(source);
        let layout = Layout::from_size_align(100, 8).unwrap();
        let p = heap.allocate(layout).unwrap();
        // A block right after it, so that growing it moves it.
        let fence = heap.allocate(layout).unwrap();
        // SAFETY: a live block of this heap with `layout`.
        let p = unsafe { heap.reallocate(p, layout, 104) }.unwrap();
        let layout = Layout::from_size_align(104, 8).unwrap();
        // SAFETY: as above.
        let q = unsafe { heap.reallocate(p, layout, 2000) }.unwrap();
        // SAFETY: live blocks with their current layouts.
        unsafe {
            heap.deallocate(q, Layout::from_size_align(2000, 8).unwrap()).unwrap();
            heap.deallocate(fence, Layout::from_size_align(100, 8).unwrap()).unwrap();
        }
        let s = heap.stats();
        let expected = if cfg!(feature = "stats") { (1, 1) } else { (0, 0) };
        assert_eq!((s.front.realloc_in_place, s.front.realloc_moved), expected);
        assert_eq!(s.front.failed_allocations, 0, "failure counts are always kept");
    }
}
