//! QEMU suite: layer −2, the buddy frame allocator over the real boot map.
#![no_std]
#![no_main]

use strata::frame::{
    AllocateError, DeallocateError, FRAME_SIZE, MAX_ORDER, MemoryKind, MemoryMapError, MemoryRegion,
};
use strata_boot::memory::{IDENTITY_LIMIT, boot_info, clip_entry, with_frames};
use strata_boot::{entry_point, kernel_test};
use x86_64::PhysAddr;
use x86_64::structures::paging::PhysFrame;

entry_point!(strata_boot::test::main);

fn in_usable_ram(addr: PhysAddr, len: u64) -> bool {
    boot_info().memory_map.iter().any(|r| {
        r.kind == MemoryKind::Usable && r.start <= addr && addr.as_u64() + len <= r.start.as_u64() + r.len
    })
}

kernel_test! {
    fn frames_are_distinct_usable_and_writable() {
        const N: usize = 1024;
        let mut frames = [PhysFrame::containing_address(PhysAddr::zero()); N];
        let free = with_frames(|f| f.free_frames());
        with_frames(|f| {
            for slot in frames.iter_mut() {
                *slot = f.allocate(0).expect("a frame");
            }
        });
        frames.sort_unstable();
        for pair in frames.windows(2) {
            assert_ne!(pair[0], pair[1], "a frame was handed out twice");
        }
        for (i, frame) in frames.iter().enumerate() {
            let a = frame.start_address();
            assert!(in_usable_ram(a, FRAME_SIZE), "frame {:#x} is not usable RAM", a.as_u64());
            assert!(boot_info().reserved.iter().all(|r| !r.contains(a)), "reserved frame handed out");
            // Identity-mapped: write a word into the frame and read it back.
            let p = a.as_u64() as *mut u64;
            // SAFETY: the frame is ours until freed, and identity-mapped.
            unsafe { p.write_volatile(i as u64 ^ 0x5a5a) };
        }
        for (i, frame) in frames.iter().enumerate() {
            // SAFETY: as above.
            let v = unsafe { (frame.start_address().as_u64() as *const u64).read_volatile() };
            assert_eq!(v, i as u64 ^ 0x5a5a, "frame contents overlap");
        }
        with_frames(|f| {
            for frame in frames {
                f.deallocate(frame, 0).unwrap();
            }
            assert_eq!(f.free_frames(), free, "frames not returned");
            f.check_invariants();
        });
    }
}

kernel_test! {
    fn exhaustion_then_refill_restores_every_block() {
        with_frames(|f| {
            let before = f.free_blocks();
            let free = f.free_frames();
            // Take everything in 4 MiB blocks, then in single frames.
            let mut taken = 0;
            let mut big = [PhysFrame::containing_address(PhysAddr::zero()); 128];
            let mut nbig = 0;
            while let Ok(b) = f.allocate(MAX_ORDER) {
                big[nbig] = b;
                nbig += 1;
                taken += 1 << MAX_ORDER;
            }
            assert!(nbig > 40, "expected most of 256 MiB in 4 MiB blocks");
            // Smaller leftovers: walk the orders down.
            let mut small = [(PhysFrame::containing_address(PhysAddr::zero()), 0usize); 64];
            let mut nsmall = 0;
            for order in (0..MAX_ORDER).rev() {
                while let Ok(b) = f.allocate(order) {
                    small[nsmall] = (b, order);
                    nsmall += 1;
                    taken += 1 << order;
                }
            }
            assert_eq!(taken, free, "not every free frame could be allocated");
            assert_eq!(f.free_frames(), 0);
            assert_eq!(f.allocate(0), Err(AllocateError::OutOfMemory { order: 0 }));
            for b in &big[..nbig] {
                f.deallocate(*b, MAX_ORDER).unwrap();
            }
            for (b, order) in &small[..nsmall] {
                f.deallocate(*b, *order).unwrap();
            }
            assert_eq!(f.free_blocks(), before, "buddies did not merge back");
            f.check_invariants();
        });
    }
}

kernel_test! {
    fn double_free_and_foreign_frees_are_typed_errors() {
        with_frames(|f| {
            let free = f.free_frames();
            let block = f.allocate(2).unwrap();
            let a = block.start_address();
            f.deallocate(block, 2).unwrap();
            assert_eq!(f.deallocate(block, 2), Err(DeallocateError::DoubleFree { frame: a }));
            let kernel = PhysFrame::containing_address(boot_info().kernel.start);
            assert_eq!(
                f.deallocate(kernel, 0),
                Err(DeallocateError::NotOwned { frame: kernel.start_address() })
            );
            let odd = PhysFrame::containing_address(a + FRAME_SIZE);
            assert_eq!(f.deallocate(odd, 1), Err(DeallocateError::Misaligned { frame: a + FRAME_SIZE, order: 1 }));
            let far = PhysFrame::containing_address(PhysAddr::new(3 << 30));
            assert_eq!(f.deallocate(far, 0), Err(DeallocateError::OutOfRange { frame: far.start_address() }));
            assert_eq!(f.free_frames(), free, "an error changed the allocator");
            f.check_invariants();
        });
    }
}

kernel_test! {
    fn higher_order_blocks_are_naturally_aligned() {
        with_frames(|f| {
            for order in 0..=MAX_ORDER {
                let b = f.allocate(order).unwrap();
                assert_eq!(b.start_address().as_u64() % (FRAME_SIZE << order), 0, "order {order}");
                f.deallocate(b, order).unwrap();
            }
        });
    }
}

kernel_test! {
    fn corrupt_boot_map_entries_are_reported_not_clipped_into_ram() {
        let region = |start, len| MemoryRegion { start: PhysAddr::new(start), len, kind: MemoryKind::Usable };
        let usable = MemoryKind::Usable;
        // An end past 52 bits, or past u64: the frame allocator's error, not
        // usable RAM up to 4 GiB.
        for (start, len) in [(1 << 40, u64::MAX - 100), (0, 1 << 60), (1 << 20, u64::MAX), (1 << 33, 1 << 52)] {
            let err = MemoryMapError::EntryOverflows { region: region(start, len) };
            assert_eq!(clip_entry(start, len, usable), Err(err), "[{start:#x}, +{len:#x})");
        }
        // Valid entries: clipped to the identity-mapped 4 GiB, or dropped.
        assert_eq!(clip_entry(0, 1 << 52, usable), Ok(Some(region(0, IDENTITY_LIMIT))));
        assert_eq!(clip_entry(3 << 30, 2 << 30, usable), Ok(Some(region(3 << 30, 1 << 30))));
        assert_eq!(clip_entry(1 << 20, 1 << 20, usable), Ok(Some(region(1 << 20, 1 << 20))));
        assert_eq!(clip_entry(5 << 30, 1 << 30, usable), Ok(None));
        assert_eq!(clip_entry(4096, 0, usable), Ok(None));
        assert_eq!(clip_entry(u64::MAX - 10, 100, usable), Ok(None), "starts past 52 bits: wholly above 4 GiB");
        // The map the kernel kept passes the frame allocator's check.
        assert_eq!(strata::frame::validate_map(boot_info().memory_map), Ok(()));
    }
}
