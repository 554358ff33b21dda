//! QEMU suite: guarded sampling (KFENCE-like). A use after free or an
//! overflow of a sampled allocation faults at the first access, and the
//! fault report names the allocation; frees of sampled blocks are checked.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use strata_boot::memory::{lookup, with_frames};
use strata_boot::sampling::{self, Access, Hit, Sample, SlotState};
use strata_boot::test::{expect_panic_containing, expect_sampled_fault, read_byte, write_byte};
use strata_boot::{entry_point, kernel_test};
use x86_64::VirtAddr;

entry_point!(strata_boot::test::main);

/// A 24-byte allocation made with every allocation sampled.
fn sampled_box() -> (Box<[u8; 24]>, Sample) {
    let (made, _) = sampling::stats();
    sampling::set_interval(1);
    let b = Box::new([7u8; 24]);
    sampling::set_interval(0);
    let sample = sampling::sample_at(b.as_ptr()).expect("the allocation was not sampled");
    assert_eq!((sample.size, sample.serial, sample.state), (24, made + 1, SlotState::Live));
    (b, sample)
}

kernel_test! {
    #[should_fault]
    fn a_use_after_free_faults_and_names_the_allocation() {
        let (b, sample) = sampled_box();
        let addr = VirtAddr::from_ptr(b.as_ptr());
        drop(b);
        let info = lookup(addr).expect("the VMM knows the pool");
        expect_sampled_fault(
            addr + 5u64,
            info,
            Hit { access: Access::UseAfterFree, sample: Some(Sample { state: SlotState::Freed, ..sample }) },
        );
        // SAFETY: the announced fault.
        unsafe { read_byte(addr + 5u64) };
    }
}

kernel_test! {
    #[should_fault]
    fn an_overflow_faults_at_the_first_byte_past_the_end() {
        let (b, sample) = sampled_box();
        let end = VirtAddr::from_ptr(b.as_ptr()) + 24u64;
        assert!(end.is_aligned(4096u64), "a sampled object ends at its page's end");
        let info = lookup(end).expect("the VMM knows the pool");
        expect_sampled_fault(end, info, Hit { access: Access::OutOfBoundsRight { distance: 1 }, sample: Some(sample) });
        // SAFETY: the object's own last byte, then the announced fault.
        unsafe {
            write_byte(end - 1u64);
            write_byte(end);
        }
        core::mem::forget(b);
    }
}

kernel_test! {
    #[should_panic]
    fn a_double_free_of_a_sampled_block_panics() {
        expect_panic_containing(&["sampling: double free", "use after free of sampled allocation", "24 bytes at", "freed)"]);
        let (b, _) = sampled_box();
        let p = Box::into_raw(b);
        // SAFETY: the second free is the misuse under test.
        unsafe {
            drop(Box::from_raw(p));
            drop(Box::from_raw(p));
        }
    }
}

kernel_test! {
    #[should_panic]
    fn an_underflow_into_the_canaries_is_caught_on_free() {
        expect_panic_containing(&["corrupted canary", "out-of-bounds access 3 bytes left of sampled allocation"]);
        let (b, _) = sampled_box();
        let p = Box::into_raw(b).cast::<u8>();
        // SAFETY: the byte lies in the slot's canaries, on the same page.
        unsafe {
            p.sub(3).write(0);
            drop(Box::from_raw(p.cast::<[u8; 24]>()));
        }
    }
}

kernel_test! {
    fn sampled_blocks_serve_a_workload_and_give_their_frames_back() {
        let free_before = with_frames(|f| f.free_frames());
        // (Earlier cases may have left a sampled block live: a faulting case never frees.)
        let (made, live_before) = sampling::stats();
        sampling::set_interval(3);
        let mut map: BTreeMap<u64, String> = BTreeMap::new();
        let mut v: Vec<u64> = Vec::new();
        for i in 0..3000u64 {
            map.insert(i % 200, alloc::format!("entry {i}"));
            v.push(i);
        }
        let (made_now, live) = sampling::stats();
        sampling::set_interval(0);
        assert!(made_now - made > 50, "sampling served only {} allocations", made_now - made);
        assert!(live > live_before);
        assert_eq!(map.values().map(String::len).sum::<usize>(), 200 * "entry 2800".len());
        assert_eq!(v.iter().sum::<u64>(), 3000 * 2999 / 2);
        drop((map, v));
        assert_eq!(sampling::stats().1, live_before, "every sampled block was freed");
        strata_boot::heap::HEAP.trim();
        assert!(with_frames(|f| f.free_frames()) >= free_before, "slot pages keep frames after free");
    }
}
