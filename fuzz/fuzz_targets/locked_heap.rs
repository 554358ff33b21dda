//! Fuzzes a `'static` [`strata::LockedHeap`] with thread caches through
//! `GlobalAlloc`: arbitrary sequences of alloc, alloc_zeroed, dealloc,
//! realloc, frees and allocations on a second thread (cross-thread frees
//! into and out of its cache), immediate double frees, frees and reallocs
//! of foreign pointers and trims, against the shadow model. Every input
//! ends with every block freed, both threads' caches flushed, nothing in
//! use and the invariants walked.
#![no_main]

#[path = "model.rs"]
mod model;

use std::alloc::{GlobalAlloc, Layout};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Mutex, Once, OnceLock};
use std::thread;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use model::{Model, Size, align, zeroed};
use strata::LockedHeap;

#[derive(Arbitrary, Debug)]
enum Op {
    Alloc {
        size: Size,
        align: u8,
        zeroed: bool,
    },
    Free {
        which: u16,
    },
    Realloc {
        which: u16,
        size: Size,
    },
    /// The block is freed by the other thread (into its cache).
    FreeElsewhere {
        which: u16,
    },
    /// The other thread allocates a block (perhaps from its cache) that this
    /// thread then owns.
    AllocElsewhere {
        size: Size,
        align: u8,
    },
    DoubleFree {
        which: u16,
    },
    ForeignFree {
        kind: u8,
    },
    Trim,
}

static HEAP: LockedHeap = LockedHeap::empty();
const HEAP_SIZE: usize = 32 << 20;

/// What the other thread is asked to do.
enum Request {
    Free(usize, Layout),
    Alloc(Layout),
    Trim,
}

struct Worker {
    requests: Sender<Request>,
    replies: Receiver<usize>,
}

fn worker() -> &'static Mutex<Worker> {
    static WORKER: OnceLock<Mutex<Worker>> = OnceLock::new();
    WORKER.get_or_init(|| {
        let (requests, inbox) = channel::<Request>();
        let (outbox, replies) = channel::<usize>();
        thread::spawn(move || {
            for r in inbox {
                let reply = match r {
                    // SAFETY: blocks of HEAP with their layouts, handed over
                    // by the fuzzing thread, which no longer uses them.
                    Request::Free(p, l) => unsafe {
                        HEAP.dealloc(p as *mut u8, l);
                        0
                    },
                    // SAFETY: non-zero layouts.
                    Request::Alloc(l) => unsafe { HEAP.alloc(l) as usize },
                    Request::Trim => {
                        HEAP.trim();
                        0
                    }
                };
                outbox.send(reply).unwrap();
            }
        });
        Mutex::new(Worker { requests, replies })
    })
}

fn ask(r: Request) -> usize {
    let w = worker().lock().unwrap();
    w.requests.send(r).unwrap();
    w.replies.recv().unwrap()
}

fn in_use() -> usize {
    HEAP.with(|h| {
        h.class_stats().iter().map(|c| c.blocks_in_use).sum::<usize>() + h.stats().front.small_in_layer_0
    })
}

fn refused() -> usize {
    HEAP.stats().front.refused_frees
}

fuzz_target!(|ops: Vec<Op>| {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        HEAP.init_from_slice(Box::leak(Box::<[u8]>::new_uninit_slice(HEAP_SIZE)));
        HEAP.with(|h| h.set_cold_limit(0));
        HEAP.enable_thread_caches();
    });
    let max = 2 << 20;
    let mut m = Model::default();
    for op in ops.iter().take(3000) {
        match *op {
            Op::Alloc { size, align: a, zeroed: z } => {
                let l = Layout::from_size_align(size.bytes(max), align(a)).unwrap();
                // SAFETY: a non-zero layout.
                let p = unsafe { if z { HEAP.alloc_zeroed(l) } else { HEAP.alloc(l) } };
                if !p.is_null() {
                    if z {
                        zeroed(p, l.size());
                    }
                    m.insert(p, l);
                }
            }
            Op::Free { which } => {
                if let Some(i) = m.index(which) {
                    let b = m.take(i);
                    // SAFETY: a live block of HEAP with its layout.
                    unsafe { HEAP.dealloc(b.ptr, b.layout) };
                }
            }
            Op::Realloc { which, size } => {
                if let Some(i) = m.index(which) {
                    let (ptr, layout) = (m.live[i].ptr, m.live[i].layout);
                    let size = size.bytes(max);
                    // SAFETY: a live block of HEAP with its layout; a
                    // non-zero size.
                    let p = unsafe { HEAP.realloc(ptr, layout, size) };
                    if p.is_null() {
                        model::verify(&m.live[i], layout.size());
                    } else {
                        m.moved(i, p, size);
                    }
                }
            }
            Op::FreeElsewhere { which } => {
                if let Some(i) = m.index(which) {
                    let b = m.take(i);
                    ask(Request::Free(b.ptr as usize, b.layout));
                }
            }
            Op::AllocElsewhere { size, align: a } => {
                let l = Layout::from_size_align(size.bytes(max), align(a)).unwrap();
                let p = ask(Request::Alloc(l)) as *mut u8;
                if !p.is_null() {
                    m.insert(p, l);
                }
            }
            Op::DoubleFree { which } => {
                if let Some(i) = m.index(which) {
                    let b = m.take(i);
                    // SAFETY: a live block, then the misuse under test: a
                    // second free at once, which must be refused and counted.
                    unsafe {
                        HEAP.dealloc(b.ptr, b.layout);
                        let before = refused();
                        HEAP.dealloc(b.ptr, b.layout);
                        assert_eq!(refused(), before + 1, "a double free of {:?} not refused", b.layout);
                    }
                }
            }
            Op::ForeignFree { kind } => {
                let mut local = [0u64; 8];
                let mut outside = Box::new([0u64; 8]);
                let p: *mut u8 =
                    if kind % 2 == 0 { local.as_mut_ptr().cast() } else { outside.as_mut_ptr().cast() };
                let l = Layout::from_size_align(64, 8).unwrap();
                let before = refused();
                // SAFETY: pointers HEAP does not own: it must refuse them
                // without touching them.
                unsafe {
                    HEAP.dealloc(p, l);
                    assert!(HEAP.realloc(p, l, 128).is_null(), "a foreign pointer reallocated");
                }
                assert_eq!(refused(), before + 2, "a foreign pointer not refused");
                assert_eq!(local, [0; 8]);
            }
            Op::Trim => {
                HEAP.trim();
            }
        }
    }
    for i in (0..m.live.len()).rev() {
        let b = m.take(i);
        // SAFETY: live blocks of HEAP.
        unsafe { HEAP.dealloc(b.ptr, b.layout) };
    }
    ask(Request::Trim);
    HEAP.trim();
    assert_eq!(in_use(), 0, "blocks in use after everything was freed and both caches flushed");
    let s = HEAP.stats();
    assert_eq!(
        s.segments.allocated_bytes,
        s.arenas.current * s.geometry.arena_size(),
        "layer 0 lends more than the arenas after everything was freed: {s:?}"
    );
    HEAP.with(|h| h.check_invariants());
});
