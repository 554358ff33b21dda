//! `OsSource` (feature `os`): a heap over a window of the host's address
//! space, whose freed large blocks give their pages back to the OS.
#![cfg(all(feature = "os", target_os = "linux"))]

use std::alloc::{GlobalAlloc, Layout};

use strata::LockedHeap;
use strata::source::os::{DEFAULT_DISCARD_FROM, OsSource, ReserveError};

/// How many of the pages of `[p, p + len)` are resident, by `mincore`.
fn resident_pages(p: *mut u8, len: usize) -> usize {
    let page = 4096;
    let start = (p as usize).next_multiple_of(page);
    let end = (p as usize + len) & !(page - 1);
    let mut vec = vec![0u8; (end - start) / page];
    // SAFETY: a range of our own mapping, and a vector of one byte per page.
    let r = unsafe { libc::mincore(start as *mut libc::c_void, end - start, vec.as_mut_ptr()) };
    assert_eq!(r, 0, "mincore: {}", std::io::Error::last_os_error());
    vec.iter().filter(|&&b| b & 1 != 0).count()
}

fn os_heap(len: usize) -> LockedHeap<OsSource> {
    let heap = LockedHeap::new(OsSource::unreserved(), (0, 0));
    heap.init_with(OsSource::reserve(len).expect("address space for the test"));
    heap
}

#[test]
fn a_freed_large_block_gives_its_pages_back_and_a_small_one_keeps_them() {
    let heap = os_heap(1 << 30);
    let big = Layout::from_size_align(16 << 20, 16).unwrap();
    let small = Layout::from_size_align(DEFAULT_DISCARD_FROM / 2, 16).unwrap();
    // SAFETY: valid layouts; each block written, then freed once.
    unsafe {
        let p = heap.alloc(big);
        let q = heap.alloc(small);
        assert!(!p.is_null() && !q.is_null());
        p.write_bytes(0xA5, big.size());
        q.write_bytes(0x5A, small.size());
        assert!(resident_pages(p, big.size()) >= big.size() / 4096 - 1, "written pages are resident");
        heap.dealloc(p, big);
        heap.dealloc(q, small);
        // All but the pages that hold the free chunk's header and footer.
        assert!(resident_pages(p, big.size()) <= 2, "{} pages still resident", resident_pages(p, big.size()));
        assert!(
            resident_pages(q, small.size()) >= small.size() / 4096 - 1,
            "a block under the threshold stays"
        );
        // The memory is the heap's again, and reads as zeros or as before.
        let r = heap.alloc(big);
        assert!(!r.is_null());
        r.write_bytes(1, big.size());
        heap.dealloc(r, big);
    }
    heap.with(|h| h.check_invariants());
}

#[test]
fn an_os_heap_serves_c_style_calls_and_grows_past_what_it_touched() {
    // (A quarter of that on 32-bit targets, whose address space is 4 GiB.)
    let (window, live) =
        if usize::BITS >= 64 { ((4u64 << 30) as usize, 1536 << 20) } else { (1 << 30, 384 << 20) };
    let heap = os_heap(window);
    let mut blocks = Vec::new();
    // 1.5 GiB live in blocks of 1 KiB to 64 MiB: far more than the heap
    // has touched, all from the window.
    let mut total = 0usize;
    let mut size = 1024usize;
    while total < live {
        // SAFETY: a valid layout.
        let p = unsafe { heap.alloc(Layout::from_size_align(size, 16).unwrap()) };
        assert!(!p.is_null(), "{size} bytes with {total} live");
        // SAFETY: the block's first and last bytes.
        unsafe {
            p.write(1);
            p.add(size - 1).write(2);
            assert!(heap.usable_size(p).unwrap() >= size);
        }
        blocks.push(p);
        total += size;
        size = (size * 3).min(64 << 20);
    }
    for p in blocks {
        // SAFETY: live blocks of this heap.
        unsafe { heap.dealloc_unsized(p) };
    }
    assert_eq!(heap.stats().front.refused_frees, 0);
    heap.with(|h| h.check_invariants());
}

#[test]
fn a_window_the_os_refuses_is_a_typed_error() {
    // (All the address space but a page: more than any OS grants.)
    let e: ReserveError = OsSource::reserve(usize::MAX & !4095).unwrap_err();
    assert_ne!(e.errno, 0);
    assert!(e.to_string().contains("refused"), "{e}");
    let default = OsSource::reserve_default().expect("some window");
    assert!(default.mapping().1 >= strata::source::os::MIN_WINDOW);
}

/// On 32-bit targets a window of 2 GiB is used whole but its last granule
/// (a span covers at most `isize::MAX` bytes): layer 0 once fell back to
/// spans aligned to their slots there, and about half the window went to
/// the gaps between them (1 029 blocks of 1 MiB; found by a hostile pass).
/// Run in a child process of this test binary, whose address space the
/// other tests do not share.
#[test]
#[cfg(target_pointer_width = "32")]
fn a_window_of_2_gib_on_a_32_bit_target_serves_nearly_all_of_it() {
    if std::env::var_os("STRATA_2GIB_CHILD").is_none() {
        child_passed(child_test(
            "a_window_of_2_gib_on_a_32_bit_target_serves_nearly_all_of_it",
            "STRATA_2GIB_CHILD",
        ));
        return;
    }
    let heap = os_heap(1 << 31);
    let l = Layout::from_size_align(1 << 20, 16).unwrap();
    // SAFETY: a valid layout; every block is freed once below.
    let blocks: Vec<*mut u8> =
        std::iter::from_fn(|| Some(unsafe { heap.alloc(l) }).filter(|p| !p.is_null())).collect();
    assert!(blocks.len() >= 2040, "{} blocks of 1 MiB in a 2 GiB window", blocks.len());
    for p in blocks {
        // SAFETY: live blocks of this heap with their layout.
        unsafe { heap.dealloc(p, l) };
    }
    heap.with(|h| h.check_invariants());
}

/// Under a limit on address space the window is half of what the limit
/// leaves — not a quarter of the limit (a `ulimit -v 1000000` perl that
/// builds a hash of 2 million keys ran out at 250 MB, where glibc's took
/// 400 MB), nor the power of two below it, nor a 64 MiB floor that a small
/// limit refuses (every allocation of a `ulimit -v 40000` program
/// failed): run in a child process of this test binary, whose limit is set
/// before it starts.
#[test]
fn a_window_under_an_address_space_limit_is_half_of_what_it_leaves() {
    const LIMIT: usize = 600 << 20;
    const MIB: usize = 1 << 20;
    if std::env::var_os("STRATA_RLIMIT_CHILD").is_some() {
        let before = mapped_bytes();
        let window = OsSource::reserve_default().expect("a window under the limit").mapping().1;
        let after = mapped_bytes();
        assert_eq!(window % MIB, 0, "a window of whole MiB");
        let half = (LIMIT - before) / 2;
        assert!(window <= half && window + 8 * MIB > half, "window {window} for half of {LIMIT} - {before}");
        assert!(window > LIMIT / 4, "more than a quarter of the limit: {window}");
        assert!(LIMIT - after + 8 * MIB > window, "as much left to the program as the window took");
        return;
    }
    let mut child =
        child_test("a_window_under_an_address_space_limit_is_half_of_what_it_leaves", "STRATA_RLIMIT_CHILD");
    // SAFETY: `setrlimit` is async-signal-safe, as code between `fork` and
    // `exec` must be.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut child, || {
            let limit = libc::rlimit { rlim_cur: LIMIT as libc::rlim_t, rlim_max: LIMIT as libc::rlim_t };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    child_passed(child);
}

/// The address space this process has mapped, in bytes
/// (`/proc/self/statm`).
fn mapped_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: a plain query.
    pages * usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap()
}

/// This test binary again, to run only test `name`, with `env` set: the
/// test's body then runs in the child, in an address space of its own.
fn child_test(name: &str, env: &str) -> std::process::Command {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child.args(["--exact", name, "--test-threads=1"]).env(env, "1");
    child
}

/// Runs `child` (a [`child_test`]) and checks that it ran its test and
/// the test passed.
fn child_passed(mut child: std::process::Command) {
    let out = child.output().expect("the test binary runs again");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child: {text}");
    assert!(text.contains("1 passed"), "the child ran the test: {text}");
}
