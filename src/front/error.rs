//! The front door's errors: why an allocation or a configuration failed, and
//! why a free was refused.

use core::fmt;

use crate::{object, segment};

/// Why an allocation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocateError {
    /// Layer 0 could not serve the request.
    Segment(segment::AllocateError),
    /// A small request: layer +2 had no free block in its class and no
    /// arena for a new pool (`pools`), and layer 0 could not serve it
    /// either (`segment`).
    Small {
        /// Why layer +2 could not serve it.
        pools: object::AllocateError,
        /// Why layer 0 could not serve it then.
        segment: segment::AllocateError,
    },
    /// The requested size overflows a [`Layout`](core::alloc::Layout).
    InvalidLayout {
        /// The size asked for.
        size: usize,
        /// The alignment asked for.
        align: usize,
    },
    /// Debug mode: a block came back misaligned and was not handed out.
    Misaligned {
        /// The pointer the layers returned.
        ptr: usize,
        /// The alignment asked for.
        align: usize,
    },
    /// Debug mode: the block given to realloc failed its checks.
    Misuse {
        /// The pointer given.
        ptr: usize,
    },
    /// The block given to realloc is refused: no layer owns it, or it is
    /// not a block in use of the size given. Nothing was allocated.
    Refused(segment::DeallocateError),
}

impl fmt::Display for AllocateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Segment(e) => write!(f, "out of memory: {e}"),
            Self::Small { pools, segment } => write!(f, "out of memory: layer +2: {pools}; then {segment}"),
            Self::InvalidLayout { size, align } => {
                write!(f, "invalid layout: {size} bytes aligned to {align}")
            }
            Self::Misaligned { ptr, align } => write!(f, "{ptr:#x} is not aligned to {align}"),
            Self::Misuse { ptr } => write!(f, "{ptr:#x} failed the debug checks"),
            Self::Refused(e) => write!(f, "realloc refused: {e}"),
        }
    }
}

impl core::error::Error for AllocateError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Segment(e) => Some(e),
            Self::Small { segment, .. } => Some(segment),
            Self::Refused(e) => Some(e),
            _ => None,
        }
    }
}

/// Why [`Heap::with_geometry`](super::Heap::with_geometry) refused its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidConfig {
    /// Layer +2's geometry cannot serve.
    Geometry(object::GeometryError),
    /// Layer 0's tunables cannot serve.
    Segment(segment::ConfigError),
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Geometry(e) => write!(f, "invalid layer +2 geometry: {e}"),
            Self::Segment(e) => write!(f, "invalid layer 0 tunables: {e}"),
        }
    }
}

impl core::error::Error for InvalidConfig {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Geometry(e) => Some(e),
            Self::Segment(e) => Some(e),
        }
    }
}

/// Why a free was refused. Nothing was changed.
pub type DeallocateError = segment::DeallocateError;
