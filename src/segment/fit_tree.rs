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
//!  window ┌──────┬────────┬──────┬────┬──────────────┬──────────┐
//!         │ used │ free ● │ used │ u  │ free ●       │ free ●   │ ← never two
//!         └──────┴────┼───┴──────┴────┴──────┼───────┴────┼─────┘   free blocks
//!                     └──────── left ────────●──── right ─┘         side by side
//!  node (in the free block's first 16 bytes): left, right, size, max
//! ```
//!
//! Each free block holds one node of a *treap* ordered by address: `left`
//! and `right` are offsets (in [`UNIT`]s from the window's start) of its
//! children, `size` its length, `max` the largest `size` in its subtree.
//! Priorities are a hash of where the block ends, so the tree is balanced
//! in expectation whatever order blocks are freed in (depth 41 to 46 for
//! 131 072 holes freed in address order, either way; `check` measures it),
//! and nothing but the four words is stored. A block's end stays put when
//! it is carved from its front (an allocation) or a freed block joins it
//! from below, so those, the commonest changes, keep the node's place and
//! only move it and redirect one link.
//!
//! - *Allocate*: the leftmost free block with `size ≥ need` is found by
//!   descending where `max` says one is: O(depth). If alignment or an
//!   8-byte rest spoils that block, the leftmost block large enough for any
//!   placement is taken instead (a second descent), so a call never walks.
//! - *Free*: one descent finds the free blocks before and after; a block
//!   overlapping either is refused (a double free is caught while its
//!   memory is still free), and the block merges with the ones it touches.
//! - *Resize*: a block grows into the free block after it, shrinks by
//!   giving its tail back, and grows backwards into the free block before it
//!   (moving its contents), all in O(depth).
//!
//! **Invariants** ([`FitTree::check`]): nodes lie in the window, in
//! ascending address order in the tree, with the heap order of their
//! priorities; no two free blocks touch or overlap; every `max` is right;
//! the counters equal the sums over the nodes.

use core::alloc::Layout;
use core::ptr::{self, NonNull};

/// Bytes per unit: block sizes and addresses are counted in units.
pub const UNIT: usize = 8;
const UNIT_SHIFT: u32 = UNIT.trailing_zeros();
/// Smallest block, in use or free: a free one holds a node.
pub const MIN_BLOCK: usize = 2 * UNIT;
const MIN_UNITS: u32 = (MIN_BLOCK / UNIT) as u32;
/// No node (an offset that never is one).
const NIL: u32 = u32::MAX;
/// Largest window the tree can serve: offsets and sizes in units are `u32`.
pub const MAX_WINDOW: usize =
    if usize::BITS > 32 { (NIL as usize - 1) << UNIT_SHIFT } else { (usize::MAX >> 1) & !(UNIT - 1) };

/// A free block's node, in its first 16 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
struct Node {
    left: u32,
    right: u32,
    size: u32,
    max: u32,
}
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
}

/// First fit by address over one window, free blocks in a treap.
pub struct FitTree {
    /// The window's start, with its provenance; null before `init`.
    base: *mut u8,
    /// The window's length in units.
    units: u32,
    root: u32,
    /// Mixed into every priority, so that two heaps are not shaped alike.
    seed: u32,
    free_units: usize,
    holes: usize,
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
/// in units, and the free blocks on either side (`NIL` for none).
#[derive(Clone, Copy, Debug)]
pub struct Located {
    at: u32,
    units: u32,
    pred: u32,
    succ: u32,
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
        Self { base: ptr::null_mut(), units: 0, root: NIL, seed: 0, free_units: 0, holes: 0 }
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
        self.seed = mix((start.as_ptr() as usize >> UNIT_SHIFT) as u32);
        self.root = NIL;
        self.free_units = 0;
        self.holes = 0;
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

    /// Free blocks.
    pub fn holes(&self) -> usize {
        self.holes
    }

    /// The largest free block, in bytes: the largest request that can
    /// succeed (aligned to at most [`UNIT`]).
    pub fn largest_free(&self) -> usize {
        (self.max_of(self.root) as usize) << UNIT_SHIFT
    }

    // ---- nodes -------------------------------------------------------

    #[inline(always)]
    fn at(&self, o: u32) -> *mut Node {
        self.base.wrapping_add((o as usize) << UNIT_SHIFT).cast()
    }

    #[inline(always)]
    fn get(&self, o: u32) -> Node {
        debug_assert!(o < self.units);
        // SAFETY: `o` is a node: a free block of the window at least
        // MIN_BLOCK long, UNIT-aligned, which no block in use overlaps.
        unsafe { self.at(o).read() }
    }

    #[inline(always)]
    fn put(&mut self, o: u32, node: Node) {
        debug_assert!(o < self.units);
        // SAFETY: as in `get`: `o` is (or is becoming) a free block's node.
        unsafe { self.at(o).write(node) }
    }

    #[inline(always)]
    fn left(&self, o: u32) -> u32 {
        self.get(o).left
    }

    #[inline(always)]
    fn right(&self, o: u32) -> u32 {
        self.get(o).right
    }

    #[inline(always)]
    fn size(&self, o: u32) -> u32 {
        self.get(o).size
    }

    #[inline(always)]
    fn max_of(&self, t: u32) -> u32 {
        if t == NIL { 0 } else { self.get(t).max }
    }

    #[inline(always)]
    fn set_left(&mut self, o: u32, l: u32) {
        let node = Node { left: l, ..self.get(o) };
        self.put(o, node);
    }

    #[inline(always)]
    fn set_right(&mut self, o: u32, r: u32) {
        let node = Node { right: r, ..self.get(o) };
        self.put(o, node);
    }

    /// Recomputes `max` of node `t` from its size and children.
    #[inline(always)]
    fn pull(&mut self, t: u32) {
        let n = self.get(t);
        let max = n.size.max(self.max_of(n.left)).max(self.max_of(n.right));
        self.put(t, Node { max, ..n });
    }

    /// Node `t`'s priority: a hash of where its block ends, which stays
    /// put when a block is carved from its front or a freed block joins it
    /// from below, so those moves keep the node's place in the tree.
    #[inline(always)]
    fn prio(&self, t: u32) -> u32 {
        mix((t + self.size(t)) ^ self.seed)
    }

    /// The priority of `t`, `None` for no node (below every priority).
    #[inline(always)]
    fn prio_of(&self, t: u32) -> Option<u32> {
        (t != NIL).then(|| self.prio(t))
    }

    // ---- treap -------------------------------------------------------

    /// Splits subtree `t` into the nodes before `k` and the rest.
    fn split(&mut self, t: u32, k: u32) -> (u32, u32) {
        if t == NIL {
            return (NIL, NIL);
        }
        if t < k {
            let (a, b) = self.split(self.right(t), k);
            self.set_right(t, a);
            self.pull(t);
            (t, b)
        } else {
            let (a, b) = self.split(self.left(t), k);
            self.set_left(t, b);
            self.pull(t);
            (a, t)
        }
    }

    /// Joins subtrees `a` and `b`, every node of `a` before every node of
    /// `b`.
    fn merge(&mut self, a: u32, b: u32) -> u32 {
        if a == NIL {
            return b;
        }
        if b == NIL {
            return a;
        }
        if self.prio(a) > self.prio(b) {
            let r = self.merge(self.right(a), b);
            self.set_right(a, r);
            self.pull(a);
            a
        } else {
            let l = self.merge(a, self.left(b));
            self.set_left(b, l);
            self.pull(b);
            b
        }
    }

    /// Inserts node `x` (already written, no children), of priority `px`,
    /// into subtree `t`.
    fn insert(&mut self, t: u32, x: u32, px: u32) -> u32 {
        if t == NIL {
            return x;
        }
        if px > self.prio(t) {
            let (l, r) = self.split(t, x);
            let n = self.get(x);
            self.put(x, Node { left: l, right: r, ..n });
            self.pull(x);
            return x;
        }
        if x < t {
            let l = self.insert(self.left(t), x, px);
            self.set_left(t, l);
        } else {
            let r = self.insert(self.right(t), x, px);
            self.set_right(t, r);
        }
        self.pull(t);
        t
    }

    /// Removes node `k` from subtree `t` (which holds it).
    fn remove(&mut self, t: u32, k: u32) -> u32 {
        debug_assert!(t != NIL, "node {k} not in the tree");
        if t == k {
            let n = self.get(t);
            return self.merge(n.left, n.right);
        }
        if k < t {
            let l = self.remove(self.left(t), k);
            self.set_left(t, l);
        } else {
            let r = self.remove(self.right(t), k);
            self.set_right(t, r);
        }
        self.pull(t);
        t
    }

    /// Node `old` of subtree `t` has moved to `new` (the same place in
    /// address order: no other node lies between them) and its size may
    /// have changed: restores the `max`es on its path and the heap order of
    /// priorities, in one pass. Returns the subtree's root.
    fn update(&mut self, t: u32, old: u32, new: u32) -> u32 {
        if t == old {
            return self.sift_down(new);
        }
        let n = self.get(t);
        if new < t {
            let c = self.update(n.left, old, new);
            if self.prio(c) > self.prio(t) {
                self.set_left(t, self.right(c));
                self.pull(t);
                self.set_right(c, t);
                self.pull(c);
                return c;
            }
            self.set_left(t, c);
        } else {
            let c = self.update(n.right, old, new);
            if self.prio(c) > self.prio(t) {
                self.set_right(t, self.left(c));
                self.pull(t);
                self.set_left(c, t);
                self.pull(c);
                return c;
            }
            self.set_right(t, c);
        }
        self.pull(t);
        t
    }

    /// Moves node `x` down below any child of higher priority. Returns the
    /// root of what was `x`'s subtree.
    fn sift_down(&mut self, x: u32) -> u32 {
        let n = self.get(x);
        let (px, pl, pr) = (Some(self.prio(x)), self.prio_of(n.left), self.prio_of(n.right));
        if pl > px && pl >= pr {
            let l = n.left;
            self.set_left(x, self.right(l));
            let sub = self.sift_down(x);
            self.set_right(l, sub);
            self.pull(l);
            l
        } else if pr > px {
            let r = n.right;
            self.set_right(x, self.left(r));
            let sub = self.sift_down(x);
            self.set_left(r, sub);
            self.pull(r);
            r
        } else {
            self.pull(x);
            x
        }
    }

    /// Adds `[o, o + units)` to the tree as a new free block (it touches
    /// none).
    fn add_free(&mut self, o: u32, units: u32) {
        debug_assert!(units >= MIN_UNITS);
        self.put(o, Node { left: NIL, right: NIL, size: units, max: units });
        self.root = self.insert(self.root, o, self.prio(o));
        self.holes += 1;
        self.free_units += units as usize;
    }

    /// Takes free block `o` out of the tree.
    fn take(&mut self, o: u32) -> u32 {
        let size = self.size(o);
        self.root = self.remove(self.root, o);
        self.holes -= 1;
        self.free_units -= size as usize;
        size
    }

    /// Makes free block `old` the block `[new, new + size)`, which overlaps
    /// no other free block: it keeps its node, moved.
    fn reshape(&mut self, old: u32, new: u32, size: u32) {
        let n = self.get(old);
        self.free_units = self.free_units + size as usize - n.size as usize;
        self.put(new, Node { size, ..n });
        if new + size != old + n.size || !self.relink(old, new) {
            self.root = self.update(self.root, old, new);
        }
    }

    /// [`update`](Self::update) for a node whose priority has not changed
    /// (its block ends where it did), without recursion: the link to it
    /// is redirected and the `max`es above it recomputed only as far up as
    /// they change. Returns `false` (nothing done) on a path longer than
    /// it keeps.
    fn relink(&mut self, old: u32, new: u32) -> bool {
        const KEPT: usize = 64;
        let mut path = [NIL; KEPT];
        let (mut depth, mut t) = (0, self.root);
        while t != old {
            if depth == KEPT {
                return false;
            }
            path[depth] = t;
            depth += 1;
            t = if new < t { self.left(t) } else { self.right(t) };
        }
        self.pull(new);
        match depth.checked_sub(1).map(|i| path[i]) {
            None => self.root = new,
            Some(p) if new < p => self.set_left(p, new),
            Some(p) => self.set_right(p, new),
        }
        for &p in path[..depth].iter().rev() {
            let before = self.get(p).max;
            self.pull(p);
            if self.get(p).max == before {
                break;
            }
        }
        true
    }

    /// Frees `[o, o + units)` (which no free block overlaps) between free
    /// blocks `pred` and `succ`, merging with those it touches.
    fn release(&mut self, o: u32, units: u32, pred: u32, succ: u32) {
        let joins_pred = pred != NIL && pred + self.size(pred) == o;
        let joins_succ = succ != NIL && o + units == succ;
        match (joins_pred, joins_succ) {
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
        let mut t = self.root;
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
    /// starts (in units past `o`), if it fits leaving no rest too small to
    /// be a free block, before or after.
    fn placement(&self, o: u32, need: u32, align: usize) -> Option<u32> {
        let size = self.size(o);
        let addr = self.at(o) as usize;
        let mut pad = (addr.checked_next_multiple_of(align)? - addr) >> UNIT_SHIFT;
        if pad > 0 && pad < MIN_UNITS as usize {
            pad += align >> UNIT_SHIFT;
        }
        let rest = (size as usize).checked_sub(pad)?.checked_sub(need as usize)?;
        (rest == 0 || rest >= MIN_UNITS as usize).then_some(pad as u32)
    }

    /// Finds the free block and the offset in it where a block of `need`
    /// units aligned to `align` goes: the leftmost free block that fits
    /// it, unless that one is spoilt by alignment or a too-small rest, then
    /// the leftmost that fits any placement.
    fn find(&self, need: u32, align: usize) -> Option<(u32, u32)> {
        let first = self.leftmost_at_least(need);
        if first == NIL {
            return None;
        }
        if let Some(pad) = self.placement(first, need, align) {
            return Some((first, pad));
        }
        let worst_pad = if align <= UNIT { 0 } else { u32::try_from((align >> UNIT_SHIFT) + 1).ok()? };
        let sure = need.checked_add(worst_pad)?.checked_add(MIN_UNITS)?;
        let second = self.leftmost_at_least(sure);
        if second == NIL {
            return None;
        }
        self.placement(second, need, align).map(|pad| (second, pad))
    }

    // ---- blocks ------------------------------------------------------

    /// Allocates a block for `layout`: first fit by address.
    pub fn allocate(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let need = units_for(layout.size())?;
        let (o, pad) = self.find(need, layout.align())?;
        Some(self.carve(o, pad, need))
    }

    /// Takes `need` units at `pad` units into free block `o`.
    fn carve(&mut self, o: u32, pad: u32, need: u32) -> NonNull<u8> {
        let size = self.size(o);
        let rest = size - pad - need;
        match (pad, rest) {
            (0, 0) => {
                self.take(o);
            }
            (0, _) => self.reshape(o, o + need, rest),
            _ => {
                self.reshape(o, o, pad);
                if rest > 0 {
                    self.add_free(o + pad + need, rest);
                }
            }
        }
        // SAFETY: a node's address is in the window, so not null.
        unsafe { NonNull::new_unchecked(self.at(o + pad).cast()) }
    }

    /// Allocates a block for `layout` at the start of the largest free
    /// block (the leftmost of the largest), for a block expected to keep
    /// growing in place; first fit if that one cannot take it.
    pub fn allocate_largest(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let need = units_for(layout.size())?;
        let mut t = self.root;
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
            Some(pad) => Some(self.carve(t, pad, need)),
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
        let (mut pred, mut succ, mut t) = (NIL, NIL, self.root);
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
        Ok(Located { at, units, pred, succ })
    }

    /// Frees a block that [`check_block`](Self::check_block) located.
    ///
    /// # Safety
    ///
    /// `block` must be a block in use allocated here (with the size it was
    /// checked with), not used after this call, and nothing changed in the
    /// tree since it was checked.
    pub unsafe fn free(&mut self, block: Located) {
        self.release(block.at, block.units, block.pred, block.succ);
    }

    /// Resizes a located block in place to `new_size` bytes (its alignment
    /// `align`): a growth takes from the free block after it; a shrink
    /// gives its tail back, unless first fit would place the smaller block
    /// lower, where it goes instead (blocks that shrink move toward the
    /// window's start, away from the free space above: on talc's
    /// random-realloc fill of 256 KiB that is 77 % against 71 %). Returns
    /// whether the block now has the units `new_size` takes; on `false`
    /// nothing changed (the free block after it is too small, or the
    /// block should move).
    ///
    /// # Safety
    ///
    /// As for [`free`](Self::free), except that the block stays in use.
    pub unsafe fn resize(&mut self, block: Located, new_size: usize, align: usize) -> bool {
        let Located { at, units, pred: _, succ } = block;
        let Some(new) = units_for(new_size) else { return false };
        let touching = succ != NIL && at + units == succ;
        if new <= units {
            let cut = units - new;
            if cut == 0 {
                return true;
            }
            if self.find(new, align).is_some_and(|(o, pad)| o + pad < at) || (cut < MIN_UNITS && !touching) {
                return false;
            }
            self.release(at + new, cut, NIL, succ);
            return true;
        }
        let wanted = new - units;
        let have = if touching { self.size(succ) } else { 0 };
        if have < wanted || (have - wanted > 0 && have - wanted < MIN_UNITS) {
            return false;
        }
        if have == wanted {
            self.take(succ);
        } else {
            self.reshape(succ, at + new, have - wanted);
        }
        true
    }

    /// Grows a located block (aligned to at most [`UNIT`]) to `new_size`
    /// bytes into the free block before it, and the one after it if it
    /// touches, moving its first `keep` bytes down. Returns the new
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
        let Located { at, units, pred, succ } = block;
        let new = units_for(new_size)?;
        if pred == NIL || pred + self.size(pred) != at {
            return None;
        }
        let after = if succ != NIL && at + units == succ { self.size(succ) } else { 0 };
        let total = self.size(pred) + units + after;
        let rest = total.checked_sub(new)?;
        if rest > 0 && rest < MIN_UNITS {
            return None;
        }
        self.take(pred);
        if after > 0 {
            self.take(succ);
        }
        // SAFETY: both ranges lie in the window (the block and the free
        // block before it); `keep` bytes of the block are live. The nodes
        // of the two free blocks taken are out of the tree, so nothing
        // else lives in the destination.
        unsafe { ptr::copy(self.at(at).cast::<u8>(), self.at(pred).cast::<u8>(), keep) };
        if rest > 0 {
            self.add_free(pred + new, rest);
        }
        NonNull::new(self.at(pred).cast())
    }

    /// Walks the whole tree, checking every invariant of the module
    /// documentation; panics on a broken one. O(holes): for tests.
    pub fn check(&self) -> TreeCounts {
        let mut counts = TreeCounts::default();
        let mut last_end = None;
        self.check_subtree(self.root, 1, u32::MAX, &mut last_end, &mut counts);
        assert_eq!(counts.holes, self.holes, "free block count");
        assert_eq!(counts.free_bytes, self.free_bytes(), "free bytes");
        counts
    }

    fn check_subtree(
        &self,
        t: u32,
        depth: usize,
        parent_prio: u32,
        last_end: &mut Option<u32>,
        counts: &mut TreeCounts,
    ) -> u32 {
        if t == NIL {
            return 0;
        }
        assert!(t < self.units, "node {t} outside the window");
        let n = self.get(t);
        assert!(self.prio(t) <= parent_prio, "node {t}: heap order of priorities");
        let left_max = self.check_subtree(n.left, depth + 1, self.prio(t), last_end, counts);
        assert!(n.size >= MIN_UNITS, "node {t}: free block of {} units", n.size);
        assert!(n.size <= self.units - t, "node {t}: runs past the window");
        if let Some(end) = *last_end {
            assert!(end < t, "free blocks touch or overlap at unit {t}");
        }
        *last_end = Some(t + n.size);
        counts.holes += 1;
        counts.free_bytes += (n.size as usize) << UNIT_SHIFT;
        counts.depth = counts.depth.max(depth);
        let right_max = self.check_subtree(n.right, depth + 1, self.prio(t), last_end, counts);
        let max = n.size.max(left_max).max(right_max);
        assert_eq!(n.max, max, "node {t}: max of its subtree");
        max
    }
}

impl Default for FitTree {
    fn default() -> Self {
        Self::new()
    }
}

/// A 32-bit mixer (Chris Wellons' lowbias32): treap priorities.
#[inline(always)]
const fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}
