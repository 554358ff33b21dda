//! # Layer +1: the front door (CPython's raw allocator, `PyMem`)
//!
//! **Takes from below:** layer +2 (`ObjectAllocator`) for small requests,
//! layer 0 (`SegmentAllocator`) for everything else, and the page source
//! both draw on.
//!
//! **Gives above:** `allocate` / `deallocate` / `reallocate` /
//! `allocate_zeroed` on [`Heap`], with typed errors, and
//! [`GlobalAlloc`](core::alloc::GlobalAlloc) on [`LockedHeap`], where errors become null and are
//! counted.
//!
//! **Routing.** A request of at most 512 bytes (less on heaps under 1 MiB,
//! see [`Geometry::for_window`](crate::object::Geometry::for_window)) aligned to at most 16 goes to layer +2.
//! Everything else goes to layer 0. A free is routed by *ownership*, never by
//! the layout: +2 owns exactly the blocks in its arenas (an O(1) bitmap test),
//! layer 0 those in its spans (a bounds check and a bit per slot), and a
//! pointer neither owns is refused with [`DeallocateError::NotOwned`] — no layer is ever handed a
//! block it does not own.
//!
//! **Out of memory.** A small request never fails while a larger size
//! class has a free block. When +2 has no free block of a small request's
//! class and no arena for a new pool, the request takes, in this order: a free block of a larger class at most 1/8 bigger
//! (`ObjectAllocator::borrow`); layer 0 (a counted *small fallback*); once
//! layer 0 cannot get pages either, +2's spare arena goes back to the page
//! source and layer 0 retries; last, a free block of any larger class.
//!
//! **Realloc in place.** A +2 block is kept when the new size still fits its
//! size class and uses more than half of it (mimalloc's rule; CPython keeps
//! 75 %); a layer 0 block shrinks in place, and grows in place into a free
//! chunk after it (or, for small blocks, before it). Otherwise the block
//! moves — and a block doubling past [`GROWING_THRESHOLD`] three times in a
//! row moves to the start of layer 0's largest free chunk, where its next
//! doublings happen in place, so a `Vec` being grown is copied only a few
//! times.
//!
//! **The common call.** [`LockedHeap`]'s `alloc` and `dealloc` first try,
//! under `try_lock`, the call most programs make most: a small block from
//! the head pool of its class, or the free of a +2 block whose pool stays on
//! its lists; past the small sizes, layer 0's O(1) calls on TLSF's lists and
//! a committed window's blocks, `realloc` included (`quick.rs`). Each makes
//! the full path's choice with its checks, or declines untouched, and
//! everything else goes to an out-of-line path.
//!
//! **Domains and debug hooks.** [`LockedHeap`]'s entry points take the
//! [`Domain`] a block is allocated through ([`DomainAlloc`]): `GlobalAlloc`
//! is [`Domain::HEAP`], typed caches use [`Domain::CACHE`]. With the `debug`
//! feature, the hooks of [`debug`] wrap those entry points as CPython's
//! `PYTHONMALLOC=debug` wraps its domains: headers, guards, fills, checks on
//! every free, and a [`debug::Policy`] for what they catch.
//!
//! **Thread caches.** With the `std` feature, every [`LockedHeap`] has a
//! per-thread cache of freed blocks up to 4 KiB in front of its lock
//! ([`thread_cache`], glibc's tcache), unless switched off with
//! [`LockedHeap::set_thread_caches`].
//!
//! One file per concern: [`Heap`] and its routing (`heap.rs`, its realloc
//! in `heap/realloc.rs`), the lock and `GlobalAlloc` ([`LockedHeap`],
//! `locked.rs`), what a call goes
//! through around the lock (`hooks.rs`: the contract and the one type the
//! features select — `quick.rs`, `cached.rs` with [`thread_cache`], or
//! [`debug`]), domains ([`Domain`], `domain.rs`), the statistics and their
//! report (`report.rs`), and the errors (`error.rs`).

#[cfg(all(feature = "caches", not(feature = "debug")))]
mod cached;
#[cfg(feature = "debug")]
pub mod debug;
#[cfg(feature = "caches")]
pub mod thread_cache;

mod domain;
mod error;
mod heap;
mod hooks;
mod locked;
#[cfg(not(feature = "debug"))]
mod quick;
mod report;

pub use domain::{Domain, DomainAlloc, Untagged};
pub use error::{AllocateError, DeallocateError, InvalidConfig};
pub use heap::{Heap, Layer};
#[cfg(feature = "caches")]
pub(crate) use heap::{layer_0_usable, usable_layout};
pub use locked::{DefaultLock, LockedHeap};
pub use report::{FrontStats, HeapStats, Report};

/// A block that doubles by realloc past this size [`PROMOTING_STREAK`]
/// times in a row moves to the start of layer 0's largest free chunk, where
/// the next growths happen in place (see
/// `SegmentAllocator::allocate_growable`).
pub const GROWING_THRESHOLD: usize = 256;

/// How many doublings in a row past [`GROWING_THRESHOLD`] make a block a
/// growing buffer.
pub const PROMOTING_STREAK: u32 = 3;

/// A size class gets pools of layer +2 once this many of its requests have
/// been served by layer 0 (see [`Heap::set_cold_limit`]).
pub const COLD_REQUESTS: u32 = 128;

const TIGHT_ARENAS: usize = 2;
