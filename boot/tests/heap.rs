//! QEMU suite: the whole stack, −2 to +3, as the kernel's global allocator.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::sync::atomic::Ordering;

use strata::vmm::{AddressInfo, PAGE_SIZE};
use strata_boot::heap::{HEAP, TASKS, Task};
use strata_boot::memory::{lookup, with_frames, with_memory};
use strata_boot::test::{expect_page_fault, write_byte};
use strata_boot::{entry_point, kernel_test, timer};
use x86_64::VirtAddr;

entry_point!(strata_boot::test::main);

fn free_frames() -> usize {
    with_frames(|f| f.free_frames())
}

/// Empties the caches and spares so frame counts can be compared exactly.
fn settle() {
    TASKS.clear();
    HEAP.trim();
}

fn churn(rounds: u64) -> u64 {
    let mut map: BTreeMap<u64, String> = BTreeMap::new();
    let mut boxes: Vec<Box<[u64]>> = Vec::new();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut check = 0;
    for i in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        map.insert(x % 4096, format!("{i}:{x:x}"));
        boxes.push(alloc::vec![i; 1 + (x % 2000) as usize].into_boxed_slice());
        if boxes.len() > 64 {
            let b = boxes.swap_remove((x % 64) as usize);
            assert!(b.iter().all(|&v| v == b[0]), "a box lost its contents");
            check += b.len() as u64;
        }
    }
    for (k, v) in &map {
        let (_, hex) = v.split_once(':').expect("formatted entry");
        assert_eq!(u64::from_str_radix(hex, 16).unwrap() % 4096, *k, "a map entry lost its contents");
    }
    check + map.len() as u64
}

kernel_test! {
    fn churn_through_every_layer_keeps_contents_and_invariants() {
        let before = HEAP.stats();
        assert!(churn(20_000) > 0);
        let after = HEAP.stats();
        assert!(after.arenas.allocated_total > before.arenas.allocated_total, "layer +2 never used");
        assert!(after.segments.spans > 0, "layer 0 never used");
        assert_eq!(after.front.failed_allocations, before.front.failed_allocations);
        HEAP.with(|h| h.check_invariants());
        with_memory(|vmm, frames| {
            vmm.check_invariants();
            frames.check_invariants();
        });
    }
}

kernel_test! {
    fn frames_return_to_their_starting_count_after_a_large_workload() {
        settle();
        let start = free_frames();
        {
            let big: Vec<Vec<u8>> = (0..8).map(|i| alloc::vec![i; 3 << 20]).collect();
            assert!(churn(5_000) > 0);
            assert!(free_frames() < start - 8 * 768, "the workload did not take frames");
            drop(big);
        }
        // Without trimming, only the documented spares may stay: one arena
        // (256 frames), one span (at most 1 MiB, 256 frames), and their page
        // tables.
        let kept = start - free_frames();
        assert!(kept <= 2 * 256 + 16, "{kept} frames kept beyond the documented spares");
        settle();
        assert_eq!(free_frames(), start, "frames lost after trim");
    }
}

kernel_test! {
    fn out_of_memory_is_null_and_the_kernel_recovers() {
        settle();
        let start = free_frames();
        let failed_before = HEAP.stats().front.failed_allocations;
        let layout = Layout::from_size_align(1 << 20, 8).unwrap();
        let mut held: Vec<*mut u8> = Vec::with_capacity(1024);
        loop {
            // SAFETY: a valid, non-zero layout.
            let p = unsafe { alloc::alloc::alloc(layout) };
            if p.is_null() {
                break;
            }
            // SAFETY: a fresh 1 MiB block.
            unsafe { p.write_bytes(0xab, 4096) };
            held.push(p);
            assert!(held.len() < 1024, "never ran out of memory");
        }
        assert!(held.len() > 150, "only {} MiB before running out of 256", held.len());
        assert!(HEAP.stats().front.failed_allocations > failed_before, "the failure was not counted");
        // Still running: small allocations may fail or not, but nothing breaks.
        for p in held.drain(..) {
            // SAFETY: allocated above with `layout`.
            unsafe { alloc::alloc::dealloc(p, layout) };
        }
        drop(held);
        // Recovered: the memory is usable again.
        let again: Vec<Vec<u8>> = (0..100).map(|i| alloc::vec![i as u8; 1 << 20]).collect();
        assert!(again.iter().enumerate().all(|(i, v)| v[12345] == i as u8));
        drop(again);
        settle();
        assert_eq!(free_frames(), start, "frames lost after the out-of-memory episode");
    }
}

kernel_test! {
    fn the_timer_handler_allocates_while_main_code_allocates() {
        let made_before = timer::HANDLER_ALLOCATIONS.load(Ordering::SeqCst);
        let ticks = timer::with_allocating_timer(1000, || {
            let start = timer::TICKS.load(Ordering::SeqCst);
            let mut rounds = 0u64;
            while timer::TICKS.load(Ordering::SeqCst) < start + 100 {
                rounds += churn(50);
            }
            assert!(rounds > 0);
            timer::TICKS.load(Ordering::SeqCst) - start
        });
        let made = timer::HANDLER_ALLOCATIONS.load(Ordering::SeqCst) - made_before;
        assert!(ticks >= 100);
        assert!(made >= 3 * 100, "the handler made only {made} allocations in {ticks} ticks");
        assert_eq!(timer::HANDLER_FAILURES.load(Ordering::SeqCst), 0);
        assert!(!x86_64::instructions::interrupts::are_enabled(), "the timer left interrupts on");
        HEAP.with(|h| h.check_invariants());
    }
}

kernel_test! {
    fn the_heap_lock_masks_interrupts_and_restores_them() {
        use x86_64::instructions::interrupts;
        interrupts::enable();
        let inside = HEAP.with(|_| interrupts::are_enabled());
        assert!(interrupts::are_enabled(), "the lock did not restore interrupts");
        let nested = HEAP.with(|_| with_frames(|_| interrupts::are_enabled()));
        interrupts::disable();
        assert!(!inside && !nested, "interrupts stayed enabled under the heap lock");
        HEAP.with(|_| ());
        assert!(!interrupts::are_enabled(), "the lock enabled interrupts it found disabled");
    }
}

kernel_test! {
    fn the_kernel_task_cache_reuses_records() {
        settle();
        let first = TASKS.boxed(Task { id: 1, ..Task::default() }).unwrap();
        let addr = &*first as *const Task;
        drop(first);
        let hits = TASKS.stats().hits;
        let second = TASKS.boxed(Task { id: 2, ..Task::default() }).unwrap();
        assert_eq!(&*second as *const Task, addr, "the freed record was not reused");
        assert_eq!(TASKS.stats().hits, hits + 1);
        assert_eq!(second.id, 2);
    }
}

kernel_test! {
    #[should_fault]
    fn writing_past_a_large_allocation_hits_its_guard_page() {
        let v: Vec<u8> = alloc::vec![7; 256 * 1024];
        let start = VirtAddr::from_ptr(v.as_ptr());
        let Some(AddressInfo::Mapped { region, .. }) = lookup(start) else {
            panic!("a large allocation is not a mapped VMM region");
        };
        let end = region.end();
        let data_end = start + 256 * 1024u64;
        // A span of its own: the block starts just after the span's header
        // words (and the debug header, in debug builds) and ends within a
        // page of the span's end.
        assert!(region.start.start_address() < start && start - region.start.start_address() < 128);
        assert!(data_end <= end && end - data_end <= PAGE_SIZE, "{region}: data ends at {data_end:?}");
        let before = with_memory(|vmm, _| vmm.region_at(end + PAGE_SIZE));
        expect_page_fault(end, AddressInfo::Guard { after: Some(region), before });
        // SAFETY: the block's last byte is ours; the span's end is the
        // announced fault.
        unsafe {
            write_byte(data_end - 1u64);
            write_byte(end);
        }
        core::mem::forget(v);
    }
}

static ABANDONED_RAN: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

kernel_test! {
    #[should_panic]
    fn abandoned_1_a_case_panics_with_the_timer_running_and_every_lock_held() {
        strata_boot::test::expect_panic_containing(&["abandoned"]);
        ABANDONED_RAN.store(true, Ordering::SeqCst);
        timer::with_allocating_timer(1000, || {
            let start = timer::TICKS.load(Ordering::SeqCst);
            while timer::TICKS.load(Ordering::SeqCst) < start + 5 {
                core::hint::spin_loop();
            }
            HEAP.with(|_| {
                for lock in strata_boot::sync::ABANDONABLE_LOCKS.iter() {
                    if let Some(acquire) = lock.acquire {
                        acquire();
                    }
                }
                panic!("abandoned holding every lock");
            })
        })
    }
}

kernel_test! {
    fn abandoned_2_the_case_after_an_abandoned_one_runs_normally() {
        use x86_64::instructions::interrupts;
        let registry = &strata_boot::sync::ABANDONABLE_LOCKS;
        for name in ["kernel heap", "task cache", "sampling pool", "PICs", "VMM", "frame allocator"] {
            assert!(registry.iter().any(|l| l.name == name), "{name} is not in the lock registry");
        }
        for lock in registry.iter() {
            assert!(!(lock.is_locked)(), "{} is still held", lock.name);
        }
        if ABANDONED_RAN.load(Ordering::SeqCst) {
            strata_boot::test::last_released_locks(|released| {
                for lock in registry.iter().filter(|l| l.acquire.is_some() || l.name == "kernel heap") {
                    assert!(released.contains(lock.name), "{} was not reported released: {released}", lock.name);
                }
            });
        }
        // The timer was stopped: interrupts on, and no tick arrives.
        assert!(!timer::ALLOCATE_IN_HANDLER.load(Ordering::SeqCst));
        let ticks = timer::TICKS.load(Ordering::SeqCst);
        interrupts::enable();
        for _ in 0..5_000_000 {
            core::hint::spin_loop();
        }
        interrupts::disable();
        assert_eq!(timer::TICKS.load(Ordering::SeqCst), ticks, "the abandoned case's timer still fires");
        // Every layer works, and the timer ticks again when started.
        let v: Vec<u64> = (0..10_000).collect();
        let task = TASKS.boxed(Task { id: 7, ..Task::default() }).expect("the task cache serves");
        assert_eq!((v[9_999], task.id), (9_999, 7));
        drop((v, task));
        let made = timer::with_allocating_timer(1000, || {
            let start = timer::TICKS.load(Ordering::SeqCst);
            while timer::TICKS.load(Ordering::SeqCst) < start + 20 {
                core::hint::spin_loop();
            }
            timer::HANDLER_ALLOCATIONS.load(Ordering::SeqCst)
        });
        assert!(made > 0);
        HEAP.with(|h| h.check_invariants());
    }
}
