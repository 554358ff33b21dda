//! Helpers shared by the host integration tests.
#![allow(dead_code)]

use std::alloc::{Layout, alloc, alloc_zeroed, dealloc};

use strata::RegionSource;

#[cfg(feature = "std")]
pub mod caches;

/// Layer 0's chunk granule, two words: the largest alignment its blocks
/// have by themselves, and the thread caches' medium bins serve.
pub const CHUNK_ALIGN: usize = 2 * size_of::<usize>();

/// A region far larger than a test's blocks: 4 GiB, and 1 GiB on 32-bit
/// targets, whose address space has no room for more.
pub const LARGE: usize = if usize::BITS >= 64 { (4u64 << 30) as usize } else { 1 << 30 };

/// An ordinary-memory region for a page source (page-aligned, freed on
/// drop). Not zeroed: large regions come from the OS untouched, so a test
/// pays only for the pages it uses. Zeroed under Miri: the tests that free
/// interior pointers on purpose make layer 0 read the word before them,
/// which in memory never written is uninitialised — a read the abstract
/// machine forbids, in a call that breaks `dealloc`'s contract anyway.
pub struct Region {
    ptr: *mut u8,
    layout: Layout,
}

impl Region {
    pub fn new(size: usize) -> Self {
        let layout = Layout::from_size_align(size, 4096).unwrap();
        // SAFETY: non-zero size.
        let ptr = unsafe { if cfg!(miri) { alloc_zeroed(layout) } else { alloc(layout) } };
        assert!(!ptr.is_null(), "host allocation of the test region failed");
        Self { ptr, layout }
    }

    /// A page source over the region. The region must outlive it.
    pub fn source(&self) -> RegionSource {
        // SAFETY: the region is ours, and the tests drop every heap over it
        // before the region.
        unsafe { RegionSource::new(self.ptr, self.layout.size()) }
    }

    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.layout.size()
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

/// A page source like the kernel's VMM, over an ordinary region: pages of
/// 4 KiB, and not [committed](strata::PageSource::COMMITTED), so layer 0
/// takes spans as it needs them and gives wholly free ones back.
pub struct Mapped(pub RegionSource);

// SAFETY: forwards to the region source, whose promise holds for page-sized
// requests too.
unsafe impl strata::PageSource for Mapped {
    fn window(&self) -> (usize, usize) {
        self.0.window()
    }
    fn granularity(&self) -> usize {
        4096
    }
    fn allocate_pages(
        &mut self,
        size: usize,
        align: usize,
    ) -> Result<std::ptr::NonNull<u8>, strata::source::PagesError> {
        if size == 0 || !size.is_multiple_of(4096) || !align.is_power_of_two() || align < 4096 {
            return Err(strata::source::PagesError::InvalidRequest { size, align });
        }
        self.0.allocate_pages(size, align)
    }
    unsafe fn deallocate_pages(&mut self, ptr: std::ptr::NonNull<u8>, size: usize) {
        // SAFETY: forwarded contract.
        unsafe { self.0.deallocate_pages(ptr, size) }
    }
}

/// Sources whose bytes in use the tests read.
pub trait BytesOut: strata::PageSource {
    fn bytes_out(&self) -> usize;
}

impl BytesOut for RegionSource {
    fn bytes_out(&self) -> usize {
        RegionSource::bytes_out(self)
    }
}

impl BytesOut for Mapped {
    fn bytes_out(&self) -> usize {
        self.0.bytes_out()
    }
}

impl Region {
    /// A VMM-like source over the region.
    pub fn mapped(&self) -> Mapped {
        Mapped(self.source())
    }
}

/// Refuses, and counts, every unsized call on `inner`, a pointer into the
/// middle of a live block of `heap`: a free, a size query, and reallocs
/// within and beyond the block's class.
///
/// # Safety
///
/// `inner` must point into a live block of `heap`, which the calls must
/// leave alone.
pub unsafe fn assert_unsized_calls_refused(heap: &strata::LockedHeap, inner: *mut u8) {
    let refused = heap.stats().front.refused_frees;
    // SAFETY: the caller's promise: calls the heap must refuse.
    unsafe {
        heap.dealloc_unsized(inner);
        assert_eq!(heap.usable_size(inner), None);
        assert!(heap.realloc_unsized(inner, 40).is_null());
        assert!(heap.realloc_unsized(inner, 300).is_null());
    }
    assert_eq!(heap.stats().front.refused_frees, refused + 3, "each refusal is counted");
}
