//! Helpers shared by the host integration tests.
#![allow(dead_code)]

use std::alloc::{Layout, alloc_zeroed, dealloc};

use strata::RegionSource;

/// An ordinary-memory region for a page source (page-aligned, lazily
/// committed by the OS, freed on drop).
pub struct Region {
    ptr: *mut u8,
    layout: Layout,
}

impl Region {
    pub fn new(size: usize) -> Self {
        let layout = Layout::from_size_align(size, 4096).unwrap();
        // SAFETY: non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "host allocation of the test region failed");
        Self { ptr, layout }
    }

    /// A page source over the region. The region must outlive it.
    pub fn source(&self) -> RegionSource {
        // SAFETY: the region is ours, and the tests drop every heap over it
        // before the region.
        unsafe { RegionSource::new(self.ptr, self.layout.size()) }
    }

    pub fn contains(&self, p: *const u8, len: usize) -> bool {
        let start = self.ptr as usize;
        (p as usize) >= start && (p as usize) + len <= start + self.layout.size()
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// A small deterministic PRNG (xorshift64*), so workloads need no crate.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
