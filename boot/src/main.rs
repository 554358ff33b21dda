//! `make run`: boots strata's kernel and shows layers −2 and −1 at work.
#![no_std]
#![no_main]

use strata::frame::MemoryKind;
use strata::vmm::{PAGE_SIZE, PageFlags};
use strata_boot::memory::{with_frames, with_memory};
use strata_boot::{BootInfo, entry_point, println};

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

    // Layers -2 and -1 at work: map 1 MiB aligned to 2 MiB, use it, give it back.
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
    with_memory(|vmm, frames| {
        println!("  while mapped: {:?}; frames used {}", vmm.stats(), frames.used_frames());
        vmm.release(region, frames).expect("release the region");
        println!("  after release: {:?}; frames used {}", vmm.stats(), frames.used_frames());
    });
    let free_after = with_frames(|f| f.free_frames());
    println!(
        "  free frames before {free_before}, after {free_after}: {}",
        if free_before == free_after { "all returned" } else { "LEAK" }
    );

    x86_64::instructions::interrupts::int3();
    println!("\nboot report done; exiting QEMU");
    if sum && free_before == free_after { strata_boot::exit_success() } else { strata_boot::exit_failure() }
}
