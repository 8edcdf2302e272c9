"""Whether the guest's page tables let a supervisor write reach a guest-virtual address (Intel SDM vol. 3,
4.3-4.6): Xen's copy_to_guest for an HVM/PVH guest walks the guest's tables with PFEC_write_access
(hvm_copy_to_guest_linear) and fails with -EFAULT, writing nothing, where the page is read-only; the
engine's translation (QEMU's debug walk) ignores permissions, so hypercall results are checked here.

Supervisor writes honour R/W only with CR0.WP set; with paging off everything is writable. A mapping that
is not present answers True: the translation reports it unmapped, and the access faults there.
"""

from __future__ import annotations

from collections.abc import Callable

PRESENT, RW, PS = 1, 2, 0x80
CR0_PG, CR0_WP = 1 << 31, 1 << 16
CR4_PSE, CR4_PAE, CR4_LA57 = 1 << 4, 1 << 5, 1 << 12
ADDR = 0x000F_FFFF_FFFF_F000  # bits 51:12 of an entry: the next table or the page


def supervisor_may_write(read_u64: Callable[[int], int], read_u32: Callable[[int], int], cr0: int, cr3: int,
                         cr4: int, long_mode: bool, va: int) -> bool:
    if not cr0 & CR0_PG or not cr0 & CR0_WP:
        return True
    if long_mode:  # 4-level (5 with CR4.LA57); PS ends the walk at a PDPTE (1 GiB) or a PDE (2 MiB)
        table = cr3 & ADDR
        for level in range(5 if cr4 & CR4_LA57 else 4, 0, -1):
            e = read_u64(table + (va >> (3 + 9 * level) & 0x1FF) * 8)
            if not e & PRESENT:
                return True
            if not e & RW:
                return False
            if level == 1 or (level <= 3 and e & PS):
                return True
            table = e & ADDR
        return True
    if cr4 & CR4_PAE:  # 3-level PAE: the four PDPTEs carry no R/W bit
        pdpte = read_u64((cr3 & 0xFFFFFFE0) + (va >> 30 & 3) * 8)
        if not pdpte & PRESENT:
            return True
        table = pdpte & ADDR
        for level in (2, 1):
            e = read_u64(table + (va >> (3 + 9 * level) & 0x1FF) * 8)
            if not e & PRESENT:
                return True
            if not e & RW:
                return False
            if level == 1 or e & PS:
                return True
            table = e & ADDR
        return True
    pde = read_u32((cr3 & 0xFFFFF000) + (va >> 22 & 0x3FF) * 4)  # 2-level, 32-bit entries
    if not pde & PRESENT:
        return True
    if not pde & RW:
        return False
    if pde & PS and cr4 & CR4_PSE:
        return True
    pte = read_u32((pde & 0xFFFFF000) + (va >> 12 & 0x3FF) * 4)
    return not pte & PRESENT or bool(pte & RW)
