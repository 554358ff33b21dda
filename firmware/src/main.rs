//! strata as the global allocator of a Cortex-M4F firmware, run by the test
//! suite on QEMU's mps2-an386 with semihosting.
//!
//! It declares the heap the way a firmware developer would (a static, one
//! `init`), runs a workload of `Vec`, `String`, `BTreeMap` and an
//! `ObjectCache`, allocates from the SysTick interrupt handler while the main
//! code allocates, compares how long strata and linked_list_allocator serve
//! the same mixed workload on 64 KiB before their first failure, prints what
//! it did and the allocator's statistics, and exits with status 0 only if
//! every check passed.
//!
//! Built with the `debug` feature (`make test-firmware` runs both builds),
//! the heap runs strata's debug hooks with a reporting policy (a callback
//! that prints the report over semihosting), and one more check overflows a
//! buffer and expects the overflow to be caught and reported on free.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::alloc::{GlobalAlloc, Layout};
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::{entry, exception};
use cortex_m_semihosting::{debug, hprintln};
use strata::{LockedHeap, ObjectCache};

const HEAP_SIZE: usize = 64 * 1024;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// A sensor reading: the firmware's own object type, kept in a typed cache.
#[derive(Debug, Default, Clone, Copy)]
struct Reading {
    channel: u8,
    value: i32,
    timestamp: u32,
}

static READINGS: ObjectCache<'static, Reading, LockedHeap, 16> = ObjectCache::new(&HEAP);

static TICKS: AtomicU32 = AtomicU32::new(0);
static TICK_ALLOCATIONS: AtomicU32 = AtomicU32::new(0);
static TICK_FAILURES: AtomicU32 = AtomicU32::new(0);

#[entry]
fn main() -> ! {
    // cortex-m-rt turns this `static mut` into a `&'static mut`, used once.
    static mut MEMORY: [MaybeUninit<u8>; HEAP_SIZE] = [MaybeUninit::uninit(); HEAP_SIZE];
    HEAP.init_from_slice(MEMORY);

    let mut ok = true;
    let mut check = |what: &str, pass: bool| {
        hprintln!("  {} {}", if pass { "ok  " } else { "FAIL" }, what);
        ok &= pass;
    };

    hprintln!("strata firmware: 64 KiB heap, {:?}", HEAP.stats().geometry);
    let v: Vec<u32> = (0..1000).collect();
    check("Vec of 1000 u32", v.iter().sum::<u32>() == 499_500);
    drop(v);
    let mut s = String::new();
    for i in 0..100 {
        s.push_str(&format!("{i},"));
    }
    check("String of 100 numbers", s.len() == 290 && s.starts_with("0,1,2,"));
    let mut map = BTreeMap::new();
    for i in 0..200u32 {
        map.insert(i.wrapping_mul(2_654_435_761) % 1000, format!("value {i}"));
    }
    check("BTreeMap of 200 entries", map.len() == 200 && map.values().all(|v| v.starts_with("value ")));
    drop((s, map));

    for round in 0..10 {
        let readings: Vec<_> = (0..12)
            .map(|c| READINGS.boxed(Reading { channel: c, value: round * 100 + i32::from(c), timestamp: 0 }))
            .collect::<Result<_, _>>()
            .expect("readings");
        assert_eq!((readings[3].channel, readings[3].value, readings[3].timestamp), (3, round * 100 + 3, 0));
    }
    let cache = READINGS.stats();
    check("ObjectCache reuses freed readings", cache.hits >= 100 && cache.misses <= 16);

    // SysTick at 1 kHz (the mps2 core clock is 25 MHz); its handler allocates.
    let mut core = cortex_m::Peripherals::take().expect("core peripherals");
    core.SYST.set_clock_source(SystClkSource::Core);
    core.SYST.set_reload(25_000 - 1);
    core.SYST.clear_current();
    core.SYST.enable_interrupt();
    core.SYST.enable_counter();
    let mut churned = 0u32;
    while TICKS.load(Ordering::SeqCst) < 20 {
        let b: Vec<u16> = (0..(churned % 300) as u16).collect();
        churned += b.len() as u32 + 1;
    }
    core.SYST.disable_interrupt();
    core.SYST.disable_counter();
    let made = TICK_ALLOCATIONS.load(Ordering::SeqCst);
    hprintln!(
        "  SysTick: {} ticks, {made} allocations in the handler while main allocated",
        TICKS.load(Ordering::SeqCst)
    );
    check("allocation from the SysTick handler", made >= 40 && TICK_FAILURES.load(Ordering::SeqCst) == 0);

    let (strata_ops, strata_live, lla_ops, lla_live) = compare_with_linked_list();
    hprintln!(
        "  mixed workload on 64 KiB until the first failure: strata {strata_ops} allocations ({strata_live} B live), linked_list_allocator {lla_ops} ({lla_live} B live)"
    );
    if cfg!(feature = "debug") {
        // 64 bytes of header and guards per block cost capacity by design.
        hprintln!("  (capacity not compared in the debug build)");
    } else {
        check("strata serves at least as long as linked_list_allocator", strata_ops >= lla_ops);
    }

    #[cfg(feature = "debug")]
    check("debug: a buffer overflow is caught and reported on free", debug_mode::overflow_is_caught());

    let stats = HEAP.stats();
    hprintln!("statistics:\n{}", HEAP.with(|h| h.report()));
    check("no failed allocation on the global heap", stats.front.failed_allocations == 0);
    HEAP.with(|h| h.check_invariants());

    hprintln!("strata firmware: {}", if ok { "PASS" } else { "FAIL" });
    debug::exit(if ok { debug::EXIT_SUCCESS } else { debug::EXIT_FAILURE });
    loop {
        cortex_m::asm::bkpt();
    }
}

#[exception]
fn SysTick() {
    let tick = TICKS.fetch_add(1, Ordering::SeqCst);
    let mut made = 0;
    let mut failed = 0;
    let mut v: Vec<u32> = Vec::new();
    match v.try_reserve(8 + (tick % 32) as usize) {
        Ok(()) => {
            v.push(tick);
            made += 1;
        }
        Err(_) => failed += 1,
    }
    match READINGS.boxed(Reading { channel: 0, value: tick as i32, timestamp: tick }) {
        Ok(r) => {
            core::hint::black_box(&r);
            made += 1;
        }
        Err(_) => failed += 1,
    }
    TICK_ALLOCATIONS.fetch_add(made, Ordering::SeqCst);
    TICK_FAILURES.fetch_add(failed, Ordering::SeqCst);
}

/// A mixed firmware workload (most requests 4–256 B, a tail up to 4 KiB, one
/// free for every two allocations, seeded) replayed until the first failure.
/// Returns the allocations that succeeded and the live bytes at the failure.
fn mixed_until_failure(alloc: &dyn Fn(Layout) -> *mut u8, dealloc: &dyn Fn(*mut u8, Layout)) -> (u32, usize) {
    const SLOTS: usize = 1024;
    let mut live: [(*mut u8, Layout); SLOTS] = [(core::ptr::null_mut(), Layout::new::<u8>()); SLOTS];
    let mut n = 0;
    let mut x = 0x2545_f491u32;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let (mut ops, mut live_bytes) = (0u32, 0usize);
    loop {
        if n > 0 && (next() % 3 == 0 || n == SLOTS) {
            let i = next() as usize % n;
            let (p, l) = live[i];
            dealloc(p, l);
            live_bytes -= l.size();
            n -= 1;
            live[i] = live[n];
            continue;
        }
        let size = match next() % 20 {
            0..=9 => 4 + next() % 61,
            10..=15 => 65 + next() % 192,
            16..=18 => 257 + next() % 768,
            _ => 1025 + next() % 3072,
        } as usize;
        let layout = Layout::from_size_align(size, if next() % 2 == 0 { 4 } else { 8 }).expect("layout");
        let p = alloc(layout);
        if p.is_null() {
            break;
        }
        live[n] = (p, layout);
        n += 1;
        ops += 1;
        live_bytes += size;
    }
    for &(p, l) in &live[..n] {
        dealloc(p, l);
    }
    (ops, live_bytes)
}

/// The same workload on a fresh strata heap and on a linked_list_allocator
/// heap, each over 64 KiB of its own.
fn compare_with_linked_list() -> (u32, usize, u32, usize) {
    static STRATA: LockedHeap = LockedHeap::empty();
    static mut STRATA_MEMORY: [MaybeUninit<u8>; HEAP_SIZE] = [MaybeUninit::uninit(); HEAP_SIZE];
    static mut LLA_MEMORY: [MaybeUninit<u8>; HEAP_SIZE] = [MaybeUninit::uninit(); HEAP_SIZE];
    // SAFETY: each region is handed out once, here.
    let (strata_mem, lla_mem) = unsafe {
        (
            core::slice::from_raw_parts_mut((&raw mut STRATA_MEMORY).cast::<MaybeUninit<u8>>(), HEAP_SIZE),
            core::slice::from_raw_parts_mut((&raw mut LLA_MEMORY).cast::<MaybeUninit<u8>>(), HEAP_SIZE),
        )
    };
    STRATA.init_from_slice(strata_mem);
    // SAFETY: GlobalAlloc calls with the layouts the workload allocated with.
    let (s_ops, s_live) =
        mixed_until_failure(&|l| unsafe { STRATA.alloc(l) }, &|p, l| unsafe { STRATA.dealloc(p, l) });
    let lla = spin_lla(lla_mem);
    let (l_ops, l_live) = mixed_until_failure(
        &|l| lla.borrow_mut().allocate_first_fit(l).map_or(core::ptr::null_mut(), |p| p.as_ptr()),
        // SAFETY: the pointer came from this heap with this layout.
        &|p, l| unsafe { lla.borrow_mut().deallocate(core::ptr::NonNull::new_unchecked(p), l) },
    );
    (s_ops, s_live, l_ops, l_live)
}

fn spin_lla(mem: &'static mut [MaybeUninit<u8>]) -> core::cell::RefCell<linked_list_allocator::Heap> {
    let mut heap = linked_list_allocator::Heap::empty();
    heap.init_from_slice(mem);
    core::cell::RefCell::new(heap)
}

/// The debug build's policy and its overflow check.
#[cfg(feature = "debug")]
mod debug_mode {
    use core::alloc::{GlobalAlloc, Layout};
    use core::cell::Cell;

    use cortex_m::interrupt::{self, Mutex};
    use cortex_m_semihosting::hprintln;
    use strata::front::debug::{BadByte, Policy, Violation, ViolationKind};

    use super::HEAP;

    static CAUGHT: Mutex<Cell<Option<Violation>>> = Mutex::new(Cell::new(None));

    /// The firmware's policy: print the report, keep the violation, go on.
    fn on_violation(v: &Violation) {
        hprintln!("{}", v);
        interrupt::free(|cs| CAUGHT.borrow(cs).set(Some(*v)));
    }

    /// Writes one byte past a 20-byte buffer and frees it.
    pub fn overflow_is_caught() -> bool {
        HEAP.set_debug_policy(Policy::Report(on_violation));
        let layout = Layout::from_size_align(20, 4).expect("layout");
        // SAFETY: the 21st byte lands in the block's trailing guard: the
        // overflow under test, caught on free.
        unsafe {
            let p = HEAP.alloc(layout);
            p.write_bytes(0x5A, 21);
            HEAP.dealloc(p, layout);
        }
        let caught = interrupt::free(|cs| CAUGHT.borrow(cs).take());
        caught.is_some_and(|v| {
            v.kind == ViolationKind::TrailingGuard
                && v.requested_size == Some(20)
                && v.bad_bytes() == [BadByte { offset: 20, value: 0x5A }]
        })
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    hprintln!("strata firmware: PANIC: {}", info);
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::bkpt();
    }
}
