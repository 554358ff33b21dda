//! Walks over every arena and pool: the statistics
//! (`sys._debugmallocstats()`) and the invariant check.

use core::ptr;
use core::sync::atomic::Ordering::Relaxed;

use super::{
    ARENA_HEADER, Arena, CLASS_TABLE, MAX_POOLS_PER_ARENA, NUM_CLASSES, ON, ObjectAllocator, POOL_HEADER,
    Pool, UNUSED_CLASS, class_size,
};

/// Arena counters, as `sys._debugmallocstats()` reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaCounters {
    /// Arenas ever taken from the page source.
    pub allocated_total: usize,
    /// Arenas given back to the page source.
    pub reclaimed: usize,
    /// Most arenas held at once.
    pub high_water: usize,
    /// Arenas held now.
    pub current: usize,
    /// Blocks served from a larger size class because their own class had
    /// no free block and no arena could be had
    /// (`ObjectAllocator::borrow`).
    pub borrowed: usize,
}

/// Where every byte of the arenas goes, as `sys._debugmallocstats()` shows
/// it. The identity `allocated + available + unused_pools + pool_headers +
/// arena_headers + quantization == arena_bytes` always holds (checked by
/// `ObjectAllocator::check_invariants`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaUsage {
    /// Bytes in blocks handed out (block sizes, not requested sizes).
    pub allocated: usize,
    /// Bytes in free blocks of pools in use, carved or not.
    pub available: usize,
    /// Bytes in pools holding no block (free or never carved).
    pub unused_pools: usize,
    /// Bytes in the headers of pools in use.
    pub pool_headers: usize,
    /// Bytes in arena headers (CPython counts its arena alignment loss here).
    pub arena_headers: usize,
    /// Bytes at the end of pools in use too small for another block.
    pub quantization: usize,
    /// Arenas × arena size.
    pub arena_bytes: usize,
}

impl ArenaUsage {
    /// Whether the accounting identity holds.
    pub fn balances(&self) -> bool {
        self.allocated
            + self.available
            + self.unused_pools
            + self.pool_headers
            + self.arena_headers
            + self.quantization
            == self.arena_bytes
    }
}

/// Per-size-class counts from a walk of every arena.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Pools currently assigned to the class (with at least one block in use).
    pub pools: usize,
    /// Block size of the class.
    pub block_size: usize,
    /// Blocks in use.
    pub blocks_in_use: usize,
    /// Free blocks in those pools, carved or not.
    pub blocks_free: usize,
}

impl ObjectAllocator {
    /// Base addresses of the live arenas, from the ownership bitmap (for the
    /// statistics and the invariant walk, which read arena and pool headers
    /// through the provenance `new_arena` exposed: the bitmap keeps bits,
    /// not pointers).
    fn arenas(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.window_slots)
            .filter(|&s| self.arena_map[s / 64] & (1 << (s % 64)) != 0)
            .map(|s| self.window_start + (s << self.geometry.arena_shift))
    }

    /// Walks every carved pool of every arena.
    fn for_each_pool(&self, mut f: impl FnMut(usize, &Pool, &Arena)) {
        for base in self.arenas() {
            // SAFETY: live arenas have initialised headers, and pools below
            // `pool_address` have initialised headers.
            unsafe {
                let a = &*ptr::with_exposed_provenance::<Arena>(base + POOL_HEADER);
                let mut pool = base;
                while pool < a.pool_address.addr() {
                    f(pool, &*ptr::with_exposed_provenance::<Pool>(pool), a);
                    pool += self.geometry.pool_size();
                }
            }
        }
    }

    /// Where the arenas' bytes go (a walk of every arena, O(pools)).
    pub fn usage(&self) -> ArenaUsage {
        let pool_size = self.geometry.pool_size();
        let mut u = ArenaUsage::default();
        for base in self.arenas() {
            u.arena_bytes += self.geometry.arena_size();
            u.arena_headers += ARENA_HEADER;
            // Uncarved pools (pool 0's share net of the arena header).
            // SAFETY: live arenas have initialised headers.
            let a = unsafe { &*ptr::with_exposed_provenance::<Arena>(base + POOL_HEADER) };
            let uncarved = (base + self.geometry.arena_size() - a.pool_address.addr()) / pool_size;
            u.unused_pools += uncarved * pool_size;
            if a.pool_address.addr() == base {
                u.unused_pools -= ARENA_HEADER;
            }
        }
        self.for_each_pool(|addr, p, _| {
            let first = self.first_offset(addr);
            let arena_header = first - POOL_HEADER;
            if p.ref_count == 0 {
                u.unused_pools += pool_size - arena_header;
                return;
            }
            let bs = p.block_size as usize;
            let capacity = (self.pool_end(addr) - first) / bs;
            u.pool_headers += POOL_HEADER;
            u.allocated += p.ref_count as usize * bs;
            u.available += (capacity - p.ref_count as usize) * bs;
            u.quantization += pool_size - first - capacity * bs;
        });
        u
    }

    /// Pools, blocks in use and free blocks of one size class (a walk of
    /// every arena, O(pools)).
    pub fn class_stat(&self, class: usize) -> ClassStats {
        let mut s = ClassStats::default();
        self.for_each_pool(|addr, p, _| {
            if p.ref_count == 0 || p.class.load(Relaxed) as usize != class {
                return;
            }
            let capacity = (self.pool_end(addr) - self.first_offset(addr)) / p.block_size as usize;
            s.block_size = p.block_size as usize;
            s.pools += 1;
            s.blocks_in_use += p.ref_count as usize;
            s.blocks_free += capacity - p.ref_count as usize;
        });
        s
    }

    /// Pools, blocks in use and free blocks per size class (a walk of every
    /// arena, O(pools)).
    pub fn class_stats(&self) -> [ClassStats; NUM_CLASSES] {
        let mut out = [ClassStats::default(); NUM_CLASSES];
        self.for_each_pool(|addr, p, _| {
            if p.ref_count == 0 {
                return;
            }
            let class = p.class.load(Relaxed) as usize;
            let capacity = (self.pool_end(addr) - self.first_offset(addr)) / p.block_size as usize;
            let s = &mut out[class];
            s.block_size = p.block_size as usize;
            s.pools += 1;
            s.blocks_in_use += p.ref_count as usize;
            s.blocks_free += capacity - p.ref_count as usize;
        });
        out
    }

    /// Checks every list, count and free list, panicking on a broken
    /// invariant. O(blocks): for tests and debug builds.
    pub fn check_invariants(&self) {
        if !ON {
            return;
        }
        let pool_size = self.geometry.pool_size();
        // `used` lists: live pools of the right class, with a free block.
        let mut in_used = 0;
        for (class, &head) in self.used.iter().enumerate() {
            let mut prev: *mut Pool = ptr::null_mut();
            let mut pool = head;
            while !pool.is_null() {
                assert!(self.owns(pool as *const u8), "used pool outside every arena");
                // SAFETY: checked to lie in a live arena.
                let p = unsafe { &*pool };
                assert_eq!(p.class.load(Relaxed) as usize, class, "pool on the wrong used list");
                assert!(p.ref_count > 0, "empty pool on a used list");
                assert!(!p.freeblock.is_null(), "full pool on a used list");
                assert_eq!(p.prev, prev, "used list back link");
                in_used += 1;
                prev = pool;
                pool = p.next;
            }
        }
        // Every carved pool: its free list is consistent with its counts.
        let mut partial = 0;
        let mut arenas = 0;
        let mut class_pools = [0u32; NUM_CLASSES];

        self.for_each_pool(|addr, p, _| {
            if p.class.load(Relaxed) == UNUSED_CLASS {
                return;
            }
            let size = p.block_size as usize;
            assert_eq!(
                size,
                class_size(p.class.load(Relaxed) as usize, self.geometry.class_shift),
                "pool block size"
            );
            let first = self.first_offset(addr);
            let carved = (p.next_offset as usize - first) / size;
            let mut free = 0;
            let mut block = p.freeblock;
            while !block.is_null() {
                let off = block as usize - addr;
                assert!(off >= first && off < p.next_offset as usize, "free block outside its pool");
                assert_eq!((off - first) % size, 0, "free block misaligned in its pool");
                free += 1;
                assert!(free <= carved, "free list longer than the carved blocks (a cycle?)");
                // SAFETY: free blocks hold the link in their first word.
                block = unsafe { *block.cast::<*mut u8>() };
            }
            assert_eq!(free + p.ref_count as usize, carved, "free list and ref count disagree");
            let capacity = (self.pool_end(addr) - first) / size;
            assert!(p.ref_count as usize <= capacity, "more blocks in use than fit");
            // A pool in use with a free block must be on its `used` list.
            if p.ref_count > 0 && !p.freeblock.is_null() {
                partial += 1;
            }
            if p.ref_count > 0 {
                class_pools[p.class.load(Relaxed) as usize] += 1;
            }
        });
        // Kept pools: empty, of their class's block size (with no class in
        // their header), counted with their class's pools and in their
        // arena's `nkept`.
        for (class, &pool) in self.kept.iter().enumerate() {
            if pool.is_null() {
                continue;
            }
            assert!(self.owns(pool as *const u8), "kept pool outside every arena");
            // SAFETY: checked to lie in a live arena.
            let p = unsafe { &*pool };
            assert_eq!(p.class.load(Relaxed), UNUSED_CLASS, "kept pool with a class in its header");
            assert_eq!(
                p.block_size as usize,
                class_size(class, self.geometry.class_shift),
                "kept pool's blocks"
            );
            assert_eq!(p.ref_count, 0, "kept pool with a block in use");
            assert!(!p.freeblock.is_null(), "kept pool with no free block");
            class_pools[class] += 1;
        }
        assert_eq!(class_pools[..CLASS_TABLE], self.class_pools, "pools in use or kept, per class");
        assert_eq!(in_used, partial, "pools on used lists vs pools in use with a free block");
        // `usable_arenas`: sorted by free pools, `nfp2lasta` marks each run's end.
        let mut prev: *mut Arena = ptr::null_mut();
        let mut ao = self.usable_arenas;
        let mut last_nf = 0;
        let mut runs: u128 = 0;
        while !ao.is_null() {
            // SAFETY: arenas on the list are live.
            let a = unsafe { &*ao };
            let nf = a.nfreepools as usize;
            assert!(nf > 0, "full arena on usable_arenas");
            assert!(nf >= last_nf, "usable_arenas out of order");
            assert_eq!(a.prev, prev, "usable_arenas back link");
            let next_nf = if a.next.is_null() {
                usize::MAX
            } else {
                // SAFETY: as above.
                unsafe { (*a.next).nfreepools as usize }
            };
            if next_nf != nf {
                assert_eq!(self.nfp2lasta[nf], ao, "nfp2lasta[{nf}] is not the run's last arena");
            }
            runs |= 1 << nf;
            last_nf = nf;
            prev = ao;
            ao = a.next;
            arenas += 1;
        }
        for n in 0..=MAX_POOLS_PER_ARENA {
            if runs & (1 << n) == 0 {
                assert!(self.nfp2lasta[n].is_null(), "nfp2lasta[{n}] set with no such arena");
            }
        }
        let _ = arenas;
        // Free-pool counts and the ownership bitmap.
        let mut live = 0;
        for base in self.arenas() {
            live += 1;
            // SAFETY: live arena.
            let a = unsafe { &*ptr::with_exposed_provenance::<Arena>(base + POOL_HEADER) };
            let uncarved = (base + self.geometry.arena_size() - a.pool_address.addr()) / pool_size;
            let mut free = 0;
            let mut pool = a.freepools;
            while !pool.is_null() {
                // SAFETY: pools on an arena's free list are carved pools of it.
                let p = unsafe { &*pool };
                assert_eq!(p.ref_count, 0, "non-empty pool on a free-pool list");
                assert_eq!(pool.addr() & self.arena_mask, base, "free pool of another arena");
                free += 1;
                pool = p.next;
            }
            assert_eq!(free + uncarved, a.nfreepools as usize, "arena free-pool count");
            let kept =
                self.kept.iter().filter(|&&k| !k.is_null() && k.addr() & self.arena_mask == base).count();
            assert_eq!(kept, a.nkept as usize, "arena kept-pool count");
            let pools = a.ntotalpools as usize;
            assert!(kept == 0 || kept + free + uncarved < pools, "an arena of kept pools only");
        }
        assert_eq!(live, self.counters.current, "arena count and bitmap disagree");
        let usage = self.usage();
        assert!(usage.balances(), "arena accounting identity broken: {usage:?}");
        assert_eq!(usage.arena_bytes, live * self.geometry.arena_size());
    }
}
