//! # Layer −2: the physical frame allocator (a binary buddy system)
//!
//! **Takes from below:** the boot memory map (usable RAM ranges) and a list of
//! ranges that must never be handed out (the first MiB, the kernel image, the
//! boot structures, this allocator's own metadata).
//!
//! **Gives above:** 4 KiB frames and naturally aligned runs of `2^order`
//! frames, `order` in `0..=MAX_ORDER` (4 KiB .. 4 MiB), as Linux does. Layer
//! −1 (the VMM) takes its frames here through x86_64's [`FrameAllocator`] and
//! [`FrameDeallocator`] traits.
//!
//! **Costs:** allocation and free are O(`MAX_ORDER`): a split walks down at
//! most ten orders, a free merges up at most ten times, and each step is an
//! O(1) unlink from a doubly linked free list. Nothing walks memory after
//! construction, which is O(frames) once, plus the frames each reserved
//! range or unusable entry covers (ranges that overlap are marked again).
//!
//! ```text
//!  order 10 ┌───────────────────────────────┐ 4 MiB block
//!           │                               │
//!  order  9 ├───────────────┬───────────────┤ buddy = pfn ^ (1 << order)
//!           │   allocated   │     free      │
//!  order  8 ├───────┬───────┼───────────────┤
//! ```
//!
//! **Invariants** (checked by [`BuddyAllocator::check_invariants`]):
//! - every frame belongs to exactly one block, reserved frame, or is the head
//!   of a block; a free block of order `k` is aligned to `2^k` frames and sits
//!   on free list `k`;
//! - two free buddies of the same order never coexist (they would have
//!   merged);
//! - the per-order counts equal the lengths of the free lists.
//!
//! **Errors:** a free of a frame it never handed out, a double free, a free
//! into the middle of a block, a free with the wrong order, a misaligned or
//! out-of-range frame each get their own [`DeallocateError`] variant; nothing
//! is changed when an error is returned. A corrupt memory map is a
//! [`MemoryMapError`] from [`validate_map`], which every function taking a
//! map runs first; no map, however corrupt, makes this module panic.
//!
//! Per-frame bookkeeping lives in a caller-provided array of [`FrameMeta`]
//! (12 bytes per frame, like a much smaller Linux `struct page`), so the
//! allocator never reads or writes the frames it manages and its logic is
//! testable on the host over synthetic memory maps.

use core::fmt;
use core::mem::MaybeUninit;

use x86_64::PhysAddr;
use x86_64::structures::paging::{FrameAllocator, FrameDeallocator, PhysFrame, Size4KiB};

/// Size of one physical frame in bytes.
pub const FRAME_SIZE: u64 = 4096;
/// Largest order handed out: blocks of `2^MAX_ORDER` frames (4 MiB).
pub const MAX_ORDER: usize = 10;
/// Number of orders, `0..=MAX_ORDER`.
pub const ORDERS: usize = MAX_ORDER + 1;

const NIL: u32 = u32::MAX;
/// One past the highest physical address x86_64 can name (52 bits).
const PHYS_LIMIT: u64 = 1 << 52;

/// What the firmware says a range of physical memory is (E820 types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// Ordinary RAM, free for the operating system (E820 type 1).
    Usable,
    /// Reserved by the firmware or a device (E820 type 2).
    Reserved,
    /// ACPI tables, reclaimable after they are parsed (E820 type 3).
    AcpiReclaimable,
    /// ACPI non-volatile storage (E820 type 4).
    AcpiNvs,
    /// Memory reported as defective (E820 type 5).
    Bad,
    /// Any other type code.
    Other(u32),
}

impl MemoryKind {
    /// Decodes an E820 type code, as found in a PVH `hvm_memmap_table_entry`.
    pub const fn from_e820(code: u32) -> Self {
        match code {
            1 => Self::Usable,
            2 => Self::Reserved,
            3 => Self::AcpiReclaimable,
            4 => Self::AcpiNvs,
            5 => Self::Bad,
            other => Self::Other(other),
        }
    }
}

/// One entry of the boot memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    /// First byte of the range.
    pub start: PhysAddr,
    /// Length in bytes.
    pub len: u64,
    /// What the range holds.
    pub kind: MemoryKind,
}

impl MemoryRegion {
    /// One past the last byte, or `None` when that lies past the 52-bit
    /// physical address space (2^52 itself is a valid end): such an entry is
    /// corrupt, [`MemoryMapError::EntryOverflows`].
    pub fn end(&self) -> Option<u64> {
        self.start.as_u64().checked_add(self.len).filter(|&end| end <= PHYS_LIMIT)
    }

    /// `[start, end)` as numbers; exact once [`validate_map`] has accepted
    /// the entry (the end saturates for a corrupt one).
    fn bounds(&self) -> (u64, u64) {
        (self.start.as_u64(), self.start.as_u64().saturating_add(self.len))
    }
}

/// A half-open range of physical addresses, `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysRange {
    /// First byte.
    pub start: PhysAddr,
    /// One past the last byte.
    pub end: PhysAddr,
}

impl PhysRange {
    /// The range `[start, start + len)`.
    ///
    /// # Panics
    ///
    /// When `start + len` is not a [`PhysAddr`] (2^52 or more).
    pub fn new(start: PhysAddr, len: u64) -> Self {
        Self { start, end: start + len }
    }

    /// Whether `addr` lies inside the range.
    pub fn contains(&self, addr: PhysAddr) -> bool {
        self.start <= addr && addr < self.end
    }

    /// `[start, end)` as numbers.
    fn bounds(&self) -> (u64, u64) {
        (self.start.as_u64(), self.end.as_u64())
    }
}

/// Whether two half-open ranges share a byte: an empty range overlaps nothing.
fn overlaps((a_start, a_end): (u64, u64), (b_start, b_end): (u64, u64)) -> bool {
    a_start < a_end && b_start < b_end && a_start < b_end && b_start < a_end
}

/// Checks `map` for what makes it unusable whatever else is given: the one
/// check that [`BuddyAllocator::metadata_len`], [`find_free_range`] and
/// [`BuddyAllocator::new`] all make first, so each of them reports a corrupt
/// map with the same error. In this order:
/// - an entry whose end lies past the 52-bit physical address space (the
///   first such entry): [`MemoryMapError::EntryOverflows`];
/// - two usable entries sharing a byte (the first such pair in map order;
///   an empty entry overlaps nothing): [`MemoryMapError::UsableOverlap`];
/// - no whole usable frame: [`MemoryMapError::NoUsableMemory`];
/// - usable frames spanning more frames than 32-bit indices can name:
///   [`MemoryMapError::TooManyFrames`].
///
/// O(entries²).
pub fn validate_map(map: &[MemoryRegion]) -> Result<(), MemoryMapError> {
    frame_span(map).map(drop)
}

/// [`validate_map`], returning the frame numbers `[base, end)` that the
/// metadata covers: from the lowest usable frame, rounded down to a 4 MiB
/// boundary, to one past the highest.
fn frame_span(map: &[MemoryRegion]) -> Result<(u64, u64), MemoryMapError> {
    if let Some(region) = map.iter().find(|r| r.end().is_none()) {
        return Err(MemoryMapError::EntryOverflows { region: *region });
    }
    // From here on every entry's `bounds` are exact.
    for (i, a) in map.iter().enumerate().filter(|(_, a)| a.kind == MemoryKind::Usable) {
        for b in map[i + 1..].iter().filter(|b| b.kind == MemoryKind::Usable) {
            if overlaps(a.bounds(), b.bounds()) {
                return Err(MemoryMapError::UsableOverlap { a: *a, b: *b });
            }
        }
    }
    let (mut lo, mut hi) = (u64::MAX, 0);
    for region in map.iter().filter(|r| r.kind == MemoryKind::Usable) {
        let (first, end) = usable_pfns(region);
        if first < end {
            lo = lo.min(first);
            hi = hi.max(end);
        }
    }
    if lo >= hi {
        return Err(MemoryMapError::NoUsableMemory);
    }
    let base = lo & !((1 << MAX_ORDER) - 1);
    let frames = hi - base;
    if frames >= u64::from(NIL) {
        return Err(MemoryMapError::TooManyFrames { frames });
    }
    Ok((base, hi))
}

/// Finds `size` bytes aligned to `align` inside one usable entry of `map`,
/// overlapping no non-usable entry and none of `reserved`: where a kernel
/// puts the frame metadata before the frame allocator exists. `Ok(None)`
/// when there is no such range; the map's error when [`validate_map`]
/// rejects it. O(entries × (entries + reserved)).
///
/// The lowest such start inside a usable entry is the aligned start of the
/// entry or the aligned end of something in the way, so only those are tried.
pub fn find_free_range(
    map: &[MemoryRegion],
    reserved: &[PhysRange],
    size: u64,
    align: u64,
) -> Result<Option<PhysAddr>, MemoryMapError> {
    validate_map(map)?;
    let usable = || map.iter().filter(|r| r.kind == MemoryKind::Usable).map(MemoryRegion::bounds);
    let blockers = || {
        map.iter()
            .filter(|r| r.kind != MemoryKind::Usable)
            .map(MemoryRegion::bounds)
            .chain(reserved.iter().map(PhysRange::bounds))
    };
    let candidates = usable().map(|(start, _)| start).chain(blockers().map(|(_, end)| end));
    let found = candidates
        .filter_map(|c| c.checked_next_multiple_of(align))
        .filter(|&start| start < PHYS_LIMIT)
        .filter_map(|start| Some((start, start.checked_add(size)?)))
        .find(|&(start, end)| {
            usable().any(|(lo, hi)| lo <= start && end <= hi)
                && !blockers().any(|blocker| overlaps(blocker, (start, end)))
        })
        .map(|(start, _)| PhysAddr::new(start));
    Ok(found)
}

/// Per-frame bookkeeping kept by the buddy allocator (12 bytes per frame).
#[derive(Clone, Copy, Debug)]
pub struct FrameMeta {
    next: u32,
    prev: u32,
    state: State,
    order: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum State {
    /// Never handed out: a hole in the map, or a reserved range.
    Reserved,
    /// Inside a block whose head is elsewhere.
    Tail,
    /// First frame of a free block of `order` frames, on free list `order`.
    Free,
    /// First frame of an allocated block of `order` frames.
    Allocated,
}

impl FrameMeta {
    const RESERVED: Self = Self { next: NIL, prev: NIL, state: State::Reserved, order: 0 };
}

/// Why a memory map could not be turned into a frame allocator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryMapError {
    /// The map has no usable frame once reserved ranges are taken out.
    NoUsableMemory,
    /// An entry's end lies past the 52-bit physical address space.
    EntryOverflows {
        /// The offending entry.
        region: MemoryRegion,
    },
    /// Two usable entries overlap, which no well-formed map does.
    UsableOverlap {
        /// The first entry.
        a: MemoryRegion,
        /// The entry overlapping it.
        b: MemoryRegion,
    },
    /// The metadata array is too small for the frames spanned by the map.
    MetadataTooSmall {
        /// Entries needed, one per frame from the lowest to the highest usable frame.
        needed: usize,
        /// Entries provided.
        provided: usize,
    },
    /// The map spans more frames than the 32-bit frame indices can name.
    TooManyFrames {
        /// Frames spanned.
        frames: u64,
    },
}

impl fmt::Display for MemoryMapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoUsableMemory => write!(f, "the memory map has no usable frame"),
            Self::EntryOverflows { region } => write!(
                f,
                "the entry of {:#x} bytes at {:#x} ends past the 52-bit physical address space",
                region.len,
                region.start.as_u64()
            ),
            Self::UsableOverlap { a, b } => write!(
                f,
                "usable entries overlap: {:#x} bytes at {:#x} and {:#x} bytes at {:#x}",
                a.len,
                a.start.as_u64(),
                b.len,
                b.start.as_u64()
            ),
            Self::MetadataTooSmall { needed, provided } => {
                write!(f, "frame metadata too small: {needed} entries needed, {provided} provided")
            }
            Self::TooManyFrames { frames } => {
                write!(f, "the map spans {frames} frames, more than 32-bit indices name")
            }
        }
    }
}

impl core::error::Error for MemoryMapError {}

/// Why a block could not be allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocateError {
    /// No free block of this order or larger.
    OutOfMemory {
        /// The order requested.
        order: usize,
    },
    /// The order is above [`MAX_ORDER`].
    InvalidOrder {
        /// The order requested.
        order: usize,
    },
}

impl fmt::Display for AllocateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfMemory { order } => write!(f, "no free block of order {order} or larger"),
            Self::InvalidOrder { order } => write!(f, "order {order} is above {MAX_ORDER}"),
        }
    }
}

impl core::error::Error for AllocateError {}

/// Why a block could not be freed. The allocator is unchanged when this is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeallocateError {
    /// The order is above [`MAX_ORDER`].
    InvalidOrder {
        /// The order given.
        order: usize,
    },
    /// The frame is not aligned to `2^order` frames.
    Misaligned {
        /// The frame given.
        frame: PhysAddr,
        /// The order given.
        order: usize,
    },
    /// The block lies (partly) outside the memory this allocator manages.
    OutOfRange {
        /// The frame given.
        frame: PhysAddr,
    },
    /// The frame was never handed out: a hole in the map or a reserved range.
    NotOwned {
        /// The frame given.
        frame: PhysAddr,
    },
    /// The frame is already free.
    DoubleFree {
        /// The frame given.
        frame: PhysAddr,
    },
    /// The frame is inside an allocated block, not at its start.
    InsideBlock {
        /// The frame given.
        frame: PhysAddr,
        /// The start of the allocated block that contains it.
        block: PhysAddr,
        /// That block's order.
        order: usize,
    },
    /// The block was allocated with another order.
    WrongOrder {
        /// The frame given.
        frame: PhysAddr,
        /// The order it was allocated with.
        allocated: usize,
        /// The order given.
        given: usize,
    },
}

impl fmt::Display for DeallocateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::InvalidOrder { order } => write!(f, "order {order} is above {MAX_ORDER}"),
            Self::Misaligned { frame, order } => {
                write!(f, "frame {:#x} is not aligned for order {order}", frame.as_u64())
            }
            Self::OutOfRange { frame } => write!(f, "frame {:#x} is out of range", frame.as_u64()),
            Self::NotOwned { frame } => {
                write!(f, "frame {:#x} was never handed out", frame.as_u64())
            }
            Self::DoubleFree { frame } => write!(f, "double free of frame {:#x}", frame.as_u64()),
            Self::InsideBlock { frame, block, order } => write!(
                f,
                "frame {:#x} is inside the order-{order} block at {:#x}",
                frame.as_u64(),
                block.as_u64()
            ),
            Self::WrongOrder { frame, allocated, given } => write!(
                f,
                "frame {:#x} was allocated with order {allocated}, freed with order {given}",
                frame.as_u64()
            ),
        }
    }
}

impl core::error::Error for DeallocateError {}

/// The binary buddy allocator over a boot memory map.
pub struct BuddyAllocator<'m> {
    meta: &'m mut [FrameMeta],
    /// Frame number of `meta[0]`, aligned to `2^MAX_ORDER`.
    base_pfn: u64,
    free_heads: [u32; ORDERS],
    free_blocks: [usize; ORDERS],
    free_frames: usize,
    managed_frames: usize,
}

impl fmt::Debug for BuddyAllocator<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BuddyAllocator")
            .field("base_pfn", &self.base_pfn)
            .field("frames_spanned", &self.meta.len())
            .field("managed_frames", &self.managed_frames)
            .field("free_frames", &self.free_frames)
            .field("free_blocks", &self.free_blocks)
            .finish()
    }
}

/// Usable frame numbers `[first, end)` of one map entry, rounded inwards.
fn usable_pfns(region: &MemoryRegion) -> (u64, u64) {
    let (start, end) = region.bounds();
    let first = start.div_ceil(FRAME_SIZE);
    let end = end / FRAME_SIZE;
    (first, end.max(first))
}

impl<'m> BuddyAllocator<'m> {
    /// Number of [`FrameMeta`] entries needed for `map`: one per frame from the
    /// lowest usable frame (rounded down to a 4 MiB boundary) to the highest.
    /// The map's error when [`validate_map`] rejects it.
    pub fn metadata_len(map: &[MemoryRegion]) -> Result<usize, MemoryMapError> {
        frame_span(map).map(|(base, end)| (end - base) as usize)
    }

    /// Builds the allocator from a boot memory map.
    ///
    /// Only [`MemoryKind::Usable`] entries are managed, rounded inwards to
    /// whole frames; any frame overlapping a non-usable entry or one of
    /// `reserved` is never handed out (an empty range overlaps nothing).
    /// `meta` must hold at least [`metadata_len`](Self::metadata_len)
    /// entries and must not itself lie in usable memory unless it is listed
    /// in `reserved`.
    ///
    /// Errors: the map's, when [`validate_map`] rejects it; then
    /// [`MemoryMapError::MetadataTooSmall`]; then
    /// [`MemoryMapError::NoUsableMemory`] when no usable frame is left
    /// outside the non-usable entries and `reserved`.
    ///
    /// # Safety
    ///
    /// The caller promises that every usable frame of `map` outside `reserved`
    /// is RAM that nothing else uses, so that handing it out is sound (this is
    /// the promise x86_64's [`FrameAllocator`] demands of its implementers).
    pub unsafe fn new(
        map: &[MemoryRegion],
        reserved: &[PhysRange],
        meta: &'m mut [MaybeUninit<FrameMeta>],
    ) -> Result<Self, MemoryMapError> {
        let (base_pfn, end_pfn) = frame_span(map)?;
        let needed = (end_pfn - base_pfn) as usize;
        if meta.len() < needed {
            return Err(MemoryMapError::MetadataTooSmall { needed, provided: meta.len() });
        }
        let meta: &'m mut [FrameMeta] = {
            let slots = &mut meta[..needed];
            for slot in slots.iter_mut() {
                slot.write(FrameMeta::RESERVED);
            }
            // SAFETY: every element of `slots` was initialised just above, and
            // `MaybeUninit<T>` has the same layout as `T`.
            unsafe { &mut *(slots as *mut [MaybeUninit<FrameMeta>] as *mut [FrameMeta]) }
        };

        let mut this = Self {
            meta,
            base_pfn,
            free_heads: [NIL; ORDERS],
            free_blocks: [0; ORDERS],
            free_frames: 0,
            managed_frames: 0,
        };
        // Mark usable frames, then take out every frame touched by a
        // non-usable entry or a reserved range.
        let clamp = |pfn: u64| pfn.clamp(base_pfn, end_pfn) - base_pfn;
        for region in map.iter().filter(|r| r.kind == MemoryKind::Usable) {
            let (first, end) = usable_pfns(region);
            for m in &mut this.meta[clamp(first) as usize..clamp(end) as usize] {
                m.state = State::Tail;
            }
        }
        let unusable = map.iter().filter(|r| r.kind != MemoryKind::Usable).map(MemoryRegion::bounds);
        // An empty range overlaps no frame (and rounding it outwards would take one).
        let blocked = unusable.chain(reserved.iter().map(PhysRange::bounds)).filter(|&(s, e)| s < e);
        for (start, end) in blocked {
            let first = start / FRAME_SIZE;
            let end = end.div_ceil(FRAME_SIZE);
            for m in &mut this.meta[clamp(first) as usize..clamp(end) as usize] {
                m.state = State::Reserved;
            }
        }
        // Sweep the runs of usable frames into maximal aligned blocks.
        let mut i = 0;
        while i < needed {
            if this.meta[i].state != State::Tail {
                i += 1;
                continue;
            }
            let mut run_end = i;
            while run_end < needed && this.meta[run_end].state == State::Tail {
                run_end += 1;
            }
            while i < run_end {
                let mut order = MAX_ORDER;
                while (i & ((1 << order) - 1)) != 0 || i + (1 << order) > run_end {
                    order -= 1;
                }
                this.push_free(i as u32, order);
                this.managed_frames += 1 << order;
                i += 1 << order;
            }
        }
        if this.managed_frames == 0 {
            return Err(MemoryMapError::NoUsableMemory);
        }
        Ok(this)
    }

    fn frame_of(&self, index: u32) -> PhysFrame {
        PhysFrame::containing_address(PhysAddr::new((self.base_pfn + u64::from(index)) * FRAME_SIZE))
    }

    fn push_free(&mut self, index: u32, order: usize) {
        let head = self.free_heads[order];
        let m = &mut self.meta[index as usize];
        *m = FrameMeta { next: head, prev: NIL, state: State::Free, order: order as u8 };
        if head != NIL {
            self.meta[head as usize].prev = index;
        }
        self.free_heads[order] = index;
        self.free_blocks[order] += 1;
        self.free_frames += 1 << order;
    }

    fn unlink_free(&mut self, index: u32) {
        let FrameMeta { next, prev, order, .. } = self.meta[index as usize];
        let order = usize::from(order);
        match prev {
            NIL => self.free_heads[order] = next,
            p => self.meta[p as usize].next = next,
        }
        if next != NIL {
            self.meta[next as usize].prev = prev;
        }
        self.meta[index as usize].state = State::Tail;
        self.free_blocks[order] -= 1;
        self.free_frames -= 1 << order;
    }

    /// Allocates a naturally aligned block of `2^order` frames.
    pub fn allocate(&mut self, order: usize) -> Result<PhysFrame, AllocateError> {
        if order > MAX_ORDER {
            return Err(AllocateError::InvalidOrder { order });
        }
        let found = (order..ORDERS)
            .find(|&k| self.free_heads[k] != NIL)
            .ok_or(AllocateError::OutOfMemory { order })?;
        let index = self.free_heads[found];
        self.unlink_free(index);
        // Split down, giving the upper halves back to the free lists.
        for k in (order..found).rev() {
            self.push_free(index + (1 << k), k);
        }
        self.meta[index as usize].state = State::Allocated;
        self.meta[index as usize].order = order as u8;
        Ok(self.frame_of(index))
    }

    /// Frees a block of `2^order` frames previously returned by
    /// [`allocate`](Self::allocate) with the same order, merging it with its
    /// free buddies.
    pub fn deallocate(&mut self, frame: PhysFrame, order: usize) -> Result<(), DeallocateError> {
        let mut index = self.check_deallocate(frame, order)?;
        let mut order = order;
        self.meta[index as usize].state = State::Tail;
        while order < MAX_ORDER {
            let buddy = index ^ (1 << order);
            match self.meta.get(buddy as usize) {
                Some(m) if m.state == State::Free && usize::from(m.order) == order => {
                    self.unlink_free(buddy);
                    index = index.min(buddy);
                    order += 1;
                }
                _ => break,
            }
        }
        self.push_free(index, order);
        Ok(())
    }

    /// Validates a free without changing anything, returning the frame's index.
    fn check_deallocate(&self, frame: PhysFrame, order: usize) -> Result<u32, DeallocateError> {
        let addr = frame.start_address();
        if order > MAX_ORDER {
            return Err(DeallocateError::InvalidOrder { order });
        }
        let pfn = addr.as_u64() / FRAME_SIZE;
        if pfn & ((1 << order) - 1) != 0 {
            return Err(DeallocateError::Misaligned { frame: addr, order });
        }
        let len = self.meta.len() as u64;
        if pfn < self.base_pfn || pfn - self.base_pfn + (1 << order) > len {
            return Err(DeallocateError::OutOfRange { frame: addr });
        }
        let index = (pfn - self.base_pfn) as u32;
        let m = self.meta[index as usize];
        match m.state {
            State::Allocated if usize::from(m.order) == order => Ok(index),
            State::Allocated => Err(DeallocateError::WrongOrder {
                frame: addr,
                allocated: usize::from(m.order),
                given: order,
            }),
            State::Free => Err(DeallocateError::DoubleFree { frame: addr }),
            State::Reserved => Err(DeallocateError::NotOwned { frame: addr }),
            State::Tail => match self.enclosing_head(index) {
                Some((head, State::Allocated, k)) => Err(DeallocateError::InsideBlock {
                    frame: addr,
                    block: self.frame_of(head).start_address(),
                    order: k,
                }),
                Some((_, State::Free, _)) => Err(DeallocateError::DoubleFree { frame: addr }),
                _ => Err(DeallocateError::NotOwned { frame: addr }),
            },
        }
    }

    /// The head of the block containing frame `index`: O(`MAX_ORDER`).
    fn enclosing_head(&self, index: u32) -> Option<(u32, State, usize)> {
        (0..ORDERS).find_map(|o| {
            let head = index & !((1u32 << o) - 1);
            let m = self.meta[head as usize];
            let k = usize::from(m.order);
            let is_head = matches!(m.state, State::Free | State::Allocated);
            (is_head && index < head + (1 << k)).then_some((head, m.state, k))
        })
    }

    /// Free blocks of each order, like a line of Linux's `/proc/buddyinfo`.
    pub fn free_blocks(&self) -> [usize; ORDERS] {
        self.free_blocks
    }

    /// Frames currently free.
    pub fn free_frames(&self) -> usize {
        self.free_frames
    }

    /// Frames this allocator manages (usable and not reserved).
    pub fn managed_frames(&self) -> usize {
        self.managed_frames
    }

    /// Frames currently allocated.
    pub fn used_frames(&self) -> usize {
        self.managed_frames - self.free_frames
    }

    /// Whether `frame` lies in a block currently handed out.
    pub fn is_allocated(&self, frame: PhysFrame) -> bool {
        let pfn = frame.start_address().as_u64() / FRAME_SIZE;
        if pfn < self.base_pfn || pfn - self.base_pfn >= self.meta.len() as u64 {
            return false;
        }
        let index = (pfn - self.base_pfn) as u32;
        matches!(self.enclosing_head(index), Some((_, State::Allocated, _)))
    }

    /// Walks every free list and the metadata, panicking on a broken invariant.
    /// O(frames): for tests and debug builds.
    pub fn check_invariants(&self) {
        let mut frames = 0;
        for order in 0..ORDERS {
            let mut count = 0;
            let mut prev = NIL;
            let mut at = self.free_heads[order];
            while at != NIL {
                let m = self.meta[at as usize];
                assert_eq!(m.state, State::Free, "non-free block on free list {order}");
                assert_eq!(usize::from(m.order), order, "block on the wrong free list");
                assert_eq!(m.prev, prev, "free list {order} back link broken");
                assert_eq!((self.base_pfn + u64::from(at)) % (1 << order), 0, "misaligned block");
                if order < MAX_ORDER {
                    let buddy = self.meta.get((at ^ (1 << order)) as usize);
                    assert!(
                        !buddy.is_some_and(|b| b.state == State::Free && usize::from(b.order) == order),
                        "free buddies at order {order} did not merge"
                    );
                }
                for tail in &self.meta[at as usize + 1..at as usize + (1 << order)] {
                    assert_eq!(tail.state, State::Tail, "frame inside a free block is a head");
                }
                count += 1;
                prev = at;
                at = m.next;
            }
            assert_eq!(count, self.free_blocks[order], "free count of order {order}");
            frames += count << order;
        }
        assert_eq!(frames, self.free_frames, "free frame total");
    }
}

impl fmt::Display for BuddyAllocator<'_> {
    /// Renders the free blocks per order in the style of `/proc/buddyinfo`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "buddyinfo (free blocks per order 0..={MAX_ORDER}):")?;
        for n in self.free_blocks {
            write!(f, " {n:>5}")?;
        }
        write!(
            f,
            "\nframes: {} managed, {} free, {} used",
            self.managed_frames,
            self.free_frames,
            self.used_frames()
        )
    }
}

// SAFETY: `allocate` hands out each frame at most once until it is freed, and
// only frames that the constructor's caller promised are unused RAM.
unsafe impl FrameAllocator<Size4KiB> for BuddyAllocator<'_> {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        self.allocate(0).ok()
    }
}

impl FrameDeallocator<Size4KiB> for BuddyAllocator<'_> {
    /// # Safety
    ///
    /// `frame` must have come from [`allocate_frame`](FrameAllocator::allocate_frame)
    /// and be unused. A frame this allocator did not hand out panics with the
    /// [`DeallocateError`] rather than corrupt the free lists.
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame<Size4KiB>) {
        if let Err(e) = self.deallocate(frame, 0) {
            panic!("frame allocator: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
