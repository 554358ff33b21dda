//! The invariant walk of the first-fit engine, for tests.

use super::{FitTree, MIN_UNITS, NIL, OFFSET_BITS, TreeCounts, UNIT, UNIT_SHIFT};

impl FitTree {
    /// Walks both trees, checking every invariant of the module
    /// documentation; panics on a broken one. O(holes · log holes): for
    /// tests.
    pub fn check(&self) -> TreeCounts {
        let mut counts = TreeCounts::default();
        let mut last_end = None;
        self.check_blocks(self.root(), 1, &mut last_end, &mut counts);
        let mut last = None;
        self.check_slivers(self.sliver_root(), &mut last, &mut counts);
        assert_eq!(counts.holes, self.holes(), "free block count");
        assert_eq!(counts.slivers, self.sliver_count, "sliver count");
        assert_eq!(counts.free_bytes, self.free_bytes(), "free bytes");
        counts
    }

    /// Checks subtree `t` of the free blocks; returns its height and max.
    fn check_blocks(
        &self,
        t: u32,
        depth: usize,
        last_end: &mut Option<u32>,
        counts: &mut TreeCounts,
    ) -> (u32, u32) {
        if t == NIL {
            return (0, 0);
        }
        assert!(t < self.units, "node {t} outside the window");
        let n = self.get(t);
        let (hl, ml) = self.check_blocks(n.left, depth + 1, last_end, counts);
        assert!(n.size >= MIN_UNITS, "node {t}: free block of {} units", n.size);
        assert!(n.size <= self.units - t, "node {t}: runs past the window");
        if let Some(end) = *last_end {
            assert!(end < t, "free blocks touch or overlap at unit {t}");
        }
        *last_end = Some(t + n.size);
        counts.holes += 1;
        counts.free_bytes += (n.size as usize) << UNIT_SHIFT;
        counts.depth = counts.depth.max(depth);
        let (hr, mr) = self.check_blocks(n.right, depth + 1, last_end, counts);
        assert!(hl.abs_diff(hr) <= 1, "node {t}: out of balance ({hl} against {hr})");
        let (h, max) = (1 + hl.max(hr), n.size.max(ml).max(mr));
        assert_eq!(n.meta, (h << OFFSET_BITS) | max, "node {t}: height and max of its subtree");
        (h, max)
    }

    /// Checks subtree `t` of the slivers; returns its height.
    fn check_slivers(&self, t: u32, last: &mut Option<u32>, counts: &mut TreeCounts) -> u32 {
        if t == NIL {
            return 0;
        }
        assert!(t < self.units, "sliver {t} outside the window");
        let n = self.sliver(t);
        let hl = self.check_slivers(n.left & NIL, last, counts);
        if let Some(prev) = *last {
            assert!(prev + 1 < t, "slivers touch or overlap at unit {t}");
        }
        *last = Some(t);
        // No free block touches or holds it.
        let (mut pred, mut succ, mut b) = (NIL, NIL, self.root());
        while b != NIL {
            if b <= t {
                pred = b;
                b = self.get(b).right;
            } else {
                succ = b;
                b = self.get(b).left;
            }
        }
        assert!(pred == NIL || pred + self.size(pred) < t, "sliver {t} touches the free block before it");
        assert!(succ == NIL || t + 1 < succ, "sliver {t} touches the free block after it");
        counts.holes += 1;
        counts.slivers += 1;
        counts.free_bytes += UNIT;
        let hr = self.check_slivers(n.right, last, counts);
        assert!(hl.abs_diff(hr) <= 1, "sliver {t}: out of balance ({hl} against {hr})");
        let h = 1 + hl.max(hr);
        assert_eq!(n.left >> OFFSET_BITS, h, "sliver {t}: height of its subtree");
        h
    }
}
