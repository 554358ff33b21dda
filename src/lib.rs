#![doc = include_str!("../README.md")]
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs, missing_debug_implementations)]

#[cfg(all(feature = "paging", target_arch = "x86_64"))]
pub mod frame;
#[cfg(all(feature = "paging", target_arch = "x86_64"))]
pub mod vmm;

pub mod cache;
pub mod front;
pub mod object;
pub mod segment;
pub mod source;
pub mod sync;

pub use cache::ObjectCache;
pub use front::{Domain, DomainAlloc, Heap, InvalidConfig, Layer, LockedHeap};
pub use source::{PageSource, RegionSource};
