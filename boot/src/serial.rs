//! COM1 serial console (`uart_16550`), behind a spin lock shared by every CPU, with
//! [`print!`](crate::print) and [`println!`](crate::println).

use core::fmt::{self, Write};

use crate::sync::SpinMutex;
use uart_16550::backend::PioBackend;
use uart_16550::{Config, Uart16550Tty};

/// Its waiters answer TLB shootdowns: a CPU printing with interrupts masked
/// may wait for one that shoots down while it holds the console.
static COM1: SpinMutex<Option<Uart16550Tty<PioBackend>>> = SpinMutex::new(None);
crate::abandonable_lock!("serial console", COM1);

/// Initialises COM1 at 115200 baud. Output before this call is dropped.
pub fn init() {
    // SAFETY: 0x3f8 is COM1 on the PC machine QEMU emulates, and this module
    // is the only code that touches those ports.
    let port = unsafe { Uart16550Tty::new_port(0x3f8, Config::default()) };
    *COM1.lock() = port.ok();
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    if let Some(port) = COM1.lock().as_mut() {
        let _ = port.write_fmt(args);
    }
}

/// Releases the console lock held by code that will never run again (a
/// test abandoned by a panic, or code interrupted by a fatal fault), so the
/// report can be printed.
pub fn force_unlock() {
    if COM1.is_locked() {
        // SAFETY: called only on paths that never return to the holder of the
        // lock (the panic and fault handlers); at worst a half-printed line.
        unsafe { COM1.force_unlock() };
    }
}

/// Prints to COM1.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => ($crate::serial::_print(format_args!($($arg)*)));
}

/// Prints a line to COM1.
#[macro_export]
macro_rules! println {
    () => ($crate::print!("\n"));
    ($($arg:tt)*) => ($crate::serial::_print(format_args!("{}\n", format_args!($($arg)*))));
}
