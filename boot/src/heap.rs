//! The whole stack as the kernel's global allocator: layers 0 to +3 over the
//! VMM (layer −1) and the frame allocator (layer −2).
//!
//! ```text
//!  Box::new ─► KernelAllocator: 1 in N small ─► sampling pool       +1
//!               └─► GlobalAlloc (HEAP, interrupt-masking lock)     +1
//!               ├─ ≤ 512 B ─► arenas / pools / blocks              +2
//!               └─ other   ─► TLSF over spans of the VMM            0
//!                               │ allocate_pages / deallocate_pages
//!                               ▼
//!              KernelPages ─► VMM: regions in ALLOC_WINDOW, guard    −1
//!                               pages, map to zeroed frames
//!                               ▼
//!                             buddy frame allocator                  −2
//! ```
//!
//! Pages given back by layers 0 and +2 are unmapped at once and their frames,
//! with the page tables emptied by the unmap, go back to the frame allocator.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;

use core::mem::MaybeUninit;
use strata::source::{PAGE_SIZE, PageSource, PagesError};
use strata::vmm::PageFlags;

use strata::cache::{CacheError, CacheStats, CachedBox};
use strata::{LockedHeap, ObjectCache};
use x86_64::VirtAddr;

use crate::memory::{ALLOC_WINDOW, with_memory};
use crate::sampling;
use crate::smp::{MAX_CPUS, PerCpu};
use crate::sync::IrqSpinLock;

/// The VMM as the page source of layers 0 and +2.
#[derive(Debug, Clone, Copy)]
pub struct KernelPages;

// SAFETY: pages come from `Vmm::allocate_in`, mapped writable to fresh frames
// inside ALLOC_WINDOW, aligned as asked, and used by nothing else until
// `deallocate_pages` releases their region. Pages are mapped when asked for,
// so the source is not `committed`: layer 0 takes spans as it needs them.
unsafe impl PageSource for KernelPages {
    fn window(&self) -> (usize, usize) {
        (ALLOC_WINDOW.0 as usize, ALLOC_WINDOW.1 as usize)
    }

    fn allocate_pages(&mut self, size: usize, align: usize) -> Result<NonNull<u8>, PagesError> {
        if size == 0 || !size.is_multiple_of(PAGE_SIZE) || !align.is_power_of_two() || align < PAGE_SIZE {
            return Err(PagesError::InvalidRequest { size, align });
        }
        let low = VirtAddr::new(ALLOC_WINDOW.0);
        let window = (low, low + ALLOC_WINDOW.1);
        let region = with_memory(|vmm, frames| {
            vmm.allocate_in((size / PAGE_SIZE) as u64, align as u64, PageFlags::WRITABLE, frames, window)
        })
        .map_err(|_| PagesError::Exhausted { size, align })?;
        Ok(NonNull::new(region.start.start_address().as_mut_ptr()).expect("heap addresses are not null"))
    }

    unsafe fn deallocate_pages(&mut self, ptr: NonNull<u8>, size: usize) {
        with_memory(|vmm, frames| {
            let region = vmm.region_at(VirtAddr::from_ptr(ptr.as_ptr())).expect("pages of a VMM region");
            assert_eq!(region.pages * PAGE_SIZE as u64, size as u64, "pages given back with the wrong size");
            vmm.release(region, frames).expect("release a region of ours");
        });
    }
}

/// The kernel heap: strata's front door over the VMM, behind an
/// interrupt-masking lock.
pub type KernelHeap = LockedHeap<KernelPages, IrqSpinLock>;

/// The kernel heap (layers +1 to −2). `Box` and `Vec` reach it through
/// [`KernelAllocator`].
pub static HEAP: KernelHeap =
    LockedHeap::new(KernelPages, (ALLOC_WINDOW.0 as usize, ALLOC_WINDOW.1 as usize));

/// The kernel's global allocator: the guarded-sampling hook
/// ([`sampling`](crate::sampling), off unless turned on), then [`HEAP`].
#[derive(Debug)]
pub struct KernelAllocator;

#[global_allocator]
static GLOBAL: KernelAllocator = KernelAllocator;

// SAFETY: each block comes from the sampling pool or from HEAP, and is
// freed by the one that owns it (the pool's address range tells them apart);
// both uphold the `GlobalAlloc` contract.
unsafe impl GlobalAlloc for KernelAllocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if sampling::should_sample(layout)
            && let Some(p) = sampling::allocate(layout)
        {
            return p.as_ptr();
        }
        // SAFETY: forwarded contract.
        unsafe { HEAP.alloc(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if sampling::contains(ptr) {
            // SAFETY: forwarded contract; the pointer lies in the pool.
            unsafe { sampling::deallocate(ptr, layout) }
        } else {
            // SAFETY: forwarded contract.
            unsafe { HEAP.dealloc(ptr, layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if sampling::should_sample(layout)
            && let Some(p) = sampling::allocate(layout)
        {
            // Slot pages are mapped to zeroed frames; only the canaries
            // before the object are written.
            return p.as_ptr();
        }
        // SAFETY: forwarded contract.
        unsafe { HEAP.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !sampling::contains(ptr) {
            // SAFETY: forwarded contract.
            return unsafe { HEAP.realloc(ptr, layout, new_size) };
        }
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return core::ptr::null_mut();
        };
        // SAFETY: a sampled block moves like any other: a new block, the
        // data copied, the old one freed (and unmapped).
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                sampling::deallocate(ptr, layout);
            }
            new
        }
    }
}

/// A kernel task record: the object type the kernel keeps in a typed cache
/// (layer +3), as CPython keeps floats and lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Task {
    /// Task id.
    pub id: u64,
    /// Scheduling state.
    pub state: TaskState,
    /// Saved stack pointer.
    pub stack_pointer: u64,
    /// Name, NUL-padded.
    pub name: [u8; 24],
}

/// States of a [`Task`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TaskState {
    /// Ready to run.
    #[default]
    Ready,
    /// Waiting for an event.
    Blocked,
    /// Finished.
    Exited,
}

/// One CPU's typed cache of [`Task`] records: up to 64 freed records,
/// behind an interrupt-masking lock (timer handlers use it).
pub type TaskCache = ObjectCache<'static, Task, KernelHeap, 64, IrqSpinLock>;

/// The typed caches of [`Task`] records (layer +3), one per CPU, as Linux's
/// SLUB keeps a slab per CPU: a CPU takes records from its own cache, whose
/// lock no other CPU takes in the common case. A record goes back to the
/// cache it came from, whichever CPU drops it (its box remembers), so a
/// record freed on another CPU is never lost.
#[derive(Debug)]
pub struct TaskCaches(PerCpu<TaskCache>);

/// The kernel's task caches.
pub static TASKS: TaskCaches = TaskCaches(PerCpu::new([const { ObjectCache::new(&HEAP) }; MAX_CPUS]));

impl TaskCaches {
    /// This CPU's cache.
    pub fn local(&self) -> &TaskCache {
        self.0.local()
    }

    /// CPU `index`'s cache.
    pub fn of_cpu(&self, index: usize) -> &TaskCache {
        self.0.get(index)
    }

    /// A record holding `value`, from this CPU's cache (see
    /// [`ObjectCache::boxed`]).
    pub fn boxed(
        &self,
        value: Task,
    ) -> Result<CachedBox<'_, 'static, Task, KernelHeap, 64, IrqSpinLock>, CacheError> {
        self.local().boxed(value)
    }

    /// A block for one record, from this CPU's cache (see
    /// [`ObjectCache::allocate`]); give it back with [`deallocate`](Self::deallocate).
    pub fn allocate(&self) -> Result<NonNull<MaybeUninit<Task>>, CacheError> {
        self.local().allocate()
    }

    /// Gives a block back, to this CPU's cache (every CPU's cache takes the
    /// same blocks from the same heap).
    ///
    /// # Safety
    ///
    /// As [`ObjectCache::deallocate`]: a block from [`allocate`](Self::allocate),
    /// not used afterwards.
    pub unsafe fn deallocate(&self, block: NonNull<MaybeUninit<Task>>) {
        // SAFETY: forwarded contract; the caches differ only in which CPU
        // uses them.
        unsafe { self.local().deallocate(block) }
    }

    /// Gives every CPU's cached records back to the heap (`trim`, memory
    /// pressure).
    pub fn clear(&self) {
        self.0.all().iter().for_each(ObjectCache::clear);
    }

    /// Hits, misses and cached records over every CPU's cache.
    pub fn stats(&self) -> CacheStats {
        self.0.all().iter().map(ObjectCache::stats).fold(CacheStats::default(), |a, s| CacheStats {
            hits: a.hits + s.hits,
            misses: a.misses + s.misses,
            cached: a.cached + s.cached,
            capacity: a.capacity + s.capacity,
        })
    }

    /// Whether any CPU's cache lock is held.
    pub fn is_locked(&self) -> bool {
        self.0.all().iter().any(ObjectCache::is_locked)
    }

    /// Releases every cache lock that is held.
    ///
    /// # Safety
    ///
    /// Their holders never resume.
    pub unsafe fn force_unlock(&self) {
        for cache in self.0.all().iter().filter(|c| c.is_locked()) {
            // SAFETY: the caller's promise.
            unsafe { cache.force_unlock() };
        }
    }
}

crate::abandonable_lock!("kernel heap", HEAP);
crate::abandonable_lock!("task cache", TASKS);
