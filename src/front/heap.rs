//! [`Heap`]: layers 0, +1 and +2 over one page source, through `&mut self`
//! — the routing of every call, the out-of-memory resorts, realloc in place.

use core::alloc::Layout;
use core::fmt;
use core::ptr::{self, NonNull};

#[cfg(feature = "debug")]
use super::debug;
use super::report::write_report;
use super::{
    AllocateError, COLD_REQUESTS, DeallocateError, FrontStats, HeapStats, InvalidConfig, Report, TIGHT_ARENAS,
};
use crate::object::{self, ALIGNMENT, Geometry, ObjectAllocator};
use crate::segment::{self, Config, SegmentAllocator};
use crate::source::{PageSource, PagesError, RegionSource, reach};
use crate::sync::stat;

mod realloc;

/// The layer that owns a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// Layer +2, the object allocator.
    Object,
    /// Layer 0, the segment allocator.
    Segment,
}

/// The allocator stack over one page source: layers 0, +1 and +2.
///
/// Works through `&mut self`; [`LockedHeap`](super::LockedHeap) adds the lock and `GlobalAlloc`.
pub struct Heap<S> {
    pub(super) object: ObjectAllocator,
    pub(super) segment: SegmentAllocator,
    pub(super) source: S,
    pub(super) stats: FrontStats,
    /// The blocks most recently doubled by a realloc that moved them (see
    /// [`GROWING_THRESHOLD`]).
    pub(super) growing: [(usize, u32); 4],
    pub(super) growing_next: usize,
    /// Small blocks served by layer 0. One count, not one per class: a
    /// block resized in place, or freed without its layout, may be named by
    /// a neighbouring class (see [`layer_0_usable`]), which a count per
    /// class would let drift.
    small_in_layer_0: usize,
    /// Requests of each size class served by layer 0 while it was cold, up
    /// to the limit.
    pub(super) cold_demand: [u32; object::CLASS_TABLE],
    /// Requests of a class layer 0 serves before the class gets pools.
    pub(super) cold_limit: u32,
    #[cfg(feature = "debug")]
    pub(super) debug: debug::DebugState,
}

impl<S> fmt::Debug for Heap<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Heap")
            .field("object", &self.object)
            .field("segment", &self.segment)
            .field("front", &self.stats)
            .finish()
    }
}

/// Where layer +2 takes its arenas: the page source, or, where layer 0
/// holds a committed source whole (`SegmentAllocator::serves_arenas`),
/// layer 0, as aligned blocks that leave the arena's last
/// [`object::ARENA_TAIL`] bytes to layer 0's boundary tag (TLSF), or whole
/// (first fit: `SegmentAllocator::arena_tail`).
struct ArenaPages<'a, S> {
    segment: &'a mut SegmentAllocator,
    source: &'a mut S,
}

const _: () = assert!(object::ARENA_TAIL == segment::ARENA_TAIL);

impl<S: PageSource> ArenaPages<'_, S> {
    /// The layout of an arena of `size` bytes as a block of layer 0, which
    /// keeps its last `tail` bytes.
    fn arena_layout(size: usize, tail: usize) -> Result<Layout, PagesError> {
        let invalid = PagesError::InvalidRequest { size, align: size };
        let payload = size.checked_sub(tail).ok_or(invalid)?;
        Layout::from_size_align(payload, size).map_err(|_| invalid)
    }
}

// SAFETY: either the page source's own promise, or blocks of layer 0, which
// lie in its spans inside that same source's window, are aligned as asked
// (the layout carries the alignment), and are ours until given back; layer
// +2 leaves the last `ARENA_TAIL` bytes of each arena alone, which is all
// that layer 0's block is short of `size` (nothing, under first fit).
unsafe impl<S: PageSource> PageSource for ArenaPages<'_, S> {
    fn window(&self) -> (usize, usize) {
        self.source.window()
    }

    fn allocate_pages(&mut self, size: usize, align: usize) -> Result<NonNull<u8>, PagesError> {
        // SAFETY: an `ArenaPages` holds the heap's layer 0 and the page
        // source it has had on every call.
        if !unsafe { self.segment.serves_arenas(self.source) } {
            return self.source.allocate_pages(size, align);
        }
        debug_assert_eq!(size, align, "arenas are aligned to their size");
        let layout = Self::arena_layout(size, self.segment.arena_tail())?;
        // SAFETY: as above.
        unsafe { self.segment.allocate_high(layout, self.source) }
            .map_err(|_| PagesError::Exhausted { size, align })
    }

    unsafe fn deallocate_pages(&mut self, ptr: NonNull<u8>, size: usize) {
        // SAFETY: as in `allocate_pages`.
        if !unsafe { self.segment.serves_arenas(self.source) } {
            // SAFETY: forwarded contract.
            return unsafe { self.source.deallocate_pages(ptr, size) };
        }
        let layout = Self::arena_layout(size, self.segment.arena_tail()).expect("an arena of layer 0");
        // SAFETY: the arena came from `allocate` with this layout.
        unsafe { self.segment.deallocate(ptr, layout, self.source) }.expect("an arena block of layer 0");
    }
}

impl Heap<RegionSource> {
    /// A heap with no memory: every allocation fails until it is given a
    /// region ([`LockedHeap::init`](super::LockedHeap::init)). All zeros, so a static one costs no
    /// flash and no copy at reset (it lies in `.bss`).
    pub const fn empty() -> Self {
        Self::unset(RegionSource::empty())
    }
}

impl<S: PageSource> Heap<S> {
    /// A heap over `source`, with arena, pool and span sizes chosen for the
    /// size of its window.
    /// Layer 0 takes its memory now (a committed source's whole window), so
    /// that the first allocation does not pay for it.
    pub fn new(source: S) -> Self {
        let window = source.window();
        let mut heap = Self::new_in_window(source, window);
        heap.segment.prepare(&mut heap.source);
        heap
    }

    /// A heap over `source` with explicit layer +2 geometry and layer 0
    /// tunables, or why they cannot serve ([`Geometry::validate`],
    /// [`Config::validate`]); `source` is dropped then.
    pub fn with_geometry(source: S, geometry: Geometry, config: Config) -> Result<Self, InvalidConfig> {
        let geometry = geometry.validate().map_err(InvalidConfig::Geometry)?;
        let config = config.validate().map_err(InvalidConfig::Segment)?;
        let window = source.window();
        Ok(Self::from_parts(source, window, geometry, config))
    }
}

impl<S: PageSource> Heap<S> {
    /// [`Heap::new`] for a source whose window is known in advance (`const`,
    /// for statics).
    pub const fn new_in_window(source: S, window: (usize, usize)) -> Self {
        let geometry =
            if S::COMMITTED { Geometry::for_region(window.1) } else { Geometry::for_window(window.1) };
        Self::from_parts(source, window, geometry, Config::for_window(window.1))
    }

    /// A heap over `source` with no window yet: every layer zeroed, nothing
    /// served until [`install`](Self::install).
    const fn unset(source: S) -> Self {
        const {
            assert!(
                S::COMMITTED || segment::TLSF,
                "a page source that maps pages on demand needs layer 0's TLSF engine (feature `tlsf`)"
            )
        };
        Self {
            object: ObjectAllocator::UNSET,
            segment: SegmentAllocator::UNSET,
            source,
            stats: FrontStats {
                failed_allocations: 0,
                refused_frees: 0,
                small_fallbacks: 0,
                cold_blocks: 0,
                small_in_layer_0: 0,
                realloc_in_place: 0,
                realloc_moved: 0,
                debug_violations: 0,
            },
            growing: [(0, 0); 4],
            growing_next: 0,
            small_in_layer_0: 0,
            cold_demand: [0; object::CLASS_TABLE],
            cold_limit: 0,
            #[cfg(feature = "debug")]
            debug: debug::DebugState::new(),
        }
    }

    /// Gives a heap that has never had memory (its source's window empty)
    /// the page source that has it, in place: field by field, so that no
    /// `Heap` value (kilobytes of tables) is ever a temporary on the stack,
    /// at any optimisation level.
    ///
    /// # Panics
    ///
    /// If the heap's window is not empty.
    pub(super) fn install(&mut self, source: S) {
        self.assert_unused();
        self.source = source;
        self.configure();
    }

    /// Panics if the heap has had memory.
    pub(super) fn assert_unused(&self) {
        assert!(self.source.window().1 == 0, "strata: a heap that has memory cannot be given another source");
    }

    /// Sets the layers up for the window of the source just installed.
    /// Where layer 0's TLSF engine is built (hosts, the kernel), layer 0
    /// takes its memory now, as [`new`](Self::new) does, so that the first
    /// allocation does not pay for it (the largest single cost a call would
    /// see). A build without it (firmware) leaves that to the first
    /// allocation: `init` then needs no more stack than these few fields.
    pub(super) fn configure(&mut self) {
        let window = self.source.window();
        let geometry =
            if S::COMMITTED { Geometry::for_region(window.1) } else { Geometry::for_window(window.1) };
        self.set_layers(window, geometry, Config::for_window(window.1));
        if segment::TLSF {
            self.segment.prepare(&mut self.source);
        }
    }

    /// Gives the layers of a heap that has never had memory the source's
    /// window, a layer +2 geometry and layer 0 tunables (both valid), in
    /// place. (Inlined even at opt-level 0: `init`'s stack on a
    /// microcontroller is one frame less.)
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    const fn set_layers(&mut self, window: (usize, usize), geometry: Geometry, config: Config) {
        self.object.set_window(geometry, window);
        self.segment.set_window(config, window);
        self.cold_limit = COLD_REQUESTS;
    }

    /// The one constructor: a heap over `source` (whose window is `window`)
    /// with the given layer +2 geometry and layer 0 tunables, both valid.
    const fn from_parts(source: S, window: (usize, usize), geometry: Geometry, config: Config) -> Self {
        let mut heap = Self::unset(source);
        heap.set_layers(window, geometry, config);
        heap
    }

    /// Sets how many requests of a size class layer 0 serves before the
    /// class gets pools of layer +2: [`COLD_REQUESTS`] by default, so that a
    /// class asked for little costs no pool; 0 serves every small request
    /// from pools at once, as CPython does. A heap given its memory later
    /// ([`LockedHeap::init`](super::LockedHeap::init)) starts from the default again.
    pub fn set_cold_limit(&mut self, requests: u32) {
        self.cold_limit = requests;
    }

    /// The page source.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// Which layer owns `ptr`, if any: the routing a free would take.
    pub fn owner(&self, ptr: *const u8) -> Option<Layer> {
        if self.object.owns(ptr) {
            Some(Layer::Object)
        } else if self.segment.owns(ptr) {
            Some(Layer::Segment)
        } else {
            None
        }
    }

    /// Allocates a block for `layout`.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub fn allocate(&mut self, layout: Layout) -> Result<NonNull<u8>, AllocateError> {
        if self.is_small(layout) {
            if let Some(p) = self.object.allocate_from_pools(layout.size(), layout.align()) {
                return Ok(p);
            }
            return self.allocate_small(layout);
        }
        let layout = self.layer_0_layout(layout);
        // SAFETY: `self.source` is the page source layer 0 has had on
        // every call (the heap owns both).
        match unsafe { self.segment.allocate(layout, &mut self.source) } {
            Ok(p) => Ok(p),
            Err(e) => self.allocate_when_exhausted(layout, e),
        }
    }

    /// A small request whose class has no pool with a free block. A class
    /// that has never had much demand stays in layer 0 — until the requests
    /// of it served there reach [`set_cold_limit`](Self::set_cold_limit)
    /// ([`FrontStats::cold_blocks`]): a pool per class is what pymalloc's
    /// speed costs in memory, paid for the classes in demand. Demand is
    /// counted in requests, not blocks live, so a class that churns gets its
    /// pools at once, and a class with many objects leaves only a few
    /// behind in layer 0. Otherwise a new pool; failing that, the
    /// out-of-memory resorts (see the module docs).
    #[cold]
    fn allocate_small(&mut self, layout: Layout) -> Result<NonNull<u8>, AllocateError> {
        let in_layer_0 = self.layer_0_layout(layout);
        let cold_class = self.cold_class(layout);
        if let Some((class, demand)) = cold_class {
            self.cold_demand[class] = demand + 1;
        }
        let cold = cold_class.is_some()
            || (self.object.needs_arena()
                && self.segment.holds_less_than(TIGHT_ARENAS * self.object.geometry().arena_size()));
        // SAFETY: as in `allocate`.
        let result = match cold.then(|| unsafe { self.segment.allocate(in_layer_0, &mut self.source) }) {
            Some(Ok(p)) => {
                stat!(self.stats.cold_blocks += 1);
                Ok(p)
            }
            _ => {
                let mut pages = ArenaPages { segment: &mut self.segment, source: &mut self.source };
                // SAFETY: layer +2 takes every arena through an `ArenaPages`
                // over this heap's layer 0 and page source.
                match unsafe { self.object.allocate_new_pool(layout.size(), layout.align(), &mut pages) } {
                    Ok(p) => return Ok(p),
                    Err(pools) => match self.borrow_close_fit(layout) {
                        Some(p) => return Ok(p),
                        None => {
                            self.stats.small_fallbacks += 1;
                            // SAFETY: as in `allocate`.
                            match unsafe { self.segment.allocate(in_layer_0, &mut self.source) } {
                                Ok(p) => Ok(p),
                                // Both causes are kept: no pool, then no room in layer 0.
                                Err(e) => self.allocate_when_exhausted(in_layer_0, e).map_err(|e| match e {
                                    AllocateError::Segment(segment) => {
                                        AllocateError::Small { pools, segment }
                                    }
                                    other => other,
                                }),
                            }
                        }
                    },
                }
            }
        };
        if let Ok(p) = result
            && !self.object.owns(p.as_ptr())
        {
            self.small_in_layer_0 += 1;
        }
        result
    }

    /// [`allocate`](Self::allocate) of a request at most
    /// [`SMALL_REQUEST_THRESHOLD`](crate::object::SMALL_REQUEST_THRESHOLD)
    /// bytes that layer +2's pools did not serve, when layer 0 serves it in
    /// O(1): a request above the geometry's threshold, or one of a cold
    /// class ([`allocate_small`](Self::allocate_small)'s first test). The
    /// same block and bookkeeping as the full path, or `None`, having
    /// changed nothing, where it would do more (a new pool, a span from the
    /// source, the out-of-memory resorts).
    #[cold]
    #[inline(never)]
    #[cfg_attr(feature = "debug", allow(dead_code))]
    pub(super) fn allocate_in_layer_0_quick(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        if !self.is_small(layout) {
            return self.segment.allocate_quick(self.layer_0_layout(layout));
        }
        let (class, demand) = self.cold_class(layout)?;
        let p = self.segment.allocate_quick(self.layer_0_layout(layout))?;
        self.cold_demand[class] = demand + 1;
        stat!(self.stats.cold_blocks += 1);
        self.small_in_layer_0 += 1;
        Some(p)
    }

    /// The class of small `layout` and the requests of it served so far,
    /// if it is cold: it has no pool, and fewer requests than the cold
    /// limit ([`allocate_small`](Self::allocate_small)).
    fn cold_class(&self, layout: Layout) -> Option<(usize, u32)> {
        let class = self.class_of(layout);
        let demand = self.cold_demand[class];
        (demand < self.cold_limit && self.object.pools_in_use(layout.size(), layout.align()) == 0)
            .then_some((class, demand))
    }

    /// The size class of a small `layout`.
    #[inline]
    fn class_of(&self, layout: Layout) -> usize {
        object::size_class(layout.size(), layout.align(), self.object.geometry().class_shift)
    }

    /// Counts a small block of layer 0 coming (`true`) or going.
    #[inline]
    fn note_small_in_layer_0(&mut self, layout: Layout, coming: bool) {
        if self.is_small(layout) {
            let n = &mut self.small_in_layer_0;
            *n = if coming { *n + 1 } else { n.saturating_sub(1) };
        }
    }

    /// Layer +2 had no free block in the class and no arena for a new pool
    /// (the page source has no aligned run of an arena's size left, which
    /// on a fragmented source comes long before it runs out of pages): a
    /// free block of a larger class that wastes at most 1/8 of the request
    /// (the spacing tcmalloc allows its classes) beats taking fresh memory
    /// from layer 0; a worse fit waits for the last resort.
    #[cold]
    fn borrow_close_fit(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        self.object.borrow(layout.size(), layout.align(), layout.size() + layout.size() / 8)
    }

    /// Layer 0 failed with `err`: the last resorts (see *Out of memory* in
    /// the module docs).
    #[cold]
    fn allocate_when_exhausted(
        &mut self,
        layout: Layout,
        err: segment::AllocateError,
    ) -> Result<NonNull<u8>, AllocateError> {
        // Out of pages: the spare arena is worth more to layer 0 now.
        let err = if self.trim_arenas() > 0 {
            // SAFETY: as in `allocate`.
            match unsafe { self.segment.allocate(layout, &mut self.source) } {
                Ok(p) => return Ok(p),
                Err(e) => e,
            }
        } else {
            err
        };
        self.borrow_any(layout).ok_or(AllocateError::Segment(err))
    }

    /// The last resort for a small request: a free block of any larger +2
    /// class, rather than a failure while such blocks sit free.
    fn borrow_any(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        self.is_small(layout).then(|| self.object.borrow(layout.size(), layout.align(), usize::MAX)).flatten()
    }

    /// The layout layer 0 sees for `layout`: a small one rounded up to its
    /// size class, so that a small block served by layer 0 fits every
    /// request of its class, as a +2 block does (thread caches reuse blocks
    /// by class), and frees and resizes with any layout of the class. A
    /// request of a small size but a larger alignment is rounded up to the
    /// class granule too: the usable size of a small-sized block of layer 0
    /// is its whole class granules ([`layer_0_usable`]), which then still
    /// holds the size asked for.
    #[inline]
    pub(super) fn layer_0_layout(&self, layout: Layout) -> Layout {
        // Sizes 1..=threshold (one comparison for the others).
        if layout.size().wrapping_sub(1) >= self.object.threshold() {
            layout
        } else if layout.align() <= ALIGNMENT {
            self.object.class_layout(layout)
        } else {
            let granule = 1 << self.object.geometry().class_shift;
            Layout::from_size_align(layout.size().next_multiple_of(granule), layout.align()).unwrap_or(layout)
        }
    }

    /// Whether layer +2 serves `layout`.
    #[inline]
    pub(super) fn is_small(&self, layout: Layout) -> bool {
        // `size - 1 < threshold`: sizes 1..=threshold; 0 and an off layer (0) skip it.
        layout.size().wrapping_sub(1) < self.object.threshold() && layout.align() <= ALIGNMENT
    }

    /// Allocates a zeroed block for `layout`.
    pub fn allocate_zeroed(&mut self, layout: Layout) -> Result<NonNull<u8>, AllocateError> {
        let p = self.allocate(layout)?;
        // SAFETY: the block is ours and at least `layout.size()` bytes long.
        unsafe { ptr::write_bytes(p.as_ptr(), 0, layout.size()) };
        Ok(p)
    }

    /// Frees a block, routed by which layer owns it.
    ///
    /// # Safety
    ///
    /// If any layer owns `ptr`, it must be a live block allocated by this
    /// heap with `layout`. Pointers that no layer owns are refused safely.
    #[cfg_attr(not(strata_unoptimized), inline(always))]
    pub unsafe fn deallocate(&mut self, ptr: NonNull<u8>, layout: Layout) -> Result<(), DeallocateError> {
        if self.object.owns(ptr.as_ptr()) {
            let mut pages = ArenaPages { segment: &mut self.segment, source: &mut self.source };
            // SAFETY: the block lies in a +2 arena and the caller promises it
            // is live.
            if unsafe { self.object.deallocate(ptr, &mut pages) } {
                return Ok(());
            }
            return Err(DeallocateError::NotAllocated { ptr: ptr.as_ptr() as usize });
        }
        // SAFETY: forwarded contract; layer 0 refuses what it does not own.
        let result = unsafe { self.segment.deallocate(ptr, self.layer_0_layout(layout), &mut self.source) };
        if result.is_ok() {
            self.note_small_in_layer_0(layout, false);
        }
        result
    }

    /// Frees a block that a thread cache held, its tag still in place (see
    /// [`thread_cache`](super::thread_cache)), with the lock held. The tag
    /// stays until the block is free — a second free racing with this one,
    /// made without the lock, reads the tag before the block's header, and
    /// so finds the block cached or free at every moment — and then goes,
    /// where layer 0's free-list links did not overwrite it and the span
    /// is still held.
    ///
    /// # Safety
    ///
    /// `ptr` must be a block this heap's thread caches held, with a layout
    /// that frees it.
    #[cfg(feature = "caches")]
    #[cfg_attr(feature = "debug", allow(dead_code))]
    pub(crate) unsafe fn deallocate_cached(
        &mut self,
        ptr: NonNull<u8>,
        layout: Layout,
    ) -> Result<(), DeallocateError> {
        if self.object.owns(ptr.as_ptr()) {
            let mut pages = ArenaPages { segment: &mut self.segment, source: &mut self.source };
            // SAFETY: a cached block of a +2 arena: live, tagged.
            if unsafe { self.object.deallocate_cached(ptr, &mut pages) } {
                return Ok(());
            }
            return Err(DeallocateError::NotAllocated { ptr: ptr.as_ptr() as usize });
        }
        // SAFETY: the caller's promise.
        unsafe { self.deallocate(ptr, layout) }?;
        if self.segment.owns(ptr.as_ptr()) {
            // SAFETY: a block of a span still held: its memory is there.
            unsafe { super::thread_cache::clear_tag(ptr, layout.size()) };
        }
        Ok(())
    }

    /// The layout block `ptr` answers to when the caller does not know the
    /// one it was allocated with (C's `free(p)` and `malloc_usable_size(p)`):
    /// its size is the bytes the caller may use, at least the size asked
    /// for, and the layout frees it ([`deallocate`](Self::deallocate)) and
    /// resizes it ([`reallocate`](Self::reallocate)) as the original would.
    /// Its alignment is the largest power of two that divides both its size
    /// and its address, at most 16 and at least 8 (so 8 for many blocks,
    /// whose addresses are 16-aligned all the same; the address lowers it
    /// only on 32-bit targets, where layer 0 aligns its blocks to 8); a
    /// realloc without a layout ([`reallocate_unsized`](Self::reallocate_unsized))
    /// gives its result the alignment `malloc` promises, 16, all the same.
    /// A block allocated with more keeps its address but not that
    /// alignment across a realloc that moves.
    ///
    /// O(1), from what the layers keep anyway — layer +2's pool header,
    /// layer 0's chunk header — with the refusals of a free: a pointer no
    /// layer owns ([`DeallocateError::NotOwned`]), not a block in use
    /// ([`DeallocateError::NotAllocated`]; a +2 block freed twice is caught
    /// while its pool is empty or it heads the free list, as in a free), or
    /// a block of a first-fit heap, which keeps no sizes
    /// ([`DeallocateError::SizeUnknown`]).
    pub fn usable_layout(&self, ptr: NonNull<u8>) -> Result<Layout, DeallocateError> {
        let ptr = reach(ptr);
        let size = if self.object.owns(ptr.as_ptr()) {
            // SAFETY: a pointer into an arena of ours, checked to be a block
            // of its pool before `may_free` asks about it as one.
            if !unsafe { self.object.is_block_start(ptr) && self.object.may_free(ptr) } {
                return Err(DeallocateError::NotAllocated { ptr: ptr.as_ptr() as usize });
            }
            // SAFETY: a block in use of an arena of ours (just checked).
            unsafe { self.object.block_size(ptr) }
        } else {
            let g = self.object.geometry();
            layer_0_usable(self.segment.block_size(ptr)?, g.threshold, g.class_shift)
        };
        Ok(usable_layout(ptr, size))
    }

    /// The bytes the caller may use of block `ptr` (C's
    /// `malloc_usable_size`): the size of its [`usable_layout`](Self::usable_layout).
    pub fn usable_size(&self, ptr: NonNull<u8>) -> Result<usize, DeallocateError> {
        self.usable_layout(ptr).map(|l| l.size())
    }

    /// Frees a block without its layout (C's `free`), as
    /// [`deallocate`](Self::deallocate) with its
    /// [`usable_layout`](Self::usable_layout), and with the same refusals.
    ///
    /// # Safety
    ///
    /// If any layer owns `ptr`, it must be a live block allocated by this
    /// heap, not used after this call.
    pub unsafe fn deallocate_unsized(&mut self, ptr: NonNull<u8>) -> Result<(), DeallocateError> {
        let layout = if self.object.owns(ptr.as_ptr()) {
            // A +2 block needs no size to be freed, only to be one.
            // SAFETY: a pointer into an arena of ours.
            if !unsafe { self.object.is_block_start(reach(ptr)) } {
                return Err(DeallocateError::NotAllocated { ptr: ptr.as_ptr() as usize });
            }
            Layout::new::<u8>()
        } else {
            self.usable_layout(ptr)?
        };
        // SAFETY: forwarded contract; the layout is the block's own (layer
        // +2 frees by pool, whatever the layout).
        unsafe { self.deallocate(ptr, layout) }
    }

    /// Gives the spares back to the page source, like `malloc_trim`: the
    /// wholly free arena layer +2 keeps against thrashing, then layer 0's
    /// wholly free span (its spare, or a committed source's whole window).
    /// Returns how many arenas and spans went back.
    pub fn trim(&mut self) -> (usize, usize) {
        let arenas = self.trim_arenas();
        // SAFETY: as in `allocate`.
        (arenas, unsafe { self.segment.trim(&mut self.source) })
    }

    fn trim_arenas(&mut self) -> usize {
        let mut pages = ArenaPages { segment: &mut self.segment, source: &mut self.source };
        // SAFETY: as in `allocate_small`.
        unsafe { self.object.trim(&mut pages) }
    }

    /// Counters of every layer.
    pub fn stats(&self) -> HeapStats {
        HeapStats {
            front: FrontStats { small_in_layer_0: self.small_in_layer_0, ..self.stats },
            arenas: self.object.counters(),
            geometry: self.object.geometry(),
            segments: self.segment.stats(),
        }
    }

    /// Per-size-class counts of layer +2.
    pub fn class_stats(&self) -> [object::ClassStats; object::NUM_CLASSES] {
        self.object.class_stats()
    }

    /// A snapshot of every layer, whose `Display` is a report in the style
    /// of CPython's `sys._debugmallocstats()` (write it to a serial port,
    /// semihosting or a buffer through `core::fmt::Write`).
    pub fn report(&self) -> Report {
        Report { stats: self.stats(), classes: self.class_stats(), usage: self.object.usage() }
    }

    /// Writes [`report`](Self::report)'s text to `out` without building a
    /// [`Report`] (over a kilobyte): what a firmware with a small stack
    /// prints. Each class's row is worked out as it is written (a walk of
    /// the arenas per class).
    pub fn write_report(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        write_report(out, &self.stats(), &self.object.usage(), |class| self.object.class_stat(class))
    }

    /// Checks every layer's invariants, panicking on a broken one.
    pub fn check_invariants(&self) {
        self.object.check_invariants();
        self.segment.check_invariants();
    }

    /// The `GlobalAlloc` view of a result: the pointer, or null with the
    /// failure counted.
    #[inline]
    pub(super) fn or_null(&mut self, result: Result<NonNull<u8>, AllocateError>) -> *mut u8 {
        match result {
            Ok(p) => p.as_ptr(),
            Err(AllocateError::Refused(_)) => {
                self.stats.refused_frees += 1;
                ptr::null_mut()
            }
            Err(_) => {
                self.stats.failed_allocations += 1;
                ptr::null_mut()
            }
        }
    }
}

/// The layout a realloc that moves asks of its new block, for the new
/// size `layout` has: `layout` itself, but aligned to 16 where it is
/// aligned to 8 and its size is a multiple of 16 — what C's realloc
/// passes (a block's usable layout, its size rounded by `malloc_size`).
/// That names the same size class; the difference is near exhaustion,
/// where layer +2 may lend a block of a larger class
/// (`ObjectAllocator::borrow`): such a realloc is then lent only a
/// 16-aligned block, never one of a class 8 bytes off, so that a block
/// moved by C's `realloc` keeps `malloc`'s alignment. (A layout of
/// Rust's of that shape is lent as C's is; one aligned to less than 8 is
/// lent what an allocation of it would be.)
#[inline]
pub(crate) fn moving_layout(layout: Layout) -> Layout {
    if layout.align() == 8 && layout.size().is_multiple_of(ALIGNMENT) {
        Layout::from_size_align(layout.size(), ALIGNMENT).unwrap_or(layout)
    } else {
        layout
    }
}

/// What a caller may use of a layer 0 block whose payload is `size` bytes,
/// under a heap whose layer +2 serves up to `threshold` bytes in classes of
/// `1 << class_shift`. A small block there was allocated under its class's
/// layout, which its chunk fits at most a granule over: the whole class
/// granules in it name that class (or the next one up, which the chunk
/// holds as well), so that every small path takes the block as one of the
/// class it was allocated in.
#[inline]
pub(crate) fn layer_0_usable(size: usize, threshold: usize, class_shift: u32) -> usize {
    if size <= threshold { size & !((1 << class_shift) - 1) } else { size }
}

/// The layout of block `ptr` of `size` usable bytes (not 0) found without
/// its own, one the block meets: aligned to the largest power of two that
/// divides both the size and the address, at most 16, and at least 8 where
/// the address is (a +2 block of an 8-byte class is 8-aligned; on 32-bit
/// targets a block of layer 0 may lie 8 past a multiple of 16, and hold 4
/// bytes past a multiple of 8: aligned to 8 all the same, so that C's
/// `realloc` moves it to a 16-aligned block, as [`moving_layout`] asks
/// for a layout aligned to 8).
#[inline]
pub(crate) fn usable_layout(ptr: NonNull<u8>, size: usize) -> Layout {
    let addr = ptr.addr().get();
    let both = size | addr;
    let floor = (addr & addr.wrapping_neg()).min(8);
    let align = (both & both.wrapping_neg()).min(ALIGNMENT).max(floor);
    Layout::from_size_align(size, align).expect("a block's size fits isize")
}
