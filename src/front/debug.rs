//! Layer +1's debug hooks: strata's `PYTHONMALLOC=debug` (cargo feature
//! `debug`).
//!
//! As CPython's debug hooks wrap its domain allocators, these wrap the front
//! door's `GlobalAlloc` and [`DomainAlloc`](super::DomainAlloc) entry points
//! of [`LockedHeap`](super::LockedHeap); [`Heap`]'s own methods stay raw.
//! Every block is laid out as
//!
//! ```text
//!  base                                        p = base + header_len(align)
//!  │ scratch ≥ 16 │ size u64 │ serial u64 │ domain │ state │ log2 align │ 0xFD × 13 │ data │ 0xFD × 16 │
//!                  p-32       p-24         p-16     p-15    p-14         p-13        p      p+size
//! ```
//!
//! The scratch bytes are what the layers below overwrite with their free-list
//! links when the block is freed, so the size, serial, domain and state
//! survive a free: that is how a double free is told from a foreign pointer.
//! Fresh data is filled with [`CLEAN`] (0xCD) unless zeroed, freed data and
//! trailing guard with [`DEAD`] (0xDD).
//!
//! On free and realloc the block is checked in this order: it lies in memory
//! of this heap (and is 16-aligned, as every debug block is); its state says
//! live (a freed state is a **double free**); it was allocated through the
//! same [`Domain`] (else a **wrong-layer free**); the leading guard; the
//! alignment and the size against the layout's (a **layout mismatch**); the
//! trailing guard. A failed check leaves the block
//! alone (it is never handed to a layer: nothing is corrupted further) and
//! produces a [`Violation`] — address, requested size, serial number, owning
//! layer, every bad guard byte with its offset, the first and last data bytes
//! — which the heap's [`Policy`] acts on *after* the heap lock is released.
//! Every pointer handed out is checked against the requested alignment.
//!
//! The cost: 64 bytes more per block (more with alignment above 16), every
//! block moves on realloc (which also catches use after realloc), and the
//! fills; `make bench` measures it.

use core::alloc::Layout;
use core::fmt;
use core::ptr::{self, NonNull};

use super::hooks::{Guard, Hooks, Lock, no_unwind};
use super::{AllocateError, DeallocateError, Domain, Heap, Layer};
use crate::source::PageSource;
use crate::sync::stat;

/// Guard byte before and after every block (CPython's `FORBIDDENBYTE`).
pub const FORBIDDEN: u8 = 0xFD;
/// Fill of freshly allocated data (CPython's `CLEANBYTE`).
pub const CLEAN: u8 = 0xCD;
/// Fill of freed data (CPython's `DEADBYTE`).
pub const DEAD: u8 = 0xDD;

/// Bytes before the data used by the header fields and the leading guard.
const FIELDS: usize = 32;
/// Bytes before the fields left to the layers below (their free-list links).
const SCRATCH: usize = 16;
/// Leading guard bytes (the rest of `FIELDS` after size, serial, domain,
/// state and alignment).
pub const LEADING_GUARD: usize = FIELDS - 19;
/// Trailing guard bytes.
pub const TRAILING_GUARD: usize = 16;
/// How many bad guard bytes a [`Violation`] lists.
pub const MAX_BAD_BYTES: usize = 16;
/// How many data bytes a [`Violation`] shows at each end.
pub const DUMP: usize = 8;

const LIVE: u8 = 0x4C;
const FREED: u8 = 0x46;

/// What a heap does with a [`Violation`].
#[derive(Clone, Copy, Debug)]
pub enum Policy {
    /// Print the report and abort, as CPython's hooks end in a fatal error
    /// (the default, and the kernel's, where the panic handler reports
    /// it): never an unwinding panic out of the allocator.
    Panic,
    /// Call this function with the violation, then carry on: the bad block
    /// is kept out of circulation (leaked) and the call returns as a
    /// refused free or a failed allocation. Firmware uses it to log over
    /// semihosting or a UART, tests to inspect the report.
    Report(fn(&Violation)),
}

impl Policy {
    /// Acts on `violation`. Under [`Policy::Panic`] the panic does not
    /// unwind: the report is printed and the program aborts (with `std`),
    /// or the panic handler runs (`no_std`, where panics abort) — a
    /// violation is caught inside the allocator, which `GlobalAlloc`
    /// forbids unwinding out of.
    pub fn apply(self, violation: &Violation) {
        match self {
            Self::Panic => fail(violation),
            Self::Report(f) => f(violation),
        }
    }
}

/// Panics with `violation`'s report where the panic cannot unwind: an
/// `extern "C"` function, out of which a panic aborts the program once the
/// panic hook has printed the report.
#[cold]
#[inline(never)]
fn fail(violation: &Violation) -> ! {
    extern "C" fn no_unwind(violation: *const Violation) -> ! {
        // SAFETY: `fail` passes a reference it holds for the whole call.
        panic!("{}", unsafe { &*violation })
    }
    no_unwind(violation)
}

/// What a check found wrong, in the order the checks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViolationKind {
    /// The pointer is not a block of this heap: outside every layer's
    /// memory, or not 16-aligned.
    NotOwned,
    /// The block was freed already.
    DoubleFree,
    /// The header's state byte is neither live nor freed: a pointer strata
    /// never returned (or a block freed and reused since), or an underflow
    /// reaching the header.
    BadHeader,
    /// Freed through another domain than the one that allocated it.
    WrongDomain,
    /// A leading guard byte was overwritten (buffer underflow).
    LeadingGuard,
    /// The layout's size is not the size the block was allocated with.
    SizeMismatch,
    /// The layout's alignment is not the alignment the block was allocated
    /// with.
    AlignMismatch,
    /// A trailing guard byte was overwritten (buffer overflow).
    TrailingGuard,
    /// A block for this alignment came back misaligned (an allocator bug;
    /// the block is not handed out).
    Misaligned,
}

impl ViolationKind {
    fn describe(self) -> &'static str {
        match self {
            Self::NotOwned => "pointer not allocated by this heap",
            Self::DoubleFree => "double free",
            Self::BadHeader => "bad header: not a live block of this heap",
            Self::WrongDomain => "freed through the wrong layer",
            Self::LeadingGuard => "bad leading guard byte (buffer underflow)",
            Self::SizeMismatch => "freed with another size than it was allocated with",
            Self::AlignMismatch => "freed with another alignment than it was allocated with",
            Self::TrailingGuard => "bad trailing guard byte (buffer overflow)",
            Self::Misaligned => "misaligned block",
        }
    }
}

/// One guard byte that is not [`FORBIDDEN`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BadByte {
    /// Offset from the data pointer `p`: negative in the leading guard,
    /// `size` and above in the trailing guard.
    pub offset: isize,
    /// The byte found.
    pub value: u8,
}

/// A misuse caught by the debug hooks, with everything the report shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation {
    /// What was wrong.
    pub kind: ViolationKind,
    /// The data pointer `p` given to the free (or about to be returned).
    pub address: usize,
    /// The layout the caller gave.
    pub layout: Layout,
    /// The domain the free came through.
    pub freed_by: Domain,
    /// The domain recorded in the header, if the header was readable.
    pub allocated_by: Option<Domain>,
    /// The size recorded in the header, if readable.
    pub requested_size: Option<usize>,
    /// The allocation's serial number (1 for the heap's first), if readable.
    pub serial: Option<u64>,
    /// The layer whose memory holds the block.
    pub owner: Option<Layer>,
    /// Bad guard bytes (the first [`MAX_BAD_BYTES`]).
    pub bad: [BadByte; MAX_BAD_BYTES],
    /// How many guard bytes were bad in all.
    pub bad_count: usize,
    /// The first data bytes (`data_len` of them are valid).
    pub first: [u8; DUMP],
    /// The last data bytes.
    pub last: [u8; DUMP],
    /// How many bytes of `first` and `last` are valid (0 when the size is not
    /// trusted).
    pub data_len: usize,
}

impl Violation {
    /// The bad guard bytes found.
    pub fn bad_bytes(&self) -> &[BadByte] {
        &self.bad[..self.bad_count.min(MAX_BAD_BYTES)]
    }
}

fn hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, " {b:02x}")?;
    }
    Ok(())
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "strata debug: {}", self.kind.describe())?;
        write!(
            f,
            "Debug memory block at address p={:#x}: freed through API '{}'",
            self.address, self.freed_by
        )?;
        if let Some(d) = self.allocated_by {
            write!(f, ", allocated through API '{d}'")?;
        }
        writeln!(f)?;
        match self.owner {
            Some(Layer::Object) => writeln!(f, "    in memory of layer +2 (object allocator)")?,
            Some(Layer::Segment) => writeln!(f, "    in memory of layer 0 (segment allocator)")?,
            None => writeln!(f, "    in no layer's memory")?,
        }
        if let Some(size) = self.requested_size {
            writeln!(f, "    {size} bytes originally requested")?;
        }
        writeln!(f, "    freed with layout: {} bytes, align {}", self.layout.size(), self.layout.align())?;
        if let Some(serial) = self.serial {
            writeln!(f, "    the block was made by call #{serial} to debug malloc/realloc")?;
        }
        if self.bad_count == 0 {
            if self.data_len > 0 || self.kind == ViolationKind::DoubleFree {
                writeln!(f, "    every guard byte checked is FORBIDDENBYTE ({FORBIDDEN:#04x}), as expected")?;
            }
        } else {
            writeln!(f, "    {} guard bytes are not FORBIDDENBYTE ({FORBIDDEN:#04x}):", self.bad_count)?;
            for b in self.bad_bytes() {
                writeln!(f, "        at p{:+}: {:#04x} *** OUCH", b.offset, b.value)?;
            }
            if self.bad_count > MAX_BAD_BYTES {
                writeln!(f, "        ... {} more", self.bad_count - MAX_BAD_BYTES)?;
            }
        }
        if self.data_len > 0 {
            write!(f, "    Data at p:")?;
            hex(f, &self.first[..self.data_len])?;
            write!(f, " ...")?;
            hex(f, &self.last[..self.data_len])?;
            writeln!(f)?;
        }
        Ok(())
    }
}

/// The debug state of a heap.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DebugState {
    /// Serial number of the last allocation.
    pub(crate) serial: u64,
    /// What to do with a violation.
    pub(crate) policy: Policy,
    /// A violation found under the lock, acted on after it is released.
    pub(crate) pending: Option<Violation>,
}

impl DebugState {
    pub(crate) const fn new() -> Self {
        Self { serial: 0, policy: Policy::Panic, pending: None }
    }
}

/// Bytes before the data for a request aligned to `align`.
pub const fn header_len(align: usize) -> usize {
    let align = if align > 16 { align } else { 16 };
    (SCRATCH + FIELDS).next_multiple_of(align)
}

/// The layout of the whole debug block for `layout`, and its header length.
fn inner_layout(layout: Layout) -> Option<(Layout, usize)> {
    let header = header_len(layout.align());
    let size = header.checked_add(layout.size())?.checked_add(TRAILING_GUARD)?;
    Layout::from_size_align(size, layout.align().max(16)).ok().map(|l| (l, header))
}

impl<S: PageSource> Heap<S> {
    /// Allocates a debug block for `layout` on behalf of `domain`.
    pub(crate) fn debug_allocate(
        &mut self,
        layout: Layout,
        domain: Domain,
        zeroed: bool,
    ) -> Result<NonNull<u8>, AllocateError> {
        let invalid = AllocateError::InvalidLayout { size: layout.size(), align: layout.align() };
        let (inner, header) = inner_layout(layout).ok_or(invalid)?;
        let base = self.allocate(inner)?;
        // SAFETY: the block is `header + size + TRAILING_GUARD` bytes long.
        let p = unsafe { base.add(header) };
        if !(p.as_ptr() as usize).is_multiple_of(layout.align()) {
            let mut v = Violation::blank(ViolationKind::Misaligned, p, layout, domain);
            v.owner = self.owner(p.as_ptr());
            self.stats.debug_violations += 1;
            self.debug.pending = Some(v);
            // SAFETY: the block was just allocated with `inner`.
            unsafe { self.deallocate(base, inner) }.expect("a block just allocated");
            return Err(AllocateError::Misaligned { ptr: p.as_ptr() as usize, align: layout.align() });
        }
        self.debug.serial += 1;
        let size = layout.size();
        // SAFETY: header, data and trailer all lie in the block just
        // allocated; the fields are 8-aligned because `p` is 16-aligned.
        unsafe {
            let q = p.as_ptr();
            q.sub(32).cast::<u64>().write(size as u64);
            q.sub(24).cast::<u64>().write(self.debug.serial);
            q.sub(16).write(domain.0);
            q.sub(15).write(LIVE);
            q.sub(14).write(layout.align().trailing_zeros() as u8);
            ptr::write_bytes(q.sub(LEADING_GUARD), FORBIDDEN, LEADING_GUARD);
            ptr::write_bytes(q, if zeroed { 0 } else { CLEAN }, size);
            ptr::write_bytes(q.add(size), FORBIDDEN, TRAILING_GUARD);
        }
        Ok(p)
    }

    /// Checks and frees a debug block; a violation is recorded for the
    /// policy and the block is left alone.
    ///
    /// # Safety
    ///
    /// As [`Heap::deallocate`]: a pointer of this heap must be a live block
    /// allocated with `layout` — which is what the checks verify as far as
    /// they can.
    pub(crate) unsafe fn debug_deallocate(
        &mut self,
        ptr: NonNull<u8>,
        layout: Layout,
        domain: Domain,
    ) -> Result<(), DeallocateError> {
        // The header lies before the caller's block, outside its provenance.
        let ptr = crate::source::reach(ptr);
        match self.check(ptr, layout, domain) {
            None => {
                // SAFETY: the checks passed: a live debug block of `layout`.
                unsafe { self.release(ptr, layout) };
                Ok(())
            }
            Some(v) => {
                // Reported, and refused as the default build refuses.
                self.stats.debug_violations += 1;
                self.stats.refused_frees += 1;
                self.debug.pending = Some(v);
                Ok(())
            }
        }
    }

    /// Reallocates a debug block: always moves, so a stale pointer to the
    /// old block finds freed memory.
    ///
    /// # Safety
    ///
    /// As [`Heap::reallocate`].
    pub(crate) unsafe fn debug_reallocate(
        &mut self,
        ptr: NonNull<u8>,
        layout: Layout,
        new_size: usize,
        domain: Domain,
    ) -> Result<NonNull<u8>, AllocateError> {
        // As in `debug_deallocate`.
        let ptr = crate::source::reach(ptr);
        let new_layout = Layout::from_size_align(new_size, layout.align())
            .map_err(|_| AllocateError::InvalidLayout { size: new_size, align: layout.align() })?;
        if let Some(v) = self.check(ptr, layout, domain) {
            self.stats.debug_violations += 1;
            self.stats.refused_frees += 1;
            self.debug.pending = Some(v);
            return Err(AllocateError::Misuse { ptr: ptr.as_ptr() as usize });
        }
        let new = self.debug_allocate(new_layout, domain, false)?;
        // SAFETY: both blocks are live and distinct; the old one was checked.
        unsafe {
            ptr::copy_nonoverlapping(ptr.as_ptr(), new.as_ptr(), layout.size().min(new_size));
            self.release(ptr, layout);
        }
        stat!(self.stats.realloc_moved += 1);
        Ok(new)
    }

    /// Fills a checked block as dead, marks it freed and gives it to the
    /// layer that owns it.
    ///
    /// # Safety
    ///
    /// `ptr` must be a live debug block of `layout` that passed [`Self::check`].
    unsafe fn release(&mut self, ptr: NonNull<u8>, layout: Layout) {
        let Some((inner, header)) = inner_layout(layout) else { return };
        // SAFETY: a checked live block: data and trailer are ours, and the
        // whole block starts `header` bytes before `p`.
        let freed = unsafe {
            let q = ptr.as_ptr();
            ptr::write_bytes(q, DEAD, layout.size() + TRAILING_GUARD);
            q.sub(15).write(FREED);
            self.deallocate(ptr.sub(header), inner)
        };
        if freed.is_err() {
            // The layers refused what the checks passed: kept out of
            // circulation and reported, never a panic inside a free.
            let mut v = Violation::blank(ViolationKind::BadHeader, ptr, layout, Domain::HEAP);
            v.owner = self.owner(ptr.as_ptr());
            self.stats.debug_violations += 1;
            self.debug.pending = Some(v);
        }
    }

    /// The layout the debug header before `ptr` records, and whether it
    /// says the block is live: for the calls that come without a layout
    /// (C's `free`, `realloc`, `malloc_usable_size`). `None` when the header
    /// would not lie in memory of this heap.
    pub(crate) fn debug_layout(&self, ptr: NonNull<u8>) -> Option<(Layout, bool)> {
        let ptr = crate::source::reach(ptr);
        let p = ptr.as_ptr() as usize;
        let owner = self.owner(ptr.as_ptr())?;
        let fields_owner = p.checked_sub(FIELDS).and_then(|b| self.owner(b as *const u8));
        if fields_owner != Some(owner) || !p.is_multiple_of(16) {
            return None;
        }
        let q = ptr.as_ptr();
        // SAFETY: the fields lie in mapped memory of this heap (checked
        // above) and are 8-aligned.
        let (size, state, align_log2) =
            unsafe { (q.sub(32).cast::<u64>().read() as usize, q.sub(15).read(), q.sub(14).read()) };
        let align = 1usize.checked_shl(u32::from(align_log2))?;
        Some((Layout::from_size_align(size, align).ok()?, state == LIVE))
    }

    /// Runs the checks on a block about to be freed or reallocated: the
    /// violation found, if any.
    fn check(&self, ptr: NonNull<u8>, layout: Layout, domain: Domain) -> Option<Violation> {
        let mut v = Violation::blank(ViolationKind::NotOwned, ptr, layout, domain);
        let p = ptr.as_ptr() as usize;
        v.owner = self.owner(ptr.as_ptr());
        // 1. The block's header fields lie in memory of one layer of this
        //    heap (a layer's memory is mapped from the first byte it owns to
        //    the last), and the block is aligned as every debug block is.
        //    The fields sit at the same place whatever the alignment; the
        //    rest of the header is checked once the alignment is known.
        let fields_owner = p.checked_sub(FIELDS).and_then(|b| self.owner(b as *const u8));
        if v.owner.is_none() || fields_owner != v.owner || !p.is_multiple_of(16) {
            return Some(v);
        }
        let q = ptr.as_ptr();
        // SAFETY: the header lies in mapped memory of this heap (checked
        // above) and its fields are 8-aligned.
        let (size, serial, allocated_by, state, align_log2) = unsafe {
            (
                q.sub(32).cast::<u64>().read() as usize,
                q.sub(24).cast::<u64>().read(),
                Domain(q.sub(16).read()),
                q.sub(15).read(),
                q.sub(14).read(),
            )
        };
        let align_agrees = u32::from(align_log2) == layout.align().trailing_zeros();
        // The whole header, for the alignment the block was made with.
        let recorded = 1usize.checked_shl(u32::from(align_log2)).unwrap_or(usize::MAX);
        let start_owner = p.checked_sub(header_len(recorded)).and_then(|b| self.owner(b as *const u8));
        if start_owner != v.owner {
            v.kind = ViolationKind::BadHeader;
            return Some(v);
        }
        v.requested_size = Some(size);
        v.serial = Some(serial);
        v.allocated_by = Some(allocated_by);
        for i in 0..LEADING_GUARD {
            // SAFETY: in the header, as above.
            let value = unsafe { q.sub(LEADING_GUARD - i).read() };
            if value != FORBIDDEN {
                v.note_bad(i as isize - LEADING_GUARD as isize, value);
            }
        }
        // The data and trailer are read only when the caller's layout agrees
        // with the header (the caller promises the layout, so then they are
        // in the block).
        let end_owner = size.checked_add(p + TRAILING_GUARD - 1).and_then(|e| self.owner(e as *const u8));
        let trusted = size == layout.size() && align_agrees && end_owner == v.owner;
        if trusted && state != FREED {
            for i in 0..TRAILING_GUARD {
                // SAFETY: the trailer of a block of `size` bytes.
                let value = unsafe { q.add(size + i).read() };
                if value != FORBIDDEN {
                    v.note_bad((size + i) as isize, value);
                }
            }
        }
        if trusted {
            v.data_len = size.min(DUMP);
            // SAFETY: the first and last `data_len` bytes of the data.
            unsafe {
                ptr::copy_nonoverlapping(q, v.first.as_mut_ptr(), v.data_len);
                ptr::copy_nonoverlapping(q.add(size - v.data_len), v.last.as_mut_ptr(), v.data_len);
            }
        }
        let leading_bad = v.bad.iter().take(v.bad_count).any(|b| b.offset < 0);
        v.kind = if state == FREED {
            ViolationKind::DoubleFree
        } else if state != LIVE {
            ViolationKind::BadHeader
        } else if allocated_by != domain {
            ViolationKind::WrongDomain
        } else if leading_bad {
            ViolationKind::LeadingGuard
        } else if !align_agrees {
            ViolationKind::AlignMismatch
        } else if size != layout.size() {
            ViolationKind::SizeMismatch
        } else if v.bad_count > 0 {
            ViolationKind::TrailingGuard
        } else {
            return None;
        };
        Some(v)
    }

    /// Sets what the heap does with a violation.
    pub fn set_debug_policy(&mut self, policy: Policy) {
        self.debug.policy = policy;
    }

    /// The serial number of the last debug allocation (the next one gets
    /// this plus one).
    pub fn debug_serial(&self) -> u64 {
        self.debug.serial
    }

    /// Violations caught so far.
    pub fn debug_violations(&self) -> usize {
        self.stats.debug_violations
    }

    /// The violation found by the last call, if its policy has not taken it
    /// yet (the `GlobalAlloc` entry points take it as they return).
    pub fn take_violation(&mut self) -> Option<(Violation, Policy)> {
        self.debug.pending.take().map(|v| (v, self.debug.policy))
    }
}

impl Violation {
    /// A violation of `kind` at `p`, nothing read from the block yet.
    fn blank(kind: ViolationKind, p: NonNull<u8>, layout: Layout, domain: Domain) -> Self {
        Self {
            kind,
            address: p.as_ptr() as usize,
            layout,
            freed_by: domain,
            allocated_by: None,
            requested_size: None,
            serial: None,
            owner: None,
            bad: [BadByte::default(); MAX_BAD_BYTES],
            bad_count: 0,
            first: [0; DUMP],
            last: [0; DUMP],
            data_len: 0,
        }
    }

    fn note_bad(&mut self, offset: isize, value: u8) {
        if self.bad_count < MAX_BAD_BYTES {
            self.bad[self.bad_count] = BadByte { offset, value };
        }
        self.bad_count += 1;
    }
}

/// The hooks of a `debug` build: every call of a
/// [`LockedHeap`](super::LockedHeap) takes the lock and goes through the
/// checks above (no quick path, no thread caches), and a violation is acted
/// on once the lock is released.
#[derive(Debug)]
pub(super) struct Checked;

impl Hooks for Checked {
    const NEW: Self = Checked;
    const RECORDS_LAYOUTS: bool = true;

    fn lock<'a, S: PageSource, L: lock_api::RawMutex>(&self, heap: &'a Lock<S, L>) -> Guard<'a, S, L> {
        heap.lock()
    }

    /// A panicking policy must not leave the heap locked.
    fn settle<S: PageSource, L: lock_api::RawMutex>(&self, mut heap: Guard<'_, S, L>) {
        if let Some((violation, policy)) = heap.take_violation() {
            drop(heap);
            policy.apply(&violation);
        }
    }

    fn alloc<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        layout: Layout,
        domain: Domain,
    ) -> *mut u8 {
        self.allocate(heap, layout, domain, false)
    }

    fn alloc_zeroed<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        layout: Layout,
    ) -> *mut u8 {
        self.allocate(heap, layout, Domain::HEAP, true)
    }

    unsafe fn dealloc<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        p: NonNull<u8>,
        layout: Layout,
        domain: Domain,
    ) {
        // SAFETY: forwarded contract.
        unsafe { self.free(heap, p, |_| layout, domain) }
    }

    unsafe fn realloc<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        p: NonNull<u8>,
        layout: Layout,
        new_size: usize,
    ) -> *mut u8 {
        no_unwind(|| {
            let mut h = self.lock(heap);
            // SAFETY: forwarded contract; the checks verify the block.
            let result = unsafe { h.debug_reallocate(p, layout, new_size, Domain::HEAP) };
            let p = h.or_null(result);
            self.settle(h);
            p
        })
    }

    /// Any pointer is checked and reported; one without a header of this
    /// heap is checked as a byte, and refused.
    unsafe fn dealloc_unsized<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        p: NonNull<u8>,
    ) {
        let recorded = |h: &Heap<S>| h.debug_layout(p).map_or(Layout::new::<u8>(), |(layout, _)| layout);
        // SAFETY: forwarded contract.
        unsafe { self.free(heap, p, recorded, Domain::HEAP) }
    }

    /// The size a live block's header records.
    unsafe fn usable_layout<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        p: NonNull<u8>,
    ) -> Option<Layout> {
        let h = self.lock(heap);
        let layout = h.debug_layout(p).and_then(|(layout, live)| live.then_some(layout));
        self.settle(h);
        layout
    }

    /// Whatever layout the header records, live or not, so that the realloc
    /// checks the block and reports what it finds.
    unsafe fn realloc_layout<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        p: NonNull<u8>,
    ) -> Option<Layout> {
        let h = self.lock(heap);
        let layout = h.debug_layout(p).map(|(layout, _)| layout);
        self.settle(h);
        layout
    }
}

impl Checked {
    /// Frees `p` through `domain` with the layout `layout` gives under the
    /// lock, counting a refusal.
    ///
    /// # Safety
    ///
    /// As [`Hooks::dealloc`]: the checks verify the layout and the domain.
    unsafe fn free<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        p: NonNull<u8>,
        layout: impl FnOnce(&Heap<S>) -> Layout,
        domain: Domain,
    ) {
        no_unwind(|| {
            let mut h = self.lock(heap);
            let layout = layout(&h);
            // SAFETY: forwarded contract.
            if unsafe { h.debug_deallocate(p, layout, domain) }.is_err() {
                h.stats.refused_frees += 1;
            }
            self.settle(h);
        })
    }

    /// A debug block for `layout` through `domain`, or null, counted.
    fn allocate<S: PageSource, L: lock_api::RawMutex>(
        &self,
        heap: &Lock<S, L>,
        layout: Layout,
        domain: Domain,
        zeroed: bool,
    ) -> *mut u8 {
        no_unwind(|| {
            let mut h = self.lock(heap);
            let result = h.debug_allocate(layout, domain, zeroed);
            let p = h.or_null(result);
            self.settle(h);
            p
        })
    }
}
