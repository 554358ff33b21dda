//! The same minimal firmware with linked_list_allocator.
#![no_std]
#![no_main]
extern crate alloc;

#[path = "../size_common.rs"]
mod common;

#[global_allocator]
static HEAP: linked_list_allocator::LockedHeap = linked_list_allocator::LockedHeap::empty();

fn init_heap(memory: &'static mut [core::mem::MaybeUninit<u8>]) {
    HEAP.lock().init_from_slice(memory);
}
