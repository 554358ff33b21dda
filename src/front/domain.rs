//! Domains: the API a block was allocated through, and the allocator trait
//! that takes one (CPython's `PyMem_*` / `PyObject_*` domains).

use core::alloc::{GlobalAlloc, Layout};
use core::fmt;

/// The API a block was allocated through, recorded in its header in debug
/// mode (CPython's API id: `'r'`, `'m'`, `'o'`). A block must be freed through
/// the domain that allocated it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Domain(pub u8);

impl Domain {
    /// The front door: `GlobalAlloc`, `Box`, `Vec` (layer +1).
    pub const HEAP: Self = Self(b'h');
    /// Typed object caches (layer +3).
    pub const CACHE: Self = Self(b'c');
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() { write!(f, "{}", self.0 as char) } else { write!(f, "{:#04x}", self.0) }
    }
}

/// A [`GlobalAlloc`] that knows which [`Domain`] each block is allocated and
/// freed through. [`LockedHeap`](super::LockedHeap) records it in debug mode and catches a block
/// freed through the wrong one; [`Untagged`] adapts any other allocator.
///
/// # Safety
///
/// As [`GlobalAlloc`]: `alloc_in` returns null or a block fit for `layout`,
/// and `dealloc_in` accepts what `alloc_in` returned with that layout and
/// domain.
pub unsafe trait DomainAlloc: GlobalAlloc {
    /// Allocates a block for `layout` through `domain`.
    ///
    /// # Safety
    ///
    /// As [`GlobalAlloc::alloc`].
    unsafe fn alloc_in(&self, layout: Layout, domain: Domain) -> *mut u8;

    /// Frees a block allocated through `domain`.
    ///
    /// # Safety
    ///
    /// As [`GlobalAlloc::dealloc`], with the same domain as the allocation.
    unsafe fn dealloc_in(&self, ptr: *mut u8, layout: Layout, domain: Domain);
}

/// Any [`GlobalAlloc`] as a [`DomainAlloc`] that ignores domains, so a typed
/// cache can sit on an allocator other than strata's.
#[derive(Clone, Copy, Debug, Default)]
pub struct Untagged<A>(pub A);

// SAFETY: forwards to `A`'s own `GlobalAlloc`.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Untagged<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { self.0.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { self.0.dealloc(ptr, layout) }
    }
}

// SAFETY: forwards to `A`'s own `GlobalAlloc`; domains are not needed for it.
unsafe impl<A: GlobalAlloc> DomainAlloc for Untagged<A> {
    unsafe fn alloc_in(&self, layout: Layout, _: Domain) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { self.0.alloc(layout) }
    }
    unsafe fn dealloc_in(&self, ptr: *mut u8, layout: Layout, _: Domain) {
        // SAFETY: forwarded contract.
        unsafe { self.0.dealloc(ptr, layout) }
    }
}
