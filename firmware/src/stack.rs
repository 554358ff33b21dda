// Stack painting, shared by the firmware binaries: how deep the stack has
// gone since it was painted, and whether it ran into its end (below which
// lie the statics: the heap's memory among them).
//
// The stack runs from cortex-m-rt's `_stack_start` (the top of RAM) down
// to `_stack_end` (the end of `.bss` and `.uninit`). `paint_below` fills it
// with a pattern under the current stack pointer; the lowest word no longer
// holding the pattern is as deep as the stack has been since.

use cortex_m_semihosting::hio;

unsafe extern "C" {
    static _stack_end: u32;
}

const PAINT: u32 = 0xA5A5_A5A5;

/// Bytes at the end of the stack that must still hold the paint when a run
/// finishes: a stack that reached them may have run past its end.
pub const GUARD: usize = 64;

/// The lowest address the stack may use.
fn end() -> usize {
    (&raw const _stack_end) as usize
}

/// The stack pointer.
#[inline(always)]
pub fn sp() -> usize {
    cortex_m::register::msp::read() as usize
}

/// Paints the stack from its end up to `top` (at or below the stack
/// pointer of the caller, into which this is inlined: it calls nothing).
#[inline(always)]
pub fn paint_below(top: usize) {
    let mut p = end();
    while p + 4 <= top {
        // SAFETY: free stack below the stack pointer, word-aligned (the end
        // is 4-aligned by cortex-m-rt); nothing lives there.
        unsafe { (p as *mut u32).write_volatile(PAINT) };
        p += 4;
    }
}

/// The lowest address written on the stack since it was painted.
pub fn low_water() -> usize {
    let mut p = end();
    // SAFETY: the stack's own memory, word-aligned.
    while unsafe { (p as *const u32).read_volatile() } == PAINT {
        p += 4;
    }
    p
}

/// Whether the stack has reached the last [`GUARD`] bytes before its end.
pub fn overrun() -> bool {
    low_water() < end() + GUARD
}

/// Bytes of stack left between the deepest point so far and the end.
#[allow(dead_code, reason = "the test firmware reports it; the code-size ones do not")]
pub fn headroom() -> usize {
    low_water() - end()
}

/// Prints `label` and `n` in decimal over semihosting, without
/// `core::fmt` (so that the code-size firmwares stay minimal).
#[allow(dead_code, reason = "the code-size firmwares print with it; the test firmware has `hprintln!`")]
pub fn print(label: &[u8], n: usize) {
    let mut digits = [0u8; 12];
    let mut i = digits.len() - 1;
    digits[i] = b'\n';
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if let Ok(mut out) = hio::hstdout() {
        let _ = out.write_all(label);
        let _ = out.write_all(&digits[i..]);
    }
}
