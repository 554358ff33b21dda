//! Where a CPU finds its cache: its slot (`cpu-caches`).
//!
//! A CPU uses its bins with interrupts as they are. An interrupt handler
//! that allocates or frees while the code it interrupted is in the middle
//! of using the bins finds them taken (state `OWNER`) and takes the locked
//! path. A CPU draining the caches under the heap's lock waits for another
//! CPU in the middle of using its bins only for a bounded time
//! ([`keep_waiting`]): that CPU may be in such a handler, waiting for the
//! very lock the drainer holds. Its bins are then left as they are, to be
//! drained the next time (they hold at most a few dozen blocks).

use core::sync::atomic::{AtomicPtr, Ordering};

use super::ThreadCache;

/// How a `no_std` kernel tells the CPU caches (feature `cpu-caches`) which
/// CPU runs ([`set_cpu_home`]).
#[derive(Debug)]
pub struct CpuHome {
    /// The index of the CPU running, below [`CPUS`]; `None` before the
    /// kernel can tell (the caches are then not used). Called at every
    /// allocation and free: keep it to a load or two (a per-CPU variable
    /// through the GS base, say).
    pub current: fn() -> Option<usize>,
}

/// CPUs the CPU caches serve (`cpu-caches`): a CPU of a higher index takes
/// the locked path.
pub const CPUS: usize = 64;

/// Tells the CPU caches (`cpu-caches`) how to find the running CPU. Until it
/// is called, every call takes the locked path.
pub fn set_cpu_home(home: &'static CpuHome) {
    HOME.store(core::ptr::from_ref(home).cast_mut(), Ordering::Release);
}

/// How the registry's waiters pass time.
pub(super) type Relax = spin::Spin;

static HOME: AtomicPtr<CpuHome> = AtomicPtr::new(core::ptr::null_mut());

/// One cache per CPU.
struct Caches([ThreadCache; CPUS]);

// SAFETY: a CPU uses only its own slot's bins (in state OWNER, which an
// interrupt handler on it cannot enter); the slot's other fields are
// read and written under the registry's lock, as a thread's cache's
// are.
unsafe impl Sync for Caches {}

static CACHES: Caches = Caches([const { ThreadCache::new() }; CPUS]);

/// Runs `f` on this CPU's cache; `Err` before the kernel has said how
/// to find it, or on a CPU past [`CPUS`].
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(super) fn with<R>(f: impl FnOnce(&ThreadCache) -> R) -> Result<R, ()> {
    // SAFETY: null, or a `&'static CpuHome` stored by `set_cpu_home`.
    let home = unsafe { HOME.load(Ordering::Acquire).as_ref() }.ok_or(())?;
    let cpu = (home.current)().ok_or(())?;
    CACHES.0.get(cpu).map(f).ok_or(())
}

/// [`with`]: a CPU's cache is always there.
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(super) fn with_taking<R>(f: impl FnOnce(&ThreadCache) -> R) -> Result<R, ()> {
    with(f)
}

/// Turns of [`keep_waiting`] before a drain gives up on a CPU's cache:
/// far longer than any use of the bins takes (tens of instructions),
/// unless the CPU was interrupted in the middle.
const TURNS: u32 = 1 << 16;

/// A turn of a wait for another CPU in the middle of using its cache:
/// whether to go on waiting.
pub(super) fn keep_waiting(turns: &mut u32) -> bool {
    core::hint::spin_loop();
    *turns += 1;
    *turns < TURNS
}
