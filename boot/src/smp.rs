//! Several CPUs: finding them (ACPI's MADT), starting them (INIT–SIPI–SIPI
//! into a real-mode trampoline), per-CPU data (through the GS base), work
//! handed to them, and the TLB shootdown that keeps layer −1 correct when
//! another CPU may still cache a page it unmaps.
//!
//! **Bring-up.** [`init`] copies a 16-bit trampoline to physical `0x8000`
//! and starts the application processors (APs) one at a time: each gets a
//! stack from the VMM (with its guard page), enters protected mode in the
//! trampoline, follows the boot CPU's path to long mode on the same page
//! tables, loads a GDT and TSS of its own and the shared IDT, sets its GS
//! base to its [`Cpu`], enables its local APIC and reports online. Then it
//! idles: `sti; hlt` until a wake IPI ([`WAKE_VECTOR`]) — idle CPUs never
//! spin on the host's cores.
//!
//! **Work.** [`run_on_all`] runs a closure on every online CPU at once and
//! returns when all have run it (a scoped fork–join: the closure may borrow
//! the caller's stack).
//!
//! **TLB shootdown.** The VMM flushes each page it unmaps on this CPU, and
//! marks the TLBs of the others stale; before the VMM's and the frame
//! allocator's locks are released ([`memory::with_memory`](crate::memory::with_memory)),
//! [`shootdown`] has every other CPU flush its TLB and waits until each has
//! — so neither the frames nor the addresses of the unmapped pages can be
//! reused while a stale translation survives anywhere. A CPU acknowledges
//! in its wake-IPI handler, or, if it has interrupts masked, wherever it
//! spins: every spin-wait in the kernel calls [`spin_wait`], which flushes
//! for a pending shootdown, so a CPU waiting for a lock held by the
//! shooting CPU cannot deadlock it.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use acpi::madt::{Madt, MadtEntry};
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use strata::vmm::PageFlags;
use x86_64::VirtAddr;
use x86_64::instructions::interrupts;
use x86_64::registers::model_specific::GsBase;

use crate::apic;
use crate::memory::with_memory;
use crate::sync::SpinMutex;

/// CPUs the kernel can run on (more in the MADT are left halted).
pub const MAX_CPUS: usize = 16;
/// Vector of the IPI that wakes an idle CPU (for work or a shootdown).
pub const WAKE_VECTOR: u8 = 0xF0;
/// Pages of each application processor's stack (plus its guard page).
pub const AP_STACK_PAGES: u64 = 32;
/// Where the trampoline is copied: the start-up IPI's vector is its page.
const TRAMPOLINE: usize = 0x8000;
/// How long the boot CPU waits for an AP to come online.
const START_TIMEOUT_US: u64 = 5_000_000;

/// One CPU's data, reached through its GS base ([`current`]).
#[repr(C)]
#[derive(Debug)]
pub struct Cpu {
    /// This structure's own address: what `gs:[0]` reads.
    this: AtomicPtr<Cpu>,
    index: AtomicUsize,
    apic_id: AtomicU32,
    online: AtomicBool,
    /// The job [`run_on_all`] gave this CPU, as a fat pointer's two words
    /// (null data: none).
    job: SpinMutex<Option<Job>>,
    jobs_given: AtomicU64,
    jobs_done: AtomicU64,
    /// The TLB generation this CPU has flushed up to ([`shootdown`]).
    tlb_seen: AtomicU64,
    /// Wake IPIs taken.
    wakeups: AtomicU64,
    /// Interrupts of this CPU's local APIC timer.
    ticks: AtomicU64,
    /// Allocations its timer handler made ([`start_timers`]).
    handler_allocations: AtomicU64,
}

/// A closure of [`run_on_all`], borrowed for the duration of the call.
#[derive(Clone, Copy, Debug)]
struct Job(NonNull<dyn Fn(&Cpu) + Sync>);

// SAFETY: the closure is `Sync`, and `run_on_all` keeps it alive until every
// CPU it was given to has run it.
unsafe impl Send for Job {}

impl Cpu {
    const fn new() -> Self {
        Self {
            this: AtomicPtr::new(core::ptr::null_mut()),
            index: AtomicUsize::new(0),
            apic_id: AtomicU32::new(0),
            online: AtomicBool::new(false),
            job: SpinMutex::new(None),
            jobs_given: AtomicU64::new(0),
            jobs_done: AtomicU64::new(0),
            tlb_seen: AtomicU64::new(0),
            wakeups: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
            handler_allocations: AtomicU64::new(0),
        }
    }

    /// Index of this CPU: 0 for the boot CPU, then in the order the APs
    /// came up.
    pub fn index(&self) -> usize {
        self.index.load(Ordering::Relaxed)
    }

    /// The CPU's local APIC ID.
    pub fn apic_id(&self) -> u32 {
        self.apic_id.load(Ordering::Relaxed)
    }

    /// Wake IPIs the CPU has taken.
    pub fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }

    /// Interrupts of the CPU's local APIC timer so far.
    pub fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// Allocations the CPU's timer handler has made.
    pub fn handler_allocations(&self) -> u64 {
        self.handler_allocations.load(Ordering::Relaxed)
    }

    /// Jobs of [`run_on_all`] the CPU has run (as an AP).
    pub fn jobs_done(&self) -> u64 {
        self.jobs_done.load(Ordering::Acquire)
    }
}

static CPUS: [Cpu; MAX_CPUS] = [const { Cpu::new() }; MAX_CPUS];
/// CPUs online, the boot CPU included.
static ONLINE: AtomicUsize = AtomicUsize::new(1);
/// CPUs the MADT lists as usable (enabled or online-capable).
static LISTED: AtomicUsize = AtomicUsize::new(1);
/// Whether the boot CPU's GS base points at its [`Cpu`].
static GS_READY: AtomicBool = AtomicBool::new(false);
/// The TLB generation: bumped by every [`shootdown`].
static TLB_GEN: AtomicU64 = AtomicU64::new(0);
/// Whether this CPU's VMM changes left other CPUs' TLBs stale (set under the
/// VMM lock, cleared by [`shootdown`]).
static TLB_DIRTY: AtomicBool = AtomicBool::new(false);
/// One [`run_on_all`] at a time.
static RUNNING: SpinMutex<()> = SpinMutex::new(());

/// The stack top and index the next AP takes (read by the trampoline's
/// 64-bit code and by [`ap_entry`]).
#[unsafe(no_mangle)]
static AP_STACK_TOP: AtomicU64 = AtomicU64::new(0);
static AP_INDEX: AtomicUsize = AtomicUsize::new(0);

/// One value per CPU, as Linux's per-CPU variables: each CPU works on its
/// own ([`local`](Self::local)); anyone may visit them all.
#[derive(Debug)]
pub struct PerCpu<T>([T; MAX_CPUS]);

impl<T> PerCpu<T> {
    /// One value for each possible CPU.
    pub const fn new(values: [T; MAX_CPUS]) -> Self {
        Self(values)
    }

    /// The value of the CPU this code runs on.
    pub fn local(&self) -> &T {
        &self.0[current().index()]
    }

    /// The value of CPU `index`.
    pub fn get(&self, index: usize) -> &T {
        &self.0[index]
    }

    /// The values of every possible CPU (those never started are untouched).
    pub fn all(&self) -> &[T; MAX_CPUS] {
        &self.0
    }
}

/// The CPUs online, the boot CPU first.
pub fn online() -> impl Iterator<Item = &'static Cpu> {
    CPUS[..ONLINE.load(Ordering::Acquire)].iter()
}

/// How many CPUs are online.
pub fn count() -> usize {
    ONLINE.load(Ordering::Acquire)
}

/// How many CPUs the MADT lists (usable ones; those past [`MAX_CPUS`] are
/// not started).
pub fn listed() -> usize {
    LISTED.load(Ordering::Relaxed)
}

/// The CPU this code runs on.
pub fn current() -> &'static Cpu {
    if !GS_READY.load(Ordering::Relaxed) {
        return &CPUS[0];
    }
    let this: *const Cpu;
    // SAFETY: every CPU's GS base points at its `Cpu` once `GS_READY` is
    // set (the boot CPU's before, each AP's before it runs Rust code that
    // may ask), whose first word is its own address.
    unsafe { core::arch::asm!("mov {}, gs:[0]", out(reg) this, options(nostack, readonly, preserves_flags)) };
    // SAFETY: `this` is the address of an element of `CPUS`.
    unsafe { &*this }
}

/// Points this CPU's GS base at `cpu`.
fn set_gs(cpu: &'static Cpu) {
    cpu.this.store(core::ptr::from_ref(cpu).cast_mut(), Ordering::Relaxed);
    GsBase::write(VirtAddr::from_ptr(cpu));
}

/// Sets the boot CPU's per-CPU data up (early in boot, before any fault can
/// ask which CPU it is on), and tells the heap's per-CPU caches how to find
/// the running CPU.
pub fn init_boot_cpu() {
    let cpu = &CPUS[0];
    cpu.apic_id.store(apic::id(), Ordering::Relaxed);
    cpu.online.store(true, Ordering::Relaxed);
    set_gs(cpu);
    GS_READY.store(true, Ordering::Release);
    strata::front::thread_cache::set_cpu_home(&CPU_HOME);
}

/// The heap's per-CPU caches (strata's `cpu-caches`): this CPU's index.
static CPU_HOME: strata::front::thread_cache::CpuHome =
    strata::front::thread_cache::CpuHome { current: || Some(current().index()) };

/// Why the other CPUs could not all be started.
#[derive(Debug)]
pub enum SmpError {
    /// The loader gave no RSDP address.
    NoRsdp,
    /// The ACPI tables could not be read, or have no MADT.
    Acpi(acpi::AcpiError),
    /// No stack could be mapped for an AP.
    Stack(strata::vmm::AllocateError),
    /// The AP with this APIC ID did not come online in time.
    Timeout {
        /// Its local APIC ID.
        apic_id: u32,
    },
}

impl core::fmt::Display for SmpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoRsdp => write!(f, "the loader gave no ACPI RSDP"),
            Self::Acpi(e) => write!(f, "ACPI tables: {e:?}"),
            Self::Stack(e) => write!(f, "no stack for an AP: {e:?}"),
            Self::Timeout { apic_id } => write!(f, "the CPU with APIC ID {apic_id} did not come online"),
        }
    }
}

/// ACPI tables read through the identity map (they lie below 4 GiB, in
/// memory the frame allocator never hands out).
#[derive(Clone, Copy, Debug)]
struct IdentityMapped;

impl AcpiHandler for IdentityMapped {
    unsafe fn map_physical_region<T>(
        &self,
        physical_address: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        let virt = NonNull::new(physical_address as *mut T).expect("ACPI tables are not at address 0");
        // SAFETY: physical memory below 4 GiB is identity-mapped, and the
        // caller promises a `T` of `size` bytes there.
        unsafe { PhysicalMapping::new(physical_address, virt, size, size, *self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// The local APIC IDs of the usable CPUs the MADT lists, and the local
/// APIC's address.
fn find_cpus(rsdp: u64) -> Result<([u32; MAX_CPUS], usize, u64), SmpError> {
    if rsdp == 0 {
        return Err(SmpError::NoRsdp);
    }
    // SAFETY: the loader's RSDP address, identity-mapped.
    let tables = unsafe { AcpiTables::from_rsdp(IdentityMapped, rsdp as usize) }.map_err(SmpError::Acpi)?;
    let madt = tables.find_table::<Madt>().map_err(SmpError::Acpi)?;
    let mut ids = [0; MAX_CPUS];
    let mut n = 0;
    let mut listed = 0;
    for entry in madt.get().entries() {
        if let MadtEntry::LocalApic(e) = entry {
            // Bit 0: enabled (an "online capable" entry without it is a
            // CPU that may be hot-plugged later, absent now). A repeated
            // APIC ID is started once.
            let id = u32::from(e.apic_id);
            if e.flags & 1 != 0 && !ids[..n].contains(&id) {
                listed += 1;
                if n < MAX_CPUS {
                    ids[n] = id;
                    n += 1;
                }
            }
        }
    }
    LISTED.store(listed.max(1), Ordering::Relaxed);
    Ok((ids, n, u64::from(madt.get().local_apic_address)))
}

/// Spin-waits until `done`, for at most `us` microseconds (the TSC counts at
/// most 4 GHz on the machines this runs on; the exact time does not
/// matter): whether `done` came true.
fn wait_until(done: impl Fn() -> bool, us: u64) -> bool {
    let start = tsc();
    while !done() {
        if tsc() - start > us * 4000 {
            return false;
        }
        spin_wait();
    }
    true
}

/// A busy wait of at least `us` microseconds.
fn delay_us(us: u64) {
    wait_until(|| false, us);
}

fn tsc() -> u64 {
    // SAFETY: RDTSC has no preconditions.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Starts every AP the MADT lists (up to [`MAX_CPUS`]); returns how many
/// CPUs are online. With one CPU, or no ACPI tables, the kernel runs on the
/// boot CPU alone.
///
/// # Safety
///
/// Once, on the boot CPU, after the heap and layers −2 and −1 are up; the
/// first MiB (where the trampoline goes) is used by nothing else.
pub unsafe fn init(rsdp: u64) -> Result<usize, SmpError> {
    let (ids, n, lapic) = find_cpus(rsdp)?;
    apic::set_base(lapic);
    apic::enable();
    CPUS[0].apic_id.store(apic::id(), Ordering::Relaxed);
    let me = apic::id();
    if n <= 1 {
        return Ok(count());
    }
    // SAFETY: the trampoline's bytes, copied to a page of the first MiB,
    // which the frame allocator never hands out, and identity-mapped.
    unsafe {
        let start = &raw const ap_trampoline_start;
        let end = &raw const ap_trampoline_end;
        core::ptr::copy_nonoverlapping(start, TRAMPOLINE as *mut u8, end.offset_from(start) as usize);
    }
    for &apic_id in ids[..n].iter().filter(|&&id| id != me) {
        let index = count();
        if index >= MAX_CPUS {
            break;
        }
        let stack =
            with_memory(|vmm, frames| vmm.allocate(AP_STACK_PAGES, 4096, PageFlags::WRITABLE, frames))
                .map_err(SmpError::Stack)?;
        AP_STACK_TOP.store(stack.end().as_u64(), Ordering::Relaxed);
        AP_INDEX.store(index, Ordering::Relaxed);
        CPUS[index].apic_id.store(apic_id, Ordering::Relaxed);
        CPUS[index].index.store(index, Ordering::Release);
        // What the AP reads first is written before the IPIs start it (a
        // volatile MMIO write orders nothing for the compiler).
        core::sync::atomic::fence(Ordering::SeqCst);
        apic::start_cpu(apic_id, (TRAMPOLINE >> 12) as u8, delay_us);
        if !wait_until(|| CPUS[index].online.load(Ordering::Acquire), START_TIMEOUT_US) {
            return Err(SmpError::Timeout { apic_id });
        }
        ONLINE.store(index + 1, Ordering::Release);
    }
    Ok(count())
}

/// Where an AP's Rust code starts (from the trampoline, on its own stack).
#[unsafe(no_mangle)]
extern "C" fn ap_entry() -> ! {
    let index = AP_INDEX.load(Ordering::Acquire);
    let cpu = &CPUS[index];
    set_gs(cpu);
    crate::interrupts::init_ap();
    apic::enable();
    // Whatever the other CPUs unmapped before this one existed is not in
    // its TLB.
    cpu.tlb_seen.store(TLB_GEN.load(Ordering::Acquire), Ordering::Relaxed);
    cpu.online.store(true, Ordering::Release);
    idle(cpu)
}

/// An AP's life once online: run the job it is given, or halt until woken.
fn idle(cpu: &'static Cpu) -> ! {
    loop {
        interrupts::disable();
        let job = cpu.job.lock().take();
        match job {
            Some(Job(f)) => {
                interrupts::enable();
                // SAFETY: `run_on_all` keeps the closure alive until this
                // CPU reports it done.
                unsafe { f.as_ref()(cpu) };
                cpu.jobs_done.fetch_add(1, Ordering::Release);
                // The boot CPU halts until the last AP is done.
                if let Some(boot) = online().next() {
                    apic::send_ipi(boot.apic_id(), WAKE_VECTOR);
                }
            }
            // Interrupts come on with the `hlt`: a wake IPI sent after the
            // check above ends the halt.
            None => interrupts::enable_and_hlt(),
        }
    }
}

/// The wake IPI's handler: acknowledges it and flushes for a pending
/// shootdown (the CPU's idle loop then looks for work).
pub(crate) fn on_wake_ipi() {
    current().wakeups.fetch_add(1, Ordering::Relaxed);
    poll_shootdown();
    apic::end_of_interrupt();
}

/// Whether the timer handlers allocate.
static TIMERS_ALLOCATE: AtomicBool = AtomicBool::new(false);

/// Starts every CPU's local APIC timer (an interrupt every `count` ticks
/// of the bus clock divided by 16), whose handler, if `allocate`, allocates
/// and frees through the whole stack on its CPU: every CPU's interrupts
/// allocate while every CPU's code does. Interrupts stay as they are: they
/// tick while enabled.
pub fn start_timers(count: u32, allocate: bool) {
    TIMERS_ALLOCATE.store(allocate, Ordering::SeqCst);
    run_on_all(&|_| apic::start_timer(count));
}

/// Stops every CPU's local APIC timer.
pub fn stop_timers() {
    run_on_all(&|_| apic::stop_timer());
    TIMERS_ALLOCATE.store(false, Ordering::SeqCst);
}

/// The local APIC timer's handler: counts the tick on its CPU and, when
/// asked, allocates and frees a small and a medium block.
pub(crate) fn on_timer() {
    let cpu = current();
    let tick = cpu.ticks.fetch_add(1, Ordering::Relaxed);
    if TIMERS_ALLOCATE.load(Ordering::Relaxed) {
        let small = alloc::boxed::Box::new([tick; 4]);
        let medium: alloc::vec::Vec<u64> = (0..100 + tick % 400).collect();
        core::hint::black_box((&small, &medium));
        cpu.handler_allocations.fetch_add(2, Ordering::Relaxed);
    }
    apic::end_of_interrupt();
}

/// Runs `f` on every online CPU at once, this one included, and returns
/// when every CPU has run it.
///
/// # Panics
///
/// If called from inside `f` (one `run_on_all` at a time), or from an AP.
pub fn run_on_all(f: &(dyn Fn(&Cpu) + Sync)) {
    run_on(count(), f);
}

/// [`run_on_all`] on the first `cpus` online CPUs (the boot CPU and
/// `cpus - 1` APs; all of them if there are fewer), the others idle.
///
/// # Panics
///
/// As [`run_on_all`].
pub fn run_on(cpus: usize, f: &(dyn Fn(&Cpu) + Sync)) {
    assert_eq!(current().index(), 0, "run_on_all is called from the boot CPU");
    let _one = RUNNING.try_lock().expect("run_on_all is not reentrant");
    // SAFETY: only the lifetime is erased; every CPU given the pointer has
    // run the closure before this function returns (it waits below).
    let job = Job(unsafe {
        core::mem::transmute::<NonNull<dyn Fn(&Cpu) + Sync + '_>, NonNull<dyn Fn(&Cpu) + Sync + 'static>>(
            NonNull::from(f),
        )
    });
    for cpu in online().skip(1).take(cpus.saturating_sub(1)) {
        cpu.jobs_given.fetch_add(1, Ordering::Relaxed);
        *cpu.job.lock() = Some(job);
        apic::send_ipi(cpu.apic_id(), WAKE_VECTOR);
    }
    // This CPU's share, with interrupts on as the others have them: a wake
    // IPI (a shootdown by another CPU) is answered wherever it waits.
    let masked = !interrupts::are_enabled();
    interrupts::enable();
    f(current());
    // Then it halts (rather than spin on a host core another CPU could
    // use) until each AP has done its share: an AP that finishes sends it a
    // wake IPI, which also answers any shootdown meanwhile.
    for cpu in online().skip(1).take(cpus.saturating_sub(1)) {
        loop {
            interrupts::disable();
            if cpu.jobs_done() >= cpu.jobs_given.load(Ordering::Relaxed) {
                break;
            }
            // Interrupts come on with the `hlt`: an IPI sent after the
            // check ends the halt.
            interrupts::enable_and_hlt();
        }
    }
    if !masked {
        interrupts::enable();
    }
}

/// After the boot CPU gave up a [`run_on_all`] in its own share of the work
/// (a test case that panicked or faulted there): waits until every other
/// CPU has finished its share — which may still read the abandoned frames,
/// intact until the caller leaves them — and frees `run_on_all` for the
/// next caller. Ends the run if a CPU does not finish within five seconds
/// (it may wait for a lock the abandoned code holds).
pub fn quiesce() {
    TIMERS_ALLOCATE.store(false, Ordering::SeqCst);
    apic::stop_timer();
    // An interrupt abandoned in its handler never sent its end: without it
    // the local APIC would hold back that vector and every lower one.
    apic::end_every_interrupt();
    for cpu in online().skip(1) {
        if !wait_until(|| cpu.jobs_done() >= cpu.jobs_given.load(Ordering::Relaxed), START_TIMEOUT_US) {
            crate::println!("strata: CPU {} did not finish its work after the boot CPU gave up", cpu.index());
            crate::exit_failure();
        }
    }
    if RUNNING.is_locked() {
        // SAFETY: the holder was the abandoned `run_on_all`, which never
        // resumes, and every CPU it gave work to is done with it.
        unsafe { RUNNING.force_unlock() };
    }
    if count() > 1 {
        run_on_all(&|_| apic::stop_timer());
    }
}

/// Marks the other CPUs' TLBs stale after a page of this CPU's was unmapped
/// or remapped (the VMM's flush hook, with the VMM's lock held): flushes it
/// here; [`shootdown`] flushes it everywhere else.
pub fn flush_page(page: VirtAddr) {
    x86_64::instructions::tlb::flush(page);
    if count() > 1 {
        TLB_DIRTY.store(true, Ordering::Relaxed);
    }
}

/// If the VMM changed mappings since the last shootdown, has every other
/// online CPU flush its TLB, and waits until each has. Called with the
/// VMM's and the frame allocator's locks held, before they are released.
pub fn shootdown() {
    if !TLB_DIRTY.swap(false, Ordering::AcqRel) {
        return;
    }
    let generation = TLB_GEN.fetch_add(1, Ordering::AcqRel) + 1;
    let me = current().index();
    let others = || online().filter(move |c| c.index() != me);
    for cpu in others() {
        apic::send_ipi(cpu.apic_id(), WAKE_VECTOR);
    }
    for cpu in others() {
        while cpu.tlb_seen.load(Ordering::Acquire) < generation {
            core::hint::spin_loop();
        }
    }
    current().tlb_seen.fetch_max(generation, Ordering::Release);
}

/// Flushes this CPU's TLB if a shootdown asked for it since it last did.
pub fn poll_shootdown() {
    if !GS_READY.load(Ordering::Relaxed) {
        return;
    }
    let cpu = current();
    let generation = TLB_GEN.load(Ordering::Acquire);
    if cpu.tlb_seen.load(Ordering::Relaxed) < generation {
        x86_64::instructions::tlb::flush_all();
        // (A wake IPI taken between the check and here may have stored a
        // later generation: never go back.)
        cpu.tlb_seen.fetch_max(generation, Ordering::Release);
    }
}

/// One turn of a spin-wait: answers a pending shootdown (which the CPU
/// being waited for may be waiting on), then pauses.
#[inline]
pub fn spin_wait() {
    poll_shootdown();
    core::hint::spin_loop();
}

unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
}

// The AP's way from real mode to `ap_entry`. The 16-bit part is copied to
// TRAMPOLINE and runs there (its addresses are computed for that place); it
// jumps to the 32-bit part at its link address, which repeats the boot
// stub's switch to long mode (entry.rs) on the boot page tables.
core::arch::global_asm!(
    r#"
    .section .rodata.ap_trampoline, "a"
    .code16
    .global ap_trampoline_start
ap_trampoline_start:
    cli
    cld
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl (ap_tramp_gdt_ptr - ap_trampoline_start + 0x8000)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $ap_start32
    .balign 8
ap_tramp_gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF   /* 0x08: 32-bit code */
    .quad 0x00CF92000000FFFF   /* 0x10: data */
ap_tramp_gdt_ptr:
    .word ap_tramp_gdt_ptr - ap_tramp_gdt - 1
    .long ap_tramp_gdt - ap_trampoline_start + 0x8000
    .global ap_trampoline_end
ap_trampoline_end:

    .section .text.boot, "ax"
    .code32
ap_start32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl $0x80000001, %eax
    cpuid
    movl $0x100, %edi
    btl $20, %edx
    jnc 1f
    orl $0x800, %edi
1:  movl $0xC0000080, %ecx
    rdmsr
    orl %edi, %eax
    wrmsr
    /* CR0 whole, not OR-ed: after INIT an AP has CD and NW set (caches
     * off); the boot CPU's value is PG | WP | ET | PE. */
    movl $0x80010011, %eax
    movl %eax, %cr0
    lgdt boot_gdt_ptr
    ljmp $0x08, $2f

    .code64
2:  movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movq AP_STACK_TOP(%rip), %rsp
    xorl %ebp, %ebp
    call ap_entry
3:  hlt
    jmp 3b
    .text
"#,
    options(att_syntax)
);
/// TEMP
pub fn shootdowns() -> u64 {
    TLB_GEN.load(Ordering::Relaxed)
}
