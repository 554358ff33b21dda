//! `make bench-kernel`: the CPython-like small-object churn on the kernel's
//! full stack (−2 to +3) and on a plain `linked_list_allocator` heap over the
//! same amount of VMM-mapped memory, in the same boot, timed with `rdtsc`.
//! Run under QEMU's `-icount shift=0,sleep=off`, where the TSC counts guest
//! instructions, the figures repeat exactly from run to run. Then the same
//! churn on every CPU at once, both heaps shared.
#![no_std]
#![no_main]

use core::alloc::{GlobalAlloc, Layout};
use core::arch::x86_64::_rdtsc;
use core::sync::atomic::{AtomicUsize, Ordering};

use strata::vmm::PageFlags;
use strata_boot::heap::HEAP;
use strata_boot::memory::with_memory;
use strata_boot::sync::IrqMutex;
use strata_boot::{BootInfo, entry_point, println, smp};

entry_point!(main);

const OPS: usize = 200_000;
const LIVE: usize = 2048;
const HEAP_BYTES: u64 = 16 << 20;

/// The time-stamp counter.
fn tsc() -> u64 {
    // SAFETY: `rdtsc` only reads the counter; every x86_64 CPU has it.
    unsafe { _rdtsc() }
}

/// The same seeded churn for both heaps: CPython-like sizes (most 16–512
/// bytes, a tail to 4 KiB), 2048 live blocks replaced at random.
#[inline(never)]
fn churn(
    alloc: &(dyn Fn(Layout) -> *mut u8 + Sync),
    dealloc: &(dyn Fn(*mut u8, Layout) + Sync),
) -> (u64, usize) {
    let mut live = [(core::ptr::null_mut::<u8>(), Layout::new::<u8>()); LIVE];
    let mut x: u64 = 0x5eed_1234_abcd;
    let mut next = || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut ops = 0;
    let start = tsc();
    for i in 0..OPS {
        let r = next();
        let size = match r % 100 {
            0..=39 => 16 + (r >> 8) % 49,
            40..=74 => 65 + (r >> 8) % 192,
            75..=94 => 257 + (r >> 8) % 256,
            _ => 513 + (r >> 8) % 3584,
        } as usize;
        let layout = Layout::from_size_align(size, 8).expect("layout");
        let slot = (next() as usize) % LIVE;
        let (old, old_layout) = live[slot];
        if !old.is_null() {
            dealloc(old, old_layout);
            ops += 1;
        }
        let p = alloc(layout);
        assert!(!p.is_null(), "allocation {i} failed");
        live[slot] = (p, layout);
        ops += 1;
    }
    let cycles = tsc() - start;
    for (p, l) in live {
        if !p.is_null() {
            dealloc(p, l);
        }
    }
    (cycles, ops)
}

fn main(_boot: &'static BootInfo) -> ! {
    println!("kernel benchmark: {OPS} churn steps, {LIVE} live blocks, CPython-like sizes");
    // SAFETY: GlobalAlloc calls with the layouts the blocks were allocated with.
    let (s_cycles, s_ops) = churn(&|l| unsafe { HEAP.alloc(l) }, &|p, l| unsafe { HEAP.dealloc(p, l) });
    let region =
        with_memory(|vmm, frames| vmm.allocate(HEAP_BYTES / 4096, 4096, PageFlags::WRITABLE, frames))
            .expect("pages for the linked_list_allocator heap");
    let lla = IrqMutex::new(linked_list_allocator::Heap::empty());
    // SAFETY: the region was just mapped for this heap alone.
    unsafe { lla.lock().init(region.start.start_address().as_mut_ptr(), HEAP_BYTES as usize) };
    let (l_cycles, l_ops) = churn(
        &|l| lla.lock().allocate_first_fit(l).map_or(core::ptr::null_mut(), |p| p.as_ptr()),
        // SAFETY: the pointer came from this heap with this layout.
        &|p, l| unsafe { lla.lock().deallocate(core::ptr::NonNull::new_unchecked(p), l) },
    );
    let s = s_cycles as f64 / s_ops as f64;
    let l = l_cycles as f64 / l_ops as f64;
    println!("strata full stack     : {s:>10.1} TSC ticks per operation ({s_ops} operations)");
    println!("linked_list_allocator : {l:>10.1} TSC ticks per operation ({l_ops} operations)");
    println!("linked_list_allocator / strata: {:.1}x", l / s);
    // Every CPU at once, each on its own blocks, both heaps shared by all:
    // operations per 1000 ticks of the whole run, against one CPU alone.
    // (Under -icount the CPUs take turns, so the ticks count every CPU's
    // instructions: what the shared lock costs shows as spinning.)
    let n = smp::count();
    let at_once = |alloc: &(dyn Fn(Layout) -> *mut u8 + Sync), dealloc: &(dyn Fn(*mut u8, Layout) + Sync)| {
        let total = AtomicUsize::new(0);
        let start = tsc();
        smp::run_on_all(&|_| {
            let (_, ops) = churn(alloc, dealloc);
            total.fetch_add(ops, Ordering::Relaxed);
        });
        1000.0 * total.load(Ordering::Relaxed) as f64 / (tsc() - start) as f64
    };
    // SAFETY: as above.
    let s_all = at_once(&|l| unsafe { HEAP.alloc(l) }, &|p, l| unsafe { HEAP.dealloc(p, l) });
    let caches = HEAP.thread_caches_on();
    // The same with the heap's per-CPU caches off: every call takes the lock.
    HEAP.set_thread_caches(false);
    // SAFETY: as above.
    let s_locked = at_once(&|l| unsafe { HEAP.alloc(l) }, &|p, l| unsafe { HEAP.dealloc(p, l) });
    let l_all = at_once(
        &|l| lla.lock().allocate_first_fit(l).map_or(core::ptr::null_mut(), |p| p.as_ptr()),
        // SAFETY: the pointer came from this heap with this layout.
        &|p, l| unsafe { lla.lock().deallocate(core::ptr::NonNull::new_unchecked(p), l) },
    );
    println!("{n} CPUs at once, operations per 1000 ticks (one CPU alone):");
    println!(
        "  strata full stack     : {s_all:>8.2} ({:.2}), per-CPU caches {}",
        1000.0 / s,
        if caches { "on" } else { "off" }
    );
    println!("  strata, caches off    : {s_locked:>8.2}");
    println!("  linked_list_allocator : {l_all:>8.2} ({:.2})", 1000.0 / l);
    println!("(under -icount shift=0,sleep=off a TSC tick is one guest instruction)");
    strata_boot::exit_success()
}
