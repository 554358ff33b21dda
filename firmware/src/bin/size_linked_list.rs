//! The same minimal firmware with linked_list_allocator's `Heap` behind a
//! critical section (its own `LockedHeap` spins, which a Cortex-M0 cannot:
//! it has no compare-and-swap).
#![no_std]
#![no_main]
extern crate alloc;

use core::alloc::{GlobalAlloc, Layout};
use core::cell::RefCell;
use core::ptr::{self, NonNull};

use critical_section::Mutex;
use linked_list_allocator::Heap;

#[path = "../size_common.rs"]
mod common;

struct Locked(Mutex<RefCell<Heap>>);

// SAFETY: every call goes to the heap inside a critical section.
unsafe impl GlobalAlloc for Locked {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        critical_section::with(|cs| {
            self.0.borrow_ref_mut(cs).allocate_first_fit(layout).map_or(ptr::null_mut(), NonNull::as_ptr)
        })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `GlobalAlloc`'s contract: a block of this heap, with its layout.
        critical_section::with(|cs| unsafe {
            self.0.borrow_ref_mut(cs).deallocate(NonNull::new_unchecked(ptr), layout)
        })
    }
}

#[global_allocator]
static HEAP: Locked = Locked(Mutex::new(RefCell::new(Heap::empty())));

fn init_heap(memory: &'static mut [core::mem::MaybeUninit<u8>]) {
    critical_section::with(|cs| HEAP.0.borrow_ref_mut(cs).init_from_slice(memory));
}
