/*
 * The test kernel's entry: Xen ELF notes, the PVH entry in 32-bit protected mode, the switch to long
 * mode, exception stubs and with_trap().
 *
 * PVH boot ABI (xen/include/public/arch-x86/hvm/start_info.h): the vCPU starts at the address of
 * XEN_ELFNOTE_PHYS32_ENTRY in 32-bit protected mode, paging off, flat CS/DS/ES/SS, EBX holding the
 * physical address of struct hvm_start_info. Note numbers: xen/include/public/elfnote.h.
 */
#define XEN_ELFNOTE_HYPERCALL_PAGE 2
#define XEN_ELFNOTE_XEN_VERSION    5
#define XEN_ELFNOTE_GUEST_OS       6
#define XEN_ELFNOTE_LOADER         8
#define XEN_ELFNOTE_PHYS32_ENTRY   18

#define MSR_EFER 0xc0000080
#define EFER_LME (1 << 8)
#define CR0_PE   (1 << 0)
#define CR0_PG   (1 << 31)
#define CR4_PAE  (1 << 5)

/* an ELF note: namesz, descsz, type, "Xen\0", desc (elfnote.h: the note name is "Xen") */
.macro xen_note_begin type:req
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 962f - 961f
    .long \type
    .asciz "Xen"
961:
.endm
.macro xen_note_end
962:
    .balign 4
    .popsection
.endm

    xen_note_begin XEN_ELFNOTE_GUEST_OS
    .asciz "hyperdisco-testkernel"
    xen_note_end
    xen_note_begin XEN_ELFNOTE_XEN_VERSION
    .asciz "xen-3.0"
    xen_note_end
    xen_note_begin XEN_ELFNOTE_LOADER
    .asciz "generic"
    xen_note_end
    xen_note_begin XEN_ELFNOTE_HYPERCALL_PAGE
    .quad hypercall_page
    xen_note_end
    xen_note_begin XEN_ELFNOTE_PHYS32_ENTRY
    .long pvh_start
    xen_note_end

    .section .text.entry, "ax"
    .code32
    .globl pvh_start
pvh_start:
    cli
    cld
    movl %ebx, start_info_pa
    movl $boot_stack_top, %esp

    /* identity map 0..4 GiB with 2 MiB pages: pml4[0] -> pdpt, pdpt[0..3] -> pd[0..3] */
    movl $pd, %edi
    xorl %ecx, %ecx
1:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax                 /* present, writable, 2 MiB page */
    movl %eax, (%edi,%ecx,8)
    movl $0, 4(%edi,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jb 1b
    xorl %ecx, %ecx
2:  movl %ecx, %eax
    shll $12, %eax
    addl $pd + 3, %eax
    movl %eax, pdpt(,%ecx,8)
    movl $0, pdpt + 4(,%ecx,8)
    incl %ecx
    cmpl $4, %ecx
    jb 2b
    movl $pdpt + 3, pml4
    movl $0, pml4 + 4

    movl %cr4, %eax
    orl $CR4_PAE, %eax
    movl %eax, %cr4
    movl $pml4, %eax
    movl %eax, %cr3
    movl $MSR_EFER, %ecx
    rdmsr
    orl $EFER_LME, %eax
    wrmsr
    movl %cr0, %eax
    orl $(CR0_PG | CR0_PE), %eax
    movl %eax, %cr0
    lgdt gdt_desc
    ljmp $0x08, $start64

    .code64
start64:
    movl $0x10, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    xorl %eax, %eax
    movl %eax, %fs
    movl %eax, %gs
    movq $boot_stack_top, %rsp
    movl start_info_pa, %edi
    call kmain
3:  hlt
    jmp 3b

/* the hypercall page: 128 stubs of 32 bytes (XEN_ELFNOTE_HYPERCALL_PAGE), zeros until filled */
    .section .text.hypercall_page, "ax"
    .balign 4096
    .globl hypercall_page
hypercall_page:
    .fill 4096, 1, 0

/* 256 exception/interrupt stubs, 16 bytes apart: push a 0 error code where the CPU pushes none, then
 * the vector; trap_common does the rest */
    .text
    .balign 16
    .globl trap_stubs
trap_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    .if vec == 8 || vec == 10 || vec == 11 || vec == 12 || vec == 13 || vec == 14 || vec == 17 || vec == 21 || vec == 29 || vec == 30
    .else
    pushq $0
    .endif
    pushq $vec
    jmp trap_common
    .set vec, vec + 1
    .endr

/* stack: vector, error code, rip, cs, rflags, rsp, ss. Armed by with_trap: record and return from
 * with_trap with the vector; otherwise unexpected_trap(frame) reports it and powers off. */
trap_common:
    cmpq $0, trap_armed(%rip)
    je 4f
    movq $0, trap_armed(%rip)
    movq 0(%rsp), %rax
    movq %rax, last_trap+0(%rip)
    movq 8(%rsp), %rax
    movq %rax, last_trap+8(%rip)
    movq 16(%rsp), %rax
    movq %rax, last_trap+16(%rip)
    movq %cr2, %rax
    movq %rax, last_trap+24(%rip)
    movq trap_jmp+0(%rip), %rbx
    movq trap_jmp+8(%rip), %rbp
    movq trap_jmp+16(%rip), %r12
    movq trap_jmp+24(%rip), %r13
    movq trap_jmp+32(%rip), %r14
    movq trap_jmp+40(%rip), %r15
    movq trap_jmp+48(%rip), %rsp
    movq last_trap+0(%rip), %rax
    ret
4:  movq %rsp, %rdi
    andq $-16, %rsp
    call unexpected_trap
5:  hlt
    jmp 5b

/* long with_trap(void (*fn)(void *), void *arg): runs fn(arg); -1 if it returned, else the vector of
 * the exception that stopped it (details in last_trap). Not nestable. */
    .globl with_trap
with_trap:
    movq %rbx, trap_jmp+0(%rip)
    movq %rbp, trap_jmp+8(%rip)
    movq %r12, trap_jmp+16(%rip)
    movq %r13, trap_jmp+24(%rip)
    movq %r14, trap_jmp+32(%rip)
    movq %r15, trap_jmp+40(%rip)
    movq %rsp, trap_jmp+48(%rip)
    movq $1, trap_armed(%rip)
    movq %rdi, %rax
    movq %rsi, %rdi
    subq $8, %rsp
    call *%rax
    addq $8, %rsp
    movq $0, trap_armed(%rip)
    movq $-1, %rax
    ret

    .section .rodata
    .balign 16
gdt:
    .quad 0
    .quad 0x00af9a000000ffff        /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff        /* 0x10: data */
    .quad 0x00cf9a000000ffff        /* 0x18: 32-bit code */
gdt_end:
gdt_desc:
    .word gdt_end - gdt - 1
    .quad gdt

    .data
    .globl start_info_pa, trap_armed, last_trap
start_info_pa: .quad 0
trap_armed: .quad 0
trap_jmp: .fill 7, 8, 0
last_trap: .fill 4, 8, 0             /* vector, error code, rip, cr2: struct trap_info */

    .bss
    .balign 4096
pml4: .fill 512, 8, 0
pdpt: .fill 512, 8, 0
    .globl pd
pd: .fill 4 * 512, 8, 0                 /* pd[n]: the 2 MiB page at n * 2 MiB (kernel.h) */
    .globl boot_stack_top
boot_stack: .fill 8192, 8, 0
boot_stack_top:
