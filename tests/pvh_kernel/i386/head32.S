/* A 32-bit PVH kernel's entry (issue 13): Xen ELF notes, then the PVH entry in 32-bit protected mode with
 * paging off (docs/misc/pvh.pandoc), EBX = &hvm_start_info. It never enters long mode. */
#define XEN_ELFNOTE_XEN_VERSION 5
#define XEN_ELFNOTE_GUEST_OS 6
#define XEN_ELFNOTE_LOADER 8
#define XEN_ELFNOTE_PHYS32_ENTRY 18

#define NOTE(type, name)                      \
    .balign 4;                                \
    .long 4, name##_end - name, type;         \
    .asciz "Xen";                             \
name:

    .section .note.Xen, "a"
    NOTE(XEN_ELFNOTE_PHYS32_ENTRY, n_entry)
    .long _start
n_entry_end:
    NOTE(XEN_ELFNOTE_GUEST_OS, n_os)
    .asciz "hyperdisco-testkernel-i386"
n_os_end:
    NOTE(XEN_ELFNOTE_XEN_VERSION, n_ver)
    .asciz "xen-3.0"
n_ver_end:
    NOTE(XEN_ELFNOTE_LOADER, n_loader)
    .asciz "generic"
n_loader_end:
    .balign 4

    .text
    .code32
    .globl _start
_start:
    cli
    cld
    movl $stack_top, %esp
    pushl %ebx
    call main32
9:  hlt
    jmp 9b

    .bss
    .balign 16
    .space 16384
stack_top:
