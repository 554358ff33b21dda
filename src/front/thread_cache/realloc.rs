//! A realloc through this thread's cache, without the heap's lock where
//! it can be done so.

use core::alloc::Layout;
use core::ptr::{self, NonNull};

use super::{ArenaMirror, DEPTH, Link, cached_anywhere, home};
use crate::object::{class_size, size_class};

/// What [`realloc`] did.
pub(crate) enum Realloc {
    /// The block is in a cache (this thread's or, by its tag, another's):
    /// freed already. Nothing was done.
    Cached,
    /// The block holds the new size as it is.
    InPlace,
    /// The contents moved to this block of the cache; the old block went
    /// into the cache, or, if `free_old`, must be freed through the lock.
    Moved { new: NonNull<u8>, free_old: bool },
    /// A block of +2 moving to another class whose bin is empty: the
    /// caller allocates a block for `new` (refilling the bin), copies, and
    /// frees the old one. Nothing was done.
    Refill { new: Layout },
    /// The lock is needed.
    Locked,
}

/// A realloc of block `ptr` (allocated with `old`) of the heap of `link` to
/// `new_size` bytes, without the lock where it can be done so: one entry
/// into this thread's cache. Between blocks of +2: in place within the
/// block's class (if the new size uses more than half of it), else into a
/// block of the cache. A block that is cached is refused, whatever its
/// layer (a use after free the heap must refuse, as it refuses a block it
/// has freed).
///
/// # Safety
///
/// As `GlobalAlloc::realloc`; `mirror` is the heap's.
#[inline]
pub(crate) unsafe fn realloc(
    link: &Link,
    mirror: &ArenaMirror,
    ptr: NonNull<u8>,
    old: Layout,
    new_size: usize,
) -> Realloc {
    let r = home::with(|cache| {
        cache.enter(link, Realloc::Locked, |bins, owner| {
            let ptr = crate::source::reach(ptr);
            if !owner.is_small(old) {
                // SAFETY: forwarded contract.
                let cached = unsafe { bins.holds_medium(mirror, owner, ptr, old) };
                return if cached { Realloc::Cached } else { Realloc::Locked };
            }
            // SAFETY: the caller's live block.
            let Some((class, held)) = (unsafe { bins.small_class_held(mirror, owner, ptr) }) else {
                return Realloc::Locked;
            };
            if held {
                return Realloc::Cached;
            }
            let size = class_size(class, owner.class_shift);
            let Ok(new) = Layout::from_size_align(new_size, old.align()) else { return Realloc::Locked };
            // (Aligned, for the heap, as a realloc's new block is.)
            let new = crate::front::heap::moving_layout(new);
            // A layout larger than the block goes to the lock, which refuses it.
            if !owner.is_small(new) || old.size() > size {
                return Realloc::Locked;
            }
            if new_size <= size && new_size > size / 2 {
                crate::sync::stat!(bins.reallocs.in_place += 1);
                return Realloc::InPlace;
            }
            let Some(block) = bins.small[size_class(new_size, old.align(), owner.class_shift)].pop() else {
                return Realloc::Refill { new };
            };
            // SAFETY: both blocks are live, distinct and at least this
            // long; the old one is ours to keep afterwards (not cached:
            // checked above), of its class's size.
            unsafe {
                ptr::copy_nonoverlapping(ptr.as_ptr(), block.as_ptr(), old.size().min(new_size));
                let free_old = bins.small[class].push(ptr, DEPTH).is_err();
                crate::sync::stat!(bins.reallocs.moved += 1);
                Realloc::Moved { new: block, free_old }
            }
        })
    })
    .unwrap_or(Realloc::Locked);
    match r {
        // In another thread's cache (or none serves this heap here).
        Realloc::Locked if cached_anywhere(mirror, ptr, old) => Realloc::Cached,
        r => r,
    }
}
