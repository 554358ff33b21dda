//! One snapshot of every layer, −2 to +3, and its printout: what `make run`
//! shows before, at the peak of, and after a workload.

use strata::cache::CacheStats;
use strata::frame::ORDERS;
use strata::front::HeapStats;
use strata::object::{ClassStats, NUM_CLASSES};
use strata::vmm::VmmStats;

use crate::heap::{HEAP, TASKS};
use crate::memory::{with_frames, with_memory};
use crate::println;

/// The state of every layer at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    /// Layer −2: free frames.
    pub frames_free: usize,
    /// Layer −2: frames in use.
    pub frames_used: usize,
    /// Layer −2: free blocks per order.
    pub buddy: [usize; ORDERS],
    /// Layer −1.
    pub vmm: VmmStats,
    /// Layers 0, +1, +2.
    pub heap: HeapStats,
    /// Layer +2 per size class.
    pub classes: [ClassStats; NUM_CLASSES],
    /// Layer +3: the task cache.
    pub tasks: CacheStats,
}

/// Takes a snapshot (locks each layer in turn, never two at once).
pub fn snapshot() -> Snapshot {
    let heap = HEAP.stats();
    let classes = HEAP.with(|h| h.class_stats());
    let (frames_free, frames_used, buddy) =
        with_frames(|f| (f.free_frames(), f.used_frames(), f.free_blocks()));
    let vmm = with_memory(|vmm, _| vmm.stats());
    Snapshot { frames_free, frames_used, buddy, vmm, heap, classes, tasks: TASKS.stats() }
}

/// Prints one section per layer.
pub fn print(label: &str, s: &Snapshot) {
    println!("\n=== {label} ===");
    println!(
        "layer -2 frames : {} free, {} used ({} KiB); free blocks per order 0..10: {:?}",
        s.frames_free,
        s.frames_used,
        s.frames_used * 4,
        s.buddy
    );
    println!(
        "layer -1 VMM    : {} regions, {} pages reserved, {} mapped, {} page-table frames",
        s.vmm.regions, s.vmm.reserved_pages, s.vmm.mapped_pages, s.vmm.table_frames
    );
    let g = &s.heap.segments;
    println!(
        "layer  0 segment: {} spans ({} KiB): {} KiB allocated, {} KiB free in {} chunks; {} spans given back",
        g.spans,
        g.span_bytes / 1024,
        g.allocated_bytes / 1024,
        g.free_bytes / 1024,
        g.free_chunks,
        g.spans_released
    );
    let f = &s.heap.front;
    println!(
        "layer +1 front  : {} failed allocations, {} refused frees, {} small fallbacks, realloc {} in place / {} moved",
        f.failed_allocations, f.refused_frees, f.small_fallbacks, f.realloc_in_place, f.realloc_moved
    );
    let a = &s.heap.arenas;
    println!(
        "layer +2 object : {} arenas of {} KiB (high water {}, {} allocated, {} reclaimed)",
        a.current,
        s.heap.geometry.arena_size() / 1024,
        a.high_water,
        a.allocated_total,
        a.reclaimed
    );
    let used: usize = s.classes.iter().filter(|c| c.pools > 0).count();
    if used > 0 {
        crate::print!("                  class size:pools/in-use/free");
        for (i, c) in s.classes.iter().filter(|c| c.pools > 0).enumerate() {
            if i % 6 == 0 {
                crate::print!("\n                 ");
            }
            crate::print!(" {:>4}:{}/{}/{}", c.block_size, c.pools, c.blocks_in_use, c.blocks_free);
        }
        println!();
    }
    println!(
        "layer +3 caches : Task cache {} hits, {} misses, {}/{} cached",
        s.tasks.hits, s.tasks.misses, s.tasks.cached, s.tasks.capacity
    );
}
