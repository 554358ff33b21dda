// The body shared by the three code-size firmwares: the same program, only
// the allocator differs. Each binary defines `init_heap(&'static mut [..])`.
use core::mem::MaybeUninit;

use cortex_m_rt::entry;

use super::init_heap;
// Links cortex-m's critical-section implementation.
use cortex_m as _;
use cortex_m_semihosting::debug;

#[entry]
fn main() -> ! {
    static mut MEMORY: [MaybeUninit<u8>; 16 * 1024] = [MaybeUninit::uninit(); 16 * 1024];
    init_heap(MEMORY);
    let mut v = alloc::vec::Vec::new();
    for i in 0..100u32 {
        v.push(i);
    }
    let sum: u32 = v.iter().sum();
    drop(v);
    debug::exit(if sum == 4950 { debug::EXIT_SUCCESS } else { debug::EXIT_FAILURE });
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}
