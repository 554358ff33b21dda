//! The whole stack as the kernel's global allocator: layers 0 to +3 over the
//! VMM (layer −1) and the frame allocator (layer −2).
//!
//! ```text
//!  Box::new ─► GlobalAlloc (HEAP, interrupt-masking lock)          +1
//!               ├─ ≤ 512 B ─► arenas / pools / blocks              +2
//!               └─ other   ─► bins, segments, large mappings        0
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

use core::ptr::NonNull;

use strata::source::{PAGE_SIZE, PageSource, PagesError};
use strata::vmm::PageFlags;
use strata::{LockedHeap, ObjectCache};
use x86_64::VirtAddr;

use crate::memory::{ALLOC_WINDOW, with_memory};
use crate::sync::IrqSpinLock;

/// The VMM as the page source of layers 0 and +2.
#[derive(Debug, Clone, Copy)]
pub struct KernelPages;

// SAFETY: pages come from `Vmm::allocate_in`, mapped writable to fresh frames
// inside ALLOC_WINDOW, aligned as asked, and used by nothing else until
// `deallocate_pages` releases their region. Regions are separated by guard
// pages, so adjacent allocations never coalesce (`coalesces` is false).
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

/// Segments layer 0 may hold in the kernel: VMM regions never coalesce, so
/// each growth is a segment of its own.
pub const KERNEL_SEGMENTS: usize = 256;
/// Large mappings layer 0 may track in the kernel (2048 × 128 KiB = 256 MiB,
/// all of the machine's RAM).
pub const KERNEL_LARGE: usize = 2048;

/// The kernel heap: strata's front door over the VMM, behind an
/// interrupt-masking lock.
pub type KernelHeap = LockedHeap<KernelPages, IrqSpinLock, KERNEL_SEGMENTS, KERNEL_LARGE>;

/// The kernel's global allocator.
#[global_allocator]
pub static HEAP: KernelHeap =
    LockedHeap::new(KernelPages, (ALLOC_WINDOW.0 as usize, ALLOC_WINDOW.1 as usize));

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

/// The typed cache of [`Task`] records: up to 64 freed records are kept,
/// behind an interrupt-masking lock (the timer handler uses the cache).
pub static TASKS: ObjectCache<'static, Task, KernelHeap, 64, IrqSpinLock> = ObjectCache::new(&HEAP);
