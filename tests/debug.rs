//! Debug mode (feature `debug`): fills, guards, the ordered checks on free
//! and realloc, the reports and the policies, through `LockedHeap`'s
//! `GlobalAlloc` and the typed caches' domain.
#![cfg(feature = "debug")]

use std::alloc::{GlobalAlloc, Layout};
use std::cell::RefCell;
use std::mem::MaybeUninit;

use proptest::prelude::*;
use strata::front::debug::{self, BadByte, Policy, Violation, ViolationKind};
use strata::{Domain, Layer, LockedHeap, ObjectCache};

fn heap(size: usize) -> &'static LockedHeap {
    let heap = Box::leak(Box::new(LockedHeap::empty()));
    heap.init_from_slice(Box::leak(vec![MaybeUninit::uninit(); size].into_boxed_slice()));
    heap.set_debug_policy(Policy::Report(record));
    heap
}

thread_local! {
    static CAUGHT: RefCell<Vec<Violation>> = const { RefCell::new(Vec::new()) };
}

fn record(v: &Violation) {
    CAUGHT.with(|c| c.borrow_mut().push(*v));
}

/// The violations caught on this thread since the last call.
fn caught() -> Vec<Violation> {
    CAUGHT.with(|c| c.take())
}

fn bytes(p: *mut u8, len: usize) -> Vec<u8> {
    // SAFETY: callers pass memory of a live heap region.
    (0..len).map(|i| unsafe { p.add(i).read_volatile() }).collect()
}

#[test]
fn fresh_memory_is_clean_zeroed_is_zero_and_freed_is_dead() {
    let heap = heap(4 << 20);
    for size in [1, 24, 100, 512, 3000, 200 << 10] {
        let layout = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: a non-zero layout; the block is read before it is freed
        // and, as raw bytes of the heap's own region, after.
        unsafe {
            let p = heap.alloc(layout);
            assert!(bytes(p, size).iter().all(|&b| b == debug::CLEAN), "{size}: fresh data must be 0xCD");
            let z = heap.alloc_zeroed(layout);
            assert!(bytes(z, size).iter().all(|&b| b == 0), "{size}: zeroed data must be zero");
            heap.dealloc(z, layout);
            heap.dealloc(p, layout);
            if size < 128 << 10 {
                // Small and segment blocks stay mapped: their data is dead.
                // (Large mappings go back to the page source at once.)
                assert!(bytes(p, size).iter().all(|&b| b == debug::DEAD), "{size}: freed data must be 0xDD");
            }
        }
    }
    let v = caught();
    assert!(v.is_empty(), "{}", v[0]);
    assert_eq!(heap.with(|h| h.debug_violations()), 0);
}

#[test]
fn an_overflow_is_caught_on_free_with_the_byte_and_its_offset() {
    let heap = heap(4 << 20);
    let layout = Layout::from_size_align(24, 8).unwrap();
    // SAFETY: the write past the end lands in the trailing guard, inside the
    // debug block: that is the bug under test, caught before any harm.
    let (p, serial) = unsafe {
        let _first = heap.alloc(layout);
        let p = heap.alloc(layout);
        p.write_bytes(0x41, 24);
        p.add(24).write(0x41);
        p.add(26).write(0x42);
        heap.dealloc(p, layout);
        (p, 2)
    };
    let v = caught();
    assert_eq!(v.len(), 1);
    let v = v[0];
    assert_eq!(v.kind, ViolationKind::TrailingGuard);
    assert_eq!(v.address, p as usize);
    assert_eq!(v.requested_size, Some(24));
    assert_eq!(v.serial, Some(serial));
    // A 4 MiB heap has no layer +2 (it starts at 16 MiB): layer 0 holds it.
    assert_eq!(v.owner, Some(Layer::Segment));
    assert_eq!(v.allocated_by, Some(Domain::HEAP));
    assert_eq!(v.bad_bytes(), &[BadByte { offset: 24, value: 0x41 }, BadByte { offset: 26, value: 0x42 }]);
    assert_eq!((v.data_len, v.first, v.last), (8, [0x41; 8], [0x41; 8]));
    let report = v.to_string();
    for line in [
        "bad trailing guard byte (buffer overflow)",
        &format!("p={:#x}", p as usize),
        "24 bytes originally requested",
        "call #2 to debug malloc/realloc",
        "layer 0",
        "at p+24: 0x41 *** OUCH",
        "at p+26: 0x42 *** OUCH",
        "Data at p: 41 41 41 41 41 41 41 41 ... 41 41",
    ] {
        assert!(report.contains(line), "report lacks {line:?}:\n{report}");
    }
    // The corrupted block was kept out of circulation; the heap is sound.
    heap.with(|h| h.check_invariants());
    assert_eq!(heap.stats().front.debug_violations, 1);
    assert!(heap.with(|h| h.report()).to_string().contains("debug hooks: 1 misuses caught"));
}

#[test]
fn an_underflow_is_caught_in_the_leading_guard() {
    let heap = heap(4 << 20);
    let layout = Layout::from_size_align(4000, 16).unwrap();
    // SAFETY: the bytes written before the block are its leading guard.
    unsafe {
        let p = heap.alloc(layout);
        p.sub(1).write(0);
        p.sub(3).write(7);
        heap.dealloc(p, layout);
    }
    let v = caught();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].kind, ViolationKind::LeadingGuard);
    assert_eq!(v[0].owner, Some(Layer::Segment));
    assert_eq!(v[0].bad_bytes(), &[BadByte { offset: -3, value: 7 }, BadByte { offset: -1, value: 0 }]);
    assert!(v[0].to_string().contains("at p-1: 0x00 *** OUCH"));
}

#[test]
fn a_double_free_is_caught_and_not_done() {
    let heap = heap(4 << 20);
    let layout = Layout::from_size_align(48, 8).unwrap();
    // SAFETY: the second free is the misuse under test; debug mode refuses it.
    unsafe {
        let p = heap.alloc(layout);
        heap.dealloc(p, layout);
        heap.dealloc(p, layout);
        let v = caught();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].kind, ViolationKind::DoubleFree);
        assert_eq!(v[0].serial, Some(1));
        assert_eq!(v[0].requested_size, Some(48));
        assert_eq!(v[0].first, [debug::DEAD; 8]);
        assert!(v[0].to_string().contains("double free"));
        let front = heap.stats().front;
        assert_eq!((front.debug_violations, front.refused_frees), (1, 1), "reported and counted as refused");
        // Had the second free gone through, the block would be on the free
        // list twice and the next two allocations would share it.
        let a = heap.alloc(layout);
        let b = heap.alloc(layout);
        assert_ne!(a, b);
        heap.with(|h| h.check_invariants());
    }
}

#[test]
fn a_cache_block_freed_through_global_alloc_is_a_wrong_layer_free() {
    #[derive(Default)]
    struct Task(#[allow(dead_code)] [u64; 6]);
    let heap = heap(4 << 20);
    let cache: ObjectCache<'_, Task, LockedHeap, 4> = ObjectCache::new(heap);
    let block = cache.allocate().unwrap();
    let layout = ObjectCache::<Task, LockedHeap>::BLOCK;
    // SAFETY: freeing a cache block through the heap's own domain is the
    // misuse under test; debug mode refuses it.
    unsafe { heap.dealloc(block.as_ptr().cast(), layout) };
    let v = caught();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].kind, ViolationKind::WrongDomain);
    assert_eq!((v[0].allocated_by, v[0].freed_by), (Some(Domain::CACHE), Domain::HEAP));
    assert!(v[0].to_string().contains("freed through API 'h', allocated through API 'c'"));
    // Through the cache it is fine.
    // SAFETY: the block came from this cache.
    unsafe { cache.deallocate(block) };
    cache.clear();
    assert!(caught().is_empty());
}

#[test]
fn foreign_pointers_and_wrong_sizes_are_caught_without_reading_outside() {
    let heap = heap(4 << 20);
    let mut local = [0u64; 8];
    let layout = Layout::new::<[u64; 8]>();
    // SAFETY: a pointer the heap never returned; debug mode must refuse it
    // without touching anything.
    unsafe { heap.dealloc(local.as_mut_ptr().cast(), layout) };
    let v = caught();
    assert_eq!(v[0].kind, ViolationKind::NotOwned);
    assert_eq!((v[0].owner, v[0].serial), (None, None));
    // SAFETY: a live block freed with the wrong size: refused.
    unsafe {
        let p = heap.alloc(layout);
        heap.dealloc(p, Layout::new::<[u64; 4]>());
        let v = caught();
        assert_eq!(v[0].kind, ViolationKind::SizeMismatch);
        assert_eq!(v[0].requested_size, Some(64));
        // An interior pointer: its "header" is data, not a live header.
        heap.dealloc(p.add(16), Layout::new::<[u64; 4]>());
        let v = caught();
        assert_eq!(v[0].kind, ViolationKind::BadHeader);
        heap.dealloc(p, layout);
    }
    assert!(caught().is_empty());
    // Each refusal is counted as the default build counts it.
    assert_eq!(heap.stats().front.refused_frees, 3);
}

#[test]
fn realloc_moves_keeps_the_data_and_checks_the_old_block() {
    let heap = heap(4 << 20);
    let layout = Layout::from_size_align(40, 8).unwrap();
    // SAFETY: blocks of this heap with their layouts; the overflow is the
    // misuse under test.
    unsafe {
        let p = heap.alloc(layout);
        for i in 0..40 {
            p.add(i).write(i as u8);
        }
        let q = heap.realloc(p, layout, 44);
        assert_ne!(p, q, "debug realloc always moves");
        assert_eq!(bytes(q, 40), (0..40).collect::<Vec<u8>>());
        assert_eq!(bytes(q.add(40), 4), [debug::CLEAN; 4]);
        assert_eq!(bytes(p, 8), [debug::DEAD; 8], "the old block is freed");
        let layout = Layout::from_size_align(44, 8).unwrap();
        q.add(44).write(0);
        assert!(heap.realloc(q, layout, 100).is_null(), "a corrupted block is not reallocated");
        assert_eq!(caught()[0].kind, ViolationKind::TrailingGuard);
    }
}

/// Under `GlobalAlloc` the default policy prints the report and aborts: an
/// unwinding panic out of the allocator would be undefined behaviour. Run in
/// a child process (this test binary, told by an environment variable to do
/// the overflow), which must die of the abort with the report on stderr.
#[test]
fn the_default_policy_prints_the_report_and_aborts_without_unwinding() {
    if std::env::var_os("STRATA_DEBUG_ABORT_CHILD").is_some() {
        let heap = heap(4 << 20);
        heap.set_debug_policy(Policy::Panic);
        let layout = Layout::from_size_align(16, 8).unwrap();
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: the overflow writes into the trailing guard of the block.
            unsafe {
                let p = heap.alloc(layout);
                p.add(16).write(1);
                heap.dealloc(p, layout);
            }
        }));
        // Reached only if the free returned or unwound: both are failures.
        println!("CHILD-SURVIVED unwound={}", unwound.is_err());
        std::process::exit(0);
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "the_default_policy_prints_the_report_and_aborts_without_unwinding", "--nocapture"])
        .env("STRATA_DEBUG_ABORT_CHILD", "1")
        .output()
        .expect("run the child");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "the child survived: {stdout}");
    assert!(!stdout.contains("CHILD-SURVIVED"), "the violation returned or unwound: {stdout}");
    assert!(stderr.contains("bad trailing guard byte"), "{stderr}");
    assert!(stderr.contains("at p+16: 0x01 *** OUCH"), "{stderr}");
    assert!(stderr.contains("cannot unwind"), "not an abort at the no-unwind boundary: {stderr}");
}

#[test]
fn a_free_with_another_alignment_is_a_reported_layout_mismatch() {
    for size in [64 << 10, 4 << 20] {
        let heap = heap(size);
        // SAFETY: a live block freed with a larger alignment: refused and
        // reported, the block kept out of circulation, nothing corrupted.
        unsafe {
            let p = heap.alloc(Layout::from_size_align(100, 16).unwrap());
            heap.dealloc(p, Layout::from_size_align(100, 32).unwrap());
            let v = caught();
            assert_eq!(v.len(), 1);
            assert_eq!(v[0].kind, ViolationKind::AlignMismatch);
            assert!(v[0].to_string().contains("another alignment"));
            heap.with(|h| h.check_invariants());
            // And with the right layout it frees.
            heap.dealloc(p, Layout::from_size_align(100, 16).unwrap());
            assert!(caught().is_empty());
        }
        heap.with(|h| h.check_invariants());
    }
}

#[derive(Clone, Debug)]
enum Op {
    Alloc { size: usize, align_shift: u32, zeroed: bool },
    Free { which: usize },
    Realloc { which: usize, size: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let size = prop_oneof![8 => 1usize..=512, 3 => 513usize..=16 << 10, 1 => (16usize << 10)..=(512 << 10)];
    prop_oneof![
        5 => (size.clone(), prop_oneof![3 => Just(0u32), 2 => 0u32..=12], any::<bool>())
            .prop_map(|(size, align_shift, zeroed)| Op::Alloc { size, align_shift, zeroed }),
        3 => any::<usize>().prop_map(|which| Op::Free { which }),
        2 => (any::<usize>(), size).prop_map(|(which, size)| Op::Realloc { which, size }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random programs in debug mode: every pointer aligned, fresh data
    /// 0xCD (or zero), contents kept across realloc, no false alarm, the
    /// layers' invariants after every step, and every page back at the end.
    #[test]
    fn random_programs_raise_no_false_alarms(ops in prop::collection::vec(op(), 1..200)) {
        let heap = heap(32 << 20);
        let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
        for (step, op) in ops.into_iter().enumerate() {
            let seed = step as u8;
            match op {
                Op::Alloc { size, align_shift, zeroed } => {
                    let layout = Layout::from_size_align(size, 1 << align_shift).unwrap();
                    // SAFETY: a non-zero layout; the block is read and written within it.
                    let p = unsafe { if zeroed { heap.alloc_zeroed(layout) } else { heap.alloc(layout) } };
                    prop_assert!(!p.is_null());
                    prop_assert_eq!(p as usize % layout.align(), 0);
                    let want = if zeroed { 0 } else { debug::CLEAN };
                    prop_assert!(bytes(p, size.min(64)).iter().all(|&b| b == want));
                    // SAFETY: as above.
                    unsafe { p.write_bytes(seed, size) };
                    live.push((p, layout, seed));
                }
                Op::Free { which } if !live.is_empty() => {
                    let (p, layout, seed) = live.swap_remove(which % live.len());
                    // SAFETY: a live block with its layout.
                    unsafe {
                        prop_assert!(bytes(p, layout.size().min(64)).iter().all(|&b| b == seed));
                        heap.dealloc(p, layout);
                    }
                }
                Op::Realloc { which, size } if !live.is_empty() => {
                    let i = which % live.len();
                    let (p, layout, seed) = live[i];
                    // SAFETY: a live block with its layout.
                    unsafe {
                        let q = heap.realloc(p, layout, size);
                        prop_assert!(!q.is_null());
                        prop_assert_eq!(q as usize % layout.align(), 0);
                        let kept = layout.size().min(size);
                        prop_assert!(bytes(q, kept.min(64)).iter().all(|&b| b == seed));
                        q.write_bytes(seed, size);
                        live[i] = (q, Layout::from_size_align(size, layout.align()).unwrap(), seed);
                    }
                }
                _ => {}
            }
            heap.with(|h| h.check_invariants());
            prop_assert!(caught().is_empty(), "false alarm at step {}", step);
        }
        for (p, layout, _) in live {
            // SAFETY: live blocks with their layouts.
            unsafe { heap.dealloc(p, layout) };
        }
        heap.trim();
        let stats = heap.stats();
        prop_assert_eq!(stats.arenas.current, 0);
        prop_assert_eq!(stats.segments.spans, 0);
        prop_assert_eq!(heap.with(|h| h.debug_violations()), 0);
    }
}
