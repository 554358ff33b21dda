//! # Layer +1: the front door (CPython's raw allocator, `PyMem`)
//!
//! **Takes from below:** layer +2 ([`ObjectAllocator`]) for small requests,
//! layer 0 ([`SegmentAllocator`]) for everything else, and the page source
//! both draw on.
//!
//! **Gives above:** `allocate` / `deallocate` / `reallocate` /
//! `allocate_zeroed` on [`Heap`], with typed errors, and
//! [`GlobalAlloc`] on [`LockedHeap`], where errors become null and are
//! counted.
//!
//! **Routing.** A request of at most 512 bytes (less on heaps under 1 MiB,
//! see [`Geometry::for_window`]) aligned to at most 16 goes to layer +2.
//! Everything else goes to layer 0. A free is routed by *ownership*, never by
//! the layout: +2 owns exactly the blocks in its arenas (an O(1) bitmap test),
//! layer 0 those in its spans (a bounds check and a bit per slot), and a
//! pointer neither owns is refused with [`DeallocateError::NotOwned`] — no layer is ever handed a
//! block it does not own.
//!
//! **Out of memory.** A small request never fails while a larger size
//! class has a free block. When +2 has no free block of a small request's
//! class and no arena for a new pool, the request takes, in this order: a free block of a larger class at most 1/8 bigger
//! ([`ObjectAllocator::borrow`]); layer 0 (a counted *small fallback*); once
//! layer 0 cannot get pages either, +2's spare arena goes back to the page
//! source and layer 0 retries; last, a free block of any larger class.
//!
//! **Realloc in place.** A +2 block is kept when the new size still fits its
//! size class and uses more than half of it (mimalloc's rule; CPython keeps
//! 75 %); a layer 0 block shrinks in place, and grows in place into a free
//! chunk after it (or, for small blocks, before it). Otherwise the block
//! moves — and a block doubling past [`GROWING_THRESHOLD`] three times in a
//! row moves to the start of layer 0's largest free chunk, where its next
//! doublings happen in place, so a `Vec` being grown is copied only a few
//! times.
//!
//! **The common call.** [`LockedHeap`]'s `alloc` and `dealloc` first try,
//! under `try_lock`, the call most programs make most: a small block from
//! the head pool of its class, or the free of a +2 block whose pool stays on
//! its lists. That much fits in a few registers; everything else — layer 0,
//! pools changing state, thread caches, a held lock — goes to an
//! out-of-line path, so the common call pays for no large stack frame.
//!
//! **Domains and debug hooks.** [`LockedHeap`]'s entry points take the
//! [`Domain`] a block is allocated through ([`DomainAlloc`]): `GlobalAlloc`
//! is [`Domain::HEAP`], typed caches use [`Domain::CACHE`]. With the `debug`
//! feature, the hooks of [`debug`] wrap those entry points as CPython's
//! `PYTHONMALLOC=debug` wraps its domains: headers, guards, fills, checks on
//! every free, and a [`debug::Policy`] for what they catch.
//!
//! **Thread caches.** With the `std` feature, every [`LockedHeap`] has a
//! per-thread cache of freed blocks up to 4 KiB in front of its lock
//! ([`thread_cache`], glibc's tcache), unless switched off with
//! [`LockedHeap::set_thread_caches`].

#[cfg(feature = "debug")]
pub mod debug;
#[cfg(feature = "std")]
pub mod thread_cache;

use core::alloc::{GlobalAlloc, Layout};
use core::fmt;
use core::mem::MaybeUninit;
use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering;

use crate::sync::{AtomicBool, Padded, stat};

use crate::object::{self, ALIGNMENT, Geometry, ObjectAllocator};
use crate::segment::{self, Config, SegmentAllocator};
use crate::source::{PageSource, PagesError, RegionSource, reach};

/// A block that doubles by realloc past this size [`PROMOTING_STREAK`]
/// times in a row moves to the start of layer 0's largest free chunk, where
/// the next growths happen in place (see
/// [`SegmentAllocator::allocate_growable`]).
pub const GROWING_THRESHOLD: usize = 256;

/// How many doublings in a row past [`GROWING_THRESHOLD`] make a block a
/// growing buffer.
pub const PROMOTING_STREAK: u32 = 3;

/// A size class gets pools of layer +2 once this many of its requests have
/// been served by layer 0 (see [`Heap::set_cold_limit`]).
pub const COLD_REQUESTS: u32 = 128;

const TIGHT_ARENAS: usize = 2;

/// Why an allocation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocError {
    /// Layer 0 could not serve the request (after layer +2, for small ones).
    Segment(segment::AllocateError),
    /// The requested size overflows a [`Layout`].
    InvalidLayout {
        /// The size asked for.
        size: usize,
        /// The alignment asked for.
        align: usize,
    },
    /// Debug mode: a block came back misaligned and was not handed out.
    Misaligned {
        /// The pointer the layers returned.
        ptr: usize,
        /// The alignment asked for.
        align: usize,
    },
    /// Debug mode: the block given to realloc failed its checks.
    Misuse {
        /// The pointer given.
        ptr: usize,
    },
    /// The block given to realloc is refused: no layer owns it, or it is
    /// not a block in use of the size given. Nothing was allocated.
    Refused(segment::DeallocateError),
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Segment(e) => write!(f, "out of memory: {e}"),
            Self::InvalidLayout { size, align } => {
                write!(f, "invalid layout: {size} bytes aligned to {align}")
            }
            Self::Misaligned { ptr, align } => write!(f, "{ptr:#x} is not aligned to {align}"),
            Self::Misuse { ptr } => write!(f, "{ptr:#x} failed the debug checks"),
            Self::Refused(e) => write!(f, "realloc refused: {e}"),
        }
    }
}

impl core::error::Error for AllocError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Segment(e) => Some(e),
            Self::Refused(e) => Some(e),
            _ => None,
        }
    }
}

/// Why [`Heap::with_geometry`] refused its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidConfig {
    /// Layer +2's geometry cannot serve.
    Geometry(object::GeometryError),
    /// Layer 0's tunables cannot serve.
    Segment(segment::ConfigError),
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Geometry(e) => write!(f, "invalid layer +2 geometry: {e}"),
            Self::Segment(e) => write!(f, "invalid layer 0 tunables: {e}"),
        }
    }
}

impl core::error::Error for InvalidConfig {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Geometry(e) => Some(e),
            Self::Segment(e) => Some(e),
        }
    }
}

/// The layer that owns a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// Layer +2, the object allocator.
    Object,
    /// Layer 0, the segment allocator.
    Segment,
}

/// Why a free was refused. Nothing was changed.
pub type DeallocateError = segment::DeallocateError;

/// The API a block was allocated through, recorded in its header in debug
/// mode (CPython's API id: `'r'`, `'m'`, `'o'`). A block must be freed through
/// the domain that allocated it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Domain(pub u8);

impl Domain {
    /// The front door: `GlobalAlloc`, `Box`, `Vec` (layer +1).
    pub const HEAP: Self = Self(b'h');
    /// Typed object caches (layer +3).
    pub const CACHE: Self = Self(b'c');
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() { write!(f, "{}", self.0 as char) } else { write!(f, "{:#04x}", self.0) }
    }
}

/// A [`GlobalAlloc`] that knows which [`Domain`] each block is allocated and
/// freed through. [`LockedHeap`] records it in debug mode and catches a block
/// freed through the wrong one; [`Untagged`] adapts any other allocator.
///
/// # Safety
///
/// As [`GlobalAlloc`]: `alloc_in` returns null or a block fit for `layout`,
/// and `dealloc_in` accepts what `alloc_in` returned with that layout and
/// domain.
pub unsafe trait DomainAlloc: GlobalAlloc {
    /// Allocates a block for `layout` through `domain`.
    ///
    /// # Safety
    ///
    /// As [`GlobalAlloc::alloc`].
    unsafe fn alloc_in(&self, layout: Layout, domain: Domain) -> *mut u8;

    /// Frees a block allocated through `domain`.
    ///
    /// # Safety
    ///
    /// As [`GlobalAlloc::dealloc`], with the same domain as the allocation.
    unsafe fn dealloc_in(&self, ptr: *mut u8, layout: Layout, domain: Domain);
}

/// Any [`GlobalAlloc`] as a [`DomainAlloc`] that ignores domains, so a typed
/// cache can sit on an allocator other than strata's.
#[derive(Clone, Copy, Debug, Default)]
pub struct Untagged<A>(pub A);

// SAFETY: forwards to `A`'s own `GlobalAlloc`.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Untagged<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { self.0.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { self.0.dealloc(ptr, layout) }
    }
}

// SAFETY: forwards to `A`'s own `GlobalAlloc`; domains are not needed for it.
unsafe impl<A: GlobalAlloc> DomainAlloc for Untagged<A> {
    unsafe fn alloc_in(&self, layout: Layout, _: Domain) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { self.0.alloc(layout) }
    }
    unsafe fn dealloc_in(&self, ptr: *mut u8, layout: Layout, _: Domain) {
        // SAFETY: forwarded contract.
        unsafe { self.0.dealloc(ptr, layout) }
    }
}

/// Counters of the front door.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrontStats {
    /// Allocations that failed (null returned by `GlobalAlloc`).
    pub failed_allocations: usize,
    /// Frees refused because no layer owns the pointer.
    pub refused_frees: usize,
    /// Small requests served by layer 0 because layer +2 had no arena (nor a
    /// close fit to borrow).
    pub small_fallbacks: usize,
    /// Small requests served by layer 0 because their class had no pool and
    /// too few requests to be worth one, or because layer 0 held too little
    /// free memory for a new arena (an event counter: 0 without the `stats`
    /// feature).
    pub cold_blocks: usize,
    /// Small blocks layer 0 holds now (cold classes and fallbacks).
    pub small_in_layer_0: usize,
    /// Reallocations done in place (an event counter: 0 without the `stats`
    /// feature).
    pub realloc_in_place: usize,
    /// Reallocations that moved the block (an event counter).
    pub realloc_moved: usize,
    /// Misuses caught by the debug hooks (always 0 without `debug`).
    pub debug_violations: usize,
}

/// A snapshot of the whole heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapStats {
    /// Front-door counters.
    pub front: FrontStats,
    /// Layer +2 arena counters.
    pub arenas: object::ArenaCounters,
    /// Layer +2 geometry.
    pub geometry: Geometry,
    /// Layer 0 counters.
    pub segments: segment::SegmentStats,
}

/// A snapshot of every layer; see [`Heap::report`].
#[derive(Clone, Copy, Debug)]
pub struct Report {
    /// Counters of every layer.
    pub stats: HeapStats,
    /// Layer +2 per size class.
    pub classes: [object::ClassStats; object::NUM_CLASSES],
    /// Where the arenas' bytes go.
    pub usage: object::ArenaUsage,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_report(f, &self.stats, &self.usage, |class| self.classes[class])
    }
}

/// Writes the report of [`Heap::report`] from its parts, computing each
/// class's row (`class`) as it goes.
fn write_report(
    f: &mut dyn fmt::Write,
    stats: &HeapStats,
    usage: &object::ArenaUsage,
    class: impl Fn(usize) -> object::ClassStats,
) -> fmt::Result {
    if !object::ON {
        writeln!(f, "Layer +2 is not built (feature `pools`): every request is served by layer 0.")?;
    } else {
        write_layer_2(f, stats, usage, class)?;
    }
    let s = &stats.segments;
    writeln!(
        f,
        "\nlayer 0 ({}): {} spans, {} bytes: {} allocated, {} free in {} chunks; {} spans given back",
        if s.first_fit { "first fit" } else { "TLSF" },
        s.spans,
        s.span_bytes,
        s.allocated_bytes,
        s.free_bytes,
        s.free_chunks,
        s.spans_released
    )?;
    let fr = &stats.front;
    if !cfg!(feature = "stats") {
        writeln!(f, "(event counters — bin hits, reallocs, cache hits — are off: feature `stats`)")?;
    }
    write!(
        f,
        "front door: {} failed allocations, {} refused frees, {} small fallbacks, realloc {} in place / {} moved",
        fr.failed_allocations, fr.refused_frees, fr.small_fallbacks, fr.realloc_in_place, fr.realloc_moved
    )?;
    if cfg!(feature = "debug") {
        write!(f, "\ndebug hooks: {} misuses caught", fr.debug_violations)?;
    }
    Ok(())
}

/// The layer +2 part of the report: classes, arenas, where their bytes go.
fn write_layer_2(
    f: &mut dyn fmt::Write,
    stats: &HeapStats,
    usage: &object::ArenaUsage,
    class: impl Fn(usize) -> object::ClassStats,
) -> fmt::Result {
    let g = stats.geometry;
    if g.threshold == 0 {
        writeln!(f, "Layer +2 is off on this heap size: every request is served by layer 0.")?;
    } else {
        writeln!(
            f,
            "Small block threshold = {}, in {} size classes ({} byte arenas of {} byte pools).",
            g.threshold,
            g.classes(),
            g.arena_size(),
            g.pool_size()
        )?;
    }
    writeln!(f, "class   size   num pools   blocks in use  avail blocks")?;
    writeln!(f, "-----   ----   ---------   -------------  ------------")?;
    for (i, c) in (0..object::NUM_CLASSES).map(|i| (i, class(i))).filter(|(_, c)| c.pools > 0) {
        writeln!(
            f,
            "{i:>5}  {:>5}  {:>10}  {:>14}  {:>12}",
            c.block_size, c.pools, c.blocks_in_use, c.blocks_free
        )?;
    }
    let a = &stats.arenas;
    writeln!(f, "\n# arenas allocated total           = {:>14}", a.allocated_total)?;
    writeln!(f, "# arenas reclaimed                 = {:>14}", a.reclaimed)?;
    writeln!(f, "# arenas highwater mark            = {:>14}", a.high_water)?;
    writeln!(f, "# arenas allocated current         = {:>14}", a.current)?;
    writeln!(f, "# blocks borrowed from larger class = {:>13}", a.borrowed)?;
    let u = usage;
    writeln!(f, "{} arenas * {} bytes/arena          = {:>14}", a.current, g.arena_size(), u.arena_bytes)?;
    writeln!(f, "\n# bytes in allocated blocks        = {:>14}", u.allocated)?;
    writeln!(f, "# bytes in available blocks        = {:>14}", u.available)?;
    writeln!(f, "# bytes in unused pools            = {:>14}", u.unused_pools)?;
    writeln!(f, "# bytes lost to pool headers       = {:>14}", u.pool_headers)?;
    writeln!(f, "# bytes lost to arena headers      = {:>14}", u.arena_headers)?;
    writeln!(f, "# bytes lost to quantization       = {:>14}", u.quantization)?;
    writeln!(
        f,
        "Total                              = {:>14}{}",
        u.arena_bytes,
        if u.balances() { "" } else { "  (DOES NOT BALANCE)" }
    )
}

/// The allocator stack over one page source: layers 0, +1 and +2.
///
/// Works through `&mut self`; [`LockedHeap`] adds the lock and `GlobalAlloc`.
pub struct Heap<S> {
    object: ObjectAllocator,
    segment: SegmentAllocator,
    source: S,
    stats: FrontStats,
    /// The blocks most recently doubled by a realloc that moved them (see
    /// [`GROWING_THRESHOLD`]).
    growing: [(usize, u32); 4],
    growing_next: usize,
    /// Small blocks served by layer 0, per size class.
    small_in_layer_0: [u32; object::CLASS_TABLE],
    /// Requests of each size class served by layer 0 while it was cold, up
    /// to the limit.
    cold_demand: [u32; object::CLASS_TABLE],
    /// Requests of a class layer 0 serves before the class gets pools.
    cold_limit: u32,
    #[cfg(feature = "debug")]
    debug: debug::DebugState,
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
/// holds a committed source whole ([`SegmentAllocator::serves_arenas`]),
/// layer 0, as aligned blocks that leave the arena's last
/// [`object::ARENA_TAIL`] bytes to layer 0's boundary tag.
struct ArenaPages<'a, S> {
    segment: &'a mut SegmentAllocator,
    source: &'a mut S,
}

const _: () = assert!(object::ARENA_TAIL == segment::ARENA_TAIL);

impl<S: PageSource> ArenaPages<'_, S> {
    /// The layout of an arena of `size` bytes as a block of layer 0.
    fn arena_layout(size: usize) -> Result<Layout, PagesError> {
        let invalid = PagesError::InvalidRequest { size, align: size };
        let payload = size.checked_sub(object::ARENA_TAIL).ok_or(invalid)?;
        Layout::from_size_align(payload, size).map_err(|_| invalid)
    }
}

// SAFETY: either the page source's own promise, or blocks of layer 0, which
// lie in its spans inside that same source's window, are aligned as asked
// (the layout carries the alignment), and are ours until given back; layer
// +2 leaves the last `ARENA_TAIL` bytes of each arena alone, which is all
// that layer 0's block is short of `size`.
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
        let layout = Self::arena_layout(size)?;
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
        let layout = Self::arena_layout(size).expect("an arena of layer 0");
        // SAFETY: the arena came from `allocate` with this layout.
        unsafe { self.segment.deallocate(ptr, layout, self.source) }.expect("an arena block of layer 0");
    }
}

impl Heap<RegionSource> {
    /// A heap with no memory: every allocation fails until it is given a
    /// region ([`LockedHeap::init`]). All zeros, so a static one costs no
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
            small_in_layer_0: [0; object::CLASS_TABLE],
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
    fn install(&mut self, source: S) {
        self.assert_unused();
        self.source = source;
        self.configure();
    }

    /// Panics if the heap has had memory.
    fn assert_unused(&self) {
        assert!(self.source.window().1 == 0, "strata: a heap that has memory cannot be given another source");
    }

    /// Sets the layers up for the window of the source just installed.
    /// Layer 0 takes the window on the first allocation: no more stack
    /// here than these few fields need.
    fn configure(&mut self) {
        let window = self.source.window();
        let geometry =
            if S::COMMITTED { Geometry::for_region(window.1) } else { Geometry::for_window(window.1) };
        self.object.set_window(geometry, window);
        self.segment.set_window(Config::for_window(window.1), window);
        self.cold_limit = COLD_REQUESTS;
    }

    /// The one constructor: a heap over `source` (whose window is `window`)
    /// with the given layer +2 geometry and layer 0 tunables.
    const fn from_parts(source: S, window: (usize, usize), geometry: Geometry, config: Config) -> Self {
        let mut heap = Self::unset(source);
        heap.object = match ObjectAllocator::new(geometry, window) {
            Ok(object) => object,
            Err(_) => panic!("the geometry was validated"),
        };
        heap.segment = match SegmentAllocator::new(config, window) {
            Ok(segment) => segment,
            Err(_) => panic!("the tunables were validated"),
        };
        heap.cold_limit = COLD_REQUESTS;
        heap
    }

    /// Sets how many requests of a size class layer 0 serves before the
    /// class gets pools of layer +2: [`COLD_REQUESTS`] by default, so that a
    /// class asked for little costs no pool; 0 serves every small request
    /// from pools at once, as CPython does. A heap given its memory later
    /// ([`LockedHeap::init`]) starts from the default again.
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
    #[inline(always)]
    pub fn allocate(&mut self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        if self.is_small(layout) {
            if let Some(p) = self.object.allocate_from_pools(layout.size(), layout.align()) {
                return Ok(p);
            }
            return self.allocate_small(layout);
        }
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
    fn allocate_small(&mut self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        let class = self.class_of(layout);
        let in_layer_0 = self.layer_0_layout(layout);
        let demand = self.cold_demand[class];
        let cold = demand < self.cold_limit && self.object.pools_in_use(layout.size(), layout.align()) == 0;
        if cold {
            self.cold_demand[class] = demand + 1;
        }
        let cold = cold
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
                    Err(_) => match self.borrow_close_fit(layout) {
                        Some(p) => return Ok(p),
                        None => {
                            self.stats.small_fallbacks += 1;
                            // SAFETY: as in `allocate`.
                            match unsafe { self.segment.allocate(in_layer_0, &mut self.source) } {
                                Ok(p) => Ok(p),
                                Err(e) => self.allocate_when_exhausted(in_layer_0, e),
                            }
                        }
                    },
                }
            }
        };
        if let Ok(p) = result
            && !self.object.owns(p.as_ptr())
        {
            self.small_in_layer_0[class] += 1;
        }
        result
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
            let n = &mut self.small_in_layer_0[self.class_of(layout)];
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
    ) -> Result<NonNull<u8>, AllocError> {
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
        self.borrow_any(layout).ok_or(AllocError::Segment(err))
    }

    /// The last resort for a small request: a free block of any larger +2
    /// class, rather than a failure while such blocks sit free.
    fn borrow_any(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        self.is_small(layout).then(|| self.object.borrow(layout.size(), layout.align(), usize::MAX)).flatten()
    }

    /// The layout layer 0 sees for `layout`: a small one rounded up to its
    /// size class, so that a small block served by layer 0 fits every
    /// request of its class, as a +2 block does (thread caches reuse blocks
    /// by class), and frees and resizes with any layout of the class.
    #[inline]
    fn layer_0_layout(&self, layout: Layout) -> Layout {
        if self.is_small(layout) { self.object.class_layout(layout) } else { layout }
    }

    /// Whether layer +2 serves `layout`.
    #[inline]
    fn is_small(&self, layout: Layout) -> bool {
        // `size - 1 < threshold`: sizes 1..=threshold; 0 and an off layer (0) skip it.
        layout.size().wrapping_sub(1) < self.object.threshold() && layout.align() <= ALIGNMENT
    }

    /// Allocates a zeroed block for `layout`.
    pub fn allocate_zeroed(&mut self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
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
    #[inline(always)]
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

    /// The layout block `ptr` answers to when the caller does not know the
    /// one it was allocated with (C's `free(p)` and `malloc_usable_size(p)`):
    /// its size is the bytes the caller may use, at least the size asked
    /// for, and the layout frees it ([`deallocate`](Self::deallocate)) and
    /// resizes it ([`reallocate`](Self::reallocate)) as the original would.
    /// Alignment is 16 (or the block's own, for the 8-byte classes of small
    /// heaps), what `malloc` promises; a block allocated with more keeps its
    /// address but not that promise across a realloc that moves.
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
        Ok(usable_layout(size))
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

    /// Resizes a block without its layout (C's `realloc`), as
    /// [`reallocate`](Self::reallocate) with its
    /// [`usable_layout`](Self::usable_layout), refusing what that refuses.
    ///
    /// # Safety
    ///
    /// As [`deallocate_unsized`](Self::deallocate_unsized); on success the
    /// old block is not used again.
    pub unsafe fn reallocate_unsized(
        &mut self,
        ptr: NonNull<u8>,
        new_size: usize,
    ) -> Result<NonNull<u8>, AllocError> {
        let layout = self.usable_layout(ptr).map_err(AllocError::Refused)?;
        // SAFETY: forwarded contract; the layout is the block's own.
        unsafe { self.reallocate(ptr, layout, new_size) }
    }

    /// Resizes a block to `new_size` bytes (same alignment), in place when it
    /// can, keeping the first `min(old, new)` bytes.
    ///
    /// A pointer no layer owns, or (in layer 0) a block that is not in use
    /// or does not fit `layout`, is refused with [`AllocError::Refused`]
    /// before anything is allocated.
    ///
    /// # Safety
    ///
    /// If any layer owns `ptr`, it must be a live block allocated by this
    /// heap with `layout`.
    #[inline(always)]
    pub unsafe fn reallocate(
        &mut self,
        ptr: NonNull<u8>,
        layout: Layout,
        new_size: usize,
    ) -> Result<NonNull<u8>, AllocError> {
        let align = layout.align();
        if new_size > isize::MAX as usize - (align - 1) {
            return Err(AllocError::InvalidLayout { size: new_size, align });
        }
        // SAFETY: `align` is a layout's alignment, and the size was just
        // checked not to overflow `isize` once rounded up to it.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, align) };
        let keep = layout.size().min(new_size);
        // A block doubling past GROWING_THRESHOLD for the third time in a
        // row, in place or not, is a buffer being grown (a `Vec`): when it
        // has to move, it moves to the start of layer 0's largest free
        // chunk, where later growths happen in place. (Doing so for every
        // large growth scatters blocks over the free space and fragments it:
        // talc's random-realloc fill lost 11 points that way with large
        // mappings, 3 at the second doubling, none at the third.)
        let doubling = new_size >= GROWING_THRESHOLD && new_size / 2 >= layout.size();
        let growth = if doubling { Some(self.doubling_streak(ptr)) } else { None };
        let moved = if self.object.owns(ptr.as_ptr()) {
            // A block its pool has taken back (freed already): refused, as
            // a second free of it is.
            // SAFETY: a block of an arena of ours.
            if !unsafe { self.object.may_free(ptr) } {
                return Err(AllocError::Refused(DeallocateError::NotAllocated {
                    ptr: ptr.as_ptr() as usize,
                }));
            }
            // SAFETY: a live +2 block (caller contract).
            let block = unsafe { self.object.block_size(ptr) };
            if new_size <= block && (new_size > block / 2 || block <= ALIGNMENT) {
                stat!(self.stats.realloc_in_place += 1);
                return Ok(reach(ptr));
            }
            let new = self.allocate_moving(new_layout, growth)?;
            let mut pages = ArenaPages { segment: &mut self.segment, source: &mut self.source };
            // SAFETY: both blocks are live, distinct, and at least `keep`
            // bytes long; the old one is a live +2 block, freed once.
            unsafe {
                move_data(ptr, new, keep);
                let freed = self.object.deallocate(ptr, &mut pages);
                debug_assert!(freed, "a live +2 block was refused");
            }
            new
        } else {
            let (old_small, new_small) = (self.is_small(layout), self.is_small(new_layout));
            let old = if old_small { self.object.class_layout(layout) } else { layout };
            let new = if new_small { self.object.class_layout(new_layout) } else { new_layout };
            // The third doubling in a row of a buffer being grown: it moves
            // now, while small, to the start of layer 0's largest free
            // chunk, where the doublings to come happen in place (left
            // where it is, it would grow in place until its neighbour
            // stops it, and then be copied at its largest).
            let promote = !new_small && matches!(growth, Some((_, streak)) if streak == PROMOTING_STREAK);
            let target = if promote { old.size() } else { new.size() };
            // SAFETY: forwarded contract; layer 0 refuses what is not its
            // block in use (a promoted block is only checked: same size).
            let in_place = unsafe { self.segment.resize_in_place(ptr, old, target, &mut self.source) }
                .map_err(AllocError::Refused)?
                && !promote;
            let backward = if in_place {
                Some(ptr)
            } else if promote {
                None
            } else {
                // SAFETY: a layer 0 block, checked just above; `keep` fits
                // both sizes.
                unsafe { self.segment.grow_backward(ptr, old, new.size(), keep) }
            };
            let kept = backward.is_some();
            let moved = match backward {
                Some(q) => q,
                None => {
                    let q = self.allocate_moving(new_layout, growth)?;
                    // SAFETY: both blocks are live, distinct, and at least
                    // `keep` bytes long; the old one was checked above and
                    // is freed once.
                    unsafe {
                        move_data(ptr, q, keep);
                        self.segment.deallocate_checked(ptr, old, &mut self.source);
                    }
                    q
                }
            };
            // Counted in layer 0: the old block goes; a block kept there
            // (resized or grown backward) comes back under its new size
            // (`allocate` counts the blocks it places itself).
            if old_small {
                self.note_small_in_layer_0(layout, false);
            }
            if kept && new_small {
                self.note_small_in_layer_0(new_layout, true);
            }
            if in_place {
                stat!(self.stats.realloc_in_place += 1);
                if let Some((slot, streak)) = growth {
                    self.growing[slot] = (ptr.as_ptr() as usize, streak);
                }
                return Ok(reach(ptr));
            }
            moved
        };
        if let Some((slot, streak)) = growth {
            self.growing[slot] = (moved.as_ptr() as usize, streak);
        }
        stat!(self.stats.realloc_moved += 1);
        Ok(moved)
    }

    /// The slot in the table of growing blocks for a doubling realloc of
    /// `ptr`, and how many doublings in a row it has had with this one.
    #[cold]
    fn doubling_streak(&mut self, ptr: NonNull<u8>) -> (usize, u32) {
        match self.growing.iter().position(|g| g.0 == ptr.as_ptr() as usize) {
            Some(i) => (i, self.growing[i].1 + 1),
            None => {
                let next = self.growing_next;
                self.growing_next = (next + 1) % self.growing.len();
                (next, 1)
            }
        }
    }

    /// The new block of a realloc that moves: at the start of layer 0's
    /// largest free chunk for a block on its [`PROMOTING_STREAK`]th
    /// doubling in a row, else an ordinary allocation.
    #[inline]
    fn allocate_moving(
        &mut self,
        layout: Layout,
        growth: Option<(usize, u32)>,
    ) -> Result<NonNull<u8>, AllocError> {
        match growth {
            // Small blocks are never promoted: they belong to their size
            // class (in layer +2, or in layer 0 under the class's layout,
            // which every later free and resize of theirs assumes).
            Some((_, streak)) if streak >= PROMOTING_STREAK && !self.is_small(layout) => {
                // SAFETY: as in `allocate`.
                unsafe { self.segment.allocate_growable(layout, &mut self.source) }
                    .map_err(AllocError::Segment)
            }
            _ => self.allocate(layout),
        }
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
            front: FrontStats {
                small_in_layer_0: self.small_in_layer_0.iter().map(|&n| n as usize).sum(),
                ..self.stats
            },
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
    fn or_null(&mut self, result: Result<NonNull<u8>, AllocError>) -> *mut u8 {
        match result {
            Ok(p) => p.as_ptr(),
            Err(AllocError::Refused(_)) => {
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

/// The layout of a block of `size` usable bytes (a multiple of 8, not 0)
/// found without its own: aligned to the largest power of two dividing the
/// size, up to 16 (a +2 block of an 8-byte class is 8-aligned).
#[inline]
pub(crate) fn usable_layout(size: usize) -> Layout {
    let align = (size & size.wrapping_neg()).min(ALIGNMENT);
    Layout::from_size_align(size, align).expect("a block's size fits isize")
}

/// Copies `len` bytes of a block that moves by realloc from `src` to `dst`.
///
/// A large copy whose destination lies just after its source modulo 4 KiB
/// is copied from the end: copied from the start, each load would follow a
/// store to an address the CPU cannot tell apart from it (4K aliasing), and
/// the string copy of the C library slows down several times (measured on
/// the random-30000 trace: 66 KiB in 81 000 ticks against 25 000).
///
/// # Safety
///
/// `src` and `dst` must be valid for `len` bytes and not overlap.
#[inline]
unsafe fn move_data(src: NonNull<u8>, dst: NonNull<u8>, len: usize) {
    let (s, d) = (src.as_ptr(), dst.as_ptr());
    if len < 4096 || (d as usize).wrapping_sub(s as usize) % 4096 >= 256 {
        // SAFETY: the caller's promise.
        unsafe { ptr::copy_nonoverlapping(s, d, len) };
        return;
    }
    // From the end, in pieces: each piece's loads come before the stores
    // that alias them.
    let mut left = len;
    while left > 0 {
        let piece = left.min(256);
        left -= piece;
        // SAFETY: `[left, left + piece)` lies in both blocks.
        unsafe { ptr::copy_nonoverlapping(s.add(left), d.add(left), piece) };
    }
}

/// How a waiter for the heap lock passes time: yielding to the OS with the
/// `std` feature, spinning otherwise.
#[cfg(all(feature = "std", not(feature = "critical-section")))]
type Relax = spin::Yield;
#[cfg(all(not(feature = "std"), not(feature = "critical-section")))]
type Relax = spin::Spin;

/// The lock [`LockedHeap`] uses unless told otherwise: a spin lock (which
/// yields to the OS scheduler with the `std` feature). Where threads
/// outnumber cores and meet at the lock often, a
/// [`FutexLock`](crate::sync::FutexLock) (Linux, `std`) does better; its
/// unlock is an exchange where this one's is a store, which costs the
/// single-threaded quick path about 10 instructions per call (callgrind,
/// cpython-churn: 155 against 145), so it is not the default.
#[cfg(not(feature = "critical-section"))]
pub type DefaultLock = spin::mutex::SpinMutex<(), Relax>;
/// The lock [`LockedHeap`] uses unless told otherwise: with the
/// `critical-section` feature, a critical section.
#[cfg(feature = "critical-section")]
pub type DefaultLock = crate::sync::CriticalSectionLock;

/// strata's allocator stack behind a lock: a drop-in replacement for
/// `linked_list_allocator::LockedHeap`.
///
/// `S` is the page source (a [`RegionSource`] over a caller's region by
/// default; the kernel uses its VMM) and `L` the lock, any
/// [`lock_api::RawMutex`]: a spin lock by default, an interrupt-masking lock
/// in the kernel, a critical section on single-core microcontrollers.
///
/// ```
/// use core::alloc::{GlobalAlloc, Layout};
/// use core::mem::MaybeUninit;
///
/// static HEAP: strata::LockedHeap = strata::LockedHeap::empty();
/// static mut MEMORY: [MaybeUninit<u8>; 256 * 1024] = [MaybeUninit::uninit(); 256 * 1024];
///
/// // SAFETY: MEMORY is used for nothing else.
/// HEAP.init_from_slice(unsafe { &mut *(&raw mut MEMORY) });
/// let layout = Layout::new::<[u64; 4]>();
/// let p = unsafe { HEAP.alloc(layout) };
/// assert!(!p.is_null());
/// unsafe { HEAP.dealloc(p, layout) };
/// ```
pub struct LockedHeap<S = RegionSource, L: lock_api::RawMutex = DefaultLock> {
    /// The heap, on lines of its own: the lock holder's writes do not
    /// slow the threads that read the fields below from their caches.
    heap: Padded<lock_api::Mutex<L, Heap<S>>>,
    initialized: AtomicBool,
    /// Whether threads cache this heap's blocks (`std`): [`CACHES_AUTO`]
    /// until two threads first meet at the lock, then [`CACHES_ON`];
    /// [`CACHES_OFF`] or on when set so.
    #[cfg(feature = "std")]
    #[cfg_attr(feature = "debug", allow(dead_code))]
    thread_caches: core::sync::atomic::AtomicU8,
    /// The heap's identity for the thread caches.
    #[cfg(all(feature = "std", not(feature = "debug")))]
    link: thread_cache::Link,
    /// Layer +2's arena bitmap, for threads to read without the lock.
    #[cfg(all(feature = "std", not(feature = "debug")))]
    arena_mirror: thread_cache::ArenaMirror,
}

impl<S, L: lock_api::RawMutex> fmt::Debug for LockedHeap<S, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockedHeap").field("initialized", &self.initialized).finish()
    }
}

impl<L: lock_api::RawMutex> Default for LockedHeap<RegionSource, L> {
    fn default() -> Self {
        Self::empty_with_lock()
    }
}

impl LockedHeap {
    /// A heap with no memory; call [`init`](Self::init) or
    /// [`init_from_slice`](Self::init_from_slice) once before use.
    pub const fn empty() -> Self {
        Self::empty_with_lock()
    }
}

impl<L: lock_api::RawMutex> LockedHeap<RegionSource, L> {
    /// [`empty`](LockedHeap::empty) with another lock `L`.
    pub const fn empty_with_lock() -> Self {
        Self {
            heap: Padded(lock_api::Mutex::new(Heap::empty())),
            initialized: AtomicBool::new(false),
            #[cfg(feature = "std")]
            thread_caches: core::sync::atomic::AtomicU8::new(CACHES_AUTO),
            #[cfg(all(feature = "std", not(feature = "debug")))]
            link: thread_cache::Link::new(),
            #[cfg(all(feature = "std", not(feature = "debug")))]
            arena_mirror: thread_cache::ArenaMirror::new(),
        }
    }

    /// Gives the heap the region `[heap_bottom, heap_bottom + heap_size)`.
    ///
    /// # Panics
    ///
    /// On a second call: re-initialising a heap in use would corrupt it.
    ///
    /// # Safety
    ///
    /// The region must be valid for reads and writes and used by nothing else
    /// for the rest of the program (`'static`).
    pub unsafe fn init(&self, heap_bottom: *mut u8, heap_size: usize) {
        if self.initialized.swap(true, Ordering::AcqRel) {
            panic!("strata::LockedHeap::init called twice");
        }
        let mut heap = self.heap.lock();
        heap.assert_unused();
        // SAFETY: forwarded from the caller; the source has never had memory.
        unsafe { heap.source.reset(heap_bottom, heap_size) };
        heap.configure();
    }

    /// Gives the heap a static region: the safe form of [`init`](Self::init).
    ///
    /// # Panics
    ///
    /// On a second call.
    pub fn init_from_slice(&self, mem: &'static mut [MaybeUninit<u8>]) {
        // SAFETY: a `'static mut` slice is valid and ours alone forever.
        unsafe { self.init(mem.as_mut_ptr().cast(), mem.len()) }
    }
}

impl<S: PageSource, L: lock_api::RawMutex> LockedHeap<S, L> {
    /// A heap over `source`, whose window is `window` (as
    /// [`PageSource::window`] will report it), usable at once.
    pub const fn new(source: S, window: (usize, usize)) -> Self {
        Self {
            heap: Padded(lock_api::Mutex::new(Heap::new_in_window(source, window))),
            initialized: AtomicBool::new(true),
            #[cfg(feature = "std")]
            thread_caches: core::sync::atomic::AtomicU8::new(CACHES_AUTO),
            #[cfg(all(feature = "std", not(feature = "debug")))]
            link: thread_cache::Link::new(),
            #[cfg(all(feature = "std", not(feature = "debug")))]
            arena_mirror: thread_cache::ArenaMirror::new(),
        }
    }

    /// Gives a heap made over a source with no memory yet (its window
    /// empty: [`OsSource::unreserved`](crate::source::OsSource::unreserved),
    /// [`RegionSource::empty`]) the source that has it: the form of
    /// [`init`](LockedHeap::init) for any page source.
    ///
    /// # Panics
    ///
    /// If the heap has a window already: replacing a heap in use would
    /// corrupt it.
    pub fn init_with(&self, source: S) {
        self.heap.lock().install(source);
        self.initialized.store(true, Ordering::Release);
    }

    /// [`init_with`](Self::init_with) for a heap built with its own
    /// geometry and tunables ([`Heap::with_geometry`]).
    ///
    /// # Panics
    ///
    /// As [`init_with`](Self::init_with).
    pub fn init_heap(&self, new: Heap<S>) {
        let mut heap = self.heap.lock();
        assert_eq!(heap.source.window().1, 0, "strata::LockedHeap::init_with on a heap that has memory");
        *heap = new;
        self.initialized.store(true, Ordering::Release);
    }

    /// Before `fork()` (register with `pthread_atfork` as *prepare*, and
    /// [`fork_parent`](Self::fork_parent) and
    /// [`fork_child`](Self::fork_child) as the others): takes the heap's
    /// lock and, with thread caches, every thread's cache, so that the
    /// child inherits neither half-changed. The lock is held until the fork
    /// is over.
    ///
    /// # Panics
    ///
    /// If another heap's fork hooks are running: the caches' registry is
    /// one per process, so one heap per process uses these hooks (the C
    /// library's `malloc`).
    #[cfg(feature = "std")]
    pub fn fork_prepare(&self) {
        assert!(!FORKING.swap(true, Ordering::Acquire), "strata: fork hooks of two heaps");
        core::mem::forget(self.heap.lock());
        #[cfg(not(feature = "debug"))]
        thread_cache::fork_prepare();
    }

    /// After `fork()`, in the parent: releases what
    /// [`fork_prepare`](Self::fork_prepare) took.
    ///
    /// # Safety
    ///
    /// Once after each `fork_prepare`, on the thread that called it.
    #[cfg(feature = "std")]
    pub unsafe fn fork_parent(&self) {
        // SAFETY: the caller's promise: after `fork_prepare`.
        unsafe {
            #[cfg(not(feature = "debug"))]
            thread_cache::fork_parent();
            self.heap.force_unlock();
        }
        FORKING.store(false, Ordering::Release);
    }

    /// After `fork()`, in the child, where only the forking thread lives
    /// on: the blocks the other threads' caches held go back to the heap
    /// (as when a thread exits), and the heap's lock is released.
    ///
    /// # Safety
    ///
    /// As [`fork_parent`](Self::fork_parent), in the child.
    #[cfg(feature = "std")]
    pub unsafe fn fork_child(&self) {
        // SAFETY: the caller's promise: after `fork_prepare`, in the child.
        unsafe {
            #[cfg(not(feature = "debug"))]
            thread_cache::fork_child();
            self.heap.force_unlock();
        }
        FORKING.store(false, Ordering::Release);
    }

    /// Runs `f` with the heap locked.
    pub fn with<R>(&self, f: impl FnOnce(&mut Heap<S>) -> R) -> R {
        let mut heap = self.lock();
        let r = f(&mut heap);
        self.settle(heap);
        r
    }

    /// Whether the heap's lock is held.
    pub fn is_locked(&self) -> bool {
        self.heap.is_locked()
    }

    /// Releases the heap's lock, held by code that will never run again: a
    /// kernel test case abandoned by a panic or a fault, whose stack was
    /// dropped without unwinding.
    ///
    /// # Safety
    ///
    /// The lock's holder must never resume or touch the heap again. It may
    /// have been abandoned in the middle of an operation; the caller accepts
    /// the heap as it was left (a test framework reports the case as failed
    /// and checks the invariants).
    pub unsafe fn force_unlock(&self) {
        // SAFETY: the caller's promise: the holder is gone.
        unsafe { self.heap.force_unlock() }
    }

    /// Counters of every layer (with thread caches, including the reallocs
    /// they did without the lock, in place or into a cached block).
    pub fn stats(&self) -> HeapStats {
        #[allow(unused_mut)]
        let mut stats = self.lock().stats();
        #[cfg(all(feature = "std", not(feature = "debug")))]
        {
            let cached = thread_cache::realloc_counts(&self.link);
            stats.front.realloc_in_place += cached.in_place;
            stats.front.realloc_moved += cached.moved;
        }
        stats
    }

    /// The bytes the caller may use of block `ptr` (C's
    /// `malloc_usable_size`): at least the size it was allocated with, as
    /// [`Heap::usable_size`] finds it (with `debug`, exactly that size, from
    /// the block's debug header). `None` for null, a pointer no layer owns,
    /// a block not in use (as far as a free would tell), or a block of a
    /// first-fit heap, which keeps no sizes.
    ///
    /// # Safety
    ///
    /// If the heap owns `ptr`, it must be a live block of it (with thread
    /// caches, its size is read without the lock).
    pub unsafe fn usable_size(&self, ptr: *const u8) -> Option<usize> {
        let p = NonNull::new(ptr.cast_mut())?;
        // SAFETY: forwarded contract.
        unsafe { self.usable_layout(p) }.map(|l| l.size())
    }

    /// Frees a block without its layout (C's `free`): null is ignored, and
    /// what [`Heap::deallocate_unsized`] refuses is refused (counted in
    /// `refused_frees`; with `debug`, checked and reported as a violation
    /// like any free).
    ///
    /// # Safety
    ///
    /// If the heap owns `ptr`, it must be a live block of it, not used after
    /// this call.
    pub unsafe fn dealloc_unsized(&self, ptr: *mut u8) {
        let Some(p) = NonNull::new(ptr) else { return };
        // SAFETY: forwarded contract; the quick path frees only a +2 block
        // that starts where a block of its pool does.
        #[cfg(not(feature = "debug"))]
        if no_unwind(|| unsafe { self.free_quick_unsized(p) }) {
            return;
        }
        #[cfg(all(feature = "std", not(feature = "debug")))]
        if self.caches_on() {
            // Through the sized path, which knows the caches.
            // SAFETY: forwarded contract.
            return match unsafe { self.usable_layout(p) } {
                // SAFETY: forwarded contract; the layout is the block's own.
                Some(layout) => unsafe { self.dealloc(ptr, layout) },
                None => self.refuse(),
            };
        }
        no_unwind(|| {
            let mut heap = self.lock();
            // Debug mode checks and reports any pointer; one without a
            // header of this heap is checked as a byte, and refused.
            #[cfg(feature = "debug")]
            // SAFETY: forwarded contract; the checks verify the layout.
            let refused = unsafe {
                let layout = heap.debug_layout(p).map_or(Layout::new::<u8>(), |(layout, _)| layout);
                heap.debug_deallocate(p, layout, Domain::HEAP)
            }
            .is_err();
            // SAFETY: forwarded contract.
            #[cfg(not(feature = "debug"))]
            let refused = unsafe { heap.deallocate_unsized(p) }.is_err();
            if refused {
                heap.stats.refused_frees += 1;
            }
            self.settle(heap);
        })
    }

    /// Resizes a block without its layout (C's `realloc`), keeping its first
    /// bytes: the new block, or null (the old one unchanged) when memory
    /// runs out, when `new_size` is 0 or overflows a layout, or when the
    /// block is refused as [`dealloc_unsized`](Self::dealloc_unsized)
    /// refuses it. Null `ptr` is an allocation, as in C.
    ///
    /// # Safety
    ///
    /// As [`dealloc_unsized`](Self::dealloc_unsized); on success the old
    /// block is not used again.
    pub unsafe fn realloc_unsized(&self, ptr: *mut u8, new_size: usize) -> *mut u8 {
        let Some(p) = NonNull::new(ptr) else {
            return match Layout::from_size_align(new_size, ALIGNMENT) {
                // SAFETY: a layout of non-zero size.
                Ok(layout) if new_size != 0 => unsafe { self.alloc(layout) },
                _ => ptr::null_mut(),
            };
        };
        if new_size == 0 {
            return ptr::null_mut();
        }
        // Debug mode checks and reports any block it is given, as `realloc`.
        #[cfg(feature = "debug")]
        let layout = self.with(|heap| heap.debug_layout(p).map(|(layout, _)| layout));
        // SAFETY: forwarded contract.
        #[cfg(not(feature = "debug"))]
        let layout = unsafe { self.usable_layout(p) };
        match layout {
            // SAFETY: forwarded contract; the layout is the block's own,
            // the size not zero (`realloc` refuses one that overflows).
            Some(layout) => unsafe { self.realloc(ptr, layout, new_size) },
            None => {
                self.refuse();
                ptr::null_mut()
            }
        }
    }

    /// The layout block `p` answers to ([`Heap::usable_layout`]; with
    /// `debug`, the one its header records): without the lock where the
    /// thread caches can tell.
    ///
    /// # Safety
    ///
    /// As [`usable_size`](Self::usable_size).
    unsafe fn usable_layout(&self, p: NonNull<u8>) -> Option<Layout> {
        #[cfg(all(feature = "std", not(feature = "debug")))]
        if self.caches_on()
            // SAFETY: forwarded contract.
            && let Some(layout) = unsafe {
                thread_cache::usable_layout(&self.link, &self.arena_mirror, p, || self.cache_geometry())
            }
        {
            return Some(layout);
        }
        let heap = self.lock();
        #[cfg(feature = "debug")]
        let layout = heap.debug_layout(p).and_then(|(layout, live)| live.then_some(layout));
        #[cfg(not(feature = "debug"))]
        let layout = heap.usable_layout(p).ok();
        self.settle(heap);
        layout
    }

    /// Gives the spares back to the page source (see [`Heap::trim`]), after
    /// every block that threads' caches hold for this heap (with thread
    /// caches).
    pub fn trim(&self) -> (usize, usize) {
        let mut heap = self.lock();
        #[cfg(all(feature = "std", not(feature = "debug")))]
        Self::reclaim_cached(&self.link, &mut heap);
        let r = heap.trim();
        // The spare arena may have gone: threads must stop caching its blocks.
        self.settle(heap);
        r
    }
}

/// Whether a heap's fork hooks are between *prepare* and *parent* or
/// *child*.
#[cfg(feature = "std")]
static FORKING: AtomicBool = AtomicBool::new(false);

/// [`LockedHeap`]'s thread caches are off.
#[cfg(feature = "std")]
#[cfg_attr(feature = "debug", allow(dead_code))]
const CACHES_OFF: u8 = 0;
/// They come on the first time two threads meet at the lock.
#[cfg(feature = "std")]
const CACHES_AUTO: u8 = 1;
/// They are on.
#[cfg(feature = "std")]
const CACHES_ON: u8 = 2;

/// A heap that goes takes its blocks out of every thread's cache (they
/// are forgotten: their memory goes with the heap) and frees its place in
/// the caches' registry.
#[cfg(all(feature = "std", not(feature = "debug")))]
impl<S, L: lock_api::RawMutex> Drop for LockedHeap<S, L> {
    fn drop(&mut self) {
        thread_cache::detach(&mut self.link);
    }
}

// SAFETY: every method takes the lock, and `Heap` upholds the `GlobalAlloc`
// contract: blocks are aligned to `layout.align()`, at least `layout.size()`
// long, and disjoint while live; failures return null. In debug mode the
// block handed out is the data part of a larger block of the same heap.
unsafe impl<S: PageSource, L: lock_api::RawMutex> GlobalAlloc for LockedHeap<S, L> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { self.alloc_in(layout, Domain::HEAP) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { self.dealloc_in(ptr, layout, Domain::HEAP) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // The block as `alloc` finds it (the quick path, a thread's cache),
        // zeroed outside the lock.
        #[cfg(not(feature = "debug"))]
        {
            // SAFETY: forwarded contract.
            let p = unsafe { self.alloc(layout) };
            if !p.is_null() {
                // SAFETY: a fresh block at least `layout.size()` long.
                unsafe { ptr::write_bytes(p, 0, layout.size()) };
            }
            p
        }
        #[cfg(feature = "debug")]
        no_unwind(|| {
            let mut heap = self.lock();
            let result = heap.debug_allocate(layout, Domain::HEAP, true);
            let p = self.block_or_null(&mut heap, result, |h| h.allocate_zeroed(layout));
            self.settle(heap);
            p
        })
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        no_unwind(|| {
            let Some(p) = NonNull::new(ptr) else {
                return ptr::null_mut();
            };
            #[cfg(all(feature = "std", not(feature = "debug")))]
            if self.caches_on() {
                // SAFETY: forwarded contract.
                match unsafe { thread_cache::realloc(&self.link, &self.arena_mirror, p, layout, new_size) } {
                    // A block freed into a cache (this thread's or
                    // another's): refused, as the heap refuses a block it
                    // has freed.
                    thread_cache::Realloc::Cached => {
                        self.refuse();
                        return ptr::null_mut();
                    }
                    thread_cache::Realloc::Locked => {}
                    thread_cache::Realloc::InPlace => {
                        return reach(p).as_ptr();
                    }
                    thread_cache::Realloc::Refill { new } => {
                        let new = self.alloc_stocking(new, Some(p));
                        if !new.is_null() {
                            // SAFETY: both blocks are live, distinct, and at
                            // least this long; the old one is freed once,
                            // and not used afterwards.
                            unsafe {
                                ptr::copy_nonoverlapping(p.as_ptr(), new, layout.size().min(new_size));
                                self.dealloc_in(p.as_ptr(), layout, Domain::HEAP);
                            }
                        }
                        return new;
                    }
                    thread_cache::Realloc::Moved { new, free_old } => {
                        if free_old {
                            // SAFETY: the old block, live until now, freed once.
                            unsafe { self.free_locked(p, layout) };
                        }
                        return new.as_ptr();
                    }
                }
            }
            let mut heap = self.lock();
            // SAFETY: `GlobalAlloc`'s contract: a live block of ours with `layout`.
            #[cfg(feature = "debug")]
            let result = unsafe { heap.debug_reallocate(p, layout, new_size, Domain::HEAP) };
            // SAFETY: as above.
            #[cfg(not(feature = "debug"))]
            let result = unsafe { heap.reallocate(p, layout, new_size) };
            // SAFETY: as above: a failed realloc left the block as it was.
            let p = self.block_or_null(&mut heap, result, |h| unsafe { h.reallocate(p, layout, new_size) });
            self.settle(heap);
            p
        })
    }
}

/// Runs an allocator entry point so that a panic inside it aborts the
/// program instead of unwinding out of it (undefined behaviour under
/// `GlobalAlloc`'s contract): for instance `linked_list_allocator`'s own
/// check of a double free on a first-fit heap. Free on the normal path; with
/// `panic = "abort"` (the kernel, firmware) the guard never runs.
#[inline(always)]
fn no_unwind<R>(f: impl FnOnce() -> R) -> R {
    /// Dropped only while a panic unwinds through the entry point: its own
    /// panic is a panic during unwinding, which aborts.
    struct Abort;
    impl Drop for Abort {
        fn drop(&mut self) {
            panic!("strata: a panic inside the allocator cannot unwind out of GlobalAlloc; aborting");
        }
    }
    let guard = Abort;
    let r = f();
    core::mem::forget(guard);
    r
}

// SAFETY: as the `GlobalAlloc` impl, of which this is the general form.
unsafe impl<S: PageSource, L: lock_api::RawMutex> DomainAlloc for LockedHeap<S, L> {
    #[inline]
    unsafe fn alloc_in(&self, layout: Layout, domain: Domain) -> *mut u8 {
        #[cfg(not(feature = "debug"))]
        if let Some(p) = no_unwind(|| self.alloc_quick(layout)) {
            return p.as_ptr();
        }
        self.alloc_rest(layout, domain)
    }

    #[inline]
    unsafe fn dealloc_in(&self, ptr: *mut u8, layout: Layout, domain: Domain) {
        let Some(p) = NonNull::new(ptr) else { return };
        // SAFETY: `GlobalAlloc`'s contract: `ptr` came from this allocator
        // with `layout`, and is not used after this call.
        #[cfg(not(feature = "debug"))]
        if no_unwind(|| unsafe { self.free_quick(p) }) {
            return;
        }
        // SAFETY: as above; the quick path left the block as it was.
        unsafe { self.dealloc_rest(p, layout, domain) }
    }
}

impl<S: PageSource, L: lock_api::RawMutex> LockedHeap<S, L> {
    /// Every allocation the quick path leaves: through this thread's cache
    /// when the caches are on, else under the lock.
    #[inline(never)]
    fn alloc_rest(&self, layout: Layout, domain: Domain) -> *mut u8 {
        no_unwind(|| {
            #[cfg(all(feature = "std", not(feature = "debug")))]
            if domain == Domain::HEAP && self.caches_on() {
                return match thread_cache::take(&self.link, layout) {
                    Some(p) => p.as_ptr(),
                    None => self.alloc_stocking(layout, None),
                };
            }
            self.alloc_locked(layout, domain)
        })
    }

    /// An allocation this thread's cache could not serve: through the lock,
    /// and, for a small request from a pool, up to
    /// [`thread_cache::REFILL`] more blocks of its class from the same pool
    /// go into the cache under the same lock, for the requests to come.
    ///
    /// `moving`: the block of a realloc that moves (counted as such). It is
    /// checked under the lock first, as the heap checks a block it frees: a
    /// block the heap has freed already is refused (null, counted), and
    /// nothing is allocated.
    #[cfg(all(feature = "std", not(feature = "debug")))]
    #[inline(never)]
    fn alloc_stocking(&self, layout: Layout, moving: Option<NonNull<u8>>) -> *mut u8 {
        let stocking = thread_cache::attached(&self.link, || self.cache_geometry());
        let mut heap = self.lock();
        if let Some(old) = moving
            // SAFETY: `may_free` is asked of a block of an arena of ours.
            && !(heap.object.owns(old.as_ptr()) && unsafe { heap.object.may_free(old) })
        {
            heap.stats.refused_frees += 1;
            self.settle(heap);
            return ptr::null_mut();
        }
        let result = heap.allocate(layout);
        let p = self.block_or_null(&mut heap, result, |h| h.allocate(layout));
        if moving.is_some() && !p.is_null() {
            stat!(heap.stats.realloc_moved += 1);
        }
        if stocking && heap.is_small(layout) && heap.object.owns(p) {
            let object = &mut heap.object;
            // SAFETY: blocks fresh from the pools of the class of `layout`.
            unsafe {
                thread_cache::stock(&self.link, layout, || {
                    object.allocate_from_pools(layout.size(), layout.align())
                })
            };
        }
        self.settle(heap);
        p
    }

    /// Every free the quick path leaves, as [`alloc_rest`](Self::alloc_rest).
    ///
    /// # Safety
    ///
    /// As [`DomainAlloc::dealloc_in`].
    #[inline(never)]
    unsafe fn dealloc_rest(&self, p: NonNull<u8>, layout: Layout, domain: Domain) {
        no_unwind(|| {
            #[cfg(all(feature = "std", not(feature = "debug")))]
            if domain == Domain::HEAP && self.caches_on() {
                // SAFETY: `GlobalAlloc`'s contract: a live block of this heap
                // with `layout`, not used after this call.
                match unsafe {
                    thread_cache::put(&self.link, &self.arena_mirror, p, layout, || self.cache_geometry())
                } {
                    Ok(()) => return,
                    Err(thread_cache::Declined::DoubleFree) => return self.refuse(),
                    Err(thread_cache::Declined::Pass) => {}
                }
            }
            #[cfg(feature = "debug")]
            {
                let mut heap = self.lock();
                // SAFETY: `GlobalAlloc`'s contract: `ptr` came from this
                // allocator with `layout` (through `domain`, which debug mode
                // checks).
                if unsafe { heap.debug_deallocate(p, layout, domain) }.is_err() {
                    heap.stats.refused_frees += 1;
                }
                self.settle(heap);
            }
            #[cfg(not(feature = "debug"))]
            {
                let _ = domain;
                // SAFETY: `GlobalAlloc`'s contract: `ptr` came from this
                // allocator with `layout`.
                unsafe { self.free_locked(p, layout) };
            }
        })
    }
}

impl<S: PageSource, L: lock_api::RawMutex> LockedHeap<S, L> {
    /// Whether the quick paths may serve a call: with `std`, only while the
    /// thread caches wait for a second thread. (Once they have been on,
    /// blocks that exiting threads gave back wait for the full lock to free
    /// them; while on, the caches serve first.)
    #[cfg(not(feature = "debug"))]
    #[inline(always)]
    fn quick_allowed(&self) -> bool {
        #[cfg(feature = "std")]
        return self.thread_caches.load(Ordering::Relaxed) == CACHES_AUTO;
        #[cfg(not(feature = "std"))]
        return true;
    }

    /// The common allocation, kept small enough to need no stack frame: a
    /// small request served from the head pool of its class, under the lock
    /// if it is free. `None` (nothing done) sends the call on to
    /// [`alloc_rest`](Self::alloc_rest), which does everything else —
    /// the same choice [`Heap::allocate`] makes, so the quick path changes
    /// no block's placement.
    #[cfg(not(feature = "debug"))]
    #[inline(always)]
    fn alloc_quick(&self, layout: Layout) -> Option<NonNull<u8>> {
        if !self.quick_allowed() {
            return None;
        }
        let mut heap = self.heap.try_lock()?;
        if !heap.is_small(layout) {
            return None;
        }
        heap.object.allocate_from_pools(layout.size(), layout.align())
    }

    /// The common free, as [`alloc_quick`](Self::alloc_quick): a block of
    /// layer +2 whose pool stays on its lists. `false` (nothing done) sends
    /// the call on to [`dealloc_rest`](Self::dealloc_rest).
    ///
    /// # Safety
    ///
    /// As [`Heap::deallocate`].
    #[cfg(not(feature = "debug"))]
    #[inline(always)]
    unsafe fn free_quick(&self, ptr: NonNull<u8>) -> bool {
        if !self.quick_allowed() {
            return false;
        }
        let Some(mut heap) = self.heap.try_lock() else { return false };
        // SAFETY: a block of an arena of ours is, by the caller's contract,
        // a live +2 block.
        heap.object.owns(ptr.as_ptr()) && unsafe { heap.object.deallocate_quick(ptr) }
    }

    /// [`free_quick`](Self::free_quick) for a free without a layout: the
    /// block must also start where a block of its pool does.
    ///
    /// # Safety
    ///
    /// As [`Heap::deallocate_unsized`].
    #[cfg(not(feature = "debug"))]
    #[inline(always)]
    unsafe fn free_quick_unsized(&self, ptr: NonNull<u8>) -> bool {
        if !self.quick_allowed() {
            return false;
        }
        let Some(mut heap) = self.heap.try_lock() else { return false };
        let ptr = reach(ptr);
        // SAFETY: a pointer into an arena of ours, checked to be a block of
        // its pool, is by the caller's contract a live +2 block.
        heap.object.owns(ptr.as_ptr())
            && unsafe { heap.object.is_block_start(ptr) && heap.object.deallocate_quick(ptr) }
    }

    /// Allocates through the lock.
    #[inline(always)]
    fn alloc_locked(&self, layout: Layout, domain: Domain) -> *mut u8 {
        let mut heap = self.lock();
        #[cfg(feature = "debug")]
        let result = heap.debug_allocate(layout, domain, false);
        #[cfg(not(feature = "debug"))]
        let result = {
            let _ = domain;
            heap.allocate(layout)
        };
        let p = self.block_or_null(&mut heap, result, |h| h.allocate(layout));
        self.settle(heap);
        p
    }

    /// Frees `ptr` through the lock, counting a refusal in `refused_frees`.
    ///
    /// # Safety
    ///
    /// As [`Heap::deallocate`].
    #[cfg(not(feature = "debug"))]
    #[inline(always)]
    unsafe fn free_locked(&self, ptr: NonNull<u8>, layout: Layout) {
        let mut heap = self.lock();
        // SAFETY: forwarded contract.
        if unsafe { heap.deallocate(ptr, layout) }.is_err() {
            heap.stats.refused_frees += 1;
        }
        self.settle(heap);
    }

    /// Takes the lock. With thread caches, first frees the blocks that
    /// exiting threads gave back, so that whoever holds the lock sees them
    /// free.
    ///
    /// While the caches wait for a second thread ([`CACHES_AUTO`]), the
    /// lock is tried first: the first time it is found held by another
    /// thread, the caches come on.
    #[inline(always)]
    fn lock(&self) -> lock_api::MutexGuard<'_, L, Heap<S>> {
        #[cfg(all(feature = "std", not(feature = "debug")))]
        if self.thread_caches.load(Ordering::Relaxed) == CACHES_AUTO {
            // No cache has held a block yet: none to free.
            return self.heap.try_lock().unwrap_or_else(|| self.contended());
        }
        #[allow(unused_mut)]
        let mut heap = self.heap.lock();
        #[cfg(all(feature = "std", not(feature = "debug")))]
        Self::free_returned(&self.link, &mut heap);
        heap
    }

    /// Two threads met at the lock while the caches waited for it: takes
    /// the lock and switches the caches on.
    #[cfg(all(feature = "std", not(feature = "debug")))]
    #[cold]
    #[inline(never)]
    fn contended(&self) -> lock_api::MutexGuard<'_, L, Heap<S>> {
        let heap = self.heap.lock();
        if self.thread_caches.load(Ordering::Relaxed) == CACHES_AUTO {
            self.caches_come_on(&heap);
        }
        heap
    }

    /// Brings the lock-free copies of the heap's state up to date, then
    /// lets threads cache (with the lock held): a thread that sees the
    /// caches on sees the copies made.
    #[cfg(all(feature = "std", not(feature = "debug")))]
    fn caches_come_on(&self, heap: &Heap<S>) {
        self.sync_mirror(heap, true);
        self.thread_caches.store(CACHES_ON, Ordering::Release);
    }

    /// Brings the lock-free copies of the heap's state up to date (with the
    /// lock held): the arena bitmap if its counters moved (or, `always`,
    /// whatever they say) and layer 0's window.
    #[cfg(all(feature = "std", not(feature = "debug")))]
    #[inline(always)]
    fn sync_mirror(&self, heap: &Heap<S>, always: bool) {
        let c = heap.object.counters();
        let counters = (c.allocated_total, c.reclaimed);
        if always {
            self.arena_mirror.force_sync(|| heap.object.arena_bitmap(), counters);
        } else {
            self.arena_mirror.sync(counters, || heap.object.arena_bitmap());
        }
        self.arena_mirror.sync_window(heap.segment.committed_window());
    }

    /// Whether threads cache this heap's blocks now.
    #[cfg(all(feature = "std", not(feature = "debug")))]
    #[inline(always)]
    fn caches_on(&self) -> bool {
        self.thread_caches.load(Ordering::Acquire) == CACHES_ON
    }

    /// Acts on a violation the debug checks found, once the lock is released
    /// (a panicking policy must not leave the heap locked).
    ///
    /// With thread caches, it first brings the copy of layer +2's arena
    /// bitmap that threads read without the lock up to date.
    #[inline(always)]
    #[allow(unused_mut)]
    fn settle(&self, mut heap: lock_api::MutexGuard<'_, L, Heap<S>>) {
        #[cfg(all(feature = "std", not(feature = "debug")))]
        if self.caches_on() {
            self.sync_mirror(&heap, false);
        }
        #[cfg(feature = "debug")]
        {
            let mut heap = heap;
            if let Some((violation, policy)) = heap.take_violation() {
                drop(heap);
                policy.apply(&violation);
            }
        }
        #[cfg(not(feature = "debug"))]
        drop(heap);
    }

    /// Switches the thread caches on or off for good. By default (with
    /// `std`) they come on by themselves the first time two threads meet at
    /// the heap's lock: a program that allocates from one thread keeps the
    /// plain locked path, which is as fast when nobody waits. Off, every
    /// call takes the lock, and the blocks threads' caches hold for this
    /// heap come back at once. With the `debug` feature the caches are
    /// always off: every block must pass through the debug hooks.
    #[cfg(feature = "std")]
    pub fn set_thread_caches(&self, on: bool) {
        #[allow(unused_mut)]
        let mut heap = self.lock();
        #[cfg(all(feature = "std", not(feature = "debug")))]
        if on {
            self.caches_come_on(&heap);
        } else {
            self.thread_caches.store(CACHES_OFF, Ordering::Release);
            Self::reclaim_cached(&self.link, &mut heap);
        }
        #[cfg(feature = "debug")]
        let _ = on;
        self.settle(heap);
    }

    /// Whether threads cache this heap's blocks now (see
    /// [`set_thread_caches`](Self::set_thread_caches)).
    #[cfg(feature = "std")]
    pub fn thread_caches_on(&self) -> bool {
        cfg!(not(feature = "debug")) && self.thread_caches.load(Ordering::Acquire) == CACHES_ON
    }

    /// Counts a refused free (or realloc) found before the heap was asked.
    #[cold]
    fn refuse(&self) {
        let mut heap = self.lock();
        heap.stats.refused_frees += 1;
        self.settle(heap);
    }

    /// Frees, with the lock held, the blocks that exiting threads gave back.
    #[cfg(all(feature = "std", not(feature = "debug")))]
    #[inline(always)]
    fn free_returned(link: &thread_cache::Link, heap: &mut Heap<S>) {
        let block = thread_cache::take_returned(link);
        if !block.is_null() {
            Self::free_returned_list(block, heap);
        }
    }

    /// Frees a list of returned blocks (see [`free_returned`](Self::free_returned)).
    #[cfg(all(feature = "std", not(feature = "debug")))]
    #[cold]
    #[inline(never)]
    fn free_returned_list(mut block: *mut u8, heap: &mut Heap<S>) {
        while let Some(b) = NonNull::new(block) {
            // SAFETY: returned blocks are linked through their first word,
            // and are live blocks of this heap: small ones of +2 (freed by
            // address), medium ones of layer 0 keeping their chunk size.
            unsafe {
                block = b.as_ptr().cast::<*mut u8>().read();
                let layout = if heap.object.owns(b.as_ptr()) {
                    let g = heap.object.geometry();
                    let class = object::block_class(reach(b), g.pool_shift).unwrap_or(0);
                    Layout::from_size_align_unchecked(object::class_size(class, g.class_shift), 8)
                } else {
                    thread_cache::medium_layout(b)
                };
                thread_cache::untag_returned(b, layout.size());
                if heap.deallocate(b, layout).is_err() {
                    heap.stats.refused_frees += 1;
                }
            }
        }
    }

    /// Frees, with the lock held, every block that threads' caches hold for
    /// this heap, and those that exiting threads gave back.
    #[cfg(all(feature = "std", not(feature = "debug")))]
    fn reclaim_cached(link: &thread_cache::Link, heap: &mut Heap<S>) {
        thread_cache::drain_all(link, &mut |block, layout| {
            // SAFETY: a cached block is a live block of this heap, which
            // `layout` frees.
            if unsafe { heap.deallocate(block, layout) }.is_err() {
                heap.stats.refused_frees += 1;
            }
        });
        Self::free_returned(link, heap);
    }

    /// The block of an allocation's `result`, or null, counted.
    #[inline(always)]
    fn block_or_null(
        &self,
        heap: &mut Heap<S>,
        result: Result<NonNull<u8>, AllocError>,
        again: impl FnOnce(&mut Heap<S>) -> Result<NonNull<u8>, AllocError>,
    ) -> *mut u8 {
        match result {
            Ok(p) => p.as_ptr(),
            Err(e) => self.failed(heap, e, again),
        }
    }

    /// An allocation failed with `e`: with thread caches, takes back what
    /// they hold for this heap and tries `again`, once, so that no request
    /// fails while cached memory could serve it; else null, counted.
    #[cold]
    #[inline(never)]
    fn failed(
        &self,
        heap: &mut Heap<S>,
        e: AllocError,
        again: impl FnOnce(&mut Heap<S>) -> Result<NonNull<u8>, AllocError>,
    ) -> *mut u8 {
        #[cfg(all(feature = "std", not(feature = "debug")))]
        if !matches!(e, AllocError::Refused(_) | AllocError::InvalidLayout { .. }) {
            Self::reclaim_cached(&self.link, heap);
            let result = again(heap);
            return heap.or_null(result);
        }
        let _ = again;
        heap.or_null(Err(e))
    }

    /// What a thread cache needs to know of this heap's layer +2.
    #[cfg(all(feature = "std", not(feature = "debug")))]
    #[cold]
    fn cache_geometry(&self) -> Option<thread_cache::Geometry> {
        let heap = self.lock();
        let g = heap.object.geometry();
        // A heap before `init` has no memory, and not yet its geometry.
        let geometry = (heap.source.window().1 != 0).then(|| thread_cache::Geometry {
            threshold: g.threshold,
            class_shift: g.class_shift,
            slots_start: heap.object.slots_start(),
            arena_shift: g.arena_shift,
            pool_shift: g.pool_shift,
        });
        self.settle(heap);
        geometry
    }

    /// Debug mode: sets what the heap does with a violation (a panic by
    /// default).
    #[cfg(feature = "debug")]
    pub fn set_debug_policy(&self, policy: debug::Policy) {
        self.heap.lock().set_debug_policy(policy);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;

    /// The event counters count with the `stats` feature and cost nothing
    /// (read 0) without it; `make test` runs this both ways.
    #[test]
    fn event_counters_follow_the_stats_feature() {
        let mut buf = vec![0u8; 8 << 20];
        // SAFETY: the buffer outlives the heap and is used by nothing else.
        let source = unsafe { RegionSource::new(buf.as_mut_ptr(), buf.len()) };
        let mut heap = Heap::new(source);
        let layout = Layout::from_size_align(100, 8).unwrap();
        let p = heap.allocate(layout).unwrap();
        // A block right after it, so that growing it moves it.
        let fence = heap.allocate(layout).unwrap();
        // SAFETY: a live block of this heap with `layout`.
        let p = unsafe { heap.reallocate(p, layout, 104) }.unwrap();
        let layout = Layout::from_size_align(104, 8).unwrap();
        // SAFETY: as above.
        let q = unsafe { heap.reallocate(p, layout, 2000) }.unwrap();
        // SAFETY: live blocks with their current layouts.
        unsafe {
            heap.deallocate(q, Layout::from_size_align(2000, 8).unwrap()).unwrap();
            heap.deallocate(fence, Layout::from_size_align(100, 8).unwrap()).unwrap();
        }
        let s = heap.stats();
        let expected = if cfg!(feature = "stats") { (1, 1) } else { (0, 0) };
        assert_eq!((s.front.realloc_in_place, s.front.realloc_moved), expected);
        assert_eq!(s.front.failed_allocations, 0, "failure counts are always kept");
    }
}
