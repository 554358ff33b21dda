//! strata as the global allocator of a firmware, run by the test suite with
//! semihosting on QEMU's mps2-an386 (Cortex-M4F, a 64 KiB heap) and on its
//! micro:bit (Cortex-M0 with 16 KiB of RAM, an 8 KiB heap, built at
//! opt-level "z" as M0 projects are).
//!
//! It declares the heap the way a firmware developer would (a static, one
//! `init`), runs a workload of `Vec`, `String`, `BTreeMap` and an
//! `ObjectCache`, allocates from the SysTick interrupt handler while the main
//! code allocates, compares how long strata and linked_list_allocator serve
//! the same mixed workload before their first failure and how many 8- and
//! 24-byte blocks each fits in the same region, prints what it did and the
//! allocator's statistics, and exits with status 0 only if every check
//! passed. The stack is painted first: a run whose stack reached its end
//! (the statics below it) fails.
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
use core::alloc::Layout;
use core::cell::RefCell;
use core::mem::MaybeUninit;

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::{entry, exception};
use cortex_m_semihosting::{debug, hio, hprintln};
use portable_atomic::{AtomicU32, Ordering};
use strata::{Heap, LockedHeap, ObjectCache, RegionSource};

mod stack;

/// The Cortex-M0 build (thumbv6m has no compare-and-swap; the M4F has).
const M0: bool = !cfg!(target_has_atomic = "32");
/// The global heap.
const HEAP_SIZE: usize = if M0 { 8 * 1024 } else { 64 * 1024 };
/// Each of the two regions the allocators are compared in.
const COMPARE_SIZE: usize = if M0 { 2 * 1024 } else { 64 * 1024 };
/// SysTick reload for 1 kHz: the core clock is 16 MHz on the micro:bit,
/// 25 MHz on the mps2.
const TICK_RELOAD: u32 = if M0 { 16_000 - 1 } else { 25_000 - 1 };

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
    let top = stack::sp();
    stack::paint_below(top);
    HEAP.init_from_slice(MEMORY);
    let init_stack = top - stack::low_water();

    let mut ok = true;
    let mut check = |what: &str, pass: bool| {
        hprintln!("  {} {}", if pass { "ok  " } else { "FAIL" }, what);
        ok &= pass;
    };

    hprintln!(
        "strata firmware on the {}: {} KiB heap, {:?}",
        if M0 { "Cortex-M0" } else { "Cortex-M4F" },
        HEAP_SIZE / 1024,
        HEAP.stats().geometry
    );
    hprintln!("  init took {init_stack} bytes of stack");
    check("init takes under 256 bytes of stack", init_stack < 256);
    let v: Vec<u32> = (0..1000).collect();
    check("Vec of 1000 u32", v.iter().sum::<u32>() == 499_500);
    drop(v);
    let mut s = String::new();
    for i in 0..100 {
        s.push_str(&format!("{i},"));
    }
    check("String of 100 numbers", s.len() == 290 && s.starts_with("0,1,2,"));
    let entries: u32 = if M0 { 60 } else { 200 };
    let mut map = BTreeMap::new();
    for i in 0..entries {
        map.insert(i.wrapping_mul(2_654_435_761) % 1000, format!("value {i}"));
    }
    check(
        "BTreeMap of entries with String values",
        map.len() == entries as usize && map.values().all(|v| v.starts_with("value ")),
    );
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

    // SysTick at 1 kHz; its handler allocates.
    let mut core = cortex_m::Peripherals::take().expect("core peripherals");
    core.SYST.set_clock_source(SystClkSource::Core);
    core.SYST.set_reload(TICK_RELOAD);
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
        "  mixed workload on {} KiB until the first failure: strata {strata_ops} allocations ({strata_live} B live), linked_list_allocator {lla_ops} ({lla_live} B live)",
        COMPARE_SIZE / 1024
    );
    check("strata serves at least as long as linked_list_allocator", strata_ops >= lla_ops);
    for size in [8, 24] {
        let (strata, lla) = blocks_that_fit(size);
        hprintln!(
            "  {size}-byte blocks in {} KiB: strata {strata}, linked_list_allocator {lla}",
            COMPARE_SIZE / 1024
        );
        check("as many small blocks fit as in linked_list_allocator", strata >= lla);
    }

    #[cfg(feature = "debug")]
    check("debug: a buffer overflow is caught and reported on free", debug_mode::overflow_is_caught());

    let stats = HEAP.stats();
    hprintln!("statistics:");
    if let Ok(mut out) = hio::hstdout() {
        // Written row by row: no `Report` value on a small stack.
        let _ = HEAP.with(|h| h.write_report(&mut out));
        hprintln!();
    }
    check("no failed allocation on the global heap", stats.front.failed_allocations == 0);
    HEAP.with(|h| h.check_invariants());

    hprintln!("  stack: {} bytes left of the painted stack at the deepest point", stack::headroom());
    check("the stack never reached its end", !stack::overrun());

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
    const SLOTS: usize = if M0 { 96 } else { 1024 };
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
        // On the M0's 2 KiB, the same mix a sixteenth the size.
        let size = match next() % 20 {
            0..=9 => 4 + next() % 61,
            10..=15 => 65 + next() % 192,
            16..=18 => 257 + next() % 768,
            _ => 1025 + next() % 3072,
        } as usize;
        let size = if M0 { size.div_ceil(16).max(4) } else { size };
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

/// The two regions the allocators are compared in, each handed to one
/// fresh heap at a time.
fn compare_regions() -> (&'static mut [MaybeUninit<u8>], &'static mut [MaybeUninit<u8>]) {
    static mut STRATA_MEMORY: [MaybeUninit<u8>; COMPARE_SIZE] = [MaybeUninit::uninit(); COMPARE_SIZE];
    static mut LLA_MEMORY: [MaybeUninit<u8>; COMPARE_SIZE] = [MaybeUninit::uninit(); COMPARE_SIZE];
    // SAFETY: each comparison builds its two heaps over these regions and
    // drops them before the next one asks: no two live heaps share one.
    unsafe {
        (
            core::slice::from_raw_parts_mut((&raw mut STRATA_MEMORY).cast::<MaybeUninit<u8>>(), COMPARE_SIZE),
            core::slice::from_raw_parts_mut((&raw mut LLA_MEMORY).cast::<MaybeUninit<u8>>(), COMPARE_SIZE),
        )
    }
}

/// A fresh strata heap and a fresh linked_list_allocator heap over the two
/// comparison regions.
fn fresh_heaps() -> (RefCell<Heap<RegionSource>>, RefCell<linked_list_allocator::Heap>) {
    let (strata_mem, lla_mem) = compare_regions();
    // SAFETY: the region is this heap's alone while it lives.
    let source = unsafe { RegionSource::new(strata_mem.as_mut_ptr().cast(), strata_mem.len()) };
    let mut lla = linked_list_allocator::Heap::empty();
    lla.init_from_slice(lla_mem);
    (RefCell::new(Heap::new(source)), RefCell::new(lla))
}

/// The mixed workload on a fresh strata heap and on a linked_list_allocator
/// heap, each over a region of its own.
fn compare_with_linked_list() -> (u32, usize, u32, usize) {
    let (strata, lla) = fresh_heaps();
    let (s_ops, s_live) = mixed_until_failure(
        &|l| strata.borrow_mut().allocate(l).map_or(core::ptr::null_mut(), |p| p.as_ptr()),
        // SAFETY: the pointer came from this heap with this layout.
        &|p, l| {
            unsafe { strata.borrow_mut().deallocate(core::ptr::NonNull::new_unchecked(p), l) }
                .expect("a block of ours")
        },
    );
    let (l_ops, l_live) = mixed_until_failure(
        &|l| lla.borrow_mut().allocate_first_fit(l).map_or(core::ptr::null_mut(), |p| p.as_ptr()),
        // SAFETY: the pointer came from this heap with this layout.
        &|p, l| unsafe { lla.borrow_mut().deallocate(core::ptr::NonNull::new_unchecked(p), l) },
    );
    (s_ops, s_live, l_ops, l_live)
}

/// How many blocks of `size` bytes (aligned to 4) a fresh strata heap and a
/// fresh linked_list_allocator heap fit in regions of the same size.
fn blocks_that_fit(size: usize) -> (usize, usize) {
    let (strata, lla) = fresh_heaps();
    let layout = Layout::from_size_align(size, 4).expect("layout");
    let strata = (0..).take_while(|_| strata.borrow_mut().allocate(layout).is_ok()).count();
    let lla = (0..).take_while(|_| lla.borrow_mut().allocate_first_fit(layout).is_ok()).count();
    (strata, lla)
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
