//! QEMU suite: several CPUs (the runner boots `-smp 4`; `STRATA_SMP=1`
//! runs it on one): every CPU the MADT lists comes online with its own
//! per-CPU data, stack and descriptor tables; all of them allocate through
//! the kernel heap at once, freeing each other's blocks; and a page
//! unmapped by one CPU is gone from every CPU's TLB before its frame or its
//! address is reused.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use strata::vmm::{PAGE_SIZE, PageFlags};
use strata_boot::heap::{HEAP, TASKS, Task};
use strata_boot::memory::{with_frames, with_memory};
use strata_boot::smp::{self, MAX_CPUS};
use strata_boot::sync::SpinMutex;
use strata_boot::{apic, entry_point, kernel_test, sampling};
use x86_64::VirtAddr;
use x86_64::structures::paging::Page;

entry_point!(strata_boot::test::main);

/// One slot per CPU, for what each CPU reports from `run_on_all`.
fn slots() -> [AtomicU64; MAX_CPUS] {
    [const { AtomicU64::new(0) }; MAX_CPUS]
}

kernel_test! {
    fn every_listed_cpu_is_online_and_knows_itself() {
        assert_eq!(smp::count(), smp::listed(), "CPUs the MADT lists did not come online");
        let ids: Vec<u32> = smp::online().map(|c| c.apic_id()).collect();
        for (i, id) in ids.iter().enumerate() {
            assert!(!ids[..i].contains(id), "two CPUs with APIC ID {id}");
        }
        let seen = slots();
        let visits = AtomicUsize::new(0);
        smp::run_on_all(&|cpu| {
            // What GS says this CPU is, and what its local APIC says.
            let me = smp::current();
            assert!(core::ptr::eq(me, cpu), "GS points at another CPU's data");
            seen[me.index()].store(u64::from(apic::id()) + 1, Ordering::Relaxed);
            visits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(visits.load(Ordering::Relaxed), smp::count());
        for cpu in smp::online() {
            assert_eq!(seen[cpu.index()].load(Ordering::Relaxed), u64::from(cpu.apic_id()) + 1);
        }
    }
}

kernel_test! {
    fn each_cpu_has_its_own_stack_and_descriptor_tables() {
        let stacks = slots();
        let gdts = slots();
        smp::run_on_all(&|cpu| {
            let local = 0u64;
            stacks[cpu.index()].store(&raw const local as u64, Ordering::Relaxed);
            gdts[cpu.index()].store(x86_64::instructions::tables::sgdt().base.as_u64(), Ordering::Relaxed);
        });
        let n = smp::count();
        for i in 0..n {
            for j in 0..i {
                let (a, b) = (stacks[i].load(Ordering::Relaxed), stacks[j].load(Ordering::Relaxed));
                assert!(a.abs_diff(b) >= smp::AP_STACK_PAGES * PAGE_SIZE / 2, "CPUs {i} and {j} share a stack");
                assert_ne!(gdts[i].load(Ordering::Relaxed), gdts[j].load(Ordering::Relaxed), "CPUs {i} and {j} share a GDT");
            }
        }
        // An AP's stack is a VMM region with a guard page below it.
        for (i, stack) in stacks.iter().enumerate().take(n).skip(1) {
            let sp = VirtAddr::new(stack.load(Ordering::Relaxed));
            let region = match strata_boot::memory::lookup(sp) {
                Some(strata::vmm::AddressInfo::Mapped { region, .. }) => region,
                other => panic!("AP {i}'s stack is not in a VMM region: {other:?}"),
            };
            let below = region.start.start_address() - 1u64;
            let info = strata_boot::memory::lookup(below).expect("the VMM answers");
            assert!(matches!(info, strata::vmm::AddressInfo::Guard { .. }), "no guard page below AP {i}'s stack: {info:?}");
        }
    }
}

kernel_test! {
    fn every_cpu_allocates_at_once_and_frees_the_others_blocks() {
        HEAP.trim();
        let frames = with_frames(|f| f.free_frames());
        // Blocks handed from CPU to CPU: each is freed by another CPU than
        // the one that allocated it.
        let exchange: SpinMutex<Vec<(usize, Box<[u8]>)>> = SpinMutex::new(Vec::new());
        let bad = AtomicUsize::new(0);
        for round in 0..3u64 {
            smp::run_on_all(&|cpu| {
                let tag = cpu.index() as u8 + 1;
                let mut x = 0x2545_f491_4f6c_dd1du64 ^ (u64::from(tag) << 32) ^ round;
                let mut mine: Vec<Box<[u8]>> = Vec::new();
                for i in 0..3000 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let size = if i % 50 == 0 { 4096 + (x % 60_000) as usize } else { 1 + (x % 700) as usize };
                    mine.push(alloc::vec![tag; size].into_boxed_slice());
                    if i % 7 == 0 {
                        let b = mine.swap_remove((x as usize / 7) % mine.len());
                        if b.iter().any(|&v| v != tag) {
                            bad.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if i % 11 == 0
                        && let Some(b) = mine.pop()
                    {
                        let theirs = {
                            let mut ex = exchange.lock();
                            ex.push((cpu.index(), b));
                            let at = ex.iter().position(|(from, _)| *from != cpu.index());
                            at.map(|at| ex.swap_remove(at))
                        };
                        if let Some((from, b)) = theirs
                            && b.iter().any(|&v| v != from as u8 + 1)
                        {
                            bad.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                if mine.iter().any(|b| b.iter().any(|&v| v != tag)) {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        assert_eq!(bad.load(Ordering::Relaxed), 0, "a block was overwritten while live");
        drop(exchange);
        HEAP.with(|h| h.check_invariants());
        HEAP.trim();
        assert_eq!(with_frames(|f| f.free_frames()), frames, "frames were not all given back after trim");
    }
}

kernel_test! {
    fn a_page_unmapped_by_one_cpu_is_gone_from_every_tlb() {
        // A page every CPU reads (so its translation is in every TLB)...
        let region = with_memory(|vmm, frames| vmm.allocate(1, PAGE_SIZE, PageFlags::WRITABLE, frames)).unwrap();
        let page: Page = region.start;
        let word = page.start_address().as_mut_ptr::<u64>();
        // (The closures take the address: a raw pointer is not `Sync`.)
        let addr = word as usize;
        // SAFETY: the page is mapped writable for this test alone.
        unsafe { word.write_volatile(0xA) };
        let seen = slots();
        smp::run_on_all(&|cpu| {
            // SAFETY: mapped, and only read.
            seen[cpu.index()].store(unsafe { (addr as *const u64).read_volatile() }, Ordering::Relaxed);
        });
        assert!(smp::online().all(|c| seen[c.index()].load(Ordering::Relaxed) == 0xA));
        // ...is unmapped by this CPU. Its frame goes to another page at once
        // (holding 0xC), and the address gets a new frame (holding 0xB): a
        // CPU still translating through the old entry would read 0xC.
        with_memory(|vmm, frames| vmm.unmap(page, 1, frames)).unwrap();
        let other = with_memory(|vmm, frames| vmm.allocate(1, PAGE_SIZE, PageFlags::WRITABLE, frames)).unwrap();
        let other_word = other.start.start_address().as_mut_ptr::<u64>();
        // SAFETY: mapped writable for this test alone.
        unsafe { other_word.write_volatile(0xC) };
        with_memory(|vmm, frames| vmm.map(page, 1, PageFlags::WRITABLE, frames)).unwrap();
        // SAFETY: mapped again, writable, for this test alone.
        unsafe { word.write_volatile(0xB) };
        smp::run_on_all(&|cpu| {
            // SAFETY: as above.
            seen[cpu.index()].store(unsafe { (addr as *const u64).read_volatile() }, Ordering::Relaxed);
        });
        for cpu in smp::online() {
            assert_eq!(seen[cpu.index()].load(Ordering::Relaxed), 0xB, "CPU {} read through a stale TLB entry", cpu.index());
        }
        with_memory(|vmm, frames| {
            vmm.release(region, frames).unwrap();
            vmm.release(other, frames).unwrap();
        });
    }
}

kernel_test! {
    fn every_cpu_allocates_in_its_timer_interrupt_while_its_code_allocates() {
        let ticks: Vec<u64> = smp::online().map(|c| c.ticks()).collect();
        let made: Vec<u64> = smp::online().map(|c| c.handler_allocations()).collect();
        smp::start_timers(20_000, true);
        smp::run_on_all(&|cpu| {
            x86_64::instructions::interrupts::enable();
            let start = cpu.ticks();
            let mut v: Vec<Box<[u64]>> = Vec::new();
            // Until this CPU's timer has fired 20 times, its interrupted code
            // holding the heap's lock or not.
            while cpu.ticks() < start + 20 {
                v.push(alloc::vec![cpu.index() as u64; 1 + v.len() % 300].into_boxed_slice());
                if v.len() > 200 {
                    assert!(v.iter().all(|b| b.iter().all(|&x| x == cpu.index() as u64)), "a block was overwritten");
                    v.clear();
                }
            }
            x86_64::instructions::interrupts::disable();
        });
        smp::stop_timers();
        for (i, cpu) in smp::online().enumerate() {
            assert!(cpu.ticks() >= ticks[i] + 20, "CPU {i}'s timer did not tick");
            assert!(cpu.handler_allocations() > made[i], "CPU {i}'s timer handler did not allocate");
        }
        HEAP.with(|h| h.check_invariants());
    }
}

kernel_test! {
    fn each_cpu_takes_task_records_from_its_own_cache_and_none_are_lost() {
        let before: Vec<_> = smp::online().map(|c| TASKS.of_cpu(c.index()).stats()).collect();
        TASKS.clear();
        HEAP.trim();
        // (Counted after `before` is allocated: it stays live to the end.)
        let frames = with_frames(|f| f.free_frames());
        smp::run_on_all(&|cpu| {
            for round in 0..2u64 {
                let tasks: Vec<_> = (0..10)
                    .map(|i| TASKS.boxed(Task { id: cpu.index() as u64 * 100 + round * 10 + i, ..Task::default() }))
                    .collect::<Result<_, _>>()
                    .expect("task records");
                assert!(tasks.iter().enumerate().all(|(i, t)| t.id == cpu.index() as u64 * 100 + round * 10 + i as u64));
            }
        });
        for (cpu, before) in smp::online().zip(&before) {
            let s = TASKS.of_cpu(cpu.index()).stats();
            // The first round missed, the second took the first's records
            // back: from this CPU's cache, which no other CPU touched.
            assert_eq!(s.misses - before.misses, 10, "CPU {}", cpu.index());
            assert_eq!(s.hits - before.hits, 10, "CPU {}", cpu.index());
            assert_eq!(s.cached, 10, "CPU {}", cpu.index());
        }
        if smp::count() > 1 {
            // A record boxed on CPU 1 and dropped on the boot CPU goes back
            // to CPU 1's cache.
            let handed: SpinMutex<Option<strata::cache::CachedBox<'static, 'static, Task, _, 64, _>>> = SpinMutex::new(None);
            smp::run_on_all(&|cpu| {
                if cpu.index() == 1 {
                    *handed.lock() = Some(TASKS.boxed(Task { id: 42, ..Task::default() }).expect("a record"));
                }
            });
            let cached = TASKS.of_cpu(1).stats().cached;
            let task = handed.lock().take().expect("CPU 1 boxed a record");
            assert_eq!(task.id, 42);
            drop(task);
            assert_eq!(TASKS.of_cpu(1).stats().cached, cached + 1, "the record went back to its own CPU's cache");
            assert_eq!(TASKS.of_cpu(0).stats().cached, 10);
        }
        TASKS.clear();
        assert_eq!(TASKS.stats().cached, 0, "clear empties every CPU's cache");
        HEAP.trim();
        assert_eq!(with_frames(|f| f.free_frames()), frames, "records were lost");
    }
}

kernel_test! {
    fn sampling_works_on_every_cpu() {
        // Guarded sampling: one small allocation in 4, on every CPU at once;
        // freeing unmaps the slot pages (shot down from every TLB).
        let (sampled_before, _) = sampling::stats();
        sampling::set_interval(4);
        smp::run_on_all(&|cpu| {
            let words: Vec<alloc::string::String> =
                (0..100).map(|i| alloc::format!("cpu {} word {i}", cpu.index())).collect();
            assert!(words.iter().enumerate().all(|(i, w)| *w == alloc::format!("cpu {} word {i}", cpu.index())));
        });
        sampling::set_interval(0);
        let (sampled, live) = sampling::stats();
        assert!(sampled > sampled_before, "nothing was sampled");
        assert_eq!(live, 0, "sampled blocks are still live");
        HEAP.with(|h| h.check_invariants());
    }
}

kernel_test! {
    fn a_cpu_reading_a_page_in_a_loop_never_sees_it_after_its_unmap() {
        if smp::count() < 2 {
            return;
        }
        // The other CPUs read the page without pause, interrupts on, while
        // this one, in one critical section, gives the page's frame to a
        // spare page (writing 0xC there) and the page a new frame (0xB):
        // any read of 0xC went through a TLB entry the unmap left behind.
        let region = with_memory(|vmm, frames| vmm.allocate(1, PAGE_SIZE, PageFlags::WRITABLE, frames)).unwrap();
        let spare = with_memory(|vmm, _| vmm.reserve(1, PAGE_SIZE)).unwrap();
        let page: Page = region.start;
        let addr = page.start_address().as_u64() as usize;
        // SAFETY: mapped writable for this test alone.
        unsafe { (addr as *mut u64).write_volatile(0xA) };
        let old = with_memory(|vmm, _| vmm.translate(page.start_address())).unwrap();
        let started = AtomicUsize::new(0);
        let done = core::sync::atomic::AtomicBool::new(false);
        let stale = slots();
        let reads = slots();
        smp::run_on_all(&|cpu| {
            if cpu.index() != 0 {
                started.fetch_add(1, Ordering::SeqCst);
                let mut after = 0u64;
                loop {
                    // SAFETY: the page stays mapped (to one frame or the
                    // other) throughout.
                    let v = unsafe { (addr as *const u64).read_volatile() };
                    if v == 0xC {
                        stale[cpu.index()].fetch_add(1, Ordering::Relaxed);
                    }
                    reads[cpu.index()].fetch_add(1, Ordering::Relaxed);
                    if done.load(Ordering::Acquire) {
                        after += 1;
                        if after > 100_000 {
                            break;
                        }
                    }
                }
                return;
            }
            while started.load(Ordering::SeqCst) < smp::count() - 1 {
                smp::spin_wait();
            }
            let (spare_frame, new_frame) = with_memory(|vmm, frames| {
                vmm.unmap(page, 1, frames).unwrap();
                vmm.map(spare.start, 1, PageFlags::WRITABLE, frames).unwrap();
                vmm.map(page, 1, PageFlags::WRITABLE, frames).unwrap();
                (vmm.translate(spare.start.start_address()).unwrap(), vmm.translate(page.start_address()).unwrap())
            });
            assert_eq!(spare_frame, old, "the old frame went to the spare page (the case's premise)");
            assert_ne!(new_frame, old);
            // SAFETY: both pages are mapped writable for this test alone.
            unsafe {
                (spare.start.start_address().as_u64() as *mut u64).write_volatile(0xC);
                (addr as *mut u64).write_volatile(0xB);
            }
            done.store(true, Ordering::Release);
        });
        for cpu in smp::online().skip(1) {
            assert_eq!(
                stale[cpu.index()].load(Ordering::Relaxed),
                0,
                "CPU {} read the reused frame through a stale TLB entry ({} reads)",
                cpu.index(),
                reads[cpu.index()].load(Ordering::Relaxed)
            );
        }
        with_memory(|vmm, frames| {
            vmm.release(region, frames).unwrap();
            vmm.release(spare, frames).unwrap();
        });
    }
}

/// Formats after telling the boot CPU it holds the console, then frees a
/// large buffer (its pages unmapped: a shootdown) while still holding it.
struct ShootsWhilePrinting<'a>(&'a AtomicUsize);

impl core::fmt::Display for ShootsWhilePrinting<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.0.store(1, Ordering::SeqCst);
        while self.0.load(Ordering::SeqCst) != 2 {
            core::hint::spin_loop();
        }
        let v = alloc::vec![7u8; 8 << 20];
        let len = v.len();
        drop(v);
        HEAP.trim();
        write!(f, "(a CPU shot down {len} bytes of pages while holding the console)")
    }
}

kernel_test! {
    fn a_cpu_waiting_for_the_console_answers_a_shootdown_from_its_holder() {
        if smp::count() < 2 {
            return;
        }
        // CPU 1 holds the console and shoots down; the boot CPU waits for
        // the console with interrupts masked. Without the console's lock
        // answering shootdowns, neither moves and the run times out.
        let step = AtomicUsize::new(0);
        smp::run_on_all(&|cpu| {
            if cpu.index() == 1 {
                strata_boot::println!("{}", ShootsWhilePrinting(&step));
            } else if cpu.index() == 0 {
                while step.load(Ordering::SeqCst) != 1 {
                    smp::spin_wait();
                }
                x86_64::instructions::interrupts::without_interrupts(|| {
                    step.store(2, Ordering::SeqCst);
                    strata_boot::println!("(the boot CPU printed after it)");
                });
            }
        });
    }
}

// The heap's per-CPU caches (strata's `cpu-caches`) are in use in a build
// without `debug` (the debug hooks see every block, so they turn caches
// off): `make test-kernel` runs this suite both ways.
#[cfg(not(feature = "debug"))]
kernel_test! {
    fn every_cpu_caches_its_freed_blocks_and_trim_takes_them_all_back() {
        let in_use = || HEAP.with(|h| h.class_stats().iter().map(|c| c.blocks_in_use).sum::<usize>());
        HEAP.set_thread_caches(true);
        assert!(HEAP.thread_caches_on());
        HEAP.trim();
        let before = in_use();
        smp::run_on_all(&|cpu| {
            for _ in 0..50 {
                let v: Vec<Box<[u8; 48]>> = (0..20).map(|_| Box::new([cpu.index() as u8; 48])).collect();
                assert!(v.iter().all(|b| b.iter().all(|&x| x == cpu.index() as u8)), "a block was overwritten");
            }
        });
        // Freed blocks wait in each CPU's cache, taken again without the
        // heap's lock: the heap still counts them in use.
        let cached = in_use() - before;
        assert!(cached >= smp::count(), "the CPUs kept {cached} freed blocks");
        // `trim` takes every CPU's cached blocks back.
        HEAP.trim();
        assert_eq!(in_use(), before, "trim left blocks in a CPU's cache");
        HEAP.with(|h| h.check_invariants());
    }
}

// Layer 0's blocks up to 4 KiB too, over the VMM: a CPU finds them in
// spans by a lock-free copy of layer 0's span map (without it, every such
// free takes the lock and nothing is kept).
#[cfg(not(feature = "debug"))]
kernel_test! {
    fn every_cpu_caches_its_freed_layer_0_blocks_and_trim_takes_them_all_back() {
        let layer_0 = || HEAP.stats().segments.allocated_bytes;
        HEAP.set_thread_caches(true);
        HEAP.trim();
        let before = layer_0();
        smp::run_on_all(&|cpu| {
            for round in 0..50u8 {
                let fill = (cpu.index() as u8).wrapping_mul(31).wrapping_add(round);
                let v: Vec<Box<[u8; 1000]>> = (0..10).map(|_| Box::new([fill; 1000])).collect();
                assert!(v.iter().all(|b| b.iter().all(|&x| x == fill)), "a block was overwritten");
            }
        });
        let cached = layer_0() - before;
        assert!(cached >= smp::count() * 1000, "the CPUs kept {cached} bytes of freed layer 0 blocks");
        HEAP.trim();
        assert_eq!(layer_0(), before, "trim left layer 0 blocks in a CPU's cache");
        HEAP.with(|h| h.check_invariants());
    }
}
