//! The same minimal firmware with embedded-alloc's first-fit heap (LLFF:
//! linked_list_allocator behind a critical section).
#![no_std]
#![no_main]
extern crate alloc;

#[path = "../size_common.rs"]
mod common;

#[global_allocator]
static HEAP: embedded_alloc::LlffHeap = embedded_alloc::LlffHeap::empty();

fn init_heap(memory: &'static mut [core::mem::MaybeUninit<u8>]) {
    // SAFETY: the region is 'static and used by nothing else.
    unsafe { HEAP.init(memory.as_mut_ptr() as usize, memory.len()) }
}
