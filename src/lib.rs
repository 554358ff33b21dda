#![doc = include_str!("../README.md")]
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs, missing_debug_implementations)]

#[cfg(all(feature = "paging", target_arch = "x86_64"))]
pub mod frame;
#[cfg(all(feature = "paging", target_arch = "x86_64"))]
pub mod vmm;
