//! The two AVL trees of the first-fit engine: the free blocks' and the
//! slivers'. One set of operations serves both: `S` is true for the
//! slivers'. Every operation walks one path iteratively, keeping at most
//! [`PATH`] ancestors, which no AVL tree of fewer than 2^26 nodes exceeds.
//!
//! A node's height sits in the bits above [`OFFSET_BITS`]: of its last word
//! (with its subtree's largest size below) for a free block, of its left
//! link for a sliver.

use super::{FitTree, NIL, Node, OFFSET_BITS, PATH, Sliver};

impl FitTree {
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn root_of<const S: bool>(&self) -> u32 {
        if S { self.sliver_root() } else { self.root() }
    }

    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn set_root<const S: bool>(&mut self, t: u32) {
        if S { self.slivers = t ^ NIL } else { self.root = t ^ NIL }
    }

    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub(super) fn left<const S: bool>(&self, t: u32) -> u32 {
        if S { self.sliver(t).left & NIL } else { self.get(t).left }
    }

    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub(super) fn right<const S: bool>(&self, t: u32) -> u32 {
        if S { self.sliver(t).right } else { self.get(t).right }
    }

    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn height<const S: bool>(&self, t: u32) -> u32 {
        match t {
            NIL => 0,
            _ if S => self.sliver(t).left >> OFFSET_BITS,
            _ => self.get(t).meta >> OFFSET_BITS,
        }
    }

    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub(super) fn set_left<const S: bool>(&mut self, t: u32, l: u32) {
        if S {
            let n = self.sliver(t);
            self.put_sliver(t, Sliver { left: (n.left & !NIL) | l, ..n });
        } else {
            let n = self.get(t);
            self.put(t, Node { left: l, ..n });
        }
    }

    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub(super) fn set_right<const S: bool>(&mut self, t: u32, r: u32) {
        if S {
            let n = self.sliver(t);
            self.put_sliver(t, Sliver { right: r, ..n });
        } else {
            let n = self.get(t);
            self.put(t, Node { right: r, ..n });
        }
    }

    /// Recomputes node `t`'s height (and, for a free block, its `max`)
    /// from its children.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub(super) fn pull<const S: bool>(&mut self, t: u32) {
        if S {
            let n = self.sliver(t);
            let h = 1 + self.height::<S>(n.left & NIL).max(self.height::<S>(n.right));
            self.put_sliver(t, Sliver { left: (h << OFFSET_BITS) | (n.left & NIL), ..n });
        } else {
            let n = self.get(t);
            let h = 1 + self.height::<S>(n.left).max(self.height::<S>(n.right));
            let max = n.size.max(self.max_of(n.left)).max(self.max_of(n.right));
            self.put(t, Node { meta: (h << OFFSET_BITS) | max, ..n });
        }
    }

    /// Rotates `t`'s left child up; returns it.
    fn rotate_right<const S: bool>(&mut self, t: u32) -> u32 {
        let x = self.left::<S>(t);
        self.set_left::<S>(t, self.right::<S>(x));
        self.pull::<S>(t);
        self.set_right::<S>(x, t);
        self.pull::<S>(x);
        x
    }

    /// Rotates `t`'s right child up; returns it.
    fn rotate_left<const S: bool>(&mut self, t: u32) -> u32 {
        let x = self.right::<S>(t);
        self.set_right::<S>(t, self.left::<S>(x));
        self.pull::<S>(t);
        self.set_left::<S>(x, t);
        self.pull::<S>(x);
        x
    }

    /// Restores the AVL balance at `t`, whose subtrees are balanced and
    /// differ in height by at most 2; returns the subtree's new root.
    fn rebalance<const S: bool>(&mut self, t: u32) -> u32 {
        let (l, r) = (self.left::<S>(t), self.right::<S>(t));
        let (hl, hr) = (self.height::<S>(l), self.height::<S>(r));
        if hl > hr + 1 {
            if self.height::<S>(self.left::<S>(l)) < self.height::<S>(self.right::<S>(l)) {
                let nl = self.rotate_left::<S>(l);
                self.set_left::<S>(t, nl);
            }
            return self.rotate_right::<S>(t);
        }
        if hr > hl + 1 {
            if self.height::<S>(self.right::<S>(r)) < self.height::<S>(self.left::<S>(r)) {
                let nr = self.rotate_right::<S>(r);
                self.set_right::<S>(t, nr);
            }
            return self.rotate_left::<S>(t);
        }
        self.pull::<S>(t);
        t
    }

    /// Hangs subtree `sub` below `path[depth - 1]` on the side of `key`
    /// (or makes it the root), then rebalances the ancestors on the path,
    /// bottom up, until one is left as it was (same root, height and max),
    /// above which nothing changes — except that `path[keep]`'s parent is
    /// always relinked (a node that took another's place).
    fn retrace<const S: bool>(
        &mut self,
        path: &[u32; PATH],
        mut depth: usize,
        mut sub: u32,
        key: u32,
        keep: usize,
    ) {
        while depth > 0 {
            depth -= 1;
            let p = path[depth];
            let before = self.meta::<S>(p);
            if key < p {
                self.set_left::<S>(p, sub);
            } else {
                self.set_right::<S>(p, sub);
            }
            sub = self.rebalance::<S>(p);
            if sub == p && depth < keep && self.meta::<S>(p) == before {
                return;
            }
        }
        self.set_root::<S>(sub);
    }

    /// What [`pull`](Self::pull) computes of node `t`: its height, and for
    /// a free block its `max`.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    fn meta<const S: bool>(&self, t: u32) -> u32 {
        if S { self.sliver(t).left >> OFFSET_BITS } else { self.get(t).meta }
    }

    /// Inserts node `x`, already written with no children and height 1.
    pub(super) fn avl_insert<const S: bool>(&mut self, x: u32) {
        let mut path = [NIL; PATH];
        let (mut depth, mut t) = (0, self.root_of::<S>());
        while t != NIL {
            path[depth] = t;
            depth += 1;
            t = if x < t { self.left::<S>(t) } else { self.right::<S>(t) };
        }
        self.retrace::<S>(&path, depth, x, x, PATH);
    }

    /// Removes node `k`, which is in the tree.
    pub(super) fn avl_remove<const S: bool>(&mut self, k: u32) {
        let mut path = [NIL; PATH];
        let (mut depth, mut t) = (0, self.root_of::<S>());
        while t != k {
            debug_assert!(t != NIL, "node {k} not in the tree");
            path[depth] = t;
            depth += 1;
            t = if k < t { self.left::<S>(t) } else { self.right::<S>(t) };
        }
        let (l, r) = (self.left::<S>(k), self.right::<S>(k));
        if l == NIL || r == NIL {
            self.retrace::<S>(&path, depth, if l == NIL { r } else { l }, k, PATH);
            return;
        }
        // Two children: `k`'s successor `s` (the leftmost node on its right)
        // takes its place, and `s`'s right subtree takes `s`'s.
        let place = depth;
        depth += 1;
        let mut s = r;
        while self.left::<S>(s) != NIL {
            path[depth] = s;
            depth += 1;
            s = self.left::<S>(s);
        }
        path[place] = s;
        let below = self.right::<S>(s);
        if s != r {
            self.set_right::<S>(s, r);
        }
        self.set_left::<S>(s, l);
        self.retrace::<S>(&path, depth, below, s, place);
    }
}
