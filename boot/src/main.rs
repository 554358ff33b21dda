//! `make run`: boots strata's kernel and shows layers −2 and −1 at work.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use strata::frame::MemoryKind;
use strata::vmm::{PAGE_SIZE, PageFlags};
use strata_boot::heap::{HEAP, TASKS, Task, TaskState};
use strata_boot::memory::{with_frames, with_memory};
use strata_boot::{BootInfo, entry_point, println, report, sampling, smp, timer};

entry_point!(main);

fn main(boot: &'static BootInfo) -> ! {
    println!("strata kernel booted through PVH; command line {:?}", boot.cmdline);
    println!("\nboot memory map ({} entries):", boot.memory_map.len());
    for r in boot.memory_map {
        let kind = match r.kind {
            MemoryKind::Usable => "usable",
            MemoryKind::Reserved => "reserved",
            MemoryKind::AcpiReclaimable => "ACPI reclaimable",
            MemoryKind::AcpiNvs => "ACPI NVS",
            MemoryKind::Bad => "bad",
            MemoryKind::Other(_) => "other",
        };
        println!(
            "  [{:#012x}..{:#012x}) {:>8} KiB  {kind}",
            r.start.as_u64(),
            r.start.as_u64() + r.len,
            r.len / 1024
        );
    }
    println!("kept from the frame allocator:");
    let names =
        ["first MiB", "kernel image", "PVH start info", "PVH memory map", "command line", "frame metadata"];
    for (name, r) in names.iter().zip(boot.reserved.iter()) {
        println!("  [{:#012x}..{:#012x}) {name}", r.start.as_u64(), r.end.as_u64());
    }

    println!("\nlayer -2, frames (buddy allocator):");
    with_frames(|f| println!("{f}"));
    println!(
        "\nlayer -1, VMM: heap range [{:#x}..{:#x})",
        boot.heap.start.start_address().as_u64(),
        boot.heap.end.start_address().as_u64()
    );
    with_memory(|vmm, _| {
        for r in vmm.regions() {
            println!("  region {r}");
        }
        println!("  {:?}", vmm.stats());
    });

    // Layers -2 and -1 alone: map 1 MiB aligned to 2 MiB, use it, give it back.
    let free_before = with_frames(|f| f.free_frames());
    let region = with_memory(|vmm, frames| vmm.allocate(256, 2 << 20, PageFlags::WRITABLE, frames))
        .expect("1 MiB of heap pages");
    let words = (region.pages * PAGE_SIZE / 8) as usize;
    let ptr = region.start.start_address().as_mut_ptr::<u64>();
    // SAFETY: the region was just mapped writable for us alone.
    let mem = unsafe { core::slice::from_raw_parts_mut(ptr, words) };
    for (i, w) in mem.iter_mut().enumerate() {
        *w = i as u64 * 0x9e37_79b9;
    }
    let sum = mem.iter().enumerate().all(|(i, w)| *w == i as u64 * 0x9e37_79b9);
    println!(
        "\nmapped region {region}: wrote and read back {words} words: {}",
        if sum { "ok" } else { "MISMATCH" }
    );
    with_memory(|vmm, frames| vmm.release(region, frames)).expect("release the region");
    let free_after = with_frames(|f| f.free_frames());
    println!("  free frames before {free_before}, after release {free_after}");

    // The CPUs: each one's APIC ID and stack, then every CPU allocating at
    // once through the whole stack.
    println!("\nCPUs: {} online of {} the MADT lists", smp::count(), smp::listed());
    let cpu_ok = every_cpu_allocates();
    for cpu in smp::online() {
        let tasks = TASKS.of_cpu(cpu.index()).stats();
        println!(
            "  cpu {}: APIC ID {}, {} jobs run, {} wake IPIs, {} timer ticks with {} allocations in the handler, task cache {} hits / {} misses{}",
            cpu.index(),
            cpu.apic_id(),
            cpu.jobs_done(),
            cpu.wakeups(),
            cpu.ticks(),
            cpu.handler_allocations(),
            tasks.hits,
            tasks.misses,
            if cpu.index() == 0 { " (boot CPU)" } else { "" }
        );
    }

    println!(
        "  heap caches per CPU: {}",
        if HEAP.thread_caches_on() {
            "on (small blocks freed and taken again without the heap's lock)"
        } else if cfg!(feature = "debug") {
            "off (a debug build: every block passes through the debug hooks)"
        } else {
            "waiting for two CPUs to meet at the heap's lock"
        }
    );

    // The whole stack, -2 to +3: Box, Vec, String, BTreeMap and Task churn.
    let before = report::snapshot();
    report::print("heap: before the workload", &before);
    let checksum = workload();
    let after = report::snapshot();
    report::print("heap: after the burst is freed", &after);
    TASKS.clear();
    HEAP.trim();
    let trimmed = report::snapshot();
    report::print("heap: after trim (task cache and spares given back)", &trimmed);
    println!(
        "\nframes in use: {} before, {} after the burst, {} after trim: {}",
        before.frames_used,
        after.frames_used,
        trimmed.frames_used,
        if trimmed.frames_used == before.frames_used { "every frame came back" } else { "FRAMES LOST" }
    );

    // Allocation from the timer interrupt while the main code allocates.
    let ticks = timer::with_allocating_timer(1000, || {
        let start = timer::TICKS.load(Ordering::SeqCst);
        let mut v: Vec<String> = Vec::new();
        while timer::TICKS.load(Ordering::SeqCst) < start + 20 {
            v.push(format!("{}", v.len()));
            if v.len() > 100 {
                v.clear();
            }
        }
        timer::TICKS.load(Ordering::SeqCst) - start
    });
    println!(
        "timer: {ticks} ticks, {} allocations in the interrupt handler ({} failed) while main code allocated",
        timer::HANDLER_ALLOCATIONS.load(Ordering::SeqCst),
        timer::HANDLER_FAILURES.load(Ordering::SeqCst)
    );
    // Guarded sampling (KFENCE-like): one small allocation in 8 gets a page
    // between guard pages; freeing unmaps it.
    HEAP.trim();
    let frames_before = with_frames(|f| f.free_frames());
    sampling::set_interval(8);
    let words: Vec<String> = (0..400).map(|i| format!("sampled word {i}")).collect();
    let (sampled, live) = sampling::stats();
    let sum_words = words.iter().map(String::len).sum::<usize>();
    drop(words);
    sampling::set_interval(0);
    let (_, live_after) = sampling::stats();
    HEAP.trim();
    let frames_after = with_frames(|f| f.free_frames());
    println!(
        "sampling 1 in 8: {sampled} allocations served between guard pages ({live} live at once, {live_after} after the free); {} frames back",
        if frames_after >= frames_before { "every slot page's" } else { "NOT all slot pages'" }
    );
    let ok = sum
        && cpu_ok
        && free_before == free_after
        && trimmed.frames_used == before.frames_used
        && checksum != 0
        && sum_words > 0
        && live > 0
        && live_after == 0
        && frames_after >= frames_before;

    x86_64::instructions::interrupts::int3();
    #[cfg(feature = "debug")]
    println!(
        "\ndebug hooks: on (guards, fills and checks on every block); {} violations caught, {} allocations made",
        HEAP.with(|h| h.debug_violations()),
        HEAP.with(|h| h.debug_serial())
    );
    println!("\n--- strata's sys._debugmallocstats() at the end ---\n{}", HEAP.with(|h| h.report()));
    println!("\nboot report done; exiting QEMU");
    if ok { strata_boot::exit_success() } else { strata_boot::exit_failure() }
}

/// Every CPU at once: task records from its own typed cache, and 2000
/// blocks of its own, each filled with its CPU's pattern and checked before
/// it is freed, while every CPU's timer handler allocates too; then every
/// CPU's task cache is emptied and the heap is trimmed. True when every pattern held
/// and every frame came back.
fn every_cpu_allocates() -> bool {
    use core::sync::atomic::AtomicUsize;
    let frames_before = report::snapshot().frames_used;
    let bad = AtomicUsize::new(0);
    // Every CPU's local APIC timer allocates in its handler meanwhile.
    smp::start_timers(20_000, true);
    smp::run_on_all(&|cpu| {
        x86_64::instructions::interrupts::enable();
        let tag = cpu.index() as u8 + 1;
        let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(tag);
        for round in 0..2 {
            let tasks: Vec<_> = (0..20)
                .map(|i| TASKS.boxed(Task { id: round * 20 + i, state: TaskState::Ready, ..Task::default() }))
                .collect();
            if tasks.iter().any(|t| t.is_err()) {
                bad.fetch_add(1, Ordering::Relaxed);
            }
        }
        let blocks: Vec<Vec<u8>> = (0..2000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                alloc::vec![tag; 8 + (x % 3000) as usize]
            })
            .collect();
        if !blocks.iter().all(|b| b.iter().all(|&v| v == tag)) {
            bad.fetch_add(1, Ordering::Relaxed);
        }
        x86_64::instructions::interrupts::disable();
    });
    smp::stop_timers();
    TASKS.clear();
    HEAP.trim();
    let frames_after = report::snapshot().frames_used;
    let ok = bad.load(Ordering::Relaxed) == 0 && frames_after == frames_before;
    println!(
        "  every CPU allocated 2000 blocks at once: {}; frames in use {frames_before} before, {frames_after} after trim",
        if ok { "patterns intact" } else { "CORRUPTED OR LEAKED" }
    );
    ok
}

/// A burst through every layer, printed at its peak, then freed.
fn workload() -> u64 {
    let mut map: BTreeMap<u64, String> = BTreeMap::new();
    let mut boxes: Vec<Box<[u8]>> = Vec::new();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..20_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        map.insert(x % 50_000, format!("object {i} of size {}", x % 300));
        if i % 10 == 0 {
            let size = 16 + (x % 6000) as usize;
            boxes.push(alloc::vec![(i % 251) as u8; size].into_boxed_slice());
        }
    }
    // A few large buffers: pages of their own from the VMM.
    let large: Vec<Vec<u64>> = (0..4).map(|i| alloc::vec![i; 64 * 1024]).collect();
    // Realloc growth of one vector to 1 MiB.
    let mut grown: Vec<u8> = Vec::new();
    for i in 0..(1 << 20) {
        grown.push(i as u8);
    }
    // Task churn through the typed cache.
    let mut spawned = 0u64;
    for round in 0..10u64 {
        let tasks: Vec<_> = (0..50)
            .map(|i| TASKS.boxed(Task { id: round * 50 + i, state: TaskState::Ready, ..Task::default() }))
            .collect::<Result<_, _>>()
            .expect("tasks");
        spawned += tasks.len() as u64;
    }
    let peak = report::snapshot();
    report::print("heap: at the peak of the burst", &peak);
    println!("\n--- strata's sys._debugmallocstats() at the peak ---\n{}", HEAP.with(|h| h.report()));
    let checksum = map.values().map(|s| s.len() as u64).sum::<u64>()
        + boxes.iter().map(|b| b.len() as u64).sum::<u64>()
        + large.iter().map(|v| v.len() as u64).sum::<u64>()
        + grown.len() as u64
        + spawned;
    println!(
        "burst: {} map entries, {} boxes, {} large buffers, 1 MiB grown vector, {spawned} tasks",
        map.len(),
        boxes.len(),
        large.len()
    );
    checksum
}
