//! The shadow model both fuzz targets check the heap against: every live
//! block with its layout and a fill pattern, and the address ranges in use,
//! so a block handed out twice, overlapping another, misaligned, outside its
//! region or with lost contents is a crash.

// Shared by both targets, each of which uses a part.
#![allow(dead_code)]

use std::alloc::Layout;
use std::collections::BTreeMap;

use arbitrary::Arbitrary;

/// A request size drawn like a program's: mostly small, some mid-size, a
/// few large; `odd` sizes are not multiples of the alignment.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Size {
    Small(u16),
    Mid(u16),
    Large(u32),
}

impl Size {
    /// The size in bytes, at least 1 and at most `max`.
    pub fn bytes(self, max: usize) -> usize {
        let n = match self {
            Size::Small(n) => 1 + usize::from(n) % 512,
            Size::Mid(n) => 513 + usize::from(n) % (16 << 10),
            Size::Large(n) => (16 << 10) + n as usize % (1 << 20),
        };
        n.min(max)
    }
}

/// An alignment from a shift: mostly the natural ones, up to 4 KiB.
pub fn align(shift: u8) -> usize {
    1 << (shift % 13)
}

pub struct Live {
    pub ptr: *mut u8,
    pub layout: Layout,
    pub seed: u8,
}

/// The byte expected at offset `i` of a block filled with `seed`; the first
/// and last 256 bytes of a block are written and checked.
fn pattern(seed: u8, i: usize) -> u8 {
    seed.wrapping_add((i as u8).wrapping_mul(31))
}

fn offsets(len: usize) -> impl Iterator<Item = usize> {
    (0..len.min(256)).chain(len.saturating_sub(256).max(256.min(len))..len)
}

#[derive(Default)]
pub struct Model {
    pub live: Vec<Live>,
    ranges: BTreeMap<usize, usize>,
    seed: u8,
    /// Where blocks may lie: `(start, end)`, or everything.
    bounds: Option<(usize, usize)>,
}

impl Model {
    /// A model whose blocks must lie in `[start, end)`.
    pub fn within(start: usize, end: usize) -> Self {
        Self { bounds: Some((start, end)), ..Self::default() }
    }

    /// Records a block just handed out for `layout`, checking where it lies,
    /// and fills it.
    pub fn insert(&mut self, ptr: *mut u8, layout: Layout) -> usize {
        self.seed = self.seed.wrapping_add(37);
        let i = self.place(ptr, layout, self.seed);
        fill(&self.live[i]);
        i
    }

    /// Records a block at `ptr` whose contents are those of `seed`, unfilled.
    fn place(&mut self, ptr: *mut u8, layout: Layout, seed: u8) -> usize {
        let start = ptr as usize;
        assert!(!ptr.is_null());
        assert_eq!(start % layout.align(), 0, "{layout:?} misaligned at {start:#x}");
        let end = start + layout.size().max(1);
        if let Some((lo, hi)) = self.bounds {
            assert!(start >= lo && end <= hi, "block [{start:#x},{end:#x}) outside the region");
        }
        if let Some((&s, &e)) = self.ranges.range(..end).next_back() {
            assert!(e <= start || s >= end, "[{start:#x},{end:#x}) overlaps [{s:#x},{e:#x})");
        }
        self.ranges.insert(start, end);
        self.live.push(Live { ptr, layout, seed });
        self.live.len() - 1
    }

    /// Takes block `i` out of the model, its contents checked.
    pub fn take(&mut self, i: usize) -> Live {
        let b = self.live.swap_remove(i);
        verify(&b, b.layout.size());
        self.ranges.remove(&(b.ptr as usize)).expect("the model knows the block");
        b
    }

    /// Takes block `i` out of the model unread: it is gone already.
    pub fn forget(&mut self, i: usize) {
        let b = self.live.swap_remove(i);
        self.ranges.remove(&(b.ptr as usize)).expect("the model knows the block");
    }

    /// Replaces block `i` by its reallocation at `ptr` with `size` bytes,
    /// checking the prefix it kept.
    pub fn moved(&mut self, i: usize, ptr: *mut u8, size: usize) {
        // The old block may be gone: forget it unread.
        let old = self.live.swap_remove(i);
        self.ranges.remove(&(old.ptr as usize)).expect("the model knows the block");
        let layout = Layout::from_size_align(size, old.layout.align()).unwrap();
        let j = self.place(ptr, layout, old.seed);
        let b = &self.live[j];
        verify(b, old.layout.size().min(size).min(256));
        fill(b);
    }

    pub fn index(&self, which: u16) -> Option<usize> {
        (!self.live.is_empty()).then(|| usize::from(which) % self.live.len())
    }
}

pub fn fill(b: &Live) {
    for i in offsets(b.layout.size()) {
        // SAFETY: the block is live and `layout.size()` bytes long.
        unsafe { b.ptr.add(i).write(pattern(b.seed, i)) };
    }
}

pub fn verify(b: &Live, len: usize) {
    for i in offsets(len) {
        // SAFETY: as above.
        let v = unsafe { b.ptr.add(i).read() };
        assert_eq!(v, pattern(b.seed, i), "block {:p} {:?} lost its contents at {i}", b.ptr, b.layout);
    }
}

/// Checks that `len` bytes at `ptr` read zero.
pub fn zeroed(ptr: *mut u8, len: usize) {
    // SAFETY: a block just handed out, `len` bytes long.
    let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
    assert!(bytes.iter().all(|&b| b == 0), "allocate_zeroed returned dirty memory");
}
