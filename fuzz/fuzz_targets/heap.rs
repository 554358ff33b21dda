//! Fuzzes a [`strata::Heap`] over a fresh region per input: arbitrary
//! sequences of allocate, allocate_zeroed, free, realloc, frees with a wrong
//! layout, immediate double frees, frees of foreign pointers and trims,
//! against the shadow model; the heap's invariants are walked after every
//! step, and at the end every block is freed and every page must be back.
#![no_main]

// The host tests' region, VMM-like page source and bytes-out reading.
#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "model.rs"]
mod model;

use std::alloc::Layout;
use std::ptr::NonNull;

use arbitrary::Arbitrary;
use common::{BytesOut, Region};
use libfuzzer_sys::fuzz_target;
use model::{Model, Size, align, zeroed};
use strata::Heap;

#[derive(Arbitrary, Debug)]
enum Op {
    Alloc {
        size: Size,
        align: u8,
        zeroed: bool,
    },
    Free {
        which: u16,
    },
    Realloc {
        which: u16,
        size: Size,
    },
    /// A free whose layout may not be the block's: refused with nothing
    /// changed, or accepted and the block gone.
    FreeWithLayout {
        which: u16,
        size: Size,
        align: u8,
    },
    /// `free(p); free(p)`: the second must be refused.
    DoubleFree {
        which: u16,
    },
    /// A pointer no layer owns: refused.
    ForeignFree {
        kind: u8,
    },
    Trim,
}

#[derive(Arbitrary, Debug)]
struct Input {
    region: u8,
    mapped: bool,
    cold: bool,
    ops: Vec<Op>,
}

/// Region sizes: first fit below 1 MiB, TLSF above, odd sizes, and large
/// enough for layer +2's arenas.
const REGIONS: [usize; 7] =
    [64 << 10, 200 << 10, 1 << 20, (1 << 20) + (12 << 10), 4 << 20, 17 << 20, 32 << 20];

fuzz_target!(|input: Input| {
    let region = Region::new(REGIONS[usize::from(input.region) % REGIONS.len()]);
    let bounds = (region.ptr() as usize, region.ptr() as usize + region.len());
    if input.mapped {
        run(Heap::new(region.mapped()), bounds, &input);
    } else {
        run(Heap::new(region.source()), bounds, &input);
    }
});

fn run<S: BytesOut>(mut heap: Heap<S>, bounds: (usize, usize), input: &Input) {
    if input.cold {
        heap.set_cold_limit(0);
    }
    let len = bounds.1 - bounds.0;
    let mut m = Model::within(bounds.0, bounds.1);
    for op in input.ops.iter().take(3000) {
        match *op {
            Op::Alloc { size, align: a, zeroed: z } => {
                let layout = Layout::from_size_align(size.bytes(len), align(a)).unwrap();
                let r = if z { heap.allocate_zeroed(layout) } else { heap.allocate(layout) };
                if let Ok(p) = r {
                    if z {
                        zeroed(p.as_ptr(), layout.size());
                    }
                    m.insert(p.as_ptr(), layout);
                }
            }
            Op::Free { which } => {
                if let Some(i) = m.index(which) {
                    let b = m.take(i);
                    // SAFETY: a live block of this heap with its layout.
                    unsafe { heap.deallocate(nn(b.ptr), b.layout) }.expect("free of a live block");
                }
            }
            Op::Realloc { which, size } => {
                if let Some(i) = m.index(which) {
                    let (ptr, layout) = (m.live[i].ptr, m.live[i].layout);
                    let size = size.bytes(len);
                    // SAFETY: a live block of this heap with its layout.
                    match unsafe { heap.reallocate(nn(ptr), layout, size) } {
                        Ok(p) => m.moved(i, p.as_ptr(), size),
                        Err(_) => model::verify(&m.live[i], layout.size()),
                    }
                }
            }
            Op::FreeWithLayout { which, size, align: a } => {
                if let Some(i) = m.index(which) {
                    let b = &m.live[i];
                    model::verify(b, b.layout.size());
                    let (ptr, good) = (b.ptr, b.layout);
                    let layout = Layout::from_size_align(size.bytes(len), align(a)).unwrap();
                    // The layout is a misuse only when it is not the
                    // block's: a block of first fit has no header to check
                    // it against, so only the heaps that can see it get one.
                    let layout = if heap.stats().segments.first_fit { good } else { layout };
                    // SAFETY: a live block of this heap; a wrong layout must
                    // be refused or be harmless.
                    match unsafe { heap.deallocate(nn(ptr), layout) } {
                        Ok(()) => m.forget(i),
                        Err(e) => assert_ne!(layout, good, "a free with the right layout refused: {e:?}"),
                    }
                }
            }
            Op::DoubleFree { which } => {
                if heap.stats().segments.first_fit {
                    continue;
                }
                if let Some(i) = m.index(which) {
                    let b = m.take(i);
                    // SAFETY: a live block, then the misuse under test: a
                    // second free at once, which must be refused untouched.
                    unsafe {
                        heap.deallocate(nn(b.ptr), b.layout).expect("free of a live block");
                        assert!(heap.deallocate(nn(b.ptr), b.layout).is_err(), "a double free accepted");
                    }
                }
            }
            Op::ForeignFree { kind } => {
                let mut local = [0u64; 8];
                let mut outside = Box::new([0u64; 8]);
                let p: *mut u8 = match kind % 3 {
                    0 => local.as_mut_ptr().cast(),
                    1 => outside.as_mut_ptr().cast(),
                    _ => bounds.1 as *mut u8,
                };
                let l = Layout::from_size_align(64, 8).unwrap();
                // SAFETY: a pointer the heap does not own: it must refuse it
                // without touching it.
                assert!(unsafe { heap.deallocate(nn(p), l) }.is_err(), "a foreign pointer freed");
                // SAFETY: as above.
                assert!(unsafe { heap.reallocate(nn(p), l, 128) }.is_err(), "a foreign pointer reallocated");
                assert_eq!(local, [0; 8]);
            }
            Op::Trim => {
                heap.trim();
            }
        }
        heap.check_invariants();
    }
    for i in (0..m.live.len()).rev() {
        let b = m.take(i);
        // SAFETY: live blocks of this heap.
        unsafe { heap.deallocate(nn(b.ptr), b.layout) }.expect("free of a live block");
    }
    heap.check_invariants();
    heap.trim();
    let s = heap.stats();
    assert_eq!(heap.source().bytes_out(), 0, "pages kept after every block was freed: {s:?}");
}

fn nn(p: *mut u8) -> NonNull<u8> {
    NonNull::new(p).expect("a non-null block")
}
