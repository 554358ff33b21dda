//! Boot information and the kernel's instances of layers −2 and −1.
//!
//! [`init`] reads the PVH `hvm_start_info` (memory map and command line),
//! builds the [`BuddyAllocator`] over usable RAM — keeping out the first MiB,
//! the kernel image, the boot structures and the allocator's own metadata —
//! and a [`Vmm`] over the live page tables for the kernel heap range. Both sit
//! behind spin locks; take them through [`with_memory`] (VMM first, then
//! frames) so the lock order is fixed.

use core::fmt;
use core::mem::size_of;

use spin::Once;

use crate::sync::IrqMutex;
use strata::frame::{BuddyAllocator, FrameMeta, MemoryKind, MemoryMapError, MemoryRegion, PhysRange};
use strata::vmm::{AddressInfo, PageFlags, Region, Vmm};
use x86_64::registers::control::Cr3;
use x86_64::registers::model_specific::{Efer, EferFlags};
use x86_64::structures::paging::page::PageRange;
use x86_64::structures::paging::{OffsetPageTable, Page, PageTable};
use x86_64::{PhysAddr, VirtAddr};

/// Start of the kernel heap range managed by the VMM (upper half, L4 slot 288).
pub const HEAP_START: u64 = 0xffff_9000_0000_0000;
/// Size of the kernel heap range: 1 TiB of address space.
pub const HEAP_SIZE: u64 = 1 << 40;
/// The window of the heap range where the allocator stack (layers 0 and +2)
/// takes its pages: 4 GiB from 4 GiB in, so that layer +2's ownership bitmap
/// covers it with 1 MiB arenas.
pub const ALLOC_WINDOW: (u64, u64) = (HEAP_START + (4 << 30), 4 << 30);
/// Pages of the kernel stack that `main` and the tests run on.
pub const KERNEL_STACK_PAGES: u64 = 64;
/// Memory above this is ignored: the boot stub identity-maps only 4 GiB.
pub const IDENTITY_LIMIT: u64 = 4 << 30;
/// Capacity of the VMM's region table.
pub const MAX_REGIONS: usize = 1024;
const MAX_MAP_ENTRIES: usize = 128;
const CMDLINE_MAX: usize = 256;
const PVH_MAGIC: u32 = 0x336e_c578;

/// The kernel's frame allocator (layer −2).
pub static FRAMES: IrqMutex<Option<BuddyAllocator<'static>>> = IrqMutex::new(None);
/// The kernel's VMM (layer −1).
pub static VMM: IrqMutex<Option<Vmm<'static, MAX_REGIONS>>> = IrqMutex::new(None);
static BOOT_INFO: Once<BootInfo> = Once::new();

unsafe extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// What the kernel learned at boot.
#[derive(Debug)]
pub struct BootInfo {
    /// The PVH memory map (E820 entries), clipped to the identity-mapped
    /// first 4 GiB (entries wholly above it are dropped); see [`clip_entry`].
    pub memory_map: &'static [MemoryRegion],
    /// The kernel command line (QEMU's `-append`).
    pub cmdline: &'static str,
    /// The loaded kernel image, `.bss` (boot page tables and stack) included.
    pub kernel: PhysRange,
    /// Ranges kept from the frame allocator: first MiB, kernel image, boot
    /// structures, frame metadata.
    pub reserved: [PhysRange; 6],
    /// The frame allocator's metadata array.
    pub frame_metadata: PhysRange,
    /// The kernel heap range managed by the VMM.
    pub heap: PageRange,
    /// The guarded kernel stack the kernel runs on after boot.
    pub kernel_stack: Region,
    /// Physical address of ACPI's RSDP (PVH `rsdp_paddr`; 0 if the loader
    /// gave none): where the CPUs are listed.
    pub rsdp: u64,
}

impl BootInfo {
    /// Top of the kernel stack (16-byte aligned).
    pub fn kernel_stack_top(&self) -> VirtAddr {
        self.kernel_stack.end()
    }
}

/// The boot information, once [`init`] has run.
pub fn boot_info() -> &'static BootInfo {
    BOOT_INFO.get().expect("memory::init has run")
}

#[repr(C)]
struct HvmStartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

#[repr(C)]
struct HvmMemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

/// Why the kernel could not set up its memory.
#[derive(Debug)]
pub enum BootError {
    /// `hvm_start_info` has the wrong magic number.
    BadMagic(u32),
    /// `hvm_start_info` is older than version 1 and has no memory map.
    NoMemoryMap {
        /// The version found.
        version: u32,
    },
    /// More map entries than the kernel keeps.
    TooManyEntries(u32),
    /// The frame allocator rejected the map.
    MemoryMap(MemoryMapError),
    /// No usable range can hold the frame metadata.
    NoRoomForMetadata {
        /// Bytes needed.
        bytes: u64,
    },
    /// The kernel stack could not be mapped.
    KernelStack(strata::vmm::AllocateError),
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Reads the boot information at physical address `start_info` and sets up
/// layers −2 and −1.
///
/// # Safety
///
/// Call once, at boot, with the pointer the PVH loader passed, while the boot
/// identity map is live.
pub unsafe fn init(start_info: u32) -> Result<&'static BootInfo, BootError> {
    static MAP: Once<([MemoryRegion; MAX_MAP_ENTRIES], usize)> = Once::new();
    static CMDLINE: Once<([u8; CMDLINE_MAX], usize)> = Once::new();

    // SAFETY: the loader passed the physical address of `hvm_start_info`,
    // which the identity map makes readable.
    let si = unsafe { &*(start_info as usize as *const HvmStartInfo) };
    if si.magic != PVH_MAGIC {
        return Err(BootError::BadMagic(si.magic));
    }
    if si.version < 1 || si.memmap_paddr == 0 {
        return Err(BootError::NoMemoryMap { version: si.version });
    }
    let entries = si.memmap_entries as usize;
    let rsdp = si.rsdp_paddr;
    if entries > MAX_MAP_ENTRIES {
        return Err(BootError::TooManyEntries(si.memmap_entries));
    }
    let (map, kept) = MAP.try_call_once(|| {
        let empty = MemoryRegion { start: PhysAddr::zero(), len: 0, kind: MemoryKind::Reserved };
        let mut map = [empty; MAX_MAP_ENTRIES];
        let mut kept = 0;
        for i in 0..entries {
            // SAFETY: the loader promises `memmap_entries` entries at `memmap_paddr`.
            let e = unsafe { &*((si.memmap_paddr as usize as *const HvmMemmapEntry).add(i)) };
            let clipped = clip_entry(e.addr, e.size, MemoryKind::from_e820(e.kind));
            if let Some(region) = clipped.map_err(BootError::MemoryMap)? {
                map[kept] = region;
                kept += 1;
            }
        }
        Ok((map, kept))
    })?;
    let map: &'static [MemoryRegion] = &map[..*kept];
    let (cmdline_buf, cmd_len) = CMDLINE.call_once(|| {
        let mut buf = [0; CMDLINE_MAX];
        let mut len = 0;
        let src = si.cmdline_paddr as usize as *const u8;
        // SAFETY: a NUL-terminated string at `cmdline_paddr` (when not 0),
        // read no further than our buffer.
        while si.cmdline_paddr != 0 && len < CMDLINE_MAX && unsafe { *src.add(len) } != 0 {
            // SAFETY: as above.
            buf[len] = unsafe { *src.add(len) };
            len += 1;
        }
        (buf, len)
    });
    let cmd_len = *cmd_len;
    let cmdline = core::str::from_utf8(&cmdline_buf[..cmd_len]).unwrap_or("");

    let kernel = PhysRange {
        start: PhysAddr::new(&raw const __kernel_start as u64),
        end: PhysAddr::new(&raw const __kernel_end as u64),
    };
    let mut reserved = [
        PhysRange::new(PhysAddr::zero(), 1 << 20),
        kernel,
        PhysRange::new(PhysAddr::new(u64::from(start_info)), size_of::<HvmStartInfo>() as u64),
        PhysRange::new(PhysAddr::new(si.memmap_paddr), (entries * size_of::<HvmMemmapEntry>()) as u64),
        PhysRange::new(PhysAddr::new(si.cmdline_paddr), cmd_len as u64 + 1),
        PhysRange::new(PhysAddr::zero(), 0),
    ];
    let meta_len = BuddyAllocator::metadata_len(map).map_err(BootError::MemoryMap)?;
    let meta_bytes = (meta_len * size_of::<FrameMeta>()) as u64;
    let meta_start = strata::frame::find_free_range(map, &reserved, meta_bytes, 4096)
        .map_err(BootError::MemoryMap)?
        .ok_or(BootError::NoRoomForMetadata { bytes: meta_bytes })?;
    let frame_metadata = PhysRange::new(meta_start, meta_bytes);
    reserved[5] = frame_metadata;
    // SAFETY: the range is usable RAM below 4 GiB (identity-mapped) that no
    // reserved range overlaps, and from now on it is reserved for this array.
    let meta = unsafe {
        core::slice::from_raw_parts_mut(
            meta_start.as_u64() as usize as *mut core::mem::MaybeUninit<FrameMeta>,
            meta_len,
        )
    };
    // SAFETY: usable frames outside `reserved` are RAM nothing uses: the
    // kernel image, boot structures and metadata are all in `reserved`.
    let mut frames = unsafe { BuddyAllocator::new(map, &reserved, meta) }.map_err(BootError::MemoryMap)?;

    let (l4_frame, _) = Cr3::read();
    // SAFETY: the active L4 table, reachable through the identity map; the
    // VMM becomes its only user for the heap range.
    let l4 = unsafe { &mut *(l4_frame.start_address().as_u64() as usize as *mut PageTable) };
    // SAFETY: physical memory is identity-mapped (offset 0) below 4 GiB, and
    // the frame allocator hands out nothing above it.
    let mapper = unsafe { OffsetPageTable::new(l4, VirtAddr::zero()) };
    let start = Page::containing_address(VirtAddr::new(HEAP_START));
    let heap = Page::range(start, start + HEAP_SIZE / 4096);
    let nxe = Efer::read().contains(EferFlags::NO_EXECUTE_ENABLE);
    // SAFETY: nothing else maps or uses the heap range.
    let mut vmm = unsafe { Vmm::new(mapper, heap, crate::smp::flush_page, nxe) };
    let kernel_stack = vmm
        .allocate(KERNEL_STACK_PAGES, 4096, PageFlags::WRITABLE, &mut frames)
        .map_err(BootError::KernelStack)?;

    // SAFETY: the start info, memory map and command line were copied above.
    unsafe { crate::entry::unmap_null_page() };
    *FRAMES.lock() = Some(frames);
    *VMM.lock() = Some(vmm);
    Ok(BOOT_INFO.call_once(|| BootInfo {
        memory_map: map,
        cmdline,
        kernel,
        reserved,
        frame_metadata,
        heap,
        kernel_stack,
        rsdp,
    }))
}

/// One PVH memory-map entry as the kernel keeps it: clipped to the
/// identity-mapped first 4 GiB ([`IDENTITY_LIMIT`]), `None` when nothing of
/// it lies below. An entry whose end lies past the 52-bit physical address
/// space is corrupt and is an error ([`MemoryMapError::EntryOverflows`], as
/// the frame allocator would report it), not clipped into plausible RAM; an
/// entry that starts past 52 bits lies wholly above the limit and is dropped.
pub fn clip_entry(addr: u64, size: u64, kind: MemoryKind) -> Result<Option<MemoryRegion>, MemoryMapError> {
    if let Ok(start) = PhysAddr::try_new(addr) {
        let region = MemoryRegion { start, len: size, kind };
        if region.end().is_none() {
            return Err(MemoryMapError::EntryOverflows { region });
        }
    }
    let start = addr.min(IDENTITY_LIMIT);
    let end = addr.saturating_add(size).min(IDENTITY_LIMIT);
    Ok((end > start).then(|| MemoryRegion { start: PhysAddr::new(start), len: end - start, kind }))
}

/// Runs `f` with the VMM and the frame allocator locked (in that order);
/// pages it unmapped are shot down from every CPU's TLB before the locks
/// are released ([`smp::shootdown`](crate::smp::shootdown)).
pub fn with_memory<R>(
    f: impl FnOnce(&mut Vmm<'static, MAX_REGIONS>, &mut BuddyAllocator<'static>) -> R,
) -> R {
    let mut vmm = VMM.lock();
    let mut frames = FRAMES.lock();
    let r = f(vmm.as_mut().expect("memory initialised"), frames.as_mut().expect("memory initialised"));
    // Before the frames and addresses of unmapped pages can be reused: no
    // other CPU may still translate through them.
    crate::smp::shootdown();
    r
}

/// Runs `f` with the frame allocator locked.
pub fn with_frames<R>(f: impl FnOnce(&mut BuddyAllocator<'static>) -> R) -> R {
    f(FRAMES.lock().as_mut().expect("memory initialised"))
}

/// What the VMM knows of `addr`, for fault reports. `None` when the VMM is
/// not set up or its lock stays held (the fault interrupted its holder on
/// this CPU; another CPU's holder is waited for, a bounded time).
pub fn lookup(addr: VirtAddr) -> Option<AddressInfo> {
    crate::sync::lock_soon(&VMM)?.as_ref().map(|vmm| vmm.lookup(addr))
}

crate::abandonable_lock!("VMM", VMM, acquire);
crate::abandonable_lock!("frame allocator", FRAMES, acquire);
