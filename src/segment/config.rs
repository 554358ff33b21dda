//! Layer 0's tunables: [`Config`], chosen for the size of the window, and
//! checked before use.

use core::fmt;

use super::{FIRST_FIT_LIMIT, LARGE_THRESHOLD, tlsf};
use crate::source::PAGE_SIZE;

/// Tunables of layer 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Serve every block by first fit over the whole window of a
    /// committed source instead of TLSF: by address in a tree (windows up
    /// to 512 MiB), or by `linked_list_allocator` (larger windows, and every
    /// window in a build without the `tlsf` feature).
    pub first_fit: bool,
    /// Smallest span asked of a page source that is not
    /// [committed](crate::PageSource::COMMITTED).
    pub span_min: usize,
    /// From a page source that is not committed, requests of this many
    /// bytes or more (aligned to at most 16) get a span of their own, given
    /// back as soon as they are freed (malloc's mmap threshold; in the
    /// kernel, an overflow past one hits the guard page after it).
    pub large_threshold: usize,
}

impl Config {
    /// Tunables for a page source whose window is `window_len` bytes: first
    /// fit under [`FIRST_FIT_LIMIT`] (and at every size in a build without
    /// the `tlsf` feature), spans of at least 1/16 of the window
    /// (between a page and 1 MiB), spans of their own from
    /// [`LARGE_THRESHOLD`].
    pub const fn for_window(window_len: usize) -> Self {
        let mut span_min = (window_len / 16) & !(PAGE_SIZE - 1);
        if span_min < PAGE_SIZE {
            span_min = PAGE_SIZE;
        }
        if span_min > 1 << 20 {
            span_min = 1 << 20;
        }
        Self {
            first_fit: window_len < FIRST_FIT_LIMIT || !tlsf::ON,
            span_min,
            large_threshold: LARGE_THRESHOLD,
        }
    }

    /// Checks that these tunables can serve: `span_min` is a whole number
    /// of pages, at most 1 TiB; TLSF only where it is built. Every
    /// [`for_window`](Self::for_window) passes.
    pub const fn validate(self) -> Result<Self, ConfigError> {
        if !self.first_fit && !tlsf::ON {
            return Err(ConfigError::TlsfNotBuilt);
        }
        if self.span_min == 0 || !self.span_min.is_multiple_of(PAGE_SIZE) || self.span_min > MAX_SPAN_MIN {
            return Err(ConfigError::SpanMin(self.span_min));
        }
        Ok(self)
    }
}

/// Largest [`Config::span_min`].
const MAX_SPAN_MIN: usize = if usize::BITS > 40 { 1 << 40 } else { 1 << (usize::BITS - 2) };

/// Why a [`Config`] cannot serve (see [`Config::validate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// `span_min` is zero, not a whole number of pages, or over 1 TiB.
    SpanMin(usize),
    /// TLSF asked for (`first_fit` false) in a build without the `tlsf`
    /// feature.
    TlsfNotBuilt,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SpanMin(n) => write!(f, "span_min {n} is not a whole number of pages up to 1 TiB"),
            Self::TlsfNotBuilt => f.write_str("layer 0's TLSF engine is not built (feature `tlsf`)"),
        }
    }
}

impl core::error::Error for ConfigError {}
