//! [`OsSource`]: pages from the host's virtual memory (feature `os`, Unix),
//! for a heap that grows with no size chosen up front — the role the VMM
//! plays in the kernel, played by `mmap` on a host.

extern crate std;

use core::fmt;
use core::ptr::NonNull;

use super::{PAGE_SIZE, PageSource, PagesError, RegionSource};

/// The window [`OsSource::reserve_default`] asks for first: 64 GiB of
/// address space, of which only the pages the heap touches cost memory;
/// 1 GiB on 32-bit targets, a quarter of their address space at most.
pub const DEFAULT_WINDOW: usize = if usize::BITS >= 64 { (64u64 << 30) as usize } else { 1 << 30 };

/// The smallest window [`OsSource::reserve_default`] settles for, halving
/// from [`DEFAULT_WINDOW`] when the OS refuses (a limit on address space,
/// `ulimit -v`, or strict overcommit accounting).
pub const MIN_WINDOW: usize = 1 << 20;

/// [`OsSource::discard_from`] by default: freed blocks of 1 MiB or more
/// give their pages back to the OS (glibc's `mmap` threshold starts at
/// 128 KiB and rises, up to 32 MiB, to the size of the blocks a program
/// frees; a fixed 1 MiB keeps churned buffers resident, and big ones not).
pub const DEFAULT_DISCARD_FROM: usize = 1 << 20;

/// Why the OS would not give a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReserveError {
    /// Bytes asked for (the last size tried).
    pub len: usize,
    /// The OS's error number (`errno`).
    pub errno: i32,
}

impl fmt::Display for ReserveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the OS refused a window of {} bytes (errno {})", self.len, self.errno)
    }
}

impl core::error::Error for ReserveError {}

/// A page source over one window of the host's address space, reserved
/// with `mmap(MAP_NORESERVE)`: the OS gives a page memory when it is first
/// written. The window is [committed](PageSource::COMMITTED) — layer 0 takes
/// it whole and manages it, layer +2's arenas included — and freed blocks of
/// at least [`discard_from`](PageSource::discard_from) bytes give their
/// pages back with `madvise(MADV_DONTNEED)`, so the heap's resident memory
/// follows what is live. The window is unmapped when the source is dropped.
///
/// ```
/// use std::alloc::{GlobalAlloc, Layout};
/// use strata::source::OsSource;
///
/// let heap: strata::LockedHeap<OsSource> = strata::LockedHeap::new(OsSource::unreserved(), (0, 0));
/// heap.init_with(OsSource::reserve(1 << 30).expect("1 GiB of address space"));
/// let layout = Layout::from_size_align(100, 8).unwrap();
/// // SAFETY: a valid layout; the block is freed once.
/// unsafe {
///     let p = heap.alloc(layout);
///     assert!(!p.is_null());
///     heap.dealloc(p, layout);
/// }
/// ```
pub struct OsSource {
    /// The window's pages, handed out as a region's are.
    region: RegionSource,
    /// The mapping: `(start, len)`, `len` 0 when unreserved.
    mapping: (usize, usize),
    discard_from: usize,
}

// SAFETY: the source owns its mapping exclusively; moving it to another
// thread moves that ownership with it.
unsafe impl Send for OsSource {}

impl fmt::Debug for OsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OsSource")
            .field("window", &format_args!("{:#x}+{:#x}", self.mapping.0, self.mapping.1))
            .field("discard_from", &self.discard_from)
            .finish()
    }
}

impl OsSource {
    /// A source with no window yet: every request fails. For a heap in a
    /// `static`, given its window later with
    /// [`LockedHeap::init_with`](crate::LockedHeap::init_with).
    pub const fn unreserved() -> Self {
        Self { region: RegionSource::empty(), mapping: (0, 0), discard_from: DEFAULT_DISCARD_FROM }
    }

    /// Reserves a window of `len` bytes (rounded up to pages). A heap over
    /// it uses at most `isize::MAX` bytes of it (2 GiB on 32-bit targets),
    /// as over a [`RegionSource`].
    pub fn reserve(len: usize) -> Result<Self, ReserveError> {
        let len = len.checked_next_multiple_of(PAGE_SIZE).ok_or(ReserveError { len, errno: libc::ENOMEM })?;
        // SAFETY: a fresh anonymous private mapping at an address the OS
        // chooses touches no existing memory.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(ReserveError { len, errno: errno() });
        }
        // SAFETY: the mapping is ours alone, readable and writable, until
        // `drop` unmaps it, which the region does not outlive.
        let region = unsafe { RegionSource::new(p.cast(), len) };
        Ok(Self { region, mapping: (p as usize, len), discard_from: DEFAULT_DISCARD_FROM })
    }

    /// Reserves [`DEFAULT_WINDOW`], or, where the OS refuses, the largest
    /// half of it down to [`MIN_WINDOW`] that it grants.
    ///
    /// Under a limit on address space (`ulimit -v`, `RLIMIT_AS`) the window
    /// counts against the limit whole, and the program's thread stacks,
    /// the libraries it loads later and its own mappings need room too
    /// (glibc shares the limit between them as they come; a window is
    /// taken once). So the window asked first is half of what the limit
    /// leaves when this is called (the limit less the address space
    /// already mapped, read from `/proc/self/statm`; a quarter of the
    /// limit where that cannot be read), in whole MiB, at least
    /// [`MIN_WINDOW`].
    pub fn reserve_default() -> Result<Self, ReserveError> {
        let mut len = DEFAULT_WINDOW;
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: `getrlimit` writes the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } == 0
            && limit.rlim_cur != libc::RLIM_INFINITY
        {
            let limit = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX);
            let share = match mapped_bytes() {
                Some(mapped) => limit.saturating_sub(mapped) / 2,
                None => limit / 4,
            };
            len = (share & !(MIN_WINDOW - 1)).clamp(MIN_WINDOW, DEFAULT_WINDOW);
        }
        loop {
            match Self::reserve(len) {
                Err(_) if len / 2 >= MIN_WINDOW => len /= 2,
                r => return r,
            }
        }
    }

    /// Sets the size from which freed blocks give their pages back
    /// ([`DEFAULT_DISCARD_FROM`] by default; `usize::MAX` never).
    pub fn with_discard_from(mut self, bytes: usize) -> Self {
        self.discard_from = bytes;
        self
    }

    /// The window `(start, len)`: `len` 0 for an unreserved source. (What
    /// of it is resident is the OS's to tell: `/proc/self/statm`.)
    pub fn mapping(&self) -> (usize, usize) {
        self.mapping
    }
}

/// The address space this process has mapped, in bytes (the first field
/// of `/proc/self/statm`, in pages), read without allocating: this runs
/// before a C program's `malloc` is ready.
fn mapped_bytes() -> Option<usize> {
    let mut buf = [0u8; 64];
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe { libc::open(c"/proc/self/statm".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: reads at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    // SAFETY: our descriptor, closed once.
    unsafe { libc::close(fd) };
    let text = buf.get(..usize::try_from(n).ok()?)?;
    let digits = text.iter().take_while(|b| b.is_ascii_digit()).count();
    let pages: usize = core::str::from_utf8(&text[..digits]).ok()?.parse().ok()?;
    // SAFETY: a plain query.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
    pages.checked_mul(page)
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

impl Drop for OsSource {
    fn drop(&mut self) {
        if self.mapping.1 != 0 {
            // SAFETY: the mapping is ours, and whoever took pages from this
            // source has given them back or is gone with it (a heap drops
            // its source last).
            unsafe { libc::munmap(self.mapping.0 as *mut libc::c_void, self.mapping.1) };
        }
    }
}

// SAFETY: the region's promise, over a mapping that lives as long as the
// source; `discard` keeps pages mapped, readable and writable.
unsafe impl PageSource for OsSource {
    fn window(&self) -> (usize, usize) {
        self.region.window()
    }

    fn granularity(&self) -> usize {
        self.region.granularity()
    }

    fn allocate_pages(&mut self, size: usize, align: usize) -> Result<NonNull<u8>, PagesError> {
        self.region.allocate_pages(size, align)
    }

    unsafe fn deallocate_pages(&mut self, ptr: NonNull<u8>, size: usize) {
        // SAFETY: forwarded contract.
        unsafe { self.region.deallocate_pages(ptr, size) };
        // The region keeps its list of free runs in their first bytes: the
        // pages after the first go back to the OS.
        let start = (ptr.as_ptr() as usize + 1).next_multiple_of(PAGE_SIZE);
        let end = (ptr.as_ptr() as usize + size) & !(PAGE_SIZE - 1);
        if start < end {
            // SAFETY: whole pages of our mapping that nobody uses now.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        }
    }

    fn discard_from(&self) -> usize {
        self.discard_from
    }

    unsafe fn discard(&mut self, ptr: NonNull<u8>, len: usize) {
        // SAFETY: whole pages of our mapping whose contents nobody needs
        // (the caller's promise); a private anonymous mapping reads them
        // as zeros afterwards.
        unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_DONTNEED) };
    }

    const COMMITTED: bool = true;
}
