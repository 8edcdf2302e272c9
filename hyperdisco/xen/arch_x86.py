"""The x86 port of entry: the two instructions a PVH guest uses to enter the hypervisor.

No public header defines them: they are what Xen writes into an HVM/PVH guest's hypercall page
(xen/arch/x86/hvm/vmx/vmx.c and svm/svm.c), `vmcall` on Intel and `vmmcall` on AMD; the calling
convention around them is in xen/include/public/arch-x86/xen-x86_64.h.
"""

from __future__ import annotations

__all__ = ["HYPERCALL_IRET", "HYPERCALL_STUB_SIZE", "VMCALL", "VMMCALL", "hypercall_page"]

# --- Port of entry: the two instructions a PVH guest uses to enter the hypervisor ------------------------
VMCALL = b"\x0f\x01\xc1"
VMMCALL = b"\x0f\x01\xd9"

# --- The hypercall page an HVM/PVH guest asks for (ELF note XEN_ELFNOTE_HYPERCALL_PAGE, or a write of its
# address to MSR 0x40000000, the base CPUID leaf 0x40000002 gives) -----------------------------------------
# Xen's hypercall_page_initialise() fills the page with int3 (0xCC), then hvm/vmx/vmx.c
# vmx_init_hypercall_page (svm/svm.c svm_init_hypercall_page with vmmcall) writes one 32-byte stub per
# hypercall number: `mov $nr, %eax; vmcall; ret`; HYPERVISOR_iret (23) is `ud2`: HVM guests have no iret.
HYPERCALL_STUB_SIZE = 32
HYPERCALL_IRET = 23
_UD2 = b"\x0f\x0b"


def hypercall_page(instruction: bytes = VMCALL, page_size: int = 4096) -> bytes:
    """The page Xen writes for an HVM/PVH guest, with `instruction` (VMCALL or VMMCALL) in each stub."""
    if instruction not in (VMCALL, VMMCALL):
        raise ValueError("the hypercall instruction is vmcall or vmmcall")
    page = bytearray(b"\xcc" * page_size)
    for nr in range(page_size // HYPERCALL_STUB_SIZE):
        off = nr * HYPERCALL_STUB_SIZE
        stub = _UD2 if nr == HYPERCALL_IRET else b"\xb8" + nr.to_bytes(4, "little") + instruction + b"\xc3"
        page[off:off + len(stub)] = stub
    return bytes(page)
