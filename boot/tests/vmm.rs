//! QEMU suite: layer −1, the paging VMM over the live page tables.
#![no_std]
#![no_main]

use strata::vmm::{AddressInfo, PAGE_SIZE, PageError, PageFlags};
use strata_boot::memory::{with_frames, with_memory};
use strata_boot::{entry_point, kernel_test};

entry_point!(strata_boot::test::main);

kernel_test! {
    fn map_write_read_unmap() {
        let region = with_memory(|vmm, frames| vmm.allocate(64, PAGE_SIZE, PageFlags::WRITABLE, frames)).unwrap();
        let base = region.start.start_address().as_mut_ptr::<u8>();
        for i in 0..64 * PAGE_SIZE as usize {
            // SAFETY: the region is mapped writable for this test alone.
            unsafe { base.add(i).write_volatile((i % 251) as u8) };
        }
        for i in (0..64 * PAGE_SIZE as usize).step_by(97) {
            // SAFETY: as above.
            assert_eq!(unsafe { base.add(i).read_volatile() }, (i % 251) as u8);
        }
        with_memory(|vmm, frames| {
            vmm.unmap(region.start, 64, frames).unwrap();
            assert_eq!(vmm.lookup(region.start.start_address()), AddressInfo::Unmapped { region });
            vmm.release(region, frames).unwrap();
        });
    }
}

kernel_test! {
    fn fresh_pages_are_zeroed_even_after_reuse() {
        for round in 0..2 {
            let r = with_memory(|vmm, frames| vmm.allocate(8, PAGE_SIZE, PageFlags::WRITABLE, frames)).unwrap();
            let p = r.start.start_address().as_mut_ptr::<u64>();
            for i in 0..(8 * PAGE_SIZE / 8) as usize {
                // SAFETY: mapped writable for this test alone.
                unsafe {
                    assert_eq!(p.add(i).read_volatile(), 0, "round {round}: stale data");
                    p.add(i).write_volatile(u64::MAX);
                }
            }
            with_memory(|vmm, frames| vmm.release(r, frames)).unwrap();
        }
    }
}

kernel_test! {
    fn unmap_returns_data_and_page_table_frames() {
        let free = with_frames(|f| f.free_frames());
        let tables = with_memory(|vmm, _| vmm.stats().table_frames);
        // 4 MiB aligned to 1 GiB: needs a fresh L2 and two L1 tables.
        let r = with_memory(|vmm, frames| vmm.allocate(1024, 1 << 30, PageFlags::WRITABLE, frames)).unwrap();
        assert_eq!(r.start.start_address().as_u64() % (1 << 30), 0);
        let mid = with_memory(|vmm, _| vmm.stats());
        assert!(mid.table_frames >= tables + 3, "{mid:?}");
        assert_eq!(with_frames(|f| f.free_frames()), free - 1024 - (mid.table_frames - tables) as usize);
        with_memory(|vmm, frames| vmm.release(r, frames)).unwrap();
        assert_eq!(with_frames(|f| f.free_frames()), free, "frames were not all returned");
        assert_eq!(with_memory(|vmm, _| vmm.stats().table_frames), tables, "page tables leaked");
    }
}

kernel_test! {
    fn regions_honour_power_of_two_alignment() {
        with_memory(|vmm, frames| {
            let mut held = [None; 6];
            for (i, shift) in [12u32, 16, 20, 21, 22, 24].into_iter().enumerate() {
                let r = vmm.reserve(3, 1 << shift).unwrap();
                assert_eq!(r.start.start_address().as_u64() % (1 << shift), 0, "2^{shift}");
                held[i] = Some(r);
            }
            vmm.check_invariants();
            for r in held.into_iter().flatten() {
                vmm.release(r, frames).unwrap();
            }
        });
    }
}

kernel_test! {
    fn protect_and_page_errors_are_typed() {
        with_memory(|vmm, frames| {
            let r = vmm.reserve(4, PAGE_SIZE).unwrap();
            vmm.map(r.start, 2, PageFlags::WRITABLE, frames).unwrap();
            vmm.protect(r.start, 2, PageFlags::empty()).unwrap();
            assert_eq!(vmm.lookup(r.start.start_address()), AddressInfo::Mapped { region: r, writable: false });
            assert_eq!(vmm.map(r.start, 1, PageFlags::WRITABLE, frames), Err(PageError::AlreadyMapped { page: r.start }));
            assert_eq!(vmm.unmap(r.start + 2, 1, frames), Err(PageError::NotMapped { page: r.start + 2 }));
            assert!(matches!(vmm.map(r.start + 3, 2, PageFlags::WRITABLE, frames), Err(PageError::NotReserved { .. })));
            vmm.release(r, frames).unwrap();
        });
    }
}

kernel_test! {
    fn a_page_protected_writable_after_a_read_only_map_takes_writes() {
        // Aligned to 512 GiB: the region has an L4 entry of its own, so the
        // read-only map below creates the L3, L2 and L1 tables above it.
        let r = with_memory(|vmm, frames| {
            let r = vmm.reserve(1, 1 << 39).unwrap();
            vmm.map(r.start, 1, PageFlags::empty(), frames).unwrap();
            vmm.protect(r.start, 1, PageFlags::WRITABLE).unwrap();
            assert_eq!(vmm.lookup(r.start.start_address()), AddressInfo::Mapped { region: r, writable: true });
            r
        });
        let p = r.start.start_address().as_mut_ptr::<u64>();
        // SAFETY: the page is mapped writable for this test alone (CR0.WP is
        // set, so a write the page tables forbid faults and fails the test).
        unsafe {
            p.add(7).write_volatile(0x5712_a7a0);
            assert_eq!(p.add(7).read_volatile(), 0x5712_a7a0);
        }
        with_memory(|vmm, frames| vmm.release(r, frames)).unwrap();
    }
}
