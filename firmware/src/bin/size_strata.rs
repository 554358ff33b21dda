//! Minimal firmware with strata as the global allocator (code-size baseline).
#![no_std]
#![no_main]
extern crate alloc;

#[path = "../size_common.rs"]
mod common;

#[global_allocator]
static HEAP: strata::LockedHeap = strata::LockedHeap::empty();

fn init_heap(memory: &'static mut [core::mem::MaybeUninit<u8>]) {
    HEAP.init_from_slice(memory);
}
