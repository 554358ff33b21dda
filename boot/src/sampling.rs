//! Guarded sampling, as Linux's KFENCE does it: a hook of the kernel's front
//! door (layer +1) that serves every Nth small allocation from a pool of
//! pages each flanked by unmapped guard pages, so the first out-of-bounds
//! access or use after free faults at once instead of being found (or not)
//! at the next free.
//!
//! ```text
//!  pool region:  guard │ slot 0 │ guard │ slot 1 │ guard │ … │ slot N-1 │ guard
//!  slot page:    canary 0xAA … │ object (right-aligned) │ ← guard page
//! ```
//!
//! - **Off by default** ([`set_interval`]`(0)`); on, one relaxed atomic add
//!   per small allocation decides. Requests up to a page with alignment up
//!   to a page are candidates; when no slot is free the heap serves them.
//! - **Overflow:** the object ends at its page's end (rounded down to its
//!   alignment), so the first byte past it is in the next guard page.
//!   **Underflow** writes land in the canary bytes before the object and are
//!   caught when it is freed (KFENCE's canaries), or fault in the guard page
//!   before when they reach it.
//! - **Use after free:** freeing unmaps the slot's page (its frame goes
//!   back to layer −2); slots are reused round-robin, the longest-freed
//!   first, so a stale pointer keeps faulting for as long as possible.
//! - The page-fault handler asks [`describe`] and reports which sampled
//!   allocation an access hit; an invalid or double free of a sampled block
//!   panics with the same description.

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use strata::vmm::{PAGE_SIZE, PageFlags, Region};
use x86_64::VirtAddr;
use x86_64::structures::paging::Page;

use crate::memory::{HEAP_START, with_memory};
use crate::sync::IrqSpinLock;

/// Slots in the pool.
pub const SLOTS: usize = 64;
/// The canary byte before a sampled object.
pub const CANARY: u8 = 0xAA;
/// Where the pool's region is reserved: below the heap's allocation window.
const POOL_WINDOW: (u64, u64) = (HEAP_START + (2 << 30), 1 << 30);

static INTERVAL: AtomicUsize = AtomicUsize::new(0);
static COUNT: AtomicUsize = AtomicUsize::new(0);
static POOL_START: AtomicU64 = AtomicU64::new(0);
static POOL_END: AtomicU64 = AtomicU64::new(0);
static POOL: lock_api::Mutex<IrqSpinLock, Pool> = lock_api::Mutex::new(Pool::new());
crate::abandonable_lock!("sampling pool", POOL, acquire);

/// The state of a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// Never used.
    Unused,
    /// Holds a live allocation.
    Live,
    /// Its allocation was freed; the page is unmapped.
    Freed,
}

/// A sampled allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Which slot holds it.
    pub slot: usize,
    /// The object's address.
    pub addr: u64,
    /// Its size.
    pub size: usize,
    /// Its serial number among sampled allocations (1 for the first).
    pub serial: u64,
    /// Live or freed.
    pub state: SlotState,
}

/// What an access at an address of the pool hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Inside a freed allocation.
    UseAfterFree,
    /// `distance` bytes past the end of the allocation.
    OutOfBoundsRight {
        /// Bytes past the last byte of the object (1 for the first byte after).
        distance: u64,
    },
    /// `distance` bytes before the start of the allocation.
    OutOfBoundsLeft {
        /// Bytes before the object's first byte.
        distance: u64,
    },
    /// Inside a freed slot's page but outside its object, or a slot never used.
    Stray,
}

/// What [`describe`] says of an address in the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    /// The kind of access.
    pub access: Access,
    /// The allocation concerned, if any.
    pub sample: Option<Sample>,
}

impl fmt::Display for Hit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.access {
            Access::UseAfterFree => write!(f, "use after free of")?,
            Access::OutOfBoundsRight { distance } => {
                write!(f, "out-of-bounds access {distance} bytes right of")?
            }
            Access::OutOfBoundsLeft { distance } => {
                write!(f, "out-of-bounds access {distance} bytes left of")?
            }
            Access::Stray => write!(f, "stray access near")?,
        }
        match self.sample {
            Some(s) => write!(
                f,
                " sampled allocation #{} ({} bytes at {:#x}, {})",
                s.serial,
                s.size,
                s.addr,
                if s.state == SlotState::Live { "live" } else { "freed" }
            ),
            None => write!(f, " an unused slot of the sampling pool"),
        }
    }
}

struct Pool {
    region: Option<Region>,
    slots: [Sample; SLOTS],
    /// Where the round-robin search for a slot starts.
    next: usize,
    serial: u64,
}

impl Pool {
    const fn new() -> Self {
        const UNUSED: Sample = Sample { slot: 0, addr: 0, size: 0, serial: 0, state: SlotState::Unused };
        Self { region: None, slots: [UNUSED; SLOTS], next: 0, serial: 0 }
    }

    fn page(&self, slot: usize) -> Page {
        self.region.expect("pool reserved").start + (2 * slot as u64 + 1)
    }
}

/// Serves one in every `interval` small allocations from the pool (0 turns
/// sampling off). Reserves the pool's address space on first use.
pub fn set_interval(interval: usize) {
    if interval != 0 && POOL_START.load(Ordering::Acquire) == 0 {
        let mut pool = POOL.lock();
        if pool.region.is_none() {
            let low = VirtAddr::new(POOL_WINDOW.0);
            let region = with_memory(|vmm, _| {
                vmm.reserve_in(2 * SLOTS as u64 + 1, PAGE_SIZE, low, low + POOL_WINDOW.1)
            })
            .expect("address space for the sampling pool");
            pool.region = Some(region);
            POOL_END.store(region.end().as_u64(), Ordering::Release);
            POOL_START.store(region.start.start_address().as_u64(), Ordering::Release);
        }
    }
    COUNT.store(0, Ordering::Relaxed);
    INTERVAL.store(interval, Ordering::Relaxed);
}

/// Whether this allocation is the one in `interval` to sample.
#[inline]
pub fn should_sample(layout: Layout) -> bool {
    let interval = INTERVAL.load(Ordering::Relaxed);
    interval != 0
        && layout.size() <= PAGE_SIZE as usize
        && layout.align() <= PAGE_SIZE as usize
        && COUNT.fetch_add(1, Ordering::Relaxed) % interval == interval - 1
}

/// Whether `ptr` lies in the pool (so its free belongs here).
#[inline]
pub fn contains(ptr: *const u8) -> bool {
    // `set_interval` publishes the end before the start: a start seen here
    // comes with its end.
    let start = POOL_START.load(Ordering::Acquire);
    start != 0 && (ptr as u64).wrapping_sub(start) < POOL_END.load(Ordering::Relaxed) - start
}

/// Serves `layout` from a free slot, or `None` when every slot is live or
/// no frame is left.
pub fn allocate(layout: Layout) -> Option<NonNull<u8>> {
    let mut pool = POOL.lock();
    pool.region?;
    let slot =
        (0..SLOTS).map(|i| (pool.next + i) % SLOTS).find(|&s| pool.slots[s].state != SlotState::Live)?;
    let page = pool.page(slot);
    with_memory(|vmm, frames| vmm.map(page, 1, PageFlags::WRITABLE, frames)).ok()?;
    let end = page.start_address().as_u64() + PAGE_SIZE;
    let addr = (end - layout.size() as u64) & !(layout.align() as u64 - 1);
    let start = page.start_address().as_mut_ptr::<u8>();
    // SAFETY: the page was just mapped writable and is the slot's alone.
    unsafe { start.write_bytes(CANARY, (addr - page.start_address().as_u64()) as usize) };
    pool.serial += 1;
    pool.next = (slot + 1) % SLOTS;
    pool.slots[slot] =
        Sample { slot, addr, size: layout.size(), serial: pool.serial, state: SlotState::Live };
    NonNull::new(addr as *mut u8)
}

/// Frees a sampled block: checks it and its canaries, then unmaps its page.
///
/// # Panics
///
/// On a pointer that is not a live sampled allocation (a double free, an
/// interior pointer) or a corrupted canary, with the description of the
/// allocation — after the pool's lock is released.
///
/// # Safety
///
/// `ptr` must lie in the pool ([`contains`]); if it is a live sampled
/// allocation it must not be used afterwards.
pub unsafe fn deallocate(ptr: *mut u8, _layout: Layout) {
    let result = {
        let mut pool = POOL.lock();
        let hit = describe_locked(&pool, ptr as u64);
        match hit.sample {
            Some(s) if s.state == SlotState::Live && s.addr == ptr as u64 => {
                let page = pool.page(s.slot);
                let start = page.start_address().as_u64();
                // SAFETY: the page is mapped (the allocation is live); the
                // canary bytes lie before the object in it.
                let bad = (start..s.addr).find(|&a| unsafe { (a as *const u8).read() } != CANARY);
                with_memory(|vmm, frames| vmm.unmap(page, 1, frames)).expect("a mapped slot page");
                pool.slots[s.slot].state = SlotState::Freed;
                match bad {
                    None => Ok(()),
                    Some(a) => Err((
                        "corrupted canary",
                        Hit { access: Access::OutOfBoundsLeft { distance: s.addr - a }, sample: Some(s) },
                    )),
                }
            }
            Some(s) if s.state == SlotState::Freed && s.addr == ptr as u64 => Err(("double free", hit)),
            _ => Err(("invalid free", hit)),
        }
    };
    if let Err((what, hit)) = result {
        panic!("sampling: {what} at {ptr:p}: {hit}");
    }
}

/// What an access at `addr` hits, if `addr` lies in the pool. Used by the
/// page-fault handler, so it waits for the pool's lock only a bounded time
/// (the fault may have interrupted its holder).
pub fn describe(addr: u64) -> Option<Hit> {
    if !contains(addr as *const u8) {
        return None;
    }
    let pool = crate::sync::lock_soon(&POOL)?;
    Some(describe_locked(&pool, addr))
}

fn describe_locked(pool: &Pool, addr: u64) -> Hit {
    let start = pool.region.map_or(0, |r| r.start.start_address().as_u64());
    let page = (addr - start) / PAGE_SIZE;
    let used = |slot: usize| Some(pool.slots[slot]).filter(|s| s.state != SlotState::Unused);
    if page % 2 == 1 {
        let Some(s) = used((page / 2) as usize) else { return Hit { access: Access::Stray, sample: None } };
        let access = if (s.addr..s.addr + s.size as u64).contains(&addr) {
            if s.state == SlotState::Freed { Access::UseAfterFree } else { Access::Stray }
        } else if addr < s.addr {
            Access::OutOfBoundsLeft { distance: s.addr - addr }
        } else {
            Access::OutOfBoundsRight { distance: addr - (s.addr + s.size as u64) + 1 }
        };
        return Hit { access, sample: Some(s) };
    }
    // A guard page: blame the nearer neighbour, the slot on the left (an
    // overflow) when the access is in the guard's lower half.
    let left = (page / 2).checked_sub(1).map(|p| p as usize);
    let right = ((page / 2) as usize) < SLOTS;
    let into_guard = addr % PAGE_SIZE;
    let pick = if into_guard < PAGE_SIZE / 2 { left.and_then(used) } else { None }
        .map(|s| (s, true))
        .or_else(|| right.then(|| used((page / 2) as usize)).flatten().map(|s| (s, false)))
        .or_else(|| left.and_then(used).map(|s| (s, true)));
    match pick {
        Some((s, true)) => Hit {
            access: Access::OutOfBoundsRight { distance: addr - (s.addr + s.size as u64) + 1 },
            sample: Some(s),
        },
        Some((s, false)) => {
            Hit { access: Access::OutOfBoundsLeft { distance: s.addr - addr }, sample: Some(s) }
        }
        None => Hit { access: Access::Stray, sample: None },
    }
}

/// The sampled allocation starting at `ptr`, live or freed.
pub fn sample_at(ptr: *const u8) -> Option<Sample> {
    if !contains(ptr) {
        return None;
    }
    POOL.lock().slots.iter().find(|s| s.state != SlotState::Unused && s.addr == ptr as u64).copied()
}

/// Sampled allocations made so far and slots live now.
pub fn stats() -> (u64, usize) {
    let pool = POOL.lock();
    (pool.serial, pool.slots.iter().filter(|s| s.state == SlotState::Live).count())
}
