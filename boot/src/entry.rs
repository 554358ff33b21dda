//! The PVH entry: from QEMU's 32-bit protected mode to 64-bit Rust.
//!
//! QEMU finds `pvh_start32` through the `XEN_ELFNOTE_PHYS32_ENTRY` note and
//! jumps there in 32-bit protected mode, paging off, `%ebx` holding the
//! physical address of the `hvm_start_info` structure. The stub:
//!
//! 1. zeroes `.bss` (the boot page tables and stack live there);
//! 2. identity-maps the first 4 GiB with 2 MiB pages, except the first 2 MiB,
//!    which get 4 KiB pages so that page 0 can be unmapped once the boot
//!    structures (which QEMU puts there) are copied: a null dereference then
//!    faults (see [`unmap_null_page`]);
//! 3. enables PAE, long mode, no-execute (when CPUID reports it), paging and
//!    write protection, loads a minimal GDT and far-jumps to 64-bit code;
//! 4. calls `kernel_entry(start_info)` on the 256 KiB boot stack, below
//!    which lies an unmapped guard page (an overflow double-faults onto the
//!    IST stack and is reported, instead of overwriting the page tables). The binary defines
//!    `kernel_entry` through [`entry_point!`](crate::entry_point).

core::arch::global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                 /* name size */
    .long 4                 /* descriptor size */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start32
    .balign 4

    .section .text.boot, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    mov %ebx, %esi

    /* 1. zero .bss */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb

    /* 2. page tables: PML4[0] -> PDPT; PDPT[0..4] -> PD[0..4]; PD entries are
     *    2 MiB pages, except PD[0] -> PT (4 KiB pages, page 0 not present). */
    mov $boot_pdpt, %eax
    or $0x3, %eax
    mov %eax, boot_pml4

    mov $boot_pd, %eax
    or $0x3, %eax
    xor %ecx, %ecx
1:  mov %eax, boot_pdpt(,%ecx,8)
    add $0x1000, %eax
    inc %ecx
    cmp $4, %ecx
    jne 1b

    mov $0x83, %eax         /* present | writable | huge */
    xor %edx, %edx
    xor %ecx, %ecx
2:  mov %eax, boot_pd(,%ecx,8)
    mov %edx, boot_pd+4(,%ecx,8)
    add $0x200000, %eax
    adc $0, %edx
    inc %ecx
    cmp $2048, %ecx
    jne 2b

    mov $0x3, %eax          /* frame 0 | present | writable */
    xor %ecx, %ecx
3:  mov %eax, boot_pt(,%ecx,8)
    add $0x1000, %eax
    inc %ecx
    cmp $512, %ecx
    jne 3b
    mov $boot_stack_guard, %eax   /* unmap the boot stack's guard page */
    cmp $0x200000, %eax           /* (only possible inside the first 2 MiB) */
    jae 7f
    shr $12, %eax
    movl $0, boot_pt(,%eax,8)
7:  mov $boot_pt, %eax
    or $0x3, %eax
    mov %eax, boot_pd
    movl $0, boot_pd+4

    /* 3. PAE, long mode (+ NXE if supported), paging, write protect */
    mov %cr4, %eax
    or $0x20, %eax
    mov %eax, %cr4
    mov $boot_pml4, %eax
    mov %eax, %cr3

    mov $0x80000001, %eax
    cpuid
    mov $0x100, %edi        /* EFER.LME */
    bt $20, %edx            /* CPUID: NX supported? */
    jnc 4f
    or $0x800, %edi         /* EFER.NXE */
4:  mov $0xC0000080, %ecx
    rdmsr
    or %edi, %eax
    wrmsr

    mov %cr0, %eax
    or $0x80010001, %eax    /* PG | WP | PE */
    mov %eax, %cr0

    lgdt boot_gdt_ptr
    ljmp $0x08, $5f

    .code64
5:  mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %ax, %ax
    mov %ax, %fs
    mov %ax, %gs
    mov $boot_stack_top, %rsp
    mov %esi, %edi
    call kernel_entry
6:  hlt
    jmp 6b

    .section .rodata
    .balign 8
    .global boot_gdt_ptr
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF   /* 0x08: 64-bit code */
    .quad 0x00CF92000000FFFF   /* 0x10: data */
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    .section .bss
    .balign 4096
    .global boot_pml4
boot_pml4: .skip 4096
boot_pdpt: .skip 4096
boot_pd:   .skip 4096 * 4
boot_pt:   .skip 4096
    .global boot_pt
boot_stack_guard: .skip 4096
    .global boot_stack_bottom
boot_stack_bottom:
    .skip 4096 * 64
boot_stack_top:
    .code64
    .text
"#,
    options(att_syntax)
);

/// Defines the kernel's entry: `entry_point!(main)` where
/// `fn main(boot: &'static BootInfo) -> !`.
///
/// The generated `kernel_entry` (called by the assembly stub) sets up the
/// serial port, descriptor tables, layers −2 and −1 and a guarded kernel
/// stack, then calls `main` on that stack.
#[macro_export]
macro_rules! entry_point {
    ($main:path) => {
        /// Called by the PVH stub with the physical address of `hvm_start_info`.
        #[unsafe(no_mangle)]
        pub extern "C" fn kernel_entry(start_info: u32) -> ! {
            let main: fn(&'static $crate::BootInfo) -> ! = $main;
            $crate::start(start_info, main)
        }
    };
}

unsafe extern "C" {
    /// The boot page table that maps the first 2 MiB with 4 KiB pages.
    static mut boot_pt: [u64; 512];
}

/// Unmaps page 0, so that null-pointer dereferences fault.
///
/// # Safety
///
/// Nothing may still need the contents of physical page 0 through its
/// identity mapping (the PVH start info is read before this call).
pub unsafe fn unmap_null_page() {
    // SAFETY: `boot_pt` is the live page table for the first 2 MiB, entry 0
    // maps only page 0, and the caller no longer needs that page.
    unsafe { (&raw mut boot_pt).cast::<u64>().write_volatile(0) };
    x86_64::instructions::tlb::flush(x86_64::VirtAddr::zero());
}
