//! A block of the committed window checked from its header words alone:
//! what the thread caches use, without the lock, to file a freed medium
//! block, and layer 0's quick calls use under it (`segment/quick.rs`).

use core::alloc::Layout;
use core::ptr::NonNull;

use super::tlsf::{self, GRANULE, Heads, MIN_CHUNK, Tlsf, WORD};

/// Requests of up to this many bytes may be served a chunk up to a quarter
/// larger than they need, and freed with their own layout: the spacing of
/// the thread caches' medium bins.
pub const MEDIUM_MAX: usize = 4096;

/// How much larger than `need` (a [`chunk_size`]) a block's chunk may be
/// and still fit the layout it is freed with: less than the smallest chunk
/// (a rest too small to split off), or, up to 16 KiB, a quarter of the
/// need: a thread cache serves a request of up to [`MEDIUM_MAX`] bytes
/// from a bin of chunks up to two eighth-of-a-power-of-two steps larger,
/// and TLSF a request of up to [`DEFER_MAX`](tlsf::DEFER_MAX) from a
/// deferred list of chunks up to two of its list steps larger.
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(crate) const fn slack(need: usize) -> usize {
    if need <= LOOSE_MAX && need / 4 > MIN_CHUNK { need / 4 } else { MIN_CHUNK }
}

/// Largest chunk need given a quarter of [`slack`]: what the thread caches'
/// medium bins and TLSF's deferred lists serve.
const LOOSE_MAX: usize = {
    let medium = MEDIUM_MAX + GRANULE;
    if medium > tlsf::DEFER_MAX { medium } else { tlsf::DEFER_MAX }
};

/// What [`window_block`] found at a pointer.
pub(crate) enum WindowBlock {
    /// A block in use whose chunk (this many bytes) fits the layout.
    Fits(usize),
    /// Not in the window at all.
    Outside,
    /// A chunk in use that does not fit the layout: a whole span's
    /// block, a size mismatch, or (if not `in_span`) no block at all.
    Loose { chunk: usize, first: bool, in_span: bool },
    /// Not a block in use.
    Refused,
}

/// Whether `ptr` is a TLSF block in use, in the committed window's span
/// `window` (`(start, len)`), that fits `layout` with at most [`slack`]
/// to spare. Reads only chunk header words, which are read and written
/// atomically, so that threads can run this check without the heap's lock
/// (the thread caches do) as long as the block, if it is one, is theirs.
///
/// # Safety
///
/// `window` must be the span of a committed window, readable for as long
/// as the call runs.
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(crate) unsafe fn window_block(window: (usize, usize), ptr: NonNull<u8>, layout: Layout) -> WindowBlock {
    let (start, len) = window;
    let addr = ptr.as_ptr() as usize;
    let off = addr.wrapping_sub(start);
    if off >= len {
        return WindowBlock::Outside;
    }
    // What the layout needs, known before any memory is read.
    let need = tlsf::chunk_size(layout.size()).unwrap_or(usize::MAX);
    // A payload is GRANULE-aligned, after its chunk's two words, and the
    // chunk (at least `need` bytes) ends where the span's sentinel starts
    // at the latest: `chunk <= len - off`, the next chunk's header (at
    // `addr + chunk - WORD`) then lying in the span.
    let room = len - off;
    if off < 2 * WORD || !addr.is_multiple_of(GRANULE) || need > room {
        return WindowBlock::Refused;
    }
    prefetch_next_head(addr, need);
    // SAFETY: `ptr` is aligned and its header word lies in the span.
    let Ok((chunk, first)) = (unsafe { Tlsf::in_use_chunk(ptr) }) else { return WindowBlock::Refused };
    if chunk.wrapping_sub(need) >= slack(need) || chunk > room {
        return WindowBlock::Loose { chunk, first, in_span: chunk <= room };
    }
    // SAFETY: the next header lies in the span (`chunk <= room`).
    if !unsafe { Tlsf::next_head(ptr, chunk) }.0 {
        return WindowBlock::Refused;
    }
    WindowBlock::Fits(chunk)
}

/// Starts loading the header word that follows the block at `addr` if its
/// chunk is `need` bytes, as it most often is: the check reads the block's
/// own header first and only then knows where the next one is, and the two
/// loads, each a likely miss on a block not touched for a while, would
/// otherwise wait one on the other. A prefetch reads nothing the program
/// sees and faults on no address, so a wrong guess (a foreign pointer, a
/// chunk larger than the need) costs only the fetch.
#[cfg_attr(not(strata_unoptimized), inline(always))]
fn prefetch_next_head(addr: usize, need: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 CPU has; a
    // prefetch is a hint that accesses no memory in the program's sense.
    unsafe {
        use core::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(addr.wrapping_add(need).wrapping_sub(WORD) as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (addr, need);
}

/// The chunk of the TLSF block in use at `ptr`, among the payloads of a
/// committed window's span (its [`payloads`]), found without a layout:
/// [`window_block`]'s checks but the fit. `None` if `ptr` is no block in
/// use there.
///
/// # Safety
///
/// As [`window_block`].
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(crate) unsafe fn window_chunk(payloads: (usize, usize), ptr: NonNull<u8>) -> Option<usize> {
    // SAFETY: forwarded contract.
    unsafe { chunk_where(payloads, ptr, |chunk| chunk >= MIN_CHUNK) }.map(Heads::chunk)
}

/// The payloads a window's span can hold, `(start, len)`: the addresses
/// `[start + 2·WORD, start + len)` (a payload follows its chunk's two
/// words), or `(0, 0)` for no window. The quick calls keep their window
/// in this form: one comparison then places a pointer in it.
#[inline]
pub(crate) const fn payloads(window: (usize, usize)) -> (usize, usize) {
    match window {
        (start, len) if len > 2 * WORD => (start + 2 * WORD, len - 2 * WORD),
        _ => (0, 0),
    }
}

/// [`window_chunk`] of a block whose chunk also fits `need` (a
/// [`chunk_size`](tlsf::chunk_size), at least [`MIN_CHUNK`]) within its
/// [`slack`]: what TLSF and the thread caches hand out for it. `payloads`
/// is the window's [`payloads`]. The block's [`Heads`], as read.
///
/// # Safety
///
/// As [`window_block`].
#[cfg_attr(not(strata_unoptimized), inline(always))]
pub(crate) unsafe fn payload_fit(payloads: (usize, usize), ptr: NonNull<u8>, need: usize) -> Option<Heads> {
    debug_assert!(need >= MIN_CHUNK);
    prefetch_next_head(ptr.as_ptr() as usize, need);
    // (A fit is at least `need`, so at least MIN_CHUNK.)
    // SAFETY: forwarded contract.
    unsafe { chunk_where(payloads, ptr, |chunk| chunk.wrapping_sub(need) < slack(need)) }
}

/// The [`Heads`] of the TLSF block in use at `ptr`, among `payloads` (a
/// window's [`payloads`]), if its chunk size passes `fits` (which must
/// refuse sizes below [`MIN_CHUNK`]); `None` for anything else.
///
/// # Safety
///
/// As [`window_block`].
#[cfg_attr(not(strata_unoptimized), inline(always))]
unsafe fn chunk_where(
    payloads: (usize, usize),
    ptr: NonNull<u8>,
    fits: impl Fn(usize) -> bool,
) -> Option<Heads> {
    // Without TLSF no window holds a block: the checks below, and the
    // quick paths behind them, are left out of the build.
    if !tlsf::ON {
        return None;
    }
    let (start, len) = payloads;
    let addr = ptr.as_ptr() as usize;
    let off = addr.wrapping_sub(start);
    if off >= len || !addr.is_multiple_of(GRANULE) {
        return None;
    }
    // SAFETY: `ptr` is aligned and its header word lies in the span.
    let head = unsafe { Tlsf::in_use_head(ptr) }?;
    let chunk = Heads::chunk_of(head);
    // The next chunk's header, at `addr + chunk - WORD`, lies in the span.
    if !fits(chunk) || chunk > len - off {
        return None;
    }
    // SAFETY: as just checked.
    unsafe { Tlsf::heads(ptr, head) }
}
