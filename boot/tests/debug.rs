//! QEMU suite: strata's debug hooks on the kernel heap. Each misuse —
//! overflow, underflow, double free, a cache block freed through the wrong
//! layer — must be caught on free, and the report must say what happened,
//! where, and to which allocation.
#![no_std]
#![no_main]

extern crate alloc;

use core::alloc::{GlobalAlloc, Layout};
use core::fmt::Write;

use spin::Mutex;
use strata::front::debug::{BadByte, Policy, Violation, ViolationKind};
use strata::{Domain, Layer};
use strata_boot::heap::{HEAP, TASKS, Task};
use strata_boot::test::{TextBuffer, expect_panic_containing};
use strata_boot::{entry_point, kernel_test};
use x86_64::instructions::interrupts::without_interrupts;

entry_point!(strata_boot::test::main);

const SMALL: Layout = match Layout::from_size_align(24, 8) {
    Ok(l) => l,
    Err(_) => panic!(),
};

static CAUGHT: Mutex<Option<Violation>> = Mutex::new(None);
static REPORT: Mutex<TextBuffer<2048>> = Mutex::new(TextBuffer::new());

fn record(v: &Violation) {
    *CAUGHT.lock() = Some(*v);
    let mut report = REPORT.lock();
    report.clear();
    let _ = write!(report, "{v}");
}

/// Runs `misuse` under the reporting policy (interrupts off, so the serial
/// numbers are the case's own) and returns what was caught and the report.
fn caught(misuse: impl FnOnce(u64)) -> (Violation, TextBuffer<2048>) {
    *CAUGHT.lock() = None;
    HEAP.set_debug_policy(Policy::Report(record));
    without_interrupts(|| misuse(HEAP.with(|h| h.debug_serial()) + 1));
    HEAP.set_debug_policy(Policy::Panic);
    let v = CAUGHT.lock().take().expect("the misuse was not caught");
    let mut text = TextBuffer::new();
    let _ = text.write_str(REPORT.lock().as_str());
    (v, text)
}

fn assert_reports(report: &TextBuffer<2048>, lines: &[&str]) {
    for line in lines {
        assert!(report.as_str().contains(line), "report lacks {line:?}:\n{}", report.as_str());
    }
}

kernel_test! {
    #[should_panic]
    fn an_overflow_panics_with_its_report() {
        expect_panic_containing(&[
            "bad trailing guard byte (buffer overflow)",
            "24 bytes originally requested",
            "in memory of layer",
            "at p+24: 0x41 *** OUCH",
            "Data at p: 41 41 41 41 41 41 41 41 ... 41",
        ]);
        // SAFETY: the byte past the end lands in the block's trailing guard:
        // the overflow under test, caught on free before any harm.
        unsafe {
            let p = HEAP.alloc(SMALL);
            p.write_bytes(0x41, 25);
            HEAP.dealloc(p, SMALL);
        }
    }
}

kernel_test! {
    #[should_panic]
    fn an_underflow_panics_with_its_report() {
        expect_panic_containing(&["bad leading guard byte (buffer underflow)", "at p-2: 0x00 *** OUCH"]);
        // SAFETY: the byte before the block is its leading guard.
        unsafe {
            let p = HEAP.alloc(SMALL);
            p.sub(2).write(0);
            HEAP.dealloc(p, SMALL);
        }
    }
}

kernel_test! {
    #[should_panic]
    fn a_double_free_panics_with_its_report() {
        expect_panic_containing(&["double free", "24 bytes originally requested", "Data at p: dd dd"]);
        // SAFETY: the second free is the misuse under test, refused.
        unsafe {
            let p = HEAP.alloc(SMALL);
            HEAP.dealloc(p, SMALL);
            HEAP.dealloc(p, SMALL);
        }
    }
}

kernel_test! {
    #[should_panic]
    fn a_cache_block_freed_through_the_heap_panics_with_its_report() {
        expect_panic_containing(&[
            "freed through the wrong layer",
            "freed through API 'h', allocated through API 'c'",
        ]);
        let block = TASKS.allocate().expect("a task record");
        // SAFETY: a layer +3 block freed through layer +1: the misuse under test.
        unsafe { HEAP.dealloc(block.as_ptr().cast(), ObjectCache::BLOCK) };
    }
}

type ObjectCache =
    strata::ObjectCache<'static, Task, strata_boot::heap::KernelHeap, 64, strata_boot::sync::IrqSpinLock>;

kernel_test! {
    fn each_misuse_is_reported_with_its_allocation() {
        // Overflow of a layer 0 block.
        let big = Layout::from_size_align(3000, 16).unwrap();
        let (v, report) = caught(|serial| {
            // SAFETY: the writes past the end land in the trailing guard.
            unsafe {
                let p = HEAP.alloc(big);
                p.add(3000).write(1);
                p.add(3015).write(2);
                HEAP.dealloc(p, big);
            }
            assert_eq!(CAUGHT.lock().map(|v| v.serial), Some(Some(serial)));
        });
        assert_eq!((v.kind, v.owner, v.requested_size), (ViolationKind::TrailingGuard, Some(Layer::Segment), Some(3000)));
        assert_eq!(v.bad_bytes(), &[BadByte { offset: 3000, value: 1 }, BadByte { offset: 3015, value: 2 }]);
        assert_reports(&report, &["at p+3000: 0x01 *** OUCH", "at p+3015: 0x02 *** OUCH", "in memory of layer 0"]);

        // Double free: the serial of the original allocation.
        let (v, _) = caught(|serial| {
            // SAFETY: the second free is refused.
            unsafe {
                let p = HEAP.alloc(SMALL);
                HEAP.dealloc(p, SMALL);
                HEAP.dealloc(p, SMALL);
            }
            assert_eq!(CAUGHT.lock().and_then(|v| v.serial), Some(serial));
        });
        assert_eq!(v.kind, ViolationKind::DoubleFree);

        // Wrong layer, through the reporting policy.
        let (v, _) = caught(|_| {
            let block = TASKS.allocate().expect("a task record");
            // SAFETY: refused: the block belongs to the cache's domain.
            unsafe { HEAP.dealloc(block.as_ptr().cast(), ObjectCache::BLOCK) };
        });
        assert_eq!((v.kind, v.allocated_by, v.freed_by), (ViolationKind::WrongDomain, Some(Domain::CACHE), Domain::HEAP));

        // The bad blocks were kept out of circulation; the heap is sound and
        // still serves.
        HEAP.with(|h| h.check_invariants());
        assert!(HEAP.with(|h| h.debug_violations()) >= 3);
        let v: alloc::vec::Vec<u64> = (0..1000).collect();
        assert_eq!(v.iter().sum::<u64>(), 499_500);
    }
}

/// CPUs on which the hooks caught a misuse (a bit per CPU).
static CAUGHT_ON: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

fn caught_here(_: &Violation) {
    CAUGHT_ON.fetch_or(1 << strata_boot::smp::current().index(), core::sync::atomic::Ordering::Relaxed);
}

kernel_test! {
    fn a_double_free_is_caught_on_every_cpu() {
        use core::sync::atomic::Ordering;
        use strata_boot::smp;
        // The debug hooks: a double free on each CPU is caught there.
        CAUGHT_ON.store(0, Ordering::Relaxed);
        HEAP.set_debug_policy(Policy::Report(caught_here));
        // One CPU at a time: run at once, another CPU could take the block
        // between the two frees, and the second would free its live block.
        let turn = core::sync::atomic::AtomicUsize::new(0);
        smp::run_on_all(&|cpu| {
            while turn.load(Ordering::Acquire) != cpu.index() {
                smp::spin_wait();
            }
            let layout = core::alloc::Layout::new::<[u64; 4]>();
            // SAFETY: a block of the heap freed twice: the hooks refuse the
            // second free and report it (the block is kept out of use).
            unsafe {
                let p = alloc::alloc::alloc(layout);
                assert!(!p.is_null());
                alloc::alloc::dealloc(p, layout);
                alloc::alloc::dealloc(p, layout);
            }
            turn.fetch_add(1, Ordering::Release);
        });
        HEAP.set_debug_policy(Policy::Panic);
        let all = (1u64 << smp::count()) - 1;
        assert_eq!(CAUGHT_ON.load(Ordering::Relaxed), all, "a CPU's double free was not caught");
        HEAP.with(|h| h.check_invariants());
    }
}
