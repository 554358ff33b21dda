// The body shared by the code-size firmwares: the same program, only the
// allocator differs. Each binary defines `HEAP` and
// `init_heap(&'static mut [..])`.
//
// It paints the stack, initialises the heap and prints how many bytes of
// stack `init_heap` used (`init stack: N`), then pushes 100 numbers into a
// `Vec` (an allocation and its reallocs), frees it, prints the most stack
// the whole run took (`run stack: N`), and exits with success if the sum
// is right and the stack never reached its end.
use core::mem::MaybeUninit;

use cortex_m_rt::entry;

use super::init_heap;
// Links cortex-m's critical-section implementation.
use cortex_m as _;
use cortex_m_semihosting::debug;

#[path = "stack.rs"]
mod stack;

#[entry]
fn main() -> ! {
    static mut MEMORY: [MaybeUninit<u8>; 8 * 1024] = [MaybeUninit::uninit(); 8 * 1024];
    let top = stack::sp();
    stack::paint_below(top);
    init_heap(MEMORY);
    let init_stack = top - stack::low_water();
    let mut v = alloc::vec::Vec::new();
    for i in 0..100u32 {
        v.push(i);
    }
    let sum: u32 = v.iter().sum();
    drop(v);
    let run_stack = top - stack::low_water();
    stack::print(b"init stack: ", init_stack);
    stack::print(b"run stack: ", run_stack);
    let ok = sum == 4950 && !stack::overrun();
    debug::exit(if ok { debug::EXIT_SUCCESS } else { debug::EXIT_FAILURE });
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
