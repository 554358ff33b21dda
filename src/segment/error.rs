//! Why layer 0 refuses: the errors of an allocation and of a free.

use core::alloc::Layout;
use core::fmt;

use crate::source::PagesError;

/// Why layer 0 could not allocate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocateError {
    /// No free chunk holds the request and the page source has no span for
    /// it.
    OutOfMemory {
        /// The request.
        layout: Layout,
        /// What the page source said (or `Exhausted` when it was not asked:
        /// a committed source is held whole already).
        source: PagesError,
    },
}

impl fmt::Display for AllocateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfMemory { layout, source } => write!(
                f,
                "layer 0 has no room for {} bytes aligned to {}: {source}",
                layout.size(),
                layout.align()
            ),
        }
    }
}

impl core::error::Error for AllocateError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::OutOfMemory { source, .. } => Some(source),
        }
    }
}

/// Why layer 0 refused a free. Nothing was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeallocateError {
    /// The pointer lies in no span of this allocator (nor in an arena of
    /// layer +2, when the front door says so).
    NotOwned {
        /// The pointer.
        ptr: usize,
    },
    /// The pointer lies in a span but is not a block in use: freed already
    /// (a double free), or not the start of a block.
    NotAllocated {
        /// The pointer.
        ptr: usize,
    },
    /// The block is in use, but its size does not fit the layout given.
    SizeMismatch {
        /// The pointer.
        ptr: usize,
        /// Bytes the block holds.
        block: usize,
        /// The size given.
        given: usize,
    },
    /// A free or size query without a layout, of a block of first fit
    /// (heaps under [`FIRST_FIT_LIMIT`](super::FIRST_FIT_LIMIT)), which keeps no block sizes.
    SizeUnknown {
        /// The pointer.
        ptr: usize,
    },
}

impl fmt::Display for DeallocateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotOwned { ptr } => write!(f, "{ptr:#x} was not allocated by this heap"),
            Self::NotAllocated { ptr } => {
                write!(f, "{ptr:#x} is not a block in use (freed twice, or not a block's start)")
            }
            Self::SizeMismatch { ptr, block, given } => {
                write!(f, "{ptr:#x} holds {block} bytes but was freed as {given}")
            }
            Self::SizeUnknown { ptr } => {
                write!(
                    f,
                    "{ptr:#x} lies in a first-fit heap, which keeps no block sizes: free it with its layout"
                )
            }
        }
    }
}

impl core::error::Error for DeallocateError {}
