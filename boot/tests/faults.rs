//! QEMU suite: the page-fault handler reports guard pages, unmapped and
//! unreserved heap addresses, write protection and null dereferences, naming
//! the region involved; each case expects its exact fault.
#![no_std]
#![no_main]

use strata::vmm::{AddressInfo, PAGE_SIZE, PageFlags, Region};
use strata_boot::memory::{HEAP_START, with_memory};
use strata_boot::test::{expect_page_fault, read_byte, write_byte};
use strata_boot::{entry_point, kernel_test};
use x86_64::VirtAddr;

entry_point!(strata_boot::test::main);

/// A mapped region far above every other, so nothing follows its guard page.
fn lonely_region(pages: u64) -> Region {
    with_memory(|vmm, frames| vmm.allocate(pages, 1 << 36, PageFlags::WRITABLE, frames)).unwrap()
}

kernel_test! {
    #[should_fault]
    fn writing_past_a_region_hits_its_guard_page() {
        let r = lonely_region(2);
        expect_page_fault(r.end(), AddressInfo::Guard { after: Some(r), before: None });
        // SAFETY: the region's last byte is ours; the next is the announced fault.
        unsafe {
            write_byte(r.end() - 1u64);
            write_byte(r.end());
        }
    }
}

kernel_test! {
    #[should_fault]
    fn reading_an_unmapped_page_of_a_region_is_reported() {
        let r = with_memory(|vmm, frames| {
            let r = vmm.reserve(4, PAGE_SIZE).unwrap();
            vmm.map(r.start, 2, PageFlags::WRITABLE, frames).unwrap();
            r
        });
        let addr = r.start.start_address() + 2 * PAGE_SIZE + 8;
        expect_page_fault(addr, AddressInfo::Unmapped { region: r });
        // SAFETY: the announced fault.
        unsafe { read_byte(addr) };
    }
}

kernel_test! {
    #[should_fault]
    fn an_unreserved_heap_address_is_reported() {
        let addr = VirtAddr::new(HEAP_START + (300 << 30) + 0x123);
        expect_page_fault(addr, AddressInfo::Unreserved);
        // SAFETY: the announced fault.
        unsafe { read_byte(addr) };
    }
}

kernel_test! {
    #[should_fault]
    fn writing_a_read_only_page_is_reported() {
        let r = lonely_region(1);
        with_memory(|vmm, _| vmm.protect(r.start, 1, PageFlags::empty())).unwrap();
        let addr = r.start.start_address() + 100u64;
        // SAFETY: a mapped page of ours, readable.
        assert_eq!(unsafe { read_byte(addr) }, 0, "reading stays allowed");
        expect_page_fault(addr, AddressInfo::Mapped { region: r, writable: false });
        // SAFETY: the announced fault.
        unsafe { write_byte(addr) };
    }
}

kernel_test! {
    #[should_fault]
    fn a_null_dereference_faults() {
        expect_page_fault(VirtAddr::new(8), AddressInfo::Outside);
        // SAFETY: the announced fault.
        unsafe { read_byte(VirtAddr::new(8)) };
    }
}
