//! [`LockedHeap`]: a [`Heap`] behind a lock, as `GlobalAlloc` and
//! [`DomainAlloc`]. What a call goes through around the lock — the quick
//! paths, the thread caches, the debug checks — is the hooks' business
//! ([`hooks`](super::hooks)), chosen by the features in one place.

use core::alloc::{GlobalAlloc, Layout};
use core::fmt;
use core::mem::MaybeUninit;
use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering;

#[cfg(feature = "debug")]
use super::debug;
use super::hooks::{Guard, Hooks, Selected};
use super::{Domain, DomainAlloc, Heap, HeapStats};
use crate::object::ALIGNMENT;
use crate::source::{PageSource, RegionSource};
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
    /// What the calls go through around the lock ([`Selected`]).
    hooks: Selected,
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
            hooks: Selected::NEW,
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
            hooks: Selected::NEW,
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
    /// is over. Threads that fork at once take turns: a second thread's
    /// `fork_prepare` waits for the lock until the first fork is over.
    ///
    /// # Panics
    ///
    /// If another heap's fork hooks are running: the caches' registry is
    /// one per process, so one heap per process uses these hooks (the C
    /// library's `malloc`).
    #[cfg(feature = "std")]
    pub fn fork_prepare(&self) {
        core::mem::forget(self.heap.lock());
        assert!(!FORKING.swap(true, Ordering::Acquire), "strata: fork hooks of two heaps");
        self.hooks.fork_prepare();
    }

    /// After `fork()`, in the parent: releases what
    /// [`fork_prepare`](Self::fork_prepare) took.
    ///
    /// # Safety
    ///
    /// Once after each `fork_prepare`, on the thread that called it.
    #[cfg(feature = "std")]
    pub unsafe fn fork_parent(&self) {
        // SAFETY: the caller's promise: after `fork_prepare`, which holds
        // the lock. (The next fork's `fork_prepare` takes the lock, then
        // finds `FORKING` clear.)
        unsafe {
            self.hooks.fork_parent();
            FORKING.store(false, Ordering::Release);
            self.heap.force_unlock();
        }
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
            self.hooks.fork_child();
            FORKING.store(false, Ordering::Release);
            self.heap.force_unlock();
        }
    }

    /// Runs `f` on the heap that this thread holds for `fork()`: between
    /// [`fork_prepare`](Self::fork_prepare) and
    /// [`fork_parent`](Self::fork_parent) or
    /// [`fork_child`](Self::fork_child), on the thread that called
    /// `fork_prepare`. For the allocations of the `pthread_atfork`
    /// handlers that run in that window (those registered before the
    /// heap's own run after its *prepare* and before its *parent* and
    /// *child*): through the locked calls they would wait for the lock
    /// their own thread holds. `f` takes the heap as the locked path does,
    /// without the thread caches and without the debug hooks: a free is
    /// best left for after the fork (strata's C library keeps a list), as
    /// only the hooks can tell a block a thread has cached, which the heap
    /// sees in use.
    ///
    /// # Safety
    ///
    /// The calling thread holds the heap for `fork()` (as above): no other
    /// thread can reach it until the fork is over.
    #[cfg(feature = "std")]
    pub unsafe fn with_held_for_fork<R>(&self, f: impl FnOnce(&mut Heap<S>) -> R) -> R {
        debug_assert!(self.heap.is_locked() && FORKING.load(Ordering::Relaxed));
        // SAFETY: the caller's promise: `fork_prepare` took the lock on this
        // thread (and forgot its guard), and it is held until the fork is
        // over, so this thread alone reaches the heap.
        f(unsafe { &mut *self.heap.data_ptr() })
    }

    /// Runs `f` with the heap locked.
    pub fn with<R>(&self, f: impl FnOnce(&mut Heap<S>) -> R) -> R {
        let mut heap = self.lock();
        let r = f(&mut heap);
        self.hooks.settle(heap);
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
        let mut stats = self.with(|heap| heap.stats());
        self.hooks.add_counts(&mut stats);
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
        unsafe { self.hooks.usable_layout(&self.heap, p) }.map(|l| l.size())
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
        if let Some(p) = NonNull::new(ptr) {
            // SAFETY: forwarded contract.
            unsafe { self.hooks.dealloc_unsized(&self.heap, p) }
        }
    }

    /// Resizes a block without its layout (C's `realloc`), keeping its first
    /// bytes: the new block, or null (the old one unchanged) when memory
    /// runs out, when `new_size` is 0 or overflows a layout, or when the
    /// block is refused as [`dealloc_unsized`](Self::dealloc_unsized)
    /// refuses it. Null `ptr` is an allocation, as in C. The new block is
    /// C's: aligned to 16 (on 32-bit targets, whose layer 0 aligns its
    /// blocks to 8 only, when `ptr` is, as `malloc`'s blocks are, or the new
    /// size is at most 512 bytes), its size possibly rounded up; free it
    /// without a layout too, as a layout of `new_size` bytes may not fit
    /// it.
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
        // SAFETY: forwarded contract; the size is not zero (`realloc`
        // refuses one that overflows).
        unsafe { self.hooks.realloc_unsized(&self.heap, p, new_size) }
    }

    /// Gives the spares back to the page source (see [`Heap::trim`]), after
    /// every block that threads' caches hold for this heap (with thread
    /// caches).
    pub fn trim(&self) -> (usize, usize) {
        let mut heap = self.lock();
        self.hooks.reclaim(&mut heap);
        let r = heap.trim();
        // The spare arena may have gone: threads must stop caching its blocks.
        self.hooks.settle(heap);
        r
    }

    /// Switches the thread caches on or off for good. By default (with
    /// `std`) they come on by themselves the first time two threads meet at
    /// the heap's lock: a program that allocates from one thread keeps the
    /// plain locked path, which is as fast when nobody waits. Off, every
    /// call takes the lock, and the blocks threads' caches hold for this
    /// heap come back at once. With the `debug` feature the caches are
    /// always off: every block must pass through the debug hooks.
    #[cfg(feature = "caches")]
    pub fn set_thread_caches(&self, on: bool) {
        let mut heap = self.lock();
        self.hooks.set_thread_caches(&mut heap, on);
        self.hooks.settle(heap);
    }

    /// Whether the thread caches are on for this heap now (see
    /// [`set_thread_caches`](Self::set_thread_caches)). On a heap that
    /// layer 0 serves by first fit (a committed region under 16 MiB) they
    /// hold no block even when on: such a heap has no layer +2 pools, and
    /// its layer 0 keeps no block headers for the caches' O(1) checks, so
    /// every call there takes the lock.
    #[cfg(feature = "caches")]
    pub fn thread_caches_on(&self) -> bool {
        self.hooks.thread_caches_on()
    }

    /// Debug mode: sets what the heap does with a violation (a panic by
    /// default).
    #[cfg(feature = "debug")]
    pub fn set_debug_policy(&self, policy: debug::Policy) {
        self.heap.lock().set_debug_policy(policy);
    }

    /// Takes the lock, as the hooks take it.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn lock(&self) -> Guard<'_, S, L> {
        self.hooks.lock(&self.heap)
    }
}

/// Whether a heap's fork hooks are between *prepare* and *parent* or
/// *child*.
#[cfg(feature = "std")]
static FORKING: AtomicBool = AtomicBool::new(false);

// SAFETY: every call goes through the hooks, which take the lock, and
// `Heap` upholds the `GlobalAlloc` contract: blocks are aligned to
// `layout.align()`, at least `layout.size()` long, and disjoint while live;
// failures return null. In debug mode the block handed out is the data part
// of a larger block of the same heap.
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
        self.hooks.alloc_zeroed(&self.heap, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match NonNull::new(ptr) {
            // SAFETY: `GlobalAlloc`'s contract: a live block of ours with
            // `layout`, and a non-zero `new_size`.
            Some(p) => unsafe { self.hooks.realloc(&self.heap, p, layout, new_size) },
            None => ptr::null_mut(),
        }
    }
}

// SAFETY: as the `GlobalAlloc` impl, of which this is the general form.
unsafe impl<S: PageSource, L: lock_api::RawMutex> DomainAlloc for LockedHeap<S, L> {
    #[inline]
    unsafe fn alloc_in(&self, layout: Layout, domain: Domain) -> *mut u8 {
        self.hooks.alloc(&self.heap, layout, domain)
    }

    #[inline]
    unsafe fn dealloc_in(&self, ptr: *mut u8, layout: Layout, domain: Domain) {
        if let Some(p) = NonNull::new(ptr) {
            // SAFETY: `GlobalAlloc`'s contract: `ptr` came from this
            // allocator with `layout`, and is not used after this call.
            unsafe { self.hooks.dealloc(&self.heap, p, layout, domain) }
        }
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
