//! `make bench-kernel`: the CPython-like small-object churn on the kernel's
//! full stack (−2 to +3) and on a plain `linked_list_allocator` heap over the
//! same amount of VMM-mapped memory, in the same boot, timed with `rdtsc`.
//! Then the same churn on 1, 2 and 4 CPUs at once, every heap shared: the
//! per-CPU front end (the heap's per-CPU caches), the same heap behind one
//! global lock (caches off), `linked_list_allocator` behind its lock, and,
//! as the ceiling the host allows, a strata heap of its own for each CPU.
//!
//! `make bench-kernel` boots it twice: under QEMU's `-icount
//! shift=0,sleep=off`, where the TSC counts guest instructions and the
//! figures repeat exactly from run to run (the CPUs take turns on one host
//! thread), then with `wall` on the command line, in real time with every
//! CPU on a host thread of its own, for the scaling.
#![no_std]
#![no_main]

use core::alloc::{GlobalAlloc, Layout};
use core::arch::x86_64::_rdtsc;
use core::sync::atomic::{AtomicUsize, Ordering};

use strata::LockedHeap;
use strata::vmm::PageFlags;
use strata_boot::heap::{HEAP, KernelHeap, KernelPages};
use strata_boot::memory::with_memory;
use strata_boot::sync::IrqMutex;
use strata_boot::{BootInfo, entry_point, println, smp};

entry_point!(main);

const OPS: usize = 200_000;
const LIVE: usize = 2048;
const HEAP_BYTES: u64 = 16 << 20;
/// The kernel heap's window, for heaps of the same kind.
const KERNEL_WINDOW: (usize, usize) =
    (strata_boot::memory::ALLOC_WINDOW.0 as usize, strata_boot::memory::ALLOC_WINDOW.1 as usize);

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

fn main(boot: &'static BootInfo) -> ! {
    // `wall` on the command line: real time, the CPUs in parallel (else
    // instruction counts, run under -icount).
    let wall = boot.cmdline.split_whitespace().any(|w| w == "wall");
    println!(
        "kernel benchmark ({}): {OPS} churn steps, {LIVE} live blocks, CPython-like sizes",
        if wall { "wall clock" } else { "instructions" }
    );
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
    // The churn on 1, 2 and 4 CPUs at once, each on its own blocks, every
    // heap shared by all: total operations per 1000 ticks of the run.
    let n = smp::count();
    let cpus = [1, 2, 4].map(|c: usize| c.min(n));
    let at_once = |cpus: usize,
                   alloc: &(dyn Fn(Layout) -> *mut u8 + Sync),
                   dealloc: &(dyn Fn(*mut u8, Layout) + Sync)| {
        let total = AtomicUsize::new(0);
        let start = tsc();
        smp::run_on(cpus, &|_| {
            let (_, ops) = churn(alloc, dealloc);
            total.fetch_add(ops, Ordering::Relaxed);
        });
        1000.0 * total.load(Ordering::Relaxed) as f64 / (tsc() - start) as f64
    };
    // SAFETY (both closures): GlobalAlloc calls with the layouts the blocks
    // were allocated with.
    let strata_at_once =
        |cpus: usize| at_once(cpus, &|l| unsafe { HEAP.alloc(l) }, &|p, l| unsafe { HEAP.dealloc(p, l) });
    // The per-CPU front end: every CPU's caches in front of the heap's lock.
    HEAP.set_thread_caches(true);
    let front = cpus.map(strata_at_once);
    // The same heap behind one global lock: every call takes it.
    HEAP.set_thread_caches(false);
    let locked = cpus.map(strata_at_once);
    let lla_at_once = |cpus: usize| {
        at_once(
            cpus,
            &|l| lla.lock().allocate_first_fit(l).map_or(core::ptr::null_mut(), |p| p.as_ptr()),
            // SAFETY: the pointer came from this heap with this layout.
            &|p, l| unsafe { lla.lock().deallocate(core::ptr::NonNull::new_unchecked(p), l) },
        )
    };
    let lla_rates = cpus.map(lla_at_once);
    // The ceiling: a heap of its own for each CPU (nothing shared; the
    // calls take their heap's lock, never contended), its memory taken in
    // a first round on every CPU.
    static OWN: [KernelHeap; 4] = [const { LockedHeap::new(KernelPages, KERNEL_WINDOW) }; 4];
    // SAFETY (both closures): as above, each CPU on its own heap.
    let own_at_once = |cpus: usize| {
        at_once(cpus, &|l| unsafe { OWN[smp::current().index() % 4].alloc(l) }, &|p, l| unsafe {
            OWN[smp::current().index() % 4].dealloc(p, l)
        })
    };
    let _ = own_at_once(n);
    let own = cpus.map(own_at_once);
    println!("the churn on several CPUs at once, operations per 1000 ticks (all CPUs together):");
    println!(
        "  CPUs   per-CPU front   one global lock   linked_list_allocator   a heap per CPU   front / lock"
    );
    for i in 0..cpus.len() {
        println!(
            "  {:>4}   {:>13.2}   {:>15.2}   {:>21.2}   {:>14.2}   {:>11.1}x",
            cpus[i],
            front[i],
            locked[i],
            lla_rates[i],
            own[i],
            front[i] / locked[i]
        );
    }
    println!(
        "per-CPU front on {} CPUs: {:.2}x its own 1-CPU total; {:.1}x one global lock",
        cpus[2],
        front[2] / front[0],
        front[2] / locked[2]
    );
    println!(
        "(a heap per CPU, nothing shared, is what the host allows: {:.2}x on {} CPUs)",
        own[2] / own[0],
        cpus[2]
    );
    if wall {
        println!("(wall clock: QEMU runs each CPU on a host thread; more CPUs than host cores share them)");
    } else {
        println!(
            "(under -icount shift=0,sleep=off a TSC tick is one guest instruction, and the CPUs take turns"
        );
        println!(" on one host thread: the table shows instructions, spinning included, not parallel speed)");
    }
    strata_boot::exit_success()
}
