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
use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::mpsc::{Receiver, Sender, channel};
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

const HEAP_SIZE: usize = 32 << 20;

/// The heap of the current input: a fresh `LockedHeap` per input, written
/// into this slot and initialised over the same region, so each input runs
/// on a heap of its own (a crash replays alone) while staying `'static`, as
/// thread caches need. Only one input runs at a time, and every thread that
/// used the previous heap has exited (its cache flushed) before the slot is
/// written again.
struct Slot(UnsafeCell<MaybeUninit<LockedHeap>>);
// SAFETY: written only between inputs, when no thread uses it.
unsafe impl Sync for Slot {}
static SLOT: Slot = Slot(UnsafeCell::new(MaybeUninit::uninit()));

/// The region every input's heap is laid over (zero-initialised `.bss`).
struct Region(UnsafeCell<[MaybeUninit<u8>; HEAP_SIZE]>);
// SAFETY: handed to one heap at a time, as the slot.
unsafe impl Sync for Region {}
static REGION: Region = Region(UnsafeCell::new([MaybeUninit::uninit(); HEAP_SIZE]));

/// Whether the slot holds a heap.
static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A fresh heap over the region.
fn fresh_heap() -> &'static LockedHeap {
    // SAFETY: between inputs nobody uses the slot or the region: the
    // previous input's threads have been joined. The old heap is dropped,
    // which makes every thread cache forget its blocks (this thread's too).
    unsafe {
        if STARTED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            (*SLOT.0.get()).assume_init_drop();
        }
        let heap: &'static LockedHeap = (*SLOT.0.get()).write(LockedHeap::empty());
        heap.init_from_slice(&mut *REGION.0.get());
        heap.with(|h| h.set_cold_limit(0));
        heap.set_thread_caches(true);
        heap
    }
}

/// What the other thread is asked to do.
enum Request {
    Free(usize, Layout),
    Alloc(Layout),
    Trim,
}

/// The second thread: frees blocks into its own cache and allocates blocks
/// the first thread then owns.
struct Worker {
    requests: Sender<Request>,
    replies: Receiver<usize>,
    handle: thread::JoinHandle<()>,
}

impl Worker {
    fn spawn(heap: &'static LockedHeap) -> Self {
        let (requests, inbox) = channel::<Request>();
        let (outbox, replies) = channel::<usize>();
        let handle = thread::spawn(move || {
            for r in inbox {
                let reply = match r {
                    // SAFETY: blocks of `heap` with their layouts, handed
                    // over by the first thread, which no longer uses them.
                    Request::Free(p, l) => unsafe {
                        heap.dealloc(p as *mut u8, l);
                        0
                    },
                    // SAFETY: non-zero layouts.
                    Request::Alloc(l) => unsafe { heap.alloc(l) as usize },
                    Request::Trim => {
                        heap.trim();
                        0
                    }
                };
                outbox.send(reply).unwrap();
            }
        });
        Self { requests, replies, handle }
    }

    fn ask(&self, r: Request) -> usize {
        self.requests.send(r).unwrap();
        self.replies.recv().unwrap()
    }

    fn join(self) {
        drop(self.requests);
        self.handle.join().unwrap();
    }
}

fn refused(heap: &LockedHeap) -> usize {
    heap.stats().front.refused_frees
}

fn in_use(heap: &LockedHeap) -> usize {
    heap.with(|h| {
        h.class_stats().iter().map(|c| c.blocks_in_use).sum::<usize>() + h.stats().front.small_in_layer_0
    })
}

fuzz_target!(|ops: Vec<Op>| {
    let heap = fresh_heap();
    let worker = Worker::spawn(heap);
    // The first thread is fresh too: its cache starts empty, for this heap.
    let worker = thread::scope(|s| {
        s.spawn(move || {
            run(heap, &worker, &ops);
            worker
        })
        .join()
        .unwrap()
    });
    // Both threads gone: their caches went back as they exited.
    worker.join();
    assert_eq!(in_use(heap), 0, "blocks in use after everything was freed and both threads exited");
    heap.trim();
    let s = heap.stats();
    assert_eq!(
        s.segments.allocated_bytes,
        s.arenas.current * s.geometry.arena_size(),
        "layer 0 lends more than the arenas after everything was freed: {s:?}"
    );
    heap.with(|h| h.check_invariants());
});

fn run(heap: &'static LockedHeap, worker: &Worker, ops: &[Op]) {
    let max = 2 << 20;
    let mut m = Model::default();
    for op in ops.iter().take(3000) {
        match *op {
            Op::Alloc { size, align: a, zeroed: z } => {
                let l = Layout::from_size_align(size.bytes(max), align(a)).unwrap();
                // SAFETY: a non-zero layout.
                let p = unsafe { if z { heap.alloc_zeroed(l) } else { heap.alloc(l) } };
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
                    // SAFETY: a live block of the heap with its layout.
                    unsafe { heap.dealloc(b.ptr, b.layout) };
                }
            }
            Op::Realloc { which, size } => {
                if let Some(i) = m.index(which) {
                    let (ptr, layout) = (m.live[i].ptr, m.live[i].layout);
                    let size = size.bytes(max);
                    // SAFETY: a live block of the heap with its layout; a
                    // non-zero size.
                    let p = unsafe { heap.realloc(ptr, layout, size) };
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
                    worker.ask(Request::Free(b.ptr as usize, b.layout));
                }
            }
            Op::AllocElsewhere { size, align: a } => {
                let l = Layout::from_size_align(size.bytes(max), align(a)).unwrap();
                let p = worker.ask(Request::Alloc(l)) as *mut u8;
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
                        heap.dealloc(b.ptr, b.layout);
                        let before = refused(heap);
                        heap.dealloc(b.ptr, b.layout);
                        assert_eq!(refused(heap), before + 1, "a double free of {:?} not refused", b.layout);
                    }
                }
            }
            Op::ForeignFree { kind } => {
                let mut local = [0u64; 8];
                let mut outside = Box::new([0u64; 8]);
                let p: *mut u8 =
                    if kind % 2 == 0 { local.as_mut_ptr().cast() } else { outside.as_mut_ptr().cast() };
                let l = Layout::from_size_align(64, 8).unwrap();
                let before = refused(heap);
                // SAFETY: pointers the heap does not own: it must refuse them
                // without touching them.
                unsafe {
                    heap.dealloc(p, l);
                    assert!(heap.realloc(p, l, 128).is_null(), "a foreign pointer reallocated");
                }
                assert_eq!(refused(heap), before + 2, "a foreign pointer not refused");
                assert_eq!(local, [0; 8]);
            }
            Op::Trim => {
                heap.trim();
            }
        }
    }
    for i in (0..m.live.len()).rev() {
        let b = m.take(i);
        // SAFETY: live blocks of heap.
        unsafe { heap.dealloc(b.ptr, b.layout) };
    }
    worker.ask(Request::Trim);
    heap.trim();
}
