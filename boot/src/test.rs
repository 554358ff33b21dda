//! The in-kernel test framework (stable Rust: a `linkme` distributed slice).
//!
//! Test suites are `harness = false` integration tests of this crate; each
//! suite boots once and [`main`] runs its cases in name order, printing
//! `test NAME ... ok` or `... FAILED` with the reason. A case may expect a
//! panic or a page fault (with the exact address and what the VMM must say
//! of it). A panic or an unexpected fault fails the case and the runner
//! carries on with the next one on a fresh stack, after stopping the timer
//! and releasing every lock the case held: each lock a case can take is
//! registered with [`abandonable_lock!`](crate::abandonable_lock) (the
//! heap, the task cache, the sampling pool, the PICs, the VMM, the frame
//! allocator, the console, the runner's own). The run ends with
//! `N passed, M failed` and exits QEMU with success only when M is 0; a hung
//! kernel is killed by the runner script's timeout.

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use linkme::distributed_slice;
use spin::{Mutex, Once};
use strata::vmm::AddressInfo;
use x86_64::VirtAddr;

use crate::faults::{self, Fault, Hooks};
use crate::{BootInfo, println};

/// What a test case expects to happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// It returns normally.
    Pass,
    /// It panics.
    Panic,
    /// It takes the page fault announced with [`expect_page_fault`].
    PageFault,
}

/// One kernel test case, registered with [`kernel_test!`](crate::kernel_test).
#[derive(Debug)]
pub struct KernelTest {
    /// The case's name.
    pub name: &'static str,
    /// What it expects.
    pub expect: Expect,
    /// The case itself.
    pub run: fn(),
}

/// Every test case linked into the binary.
#[distributed_slice]
pub static KERNEL_TESTS: [KernelTest];

const MAX_TESTS: usize = 256;
static ORDER: Once<([u16; MAX_TESTS], usize)> = Once::new();
static NEXT: AtomicUsize = AtomicUsize::new(0);
static PASSED: AtomicUsize = AtomicUsize::new(0);
static FAILED: AtomicUsize = AtomicUsize::new(0);
static RUNNING: AtomicBool = AtomicBool::new(false);
static CURRENT: Mutex<Option<&'static KernelTest>> = Mutex::new(None);
static EXPECTED_FAULT: Mutex<Option<(VirtAddr, AddressInfo)>> = Mutex::new(None);
static EXPECTED_SAMPLE: Mutex<Option<crate::sampling::Hit>> = Mutex::new(None);
static EXPECTED_PANIC: Mutex<&'static [&'static str]> = Mutex::new(&[]);
static PANIC_TEXT: Mutex<TextBuffer<4096>> = Mutex::new(TextBuffer::new());
/// Names of the locks the last abandoned case left held.
static RELEASED: Mutex<TextBuffer<256>> = Mutex::new(TextBuffer::new());
crate::abandonable_lock!("current test", CURRENT, acquire);
crate::abandonable_lock!("expected fault", EXPECTED_FAULT, acquire);
crate::abandonable_lock!("expected sample", EXPECTED_SAMPLE, acquire);
crate::abandonable_lock!("expected panic", EXPECTED_PANIC, acquire);
crate::abandonable_lock!("panic text", PANIC_TEXT, acquire);
crate::abandonable_lock!("released-lock names", RELEASED, acquire);

/// Text written through `core::fmt::Write` into a fixed buffer (no
/// allocation: usable in a panic, or to render an allocator report while the
/// allocator is the thing under test). Writes past the end are dropped.
#[derive(Debug)]
pub struct TextBuffer<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> TextBuffer<N> {
    /// An empty buffer.
    pub const fn new() -> Self {
        Self { bytes: [0; N], len: 0 }
    }

    /// The text written so far (up to the last whole character that fit).
    pub fn as_str(&self) -> &str {
        match core::str::from_utf8(&self.bytes[..self.len]) {
            Ok(s) => s,
            Err(e) => core::str::from_utf8(&self.bytes[..e.valid_up_to()]).unwrap_or(""),
        }
    }

    /// Empties the buffer.
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

impl<const N: usize> Default for TextBuffer<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> core::fmt::Write for TextBuffer<N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(N - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Registers a kernel test case.
///
/// ```ignore
/// kernel_test! { fn maps_a_page() { ... } }
/// kernel_test! { #[should_panic] fn rejects_bad_input() { ... } }
/// kernel_test! { #[should_fault] fn guard_page_faults() { expect_page_fault(..); touch(); } }
/// ```
#[macro_export]
macro_rules! kernel_test {
    (fn $name:ident() $body:block) => {
        $crate::kernel_test!(@case $name, $crate::test::Expect::Pass, $body);
    };
    (#[should_panic] fn $name:ident() $body:block) => {
        $crate::kernel_test!(@case $name, $crate::test::Expect::Panic, $body);
    };
    (#[should_fault] fn $name:ident() $body:block) => {
        $crate::kernel_test!(@case $name, $crate::test::Expect::PageFault, $body);
    };
    (@case $name:ident, $expect:expr, $body:block) => {
        fn $name() $body
        const _: () = {
            #[$crate::linkme::distributed_slice($crate::test::KERNEL_TESTS)]
            #[linkme(crate = $crate::linkme)]
            static CASE: $crate::test::KernelTest = $crate::test::KernelTest {
                name: stringify!($name),
                expect: $expect,
                run: $name,
            };
        };
    };
}

/// Reads the byte at `addr` with an instruction the compiler cannot reason
/// about (a plain read of an address that faults would be undefined
/// behaviour): how a case provokes the page fault it expects.
///
/// # Safety
///
/// `addr` must be readable, or its fault must be the one the current case
/// announced (the handler then abandons the case and never returns here).
pub unsafe fn read_byte(addr: VirtAddr) -> u8 {
    let value: u8;
    // SAFETY: the caller's promise.
    unsafe {
        core::arch::asm!("mov {v}, byte ptr [{a}]", a = in(reg) addr.as_u64(), v = out(reg_byte) value)
    };
    value
}

/// Writes 0x42 to `addr`, as [`read_byte`] reads.
///
/// # Safety
///
/// `addr` must be writable memory the caller owns, or its fault must be the
/// one the current case announced.
pub unsafe fn write_byte(addr: VirtAddr) {
    // SAFETY: the caller's promise.
    unsafe { core::arch::asm!("mov byte ptr [{a}], 0x42", a = in(reg) addr.as_u64()) };
}

/// Announces the page fault the current case expects: at `addr`, which the
/// VMM must describe as `info`. Any other fault fails the case.
pub fn expect_page_fault(addr: VirtAddr, info: AddressInfo) {
    *EXPECTED_FAULT.lock() = Some((addr, info));
}

/// Announces the page fault the current case expects in the sampling pool:
/// at `addr`, which the VMM must describe as `info` and the pool as `hit`.
pub fn expect_sampled_fault(addr: VirtAddr, info: AddressInfo, hit: crate::sampling::Hit) {
    *EXPECTED_SAMPLE.lock() = Some(hit);
    expect_page_fault(addr, info);
}

/// Announces that the current `#[should_panic]` case passes only if its
/// panic message contains every one of `parts`.
pub fn expect_panic_containing(parts: &'static [&'static str]) {
    *EXPECTED_PANIC.lock() = parts;
}

/// The entry of every test suite: `entry_point!(strata_boot::test::main)`.
///
/// The kernel command line, when not empty, filters the cases by substring.
pub fn main(boot: &'static BootInfo) -> ! {
    let filter = boot.cmdline.split_whitespace().find(|a| !a.starts_with('-'));
    ORDER.call_once(|| {
        let mut order = [0u16; MAX_TESTS];
        let mut n = 0;
        for (i, t) in KERNEL_TESTS.iter().enumerate() {
            if filter.is_none_or(|f| t.name.contains(f)) {
                assert!(n < MAX_TESTS, "more than {MAX_TESTS} kernel tests");
                order[n] = i as u16;
                n += 1;
            }
        }
        order[..n].sort_unstable_by_key(|&i| KERNEL_TESTS[usize::from(i)].name);
        (order, n)
    });
    faults::install(Hooks { on_fault, on_panic });
    RUNNING.store(true, Ordering::SeqCst);
    println!("\nrunning {} kernel tests", ORDER.get().map_or(0, |o| o.1));
    run_remaining()
}

/// Runs the cases not yet started, then prints the summary and exits QEMU.
extern "C" fn run_remaining() -> ! {
    let (order, n) = ORDER.get().expect("test::main has run");
    loop {
        let i = NEXT.fetch_add(1, Ordering::SeqCst);
        if i >= *n {
            break;
        }
        let test = &KERNEL_TESTS[usize::from(order[i])];
        crate::print!("test {} ... ", test.name);
        *EXPECTED_FAULT.lock() = None;
        *EXPECTED_PANIC.lock() = &[];
        *EXPECTED_SAMPLE.lock() = None;
        *CURRENT.lock() = Some(test);
        (test.run)();
        *CURRENT.lock() = None;
        match test.expect {
            Expect::Pass => pass(),
            Expect::Panic => fail(format_args!("returned, but it should have panicked")),
            Expect::PageFault => fail(format_args!("returned, but it should have faulted")),
        }
    }
    let (passed, failed) = (PASSED.load(Ordering::SeqCst), FAILED.load(Ordering::SeqCst));
    println!(
        "\ntest result: {}. {passed} passed; {failed} failed",
        if failed == 0 { "ok" } else { "FAILED" }
    );
    println!("{passed} passed, {failed} failed");
    if failed == 0 { crate::exit_success() } else { crate::exit_failure() }
}

fn pass() {
    PASSED.fetch_add(1, Ordering::SeqCst);
    println!("ok");
}

fn fail(why: core::fmt::Arguments<'_>) {
    FAILED.fetch_add(1, Ordering::SeqCst);
    println!("FAILED\n    {why}");
}

/// The case that was running, taken out so it is judged once, after the
/// machine is recovered from it ([`recover`]); `None` outside the runner.
fn take_current() -> Option<&'static KernelTest> {
    if !RUNNING.load(Ordering::SeqCst) {
        return None;
    }
    recover();
    CURRENT.lock().take()
}

/// Puts the machine back in the state every case starts from, after a case
/// was abandoned (by a panic or a fault) wherever it was: the timer is
/// stopped and interrupts are off ([`timer::reset`](crate::timer::reset)),
/// then every lock of the registry
/// ([`ABANDONABLE_LOCKS`](crate::sync::ABANDONABLE_LOCKS)) that it held is
/// released.
fn recover() {
    crate::timer::reset();
    // The other CPUs finish what the case gave them first: they may hold
    // locks of the registry, and read the case's frames.
    crate::smp::quiesce();
    let mut names = TextBuffer::<256>::new();
    // SAFETY: the case is abandoned: `resume` drops its stack and it never
    // runs again, and the other CPUs are idle, so no other holder exists.
    unsafe {
        crate::sync::release_abandoned_locks(|name| {
            let _ = core::fmt::Write::write_fmt(&mut names, format_args!(" {name};"));
            // An interrupt-masking lock restores the flag its holder saw.
            x86_64::instructions::interrupts::disable();
        })
    };
    // A case abandoned between an unmap and its shootdown: the other CPUs'
    // TLBs are flushed before anything can reuse the frames.
    crate::smp::shootdown();
    let mut released = RELEASED.lock();
    released.clear();
    let _ = core::fmt::Write::write_str(&mut *released, names.as_str());
}

/// Abandons the current case and continues with the next on a fresh stack.
fn resume() -> ! {
    {
        let released = RELEASED.lock();
        if !released.as_str().is_empty() {
            println!("    (the case left locks held, released:{})", released.as_str());
        }
    }
    let top = crate::memory::boot_info().kernel_stack_top();
    // SAFETY: nothing on the kernel stack is used again: the abandoned case
    // never resumes, and `run_remaining` starts from its own state.
    unsafe { crate::switch_stack(top, run_remaining) }
}

/// The names of the locks the last abandoned case left held (as `resume`
/// reports them): for the test of the recovery.
pub fn last_released_locks(f: impl FnOnce(&str)) {
    f(RELEASED.lock().as_str());
}

/// The framework's panic hook: a case expected to panic passes.
fn on_panic(info: &core::panic::PanicInfo<'_>) {
    let Some(test) = take_current() else { return };
    match test.expect {
        Expect::Panic => {
            let mut text = PANIC_TEXT.lock();
            text.clear();
            let _ = core::fmt::Write::write_fmt(&mut *text, format_args!("{}", info.message()));
            let missing = EXPECTED_PANIC.lock().iter().find(|part| !text.as_str().contains(*part)).copied();
            match missing {
                None => {
                    println!("(panicked as expected: {})", text.as_str());
                    pass();
                }
                Some(part) => fail(format_args!("the panic message lacks {part:?}:\n{}", text.as_str())),
            }
        }
        _ => fail(format_args!("panicked: {info}")),
    }
    resume()
}

/// The framework's fault hook: a case expected to fault passes.
fn on_fault(fault: &Fault) -> ! {
    let Some(test) = take_current() else { crate::exit_failure() };
    let expected = EXPECTED_FAULT.lock().take();
    let sample = EXPECTED_SAMPLE.lock().take();
    match (test.expect, expected) {
        (Expect::PageFault, Some(_)) if sample.is_some() && fault.sample != sample => fail(format_args!(
            "expected the sampling pool to report {}, got {:?}",
            sample.expect("checked"),
            fault.sample
        )),
        (Expect::PageFault, Some((addr, info)))
            if fault.vector == 14 && fault.address == Some(addr) && fault.info == Some(info) =>
        {
            crate::print!("(faulted as expected) ");
            pass();
        }
        (Expect::PageFault, Some((addr, info))) => fail(format_args!(
            "expected a page fault at {:#x} in {info}, got vector {} at {:?} in {:?}",
            addr.as_u64(),
            fault.vector,
            fault.address,
            fault.info
        )),
        _ => fail(format_args!("unexpected exception, vector {}", fault.vector)),
    }
    resume()
}
