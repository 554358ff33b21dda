//! The front door's statistics and the report of every layer, in the style
//! of CPython's `sys._debugmallocstats()`.

use core::fmt;

use crate::object::{self, Geometry};
use crate::segment;

/// Counters of the front door.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrontStats {
    /// Allocations that failed (null returned by `GlobalAlloc`).
    pub failed_allocations: usize,
    /// Frees and reallocs refused, nothing changed: a pointer no layer
    /// owns, a double free or a size the checks catch (with `debug`, every
    /// violation a free or realloc reports).
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
    ///
    /// Exact while blocks are freed and resized with their layouts. A free
    /// or realloc without one (C's `free` and `realloc`,
    /// [`Heap::deallocate_unsized`](crate::Heap::deallocate_unsized)) knows
    /// only the block's usable size, and counts the block as small when
    /// that size is: a block of the largest small class, which layer 0's
    /// header rounds past the threshold (520 usable bytes for 497–512
    /// asked, on 64-bit targets), or one placed with a few spare bytes,
    /// stays counted after it goes; a small block aligned past 16, never
    /// counted, takes another's count when it goes (the count stops at 0).
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

/// A snapshot of every layer; see [`Heap::report`](super::Heap::report).
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

/// Writes the report of [`Heap::report`](super::Heap::report) from its parts, computing each
/// class's row (`class`) as it goes.
pub(super) fn write_report(
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
