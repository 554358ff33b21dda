//! Layer 0's first-fit engine for heaps under 16 MiB: first fit by address,
//! as `linked_list_allocator` places blocks, with the free blocks in a tree
//! instead of a list, so that no call walks the holes one by one.
//!
//! **Takes:** one committed window, whole ([`FitTree::init`]).
//!
//! **Gives:** blocks of any size and alignment, with no header: a block of
//! `n` bytes takes `n` rounded up to [`UNIT`] (at least [`MIN_BLOCK`]), and
//! its size comes back with the layout when it is freed. That is what makes
//! first fit fill small heaps best (a header word per block costs 3 % of a
//! heap of 264-byte blocks); the tree is what keeps it fast on a heap of a
//! hundred thousand holes, where a list walks them all.
//!
//! ```text
//!  window ┌──────┬────────┬──────┬─┬──────┬──────────────┬──────────┐
//!         │ used │ free ● │ used │s│ used │ free ●       │ free ●   │
//!         └──────┴────┼───┴──────┴─┴──────┴──────┼───────┴────┼─────┘
//!                     └──────── left ────────────●──── right ─┘
//!  node (a free block's first 16 bytes): left, right, size, height|max
//!  s: a sliver, a free 8-byte unit: left|height, right (a tree of its own)
//! ```
//!
//! Each free block holds one node of an AVL tree ordered by address:
//! `left` and `right` are offsets (in [`UNIT`]s from the window's start) of
//! its children, `size` its length, and the last word its subtree's height
//! (6 bits) and the largest `size` in it (26 bits). The tree's height is at
//! most 37 whatever the order of calls (AVL: 1.44·log2 of the nodes), so
//! every operation walks one path, iteratively, keeping at most [`PATH`]
//! ancestors: no recursion, no call deeper than that for any program.
//!
//! A single free unit — the tail of a block that shrank by 8 bytes, an
//! alignment pad of 8 bytes, the 8 bytes a block leaves in a free block one
//! unit longer — cannot hold a node. It becomes a *sliver*, kept in a second
//! AVL tree whose 8-byte nodes pack their height into the left offset, and
//! merges into the first free block or sliver that comes to touch it. So no
//! byte is ever lost, and a shrink never fails. Allocation avoids making
//! slivers where another free block fits.
//!
//! - *Allocate*: the leftmost free block with `size ≥ need` is found by
//!   descending where `max` says one is: O(log holes). If alignment or an
//!   8-byte rest spoils that block, the leftmost block large enough for any
//!   placement is taken instead (a second descent). Only an aligned request
//!   that would otherwise fail walks the blocks long enough for it, in
//!   address order, so that it fails only when no free block can hold it
//!   (as TLSF searches its own list on the way to failure).
//! - *Free*: one descent finds the free blocks before and after; a block
//!   overlapping either, or a sliver, is refused (a double free is caught
//!   while its memory is still free), and the block merges with the free
//!   blocks and slivers it touches. Carving a block from a free block's
//!   front and joining one from below keep its node's place in the tree:
//!   the node moves, one link is redirected, and the maxima above it are
//!   recomputed as far as they change.
//! - *Resize*: a block grows into the free block or sliver after it,
//!   shrinks by giving its tail back, and grows backwards into the free
//!   block or sliver before it (moving its contents), all in O(log holes).
//!
//! **Invariants** ([`FitTree::check`]): nodes and slivers lie in the window,
//! in ascending address order in their trees, each tree AVL-balanced with
//! its heights right; every `max` is right; no two free blocks or slivers
//! touch or overlap; the counters equal the sums over the nodes.
//!
//! **Files.** Blocks, slivers and the search are here; `avl` holds the
//! operations of the two trees (insert, remove, rebalance), `check` the
//! invariant walk.

mod avl;
mod check;

use core::alloc::Layout;
use core::ptr::{self, NonNull};

/// Bytes per unit: block sizes and addresses are counted in units.
pub const UNIT: usize = 8;
const UNIT_SHIFT: u32 = UNIT.trailing_zeros();
/// Smallest block, in use or free: a free one holds a node.
pub const MIN_BLOCK: usize = 2 * UNIT;
const MIN_UNITS: u32 = (MIN_BLOCK / UNIT) as u32;
/// Bits of an offset or a size in units; the bits above hold heights.
const OFFSET_BITS: u32 = 26;
/// No node (an offset that never is one), and the mask of an offset.
const NIL: u32 = (1 << OFFSET_BITS) - 1;
/// Ancestors a path keeps: more than an AVL tree of fewer than 2^26 nodes
/// can have (its height is under 1.4405·log2(n + 2)).
pub const PATH: usize = 40;
/// Largest window the tree can serve: offsets and sizes in units fit in
/// [`OFFSET_BITS`] bits, below `NIL` (512 MiB).
pub const MAX_WINDOW: usize = (NIL as usize - 1) << UNIT_SHIFT;

/// A free block's node, in its first 16 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
struct Node {
    left: u32,
    right: u32,
    size: u32,
    /// The subtree's height above [`OFFSET_BITS`], its largest `size` below.
    meta: u32,
}

/// A sliver's node, in its 8 bytes: its left child with the subtree's
/// height above [`OFFSET_BITS`], its right child.
#[repr(C)]
#[derive(Clone, Copy)]
struct Sliver {
    left: u32,
    right: u32,
}
const _: () = assert!(size_of::<Sliver>() == UNIT);
const _: () = assert!(size_of::<Node>() == MIN_BLOCK && align_of::<Node>() <= UNIT);

/// Counts from [`FitTree::check`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeCounts {
    /// Free blocks.
    pub holes: usize,
    /// Bytes in free blocks.
    pub free_bytes: usize,
    /// Nodes on the longest path from the root.
    pub depth: usize,
    /// Slivers (free 8-byte units), counted in `holes` and `free_bytes`.
    pub slivers: usize,
}

/// First fit by address over one window, free blocks in an AVL tree.
pub struct FitTree {
    /// The window's start, with its provenance; null before `init`.
    base: *mut u8,
    /// The window's length in units.
    units: u32,
    /// The root of the free blocks' tree, XOR `NIL` (so that a tree of no
    /// window is all zeros, and a heap static lies in `.bss`): read it
    /// with [`root`](Self::root).
    root: u32,
    /// The root of the slivers' tree, XOR `NIL` (as `root`).
    slivers: u32,
    free_units: usize,
    holes: usize,
    sliver_count: usize,
}

// SAFETY: the tree owns the memory its pointer points to; it is moved
// between threads only as a whole (inside layer 0, behind the lock).
unsafe impl Send for FitTree {}

/// Why a block is refused by [`FitTree::check_block`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The pointer lies outside the window.
    Outside,
    /// The block is not one this engine could have handed out: misaligned,
    /// running past the window, or overlapping a free block (a double free).
    NotAllocated,
}

/// A block found in use by [`FitTree::check_block`]: its offset and length
/// in units, the free blocks on either side (`NIL` for none), and whether a
/// sliver touches it on either side.
#[derive(Clone, Copy, Debug)]
pub struct Located {
    at: u32,
    units: u32,
    pred: u32,
    succ: u32,
    sliver_before: bool,
    sliver_after: bool,
}

/// Units a request of `size` bytes takes, or `None` past any window.
#[inline]
pub fn units_for(size: usize) -> Option<u32> {
    let units = size.checked_add(UNIT - 1)? >> UNIT_SHIFT;
    u32::try_from(units).ok().map(|u| u.max(MIN_UNITS))
}

impl FitTree {
    /// A tree of no window.
    pub const fn new() -> Self {
        Self {
            base: ptr::null_mut(),
            units: 0,
            root: 0,
            slivers: 0,
            free_units: 0,
            holes: 0,
            sliver_count: 0,
        }
    }

    /// Takes `[start, start + len)` as one free block.
    ///
    /// # Safety
    ///
    /// The memory must be ours for as long as the tree is used, `start`
    /// aligned to [`UNIT`], `len` a multiple of [`UNIT`] from [`MIN_BLOCK`]
    /// to [`MAX_WINDOW`].
    pub unsafe fn init(&mut self, start: NonNull<u8>, len: usize) {
        debug_assert!((start.as_ptr() as usize).is_multiple_of(UNIT) && len.is_multiple_of(UNIT));
        debug_assert!((MIN_BLOCK..=MAX_WINDOW).contains(&len));
        self.base = start.as_ptr();
        self.units = (len >> UNIT_SHIFT) as u32;
        self.root = 0;
        self.slivers = 0;
        self.free_units = 0;
        self.holes = 0;
        self.sliver_count = 0;
        self.add_free(0, self.units);
    }

    /// Bytes in free blocks.
    pub fn free_bytes(&self) -> usize {
        self.free_units << UNIT_SHIFT
    }

    /// Bytes in blocks in use.
    pub fn used_bytes(&self) -> usize {
        ((self.units as usize) << UNIT_SHIFT) - self.free_bytes()
    }

    /// Free blocks, slivers included.
    pub fn holes(&self) -> usize {
        self.holes + self.sliver_count
    }

    /// The largest free block, in bytes: the largest request that can
    /// succeed (aligned to at most [`UNIT`]).
    pub fn largest_free(&self) -> usize {
        (self.max_of(self.root()) as usize) << UNIT_SHIFT
    }

    // ---- nodes -------------------------------------------------------

    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn at(&self, o: u32) -> *mut u8 {
        self.base.wrapping_add((o as usize) << UNIT_SHIFT)
    }

    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn get(&self, o: u32) -> Node {
        debug_assert!(o < self.units);
        // SAFETY: `o` is a node: a free block of the window at least
        // MIN_BLOCK long, UNIT-aligned, which no block in use overlaps.
        unsafe { self.at(o).cast::<Node>().read() }
    }

    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn put(&mut self, o: u32, node: Node) {
        debug_assert!(o < self.units);
        // SAFETY: as in `get`: `o` is (or is becoming) a free block's node.
        unsafe { self.at(o).cast::<Node>().write(node) }
    }

    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn sliver(&self, o: u32) -> Sliver {
        debug_assert!(o < self.units);
        // SAFETY: `o` is a sliver: a free unit of the window, UNIT-aligned,
        // which no block in use overlaps.
        unsafe { self.at(o).cast::<Sliver>().read() }
    }

    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn put_sliver(&mut self, o: u32, sliver: Sliver) {
        debug_assert!(o < self.units);
        // SAFETY: as in `sliver`.
        unsafe { self.at(o).cast::<Sliver>().write(sliver) }
    }

    /// The root of the free blocks' tree.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn root(&self) -> u32 {
        self.root ^ NIL
    }

    /// The root of the slivers' tree.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn sliver_root(&self) -> u32 {
        self.slivers ^ NIL
    }

    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn size(&self, o: u32) -> u32 {
        self.get(o).size
    }

    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn max_of(&self, t: u32) -> u32 {
        if t == NIL { 0 } else { self.get(t).meta & NIL }
    }

    // ---- free blocks -------------------------------------------------

    /// Adds `[o, o + units)` (at least two units) to the tree as a new free
    /// block (it touches none).
    fn add_free(&mut self, o: u32, units: u32) {
        debug_assert!(units >= MIN_UNITS);
        self.put(o, Node { left: NIL, right: NIL, size: units, meta: (1 << OFFSET_BITS) | units });
        self.avl_insert::<false>(o);
        self.holes += 1;
        self.free_units += units as usize;
    }

    /// Takes free block `o` out of the tree.
    fn take(&mut self, o: u32) -> u32 {
        let size = self.size(o);
        self.avl_remove::<false>(o);
        self.holes -= 1;
        self.free_units -= size as usize;
        size
    }

    /// Makes free block `old` the block `[new, new + size)`, which keeps its
    /// place in address order (no free block lies between `old` and `new`):
    /// its node moves, the link to it is redirected, and the `max`es above
    /// it are recomputed as far up as they change.
    fn reshape(&mut self, old: u32, new: u32, size: u32) {
        if size > self.size(old) {
            return self.reshape_larger(old, new, size);
        }
        let mut path = [NIL; PATH];
        let (mut depth, mut t) = (0, self.root());
        while t != old {
            path[depth] = t;
            depth += 1;
            t = if new < t { self.get(t).left } else { self.get(t).right };
        }
        let n = self.get(old);
        self.free_units = self.free_units + size as usize - n.size as usize;
        self.put(new, Node { size, ..n });
        self.pull::<false>(new);
        match depth.checked_sub(1).map(|i| path[i]) {
            None => self.root = new ^ NIL,
            Some(p) if new < p => self.set_left::<false>(p, new),
            Some(p) => self.set_right::<false>(p, new),
        }
        for &p in path[..depth].iter().rev() {
            let before = self.get(p).meta;
            self.pull::<false>(p);
            if self.get(p).meta == before {
                break;
            }
        }
    }

    /// [`reshape`](Self::reshape) to a larger size: the `max`es on the path
    /// only rise, so they are raised on the way down.
    fn reshape_larger(&mut self, old: u32, new: u32, size: u32) {
        let (mut parent, mut t) = (NIL, self.root());
        while t != old {
            let n = self.get(t);
            if n.meta & NIL < size {
                self.put(t, Node { meta: (n.meta & !NIL) | size, ..n });
            }
            parent = t;
            t = if new < t { n.left } else { n.right };
        }
        let n = self.get(old);
        self.free_units += (size - n.size) as usize;
        self.put(new, Node { size, meta: (n.meta & !NIL) | (n.meta & NIL).max(size), ..n });
        match parent {
            NIL => self.root = new ^ NIL,
            p if new < p => self.set_left::<false>(p, new),
            p => self.set_right::<false>(p, new),
        }
    }

    // ---- slivers -----------------------------------------------------

    /// Makes unit `o` (which touches no free block or sliver) a sliver.
    fn add_sliver(&mut self, o: u32) {
        self.put_sliver(o, Sliver { left: (1 << OFFSET_BITS) | NIL, right: NIL });
        self.avl_insert::<true>(o);
        self.sliver_count += 1;
        self.free_units += 1;
    }

    /// Takes sliver `o` out of its tree.
    fn take_sliver(&mut self, o: u32) {
        self.avl_remove::<true>(o);
        self.sliver_count -= 1;
        self.free_units -= 1;
    }

    /// The last sliver before unit `o` and the first at or after it (`NIL`
    /// for none).
    fn slivers_around(&self, o: u32) -> (u32, u32) {
        let (mut before, mut after, mut t) = (NIL, NIL, self.sliver_root());
        while t != NIL {
            if t >= o {
                after = t;
                t = self.left::<true>(t);
            } else {
                before = t;
                t = self.right::<true>(t);
            }
        }
        (before, after)
    }

    /// Frees `[o, o + units)` (which no free block or sliver overlaps)
    /// between free blocks `pred` and `succ`, merging with the free blocks
    /// it touches and with the slivers that touch it (`sliver_before`,
    /// `sliver_after`).
    fn release(
        &mut self,
        mut o: u32,
        mut units: u32,
        (pred, succ): (u32, u32),
        (sliver_before, sliver_after): (bool, bool),
    ) {
        if sliver_before {
            self.take_sliver(o - 1);
            o -= 1;
            units += 1;
        }
        if sliver_after {
            self.take_sliver(o + units);
            units += 1;
        }
        let joins_pred = pred != NIL && pred + self.size(pred) == o;
        let joins_succ = succ != NIL && o + units == succ;
        match (joins_pred, joins_succ) {
            (false, false) if units < MIN_UNITS => self.add_sliver(o),
            (false, false) => self.add_free(o, units),
            (false, true) => self.reshape(succ, o, units + self.size(succ)),
            (true, false) => self.reshape(pred, pred, self.size(pred) + units),
            (true, true) => {
                let before = self.take(pred);
                self.reshape(succ, pred, before + units + self.size(succ));
            }
        }
    }

    // ---- searching ---------------------------------------------------

    /// The leftmost free block of at least `need` units, or `NIL`.
    fn leftmost_at_least(&self, need: u32) -> u32 {
        let mut t = self.root();
        if self.max_of(t) < need {
            return NIL;
        }
        loop {
            let n = self.get(t);
            if self.max_of(n.left) >= need {
                t = n.left;
            } else if n.size >= need {
                return t;
            } else {
                t = n.right;
            }
        }
    }

    /// Where in free block `o` a block of `need` units aligned to `align`
    /// starts (in units past `o`), and the units left after it, if it fits.
    fn placement(&self, o: u32, need: u32, align: usize) -> Option<(u32, u32)> {
        let addr = self.at(o) as usize;
        let pad = u32::try_from((addr.checked_next_multiple_of(align)? - addr) >> UNIT_SHIFT).ok()?;
        let rest = self.size(o).checked_sub(pad)?.checked_sub(need)?;
        Some((pad, rest))
    }

    /// Finds the free block and the offset in it where a block of `need`
    /// units aligned to `align` goes: the leftmost free block that fits
    /// it, unless that would leave a sliver after it and another block
    /// fits without one, in at most three descents; only when those find
    /// nothing (an aligned request about to fail) are the blocks that
    /// might fit looked at one by one, so that a request fails only when no
    /// free block can hold it.
    fn find(&self, need: u32, align: usize) -> Option<(u32, u32)> {
        let first = self.leftmost_at_least(need);
        if first == NIL {
            return None;
        }
        let fits = self.placement(first, need, align);
        if let Some((pad, rest)) = fits
            && rest != 1
        {
            return Some((first, pad));
        }
        // Any block this long fits with no sliver after: the largest pad
        // is one unit short of the alignment (none for an alignment past
        // every window).
        let worst_pad = u32::try_from((align >> UNIT_SHIFT).saturating_sub(1)).ok();
        let sure = worst_pad.and_then(|pad| need.checked_add(pad));
        if let Some(clean) = sure.and_then(|sure| sure.checked_add(MIN_UNITS)) {
            let second = self.leftmost_at_least(clean);
            if second != NIL {
                return self.placement(second, need, align).map(|(pad, _)| (second, pad));
            }
        }
        if let Some((pad, _)) = fits {
            return Some((first, pad));
        }
        if let Some(sure) = sure {
            let third = self.leftmost_at_least(sure);
            if third != NIL {
                return self.placement(third, need, align).map(|(pad, _)| (third, pad));
            }
        }
        self.first_placement(need, align)
    }

    /// The leftmost free block in which a block of `need` units aligned to
    /// `align` fits, by an in-order walk of the blocks of at least `need`
    /// units (subtrees without one are skipped).
    #[cold]
    fn first_placement(&self, need: u32, align: usize) -> Option<(u32, u32)> {
        let mut stack = [NIL; PATH + 1];
        let (mut depth, mut t) = (0, self.root());
        loop {
            while t != NIL && self.max_of(t) >= need {
                stack[depth] = t;
                depth += 1;
                t = self.get(t).left;
            }
            depth = depth.checked_sub(1)?;
            let n = stack[depth];
            if let Some((pad, _)) = self.placement(n, need, align) {
                return Some((n, pad));
            }
            t = self.get(n).right;
        }
    }

    // ---- blocks ------------------------------------------------------

    /// Allocates a block for `layout`: first fit by address.
    pub fn allocate(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let need = units_for(layout.size())?;
        let (o, pad) = self.find(need, layout.align())?;
        Some(self.carve(o, pad, need))
    }

    /// Takes `need` units at `pad` units into free block `o` (where they
    /// fit); what is left before and after stays free, as a free block or
    /// a sliver.
    fn carve(&mut self, o: u32, pad: u32, need: u32) -> NonNull<u8> {
        let rest = self.size(o) - pad - need;
        let end = o + pad + need;
        if pad >= MIN_UNITS {
            self.reshape(o, o, pad);
            match rest {
                0 => {}
                1 => self.add_sliver(end),
                _ => self.add_free(end, rest),
            }
        } else {
            if rest >= MIN_UNITS {
                self.reshape(o, end, rest);
            } else {
                self.take(o);
                if rest == 1 {
                    self.add_sliver(end);
                }
            }
            if pad == 1 {
                self.add_sliver(o);
            }
        }
        // SAFETY: an address in the window, so not null.
        unsafe { NonNull::new_unchecked(self.at(o + pad)) }
    }

    /// Allocates a block for `layout` at the start of the largest free
    /// block (the leftmost of the largest), for a block expected to keep
    /// growing in place; first fit if that one cannot take it.
    pub fn allocate_largest(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let need = units_for(layout.size())?;
        let mut t = self.root();
        let largest = self.max_of(t);
        while t != NIL {
            let n = self.get(t);
            if self.max_of(n.left) == largest {
                t = n.left;
            } else if n.size == largest {
                break;
            } else {
                t = n.right;
            }
        }
        match (t != NIL).then(|| self.placement(t, need, layout.align())).flatten() {
            Some((pad, _)) => Some(self.carve(t, pad, need)),
            None => self.allocate(layout),
        }
    }

    /// Checks that `[ptr, ptr + size)` could be a block in use: in the
    /// window, aligned, not overlapping a free block (O(depth)). Returns
    /// where it lies among the free blocks.
    pub fn check_block(&self, ptr: NonNull<u8>, size: usize) -> Result<Located, Refusal> {
        let off = (ptr.as_ptr() as usize).wrapping_sub(self.base as usize);
        if self.base.is_null() || off >= (self.units as usize) << UNIT_SHIFT {
            return Err(Refusal::Outside);
        }
        let units = units_for(size).ok_or(Refusal::NotAllocated)?;
        if !off.is_multiple_of(UNIT) {
            return Err(Refusal::NotAllocated);
        }
        let at = (off >> UNIT_SHIFT) as u32;
        if units > self.units - at {
            return Err(Refusal::NotAllocated);
        }
        let (mut pred, mut succ, mut t) = (NIL, NIL, self.root());
        while t != NIL {
            let n = self.get(t);
            if t <= at {
                pred = t;
                t = n.right;
            } else {
                succ = t;
                t = n.left;
            }
        }
        if (pred != NIL && pred + self.size(pred) > at) || (succ != NIL && at + units > succ) {
            return Err(Refusal::NotAllocated);
        }
        let (before, after) = if self.sliver_root() == NIL { (NIL, NIL) } else { self.slivers_around(at) };
        if after < at + units {
            return Err(Refusal::NotAllocated);
        }
        let (sliver_before, sliver_after) = (before != NIL && before + 1 == at, after == at + units);
        Ok(Located { at, units, pred, succ, sliver_before, sliver_after })
    }

    /// Frees a block that [`check_block`](Self::check_block) located.
    ///
    /// # Safety
    ///
    /// `block` must be a block in use allocated here (with the size it was
    /// checked with), not used after this call, and nothing changed in the
    /// tree since it was checked.
    pub unsafe fn free(&mut self, block: Located) {
        self.release(
            block.at,
            block.units,
            (block.pred, block.succ),
            (block.sliver_before, block.sliver_after),
        );
    }

    /// Resizes a located block in place to `new_size` bytes (its alignment
    /// `align`): a growth takes from the free block (or sliver) after it; a
    /// shrink gives its tail back (a tail of one unit becomes a sliver),
    /// unless first fit would place the smaller block lower, where it goes
    /// instead (blocks that shrink move toward the window's start, away
    /// from the free space above: on talc's random-realloc fill of 256 KiB
    /// that is 77 % against 71 %). Returns whether the block now has the
    /// units `new_size` takes; on `false` nothing changed (the space after
    /// it is too small, or the block should move).
    ///
    /// # Safety
    ///
    /// As for [`free`](Self::free), except that the block stays in use.
    pub unsafe fn resize(&mut self, block: Located, new_size: usize, align: usize) -> bool {
        let Located { at, units, succ, sliver_after, .. } = block;
        let Some(new) = units_for(new_size) else { return false };
        if new <= units {
            if new == units {
                return true;
            }
            if self.find(new, align).is_some_and(|(o, pad)| o + pad < at) {
                return false;
            }
            self.release(at + new, units - new, (NIL, succ), (false, sliver_after));
            return true;
        }
        let wanted = new - units;
        if succ != NIL && at + units == succ {
            let have = self.size(succ);
            match have.checked_sub(wanted) {
                Some(0) => {
                    self.take(succ);
                }
                Some(1) => {
                    self.take(succ);
                    self.add_sliver(at + new);
                }
                Some(rest) => self.reshape(succ, at + new, rest),
                None => return false,
            }
            return true;
        }
        if wanted == 1 && sliver_after {
            self.take_sliver(at + units);
            return true;
        }
        false
    }

    /// Grows a located block (aligned to at most [`UNIT`]) to `new_size`
    /// bytes into the free block or sliver before it, and the free block or
    /// sliver after it if one touches it, moving its first `keep` bytes
    /// down. Returns the new
    /// address, or `None` (nothing changed) when they are too small.
    ///
    /// # Safety
    ///
    /// As for [`resize`](Self::resize); `keep` at most the block's size.
    pub unsafe fn grow_backward(
        &mut self,
        block: Located,
        new_size: usize,
        keep: usize,
    ) -> Option<NonNull<u8>> {
        let Located { at, units, pred, succ, sliver_before, sliver_after } = block;
        let new = units_for(new_size)?;
        let before = match () {
            () if pred != NIL && pred + self.size(pred) == at => self.size(pred),
            () if sliver_before => 1,
            () => return None,
        };
        let touching = succ != NIL && at + units == succ;
        let after = if touching { self.size(succ) } else { u32::from(sliver_after) };
        let rest = (before + units + after).checked_sub(new)?;
        let start = at - before;
        if sliver_before {
            self.take_sliver(start);
        } else {
            self.take(pred);
        }
        if touching {
            self.take(succ);
        } else if sliver_after {
            self.take_sliver(at + units);
        }
        // SAFETY: both ranges lie in the window (the block and the free
        // block or sliver before it); `keep` bytes of the block are live.
        // The free space taken is out of the trees, so nothing else lives
        // in the destination.
        unsafe { ptr::copy(self.at(at), self.at(start), keep) };
        match rest {
            0 => {}
            1 => self.add_sliver(start + new),
            _ => self.add_free(start + new, rest),
        }
        NonNull::new(self.at(start))
    }
}

impl Default for FitTree {
    fn default() -> Self {
        Self::new()
    }
}
