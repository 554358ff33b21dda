//! Side-by-side allocator benchmarks: the peers behind one `GlobalAlloc`
//! interface (a locked `dyn` call, as talc's own benchmarks do), each over a
//! fresh region of the same size, replaying identical seeded workloads. Every
//! returned pointer is checked for alignment and, for region allocators,
//! for lying inside the region.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr::NonNull;

/// A page-aligned region of ordinary memory, lazily committed by the OS.
pub struct Region {
    base: *mut u8,
    ptr: *mut u8,
    size: usize,
}

impl Region {
    /// A new region of `size` bytes, starting [`REGION_OFFSET`] bytes (or
    /// `STRATA_REGION_OFFSET`, in hex) past a 4 MiB boundary: the same place
    /// for every peer and every run (where the system allocator happens to
    /// map it would otherwise decide how layer +2's 1 MiB arenas line up
    /// with it).
    pub fn new(size: usize) -> Self {
        let offset = std::env::var("STRATA_REGION_OFFSET")
            .ok()
            .and_then(|o| usize::from_str_radix(o.trim_start_matches("0x"), 16).ok());
        Self::at_offset(size, offset.unwrap_or(REGION_OFFSET))
    }
    /// A new region of `size` bytes starting `offset` bytes (a multiple of
    /// 4096, under 4 MiB) past a 4 MiB boundary.
    pub fn at_offset(size: usize, offset: usize) -> Self {
        assert!(offset < REGION_ALIGN && offset.is_multiple_of(4096));
        let layout = Layout::from_size_align(size + REGION_ALIGN, REGION_ALIGN).unwrap();
        // SAFETY: non-zero size.
        let base = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!base.is_null());
        // SAFETY: `offset + size` bytes lie in the allocation.
        let ptr = unsafe { base.add(offset) };
        Self { base, ptr, size }
    }
    /// Start of the region.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }
    /// Size of the region.
    pub fn size(&self) -> usize {
        self.size
    }
}

/// Alignment of the allocation a [`Region`] lies in.
const REGION_ALIGN: usize = 4 << 20;
/// Where a [`Region`] starts past a [`REGION_ALIGN`] boundary: an odd
/// number of pages, as a region handed over by a linker script or an OS
/// rarely lines up with anything larger.
pub const REGION_OFFSET: usize = 0x5_3000;

impl Drop for Region {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.size + REGION_ALIGN, REGION_ALIGN).unwrap();
        // SAFETY: allocated in `at_offset` with this layout.
        unsafe { std::alloc::dealloc(self.base, layout) }
    }
}

/// rlsf's TLSF behind a spin lock, as a `GlobalAlloc`.
pub struct LockedTlsf(spin::Mutex<rlsf::Tlsf<'static, u32, u32, 24, 32>>);

// SAFETY: forwards to TLSF under a lock; TLSF honours layouts.
unsafe impl GlobalAlloc for LockedTlsf {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.0.lock().allocate(layout).map_or(std::ptr::null_mut(), NonNull::as_ptr)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this TLSF with `layout`.
        unsafe { self.0.lock().deallocate(NonNull::new_unchecked(ptr), layout.align()) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = Layout::from_size_align(new_size, layout.align()).unwrap();
        // SAFETY: `ptr` came from this TLSF with `layout`.
        unsafe { self.0.lock().reallocate(NonNull::new_unchecked(ptr), new) }
            .map_or(std::ptr::null_mut(), NonNull::as_ptr)
    }
}

/// An allocator under test.
pub struct Peer {
    /// Its name in the tables.
    pub name: &'static str,
    /// The allocator.
    pub alloc: Box<dyn GlobalAlloc + Sync>,
    /// The region it allocates from (`None` for the system allocator).
    pub region: Option<(usize, usize)>,
}

/// The peers, in table order.
pub const PEERS: [&str; 7] =
    ["strata", "strata-layer0", "talc", "rlsf", "buddy_system_allocator", "linked_list_allocator", "system"];

/// strata's layer 0 alone (TLSF over the region, or first fit on small
/// regions), behind the same kind of lock: the stack without its object
/// allocator and front door.
pub struct LockedLayer0(spin::Mutex<(strata::segment::SegmentAllocator, strata::RegionSource)>);

// SAFETY: forwards to layer 0, which honours layouts, under a lock.
unsafe impl GlobalAlloc for LockedLayer0 {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut g = self.0.lock();
        let (seg, src) = &mut *g;
        // SAFETY: the layer and its one page source live together.
        unsafe { seg.allocate(layout, src) }.map_or(std::ptr::null_mut(), NonNull::as_ptr)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let mut g = self.0.lock();
        let (seg, src) = &mut *g;
        // SAFETY: `ptr` came from this layer with `layout`, and `src` is
        // its one page source.
        let _ = unsafe { seg.deallocate(NonNull::new_unchecked(ptr), layout, src) };
    }
}

/// The floor of any locked design: a bump allocator behind the same lock
/// and `dyn` call, whose `dealloc` does nothing. Instructions per operation
/// minus the floor's is what an allocator itself costs.
pub struct LockedBump(spin::Mutex<(usize, usize)>);

// SAFETY: hands out disjoint, aligned ranges of the region and never reuses them.
unsafe impl GlobalAlloc for LockedBump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut g = self.0.lock();
        let start = g.0.next_multiple_of(layout.align());
        match start.checked_add(layout.size()) {
            Some(end) if end <= g.1 => {
                g.0 = end;
                start as *mut u8
            }
            _ => std::ptr::null_mut(),
        }
    }
    unsafe fn dealloc(&self, _: *mut u8, _: Layout) {}
}

/// Builds the peer `name` over `region`.
pub fn make_peer(name: &'static str, region: &Region) -> Peer {
    let (ptr, size) = (region.ptr(), region.size());
    let alloc: Box<dyn GlobalAlloc + Sync> = match name {
        "strata" => {
            let heap = Box::new(strata::LockedHeap::empty());
            // SAFETY: the region outlives the peer and serves only it.
            unsafe { heap.init(ptr, size) };
            if std::env::var_os("NOCACHE").is_some() {
                heap.set_thread_caches(false);
            }
            heap
        }
        "talc" => {
            let talc = Box::new(talc::TalcLock::<spinning_top::RawSpinlock, talc::source::Manual>::new(
                talc::source::Manual,
            ));
            // SAFETY: as above.
            unsafe { talc.lock().claim(ptr, size) }.expect("talc claims the region");
            talc
        }
        "rlsf" => {
            let mut tlsf = rlsf::Tlsf::new();
            // SAFETY: as above.
            let block = unsafe { NonNull::new_unchecked(std::ptr::slice_from_raw_parts_mut(ptr, size)) };
            // SAFETY: as above.
            unsafe { tlsf.insert_free_block_ptr(block) }.expect("rlsf takes the region");
            Box::new(LockedTlsf(spin::Mutex::new(tlsf)))
        }
        "buddy_system_allocator" => {
            let heap = Box::new(buddy_system_allocator::LockedHeap::<33>::new());
            // SAFETY: as above.
            unsafe { heap.lock().init(ptr as usize, size) };
            heap
        }
        "linked_list_allocator" => {
            // SAFETY: as above.
            Box::new(unsafe { linked_list_allocator::LockedHeap::new(ptr, size) })
        }
        "system" => Box::new(System),
        "bump" => Box::new(LockedBump(spin::Mutex::new((ptr as usize, ptr as usize + size)))),
        "strata-layer0" => {
            // SAFETY: the region outlives the peer and serves only it.
            let src = unsafe { strata::RegionSource::new(ptr, size) };
            let window = strata::PageSource::window(&src);
            let config = strata::segment::Config::for_window(window.1);
            let layer0 = strata::segment::SegmentAllocator::new(config, window).unwrap();
            Box::new(LockedLayer0(spin::Mutex::new((layer0, src))))
        }
        other => panic!("unknown peer {other}"),
    };
    let region = (name != "system").then_some((ptr as usize, size));
    Peer { name, alloc, region }
}

impl Peer {
    /// Checks a returned block: aligned, and inside the region.
    #[inline]
    fn check(&self, p: *mut u8, layout: Layout) {
        assert_eq!(p as usize % layout.align(), 0, "{}: {layout:?} misaligned at {p:p}", self.name);
        if let Some((start, size)) = self.region {
            let a = p as usize;
            assert!(
                a >= start && a + layout.size() <= start + size,
                "{}: block outside the region",
                self.name
            );
        }
    }
    /// Allocates, checking the result; null on failure.
    #[inline]
    pub fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: workloads pass non-zero sizes.
        let p = unsafe { self.alloc.alloc(layout) };
        if !p.is_null() {
            self.check(p, layout);
        }
        p
    }
    /// Frees.
    ///
    /// # Safety
    ///
    /// `p` came from [`alloc`](Self::alloc) or [`realloc`](Self::realloc) with `layout`.
    #[inline]
    pub unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: forwarded.
        unsafe { self.alloc.dealloc(p, layout) }
    }
    /// Reallocates, checking the result; null on failure (the block stays).
    ///
    /// # Safety
    ///
    /// As for `dealloc`.
    #[inline]
    pub unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded.
        let q = unsafe { self.alloc.realloc(p, layout, new_size) };
        if !q.is_null() {
            self.check(q, Layout::from_size_align(new_size, layout.align()).unwrap());
        }
        q
    }
}

/// xorshift64*: the same seeded stream for every peer.
pub struct Rng(pub u64);

impl Rng {
    /// Next value.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `[lo, hi)`.
    #[inline]
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo) as u64) as usize
    }
}

/// A live block of a workload.
#[derive(Clone, Copy)]
pub struct Block {
    /// Pointer.
    pub ptr: *mut u8,
    /// Layout it was allocated with.
    pub layout: Layout,
}

/// What a workload did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    /// Allocator calls made.
    pub ops: usize,
    /// Calls that returned null.
    pub failures: usize,
    /// Live bytes at the end (for fill workloads: at the first failure).
    pub live_bytes: usize,
}

fn free_all(peer: &Peer, live: &mut Vec<Block>) {
    for b in live.drain(..) {
        // SAFETY: live blocks of this peer.
        unsafe { peer.dealloc(b.ptr, b.layout) };
    }
}

/// talc's random-actions workload: sizes uniform[4, uniform[16, max)),
/// alignment 8 << (trailing_zeros(u16) / 2); allocate on 3 of 7 actions or
/// while fewer than 300 blocks live, else free a random block; with
/// `realloc`, 1 in 7 actions reallocs to uniform[1, 3·max).
pub fn random_actions(peer: &Peer, seed: u64, ops: usize, max: usize, realloc: bool) -> Outcome {
    let mut rng = Rng(seed);
    let mut live: Vec<Block> = Vec::with_capacity(4096);
    let mut out = Outcome::default();
    while out.ops < ops {
        let action = rng.next_u64() % 7;
        if action < 3 || live.len() < 300 {
            let hi = rng.range(16, max);
            let size = rng.range(4, hi);
            let align = 8 << ((rng.next_u64() as u16).trailing_zeros() / 2);
            let layout = Layout::from_size_align(size, align).unwrap();
            let p = peer.alloc(layout);
            if p.is_null() {
                out.failures += 1;
            } else {
                live.push(Block { ptr: p, layout });
            }
        } else if realloc && action == 6 {
            let i = rng.range(0, live.len());
            let b = live[i];
            let new_size = rng.range(1, 3 * max);
            // SAFETY: a live block with its layout.
            let q = unsafe { peer.realloc(b.ptr, b.layout, new_size) };
            if q.is_null() {
                out.failures += 1;
            } else {
                live[i] =
                    Block { ptr: q, layout: Layout::from_size_align(new_size, b.layout.align()).unwrap() };
            }
        } else {
            let i = rng.range(0, live.len());
            let b = live.swap_remove(i);
            // SAFETY: a live block with its layout.
            unsafe { peer.dealloc(b.ptr, b.layout) };
        }
        out.ops += 1;
    }
    out.live_bytes = live.iter().map(|b| b.layout.size()).sum();
    free_all(peer, &mut live);
    out
}

/// A CPython-like request size: most objects 16–512 bytes (small ints and
/// floats, tuples, short strings, dicts), a tail of larger buffers.
#[inline]
pub fn cpython_size(rng: &mut Rng) -> usize {
    match rng.next_u64() % 100 {
        0..=39 => rng.range(16, 65),
        40..=74 => rng.range(65, 257),
        75..=94 => rng.range(257, 513),
        _ => rng.range(513, 4097),
    }
}

/// CPython-like object churn: CPython-like sizes, alignment 8 or 16; four in
/// five objects are short-lived (freed within a window of 64), the rest join
/// a long-lived set of up to 20 000 objects that is replaced at random.
pub fn cpython_churn(peer: &Peer, seed: u64, ops: usize) -> Outcome {
    let mut rng = Rng(seed);
    let mut short: Vec<Block> = Vec::with_capacity(64);
    let mut long: Vec<Block> = Vec::with_capacity(20_000);
    let mut out = Outcome::default();
    while out.ops < ops {
        let layout =
            Layout::from_size_align(cpython_size(&mut rng), if rng.next_u64() & 1 == 0 { 8 } else { 16 })
                .unwrap();
        let p = peer.alloc(layout);
        out.ops += 1;
        if p.is_null() {
            out.failures += 1;
            continue;
        }
        let b = Block { ptr: p, layout };
        if rng.next_u64().is_multiple_of(5) {
            if long.len() < 20_000 {
                long.push(b);
                continue;
            }
            let i = rng.range(0, long.len());
            let old = std::mem::replace(&mut long[i], b);
            // SAFETY: a live block.
            unsafe { peer.dealloc(old.ptr, old.layout) };
            out.ops += 1;
        } else {
            if short.len() == 64 {
                let i = rng.range(0, 64);
                let old = short.swap_remove(i);
                // SAFETY: a live block.
                unsafe { peer.dealloc(old.ptr, old.layout) };
                out.ops += 1;
            }
            short.push(b);
        }
    }
    out.live_bytes = short.iter().chain(&long).map(|b| b.layout.size()).sum();
    free_all(peer, &mut short);
    free_all(peer, &mut long);
    out
}

/// The CPython-like fill over any allocator: CPython-like objects aligned
/// to 8, with a random live block freed instead on about one step in ten,
/// until `alloc` returns null (the first failure). Returns the blocks live
/// at that point and the allocations asked for, the failed one included.
pub fn cpython_fill_program(
    seed: u64,
    mut alloc: impl FnMut(Layout) -> *mut u8,
    mut free: impl FnMut(Block),
) -> (Vec<Block>, usize) {
    let mut rng = Rng(seed);
    let mut live: Vec<Block> = Vec::new();
    let mut allocations = 0;
    loop {
        if rng.next_u64().is_multiple_of(10) && !live.is_empty() {
            free(live.swap_remove(rng.range(0, live.len())));
            continue;
        }
        let layout = Layout::from_size_align(cpython_size(&mut rng), 8).unwrap();
        let p = alloc(layout);
        allocations += 1;
        if p.is_null() {
            return (live, allocations);
        }
        live.push(Block { ptr: p, layout });
    }
}

/// Fill with CPython-like objects until the first failure
/// ([`cpython_fill_program`]); reports the live bytes at that point.
pub fn cpython_fill(peer: &Peer, seed: u64) -> Outcome {
    // SAFETY: the program frees only blocks it holds live.
    let (mut live, ops) =
        cpython_fill_program(seed, |l| peer.alloc(l), |b| unsafe { peer.dealloc(b.ptr, b.layout) });
    let out = Outcome { ops, failures: 1, live_bytes: live.iter().map(|b| b.layout.size()).sum() };
    free_all(peer, &mut live);
    out
}

/// talc's heap-efficiency workload: random-actions sizes (max 10 000); 50 %
/// allocate, 10 % free, 40 % realloc to uniform[1, 100 000); stops at the
/// first failure and reports the live bytes.
pub fn talc_fill(peer: &Peer, seed: u64) -> Outcome {
    let mut rng = Rng(seed);
    let mut live: Vec<Block> = Vec::new();
    let mut out = Outcome::default();
    loop {
        let action = rng.next_u64() % 10;
        out.ops += 1;
        if action < 5 || live.is_empty() {
            let hi = rng.range(16, 10_000);
            let size = rng.range(4, hi);
            let align = 8 << ((rng.next_u64() as u16).trailing_zeros() / 2);
            let layout = Layout::from_size_align(size, align).unwrap();
            let p = peer.alloc(layout);
            if p.is_null() {
                out.failures = 1;
                break;
            }
            live.push(Block { ptr: p, layout });
        } else if action < 6 {
            let b = live.swap_remove(rng.range(0, live.len()));
            // SAFETY: a live block.
            unsafe { peer.dealloc(b.ptr, b.layout) };
        } else {
            let i = rng.range(0, live.len());
            let b = live[i];
            let new_size = rng.range(1, 100_000);
            // SAFETY: a live block.
            let q = unsafe { peer.realloc(b.ptr, b.layout, new_size) };
            if q.is_null() {
                out.failures = 1;
                break;
            }
            live[i] = Block { ptr: q, layout: Layout::from_size_align(new_size, b.layout.align()).unwrap() };
        }
    }
    out.live_bytes = live.iter().map(|b| b.layout.size()).sum();
    free_all(peer, &mut live);
    out
}

/// Pathological: 4096 × `Layout(1, 4096)`, allocated then freed (the case
/// that costs first-fit allocators over 10 000 instructions per operation).
pub fn page_aligned(peer: &Peer, _seed: u64, ops: usize) -> Outcome {
    let layout = Layout::from_size_align(1, 4096).unwrap();
    let mut out = Outcome::default();
    let mut live = Vec::with_capacity(4096);
    while out.ops < ops {
        for _ in 0..4096 {
            let p = peer.alloc(layout);
            out.ops += 1;
            if p.is_null() {
                out.failures += 1;
            } else {
                live.push(Block { ptr: p, layout });
            }
        }
        out.ops += live.len();
        free_all(peer, &mut live);
    }
    out
}

/// Pathological: one size class fragmented — 10 000 blocks of 48 bytes, every
/// other one freed, then 5 000 free/alloc pairs at random among the rest.
pub fn fragmented_class(peer: &Peer, seed: u64, ops: usize) -> Outcome {
    let layout = Layout::from_size_align(48, 8).unwrap();
    let mut rng = Rng(seed);
    let mut out = Outcome::default();
    while out.ops < ops {
        let mut live: Vec<Block> = (0..10_000).map(|_| Block { ptr: peer.alloc(layout), layout }).collect();
        out.ops += 10_000;
        let mut kept = Vec::with_capacity(5_000);
        for (i, b) in live.drain(..).enumerate() {
            if i % 2 == 0 {
                kept.push(b);
            } else {
                // SAFETY: a live block.
                unsafe { peer.dealloc(b.ptr, b.layout) };
                out.ops += 1;
            }
        }
        for _ in 0..5_000 {
            let j = rng.range(0, kept.len());
            // SAFETY: a live block.
            unsafe { peer.dealloc(kept[j].ptr, layout) };
            let p = peer.alloc(layout);
            if p.is_null() {
                out.failures += 1;
            }
            kept[j] = Block { ptr: p, layout };
            out.ops += 2;
        }
        out.ops += kept.len();
        free_all(peer, &mut kept);
    }
    out
}

/// Pathological: the largest block that still fits in a fresh heap of
/// `region` bytes, found by bisection; reported as `live_bytes`.
pub fn largest_block(peer: &Peer, region: usize) -> Outcome {
    let (mut lo, mut hi) = (0usize, region);
    let mut out = Outcome::default();
    while lo + 4096 < hi {
        let mid = lo + (hi - lo) / 2;
        let layout = Layout::from_size_align(mid, 8).unwrap();
        let p = peer.alloc(layout);
        out.ops += 1;
        if p.is_null() {
            hi = mid;
        } else {
            lo = mid;
            // SAFETY: just allocated.
            unsafe { peer.dealloc(p, layout) };
            out.ops += 1;
        }
    }
    out.live_bytes = lo;
    out
}

/// Realloc growth of a `Vec` to 1 MiB: the capacity doubles through
/// `realloc` from 8 bytes, as `Vec` grows; repeated.
pub fn realloc_growth(peer: &Peer, _seed: u64, ops: usize) -> Outcome {
    let mut out = Outcome::default();
    while out.ops < ops {
        let mut layout = Layout::from_size_align(8, 8).unwrap();
        let mut p = peer.alloc(layout);
        out.ops += 1;
        while layout.size() < 1 << 20 {
            let new = layout.size() * 2;
            // SAFETY: a live block with `layout`.
            let q = unsafe { peer.realloc(p, layout, new) };
            out.ops += 1;
            assert!(!q.is_null(), "{}: realloc growth failed", peer.name);
            // SAFETY: the block is at least `new` bytes.
            unsafe { q.add(new - 1).write(1) };
            p = q;
            layout = Layout::from_size_align(new, 8).unwrap();
        }
        // SAFETY: the live block.
        unsafe { peer.dealloc(p, layout) };
        out.ops += 1;
    }
    out
}

/// The fill sweep's workload: sizes uniform in `16..=max`, alignment 8,
/// allocate until the first failure, and after each allocation free a
/// random live block with probability 1/3. Reports the live bytes at the
/// failure.
pub fn uniform_fill(peer: &Peer, seed: u64, max: usize) -> Outcome {
    let mut rng = Rng(seed);
    let mut live: Vec<Block> = Vec::new();
    let mut out = Outcome::default();
    loop {
        let layout = Layout::from_size_align(rng.range(16, max + 1), 8).unwrap();
        let p = peer.alloc(layout);
        out.ops += 1;
        if p.is_null() {
            out.failures = 1;
            break;
        }
        live.push(Block { ptr: p, layout });
        if rng.next_u64().is_multiple_of(3) {
            let b = live.swap_remove(rng.range(0, live.len()));
            // SAFETY: a live block of this peer.
            unsafe { peer.dealloc(b.ptr, b.layout) };
        }
    }
    out.live_bytes = live.iter().map(|b| b.layout.size()).sum();
    free_all(peer, &mut live);
    out
}
