//! QEMU suite: the boot itself — memory map, reservations, exceptions, the
//! test framework's own behaviour.
#![no_std]
#![no_main]

use core::sync::atomic::Ordering;

use strata::frame::MemoryKind;
use strata_boot::interrupts::BREAKPOINTS;
use strata_boot::memory::{boot_info, with_frames};
use strata_boot::{entry_point, kernel_test};
use x86_64::PhysAddr;

entry_point!(strata_boot::test::main);

kernel_test! {
    fn memory_map_has_usable_ram_above_the_first_mib() {
        let map = boot_info().memory_map;
        assert!(map.len() >= 2, "a PC map has at least low and high RAM");
        let high: u64 = map
            .iter()
            .filter(|r| r.kind == MemoryKind::Usable && r.start.as_u64() >= 1 << 20)
            .map(|r| r.len)
            .sum();
        // QEMU runs with -m 256M: nearly all of it is usable high RAM.
        assert!(high > 200 << 20, "only {high} bytes of usable high RAM");
    }
}

kernel_test! {
    fn frames_managed_match_usable_ram_minus_reservations() {
        let boot = boot_info();
        let usable: u64 = boot
            .memory_map
            .iter()
            .filter(|r| r.kind == MemoryKind::Usable)
            .map(|r| r.len / 4096)
            .sum();
        let managed = with_frames(|f| f.managed_frames()) as u64;
        let kernel = (boot.kernel.end - boot.kernel.start) / 4096;
        let meta = (boot.frame_metadata.end.as_u64() - boot.frame_metadata.start.as_u64()).div_ceil(4096);
        assert!(managed < usable - kernel - meta, "reserved ranges were not taken out");
        assert!(managed > usable - kernel - meta - 256 - 16, "too much kept back: {managed} of {usable}");
    }
}

kernel_test! {
    fn kernel_image_and_boot_structures_are_never_handed_out() {
        let boot = boot_info();
        with_frames(|frames| {
            for r in &boot.reserved {
                let mut a = r.start.align_down(4096u64);
                while a < r.end {
                    let frame = x86_64::structures::paging::PhysFrame::containing_address(a);
                    assert_eq!(
                        frames.deallocate(frame, 0),
                        Err(strata::frame::DeallocateError::NotOwned { frame: a }),
                        "reserved frame {:#x} is owned by the allocator",
                        a.as_u64()
                    );
                    a += 4096u64 * 7; // a sample is enough, and fast
                }
            }
        });
        assert!(boot.kernel.start == PhysAddr::new(1 << 20));
    }
}

kernel_test! {
    fn breakpoint_is_reported_and_execution_resumes() {
        let before = BREAKPOINTS.load(Ordering::SeqCst);
        x86_64::instructions::interrupts::int3();
        x86_64::instructions::interrupts::int3();
        assert_eq!(BREAKPOINTS.load(Ordering::SeqCst), before + 2);
    }
}

kernel_test! {
    fn code_runs_on_the_guarded_kernel_stack() {
        let marker = 0u8;
        let here = x86_64::VirtAddr::from_ptr(&marker);
        let stack = boot_info().kernel_stack;
        assert!(stack.contains(here), "stack variable at {:#x} outside {stack}", here.as_u64());
    }
}

kernel_test! {
    #[should_panic]
    fn a_panicking_case_is_caught_and_the_run_goes_on() {
        let v: [u32; 0] = [];
        let i = core::hint::black_box(3);
        let _ = v[i];
    }
}
