"""The x86 port of entry: the two instructions a PVH guest uses to enter the hypervisor.

No public header defines them: they are what Xen writes into an HVM/PVH guest's hypercall page
(xen/arch/x86/hvm/vmx/vmx.c and svm/svm.c), `vmcall` on Intel and `vmmcall` on AMD; the calling
convention around them is in xen/include/public/arch-x86/xen-x86_64.h.
"""

from __future__ import annotations

__all__ = ["VMCALL", "VMMCALL"]

# --- Port of entry: the two instructions a PVH guest uses to enter the hypervisor ------------------------
VMCALL = b"\x0f\x01\xc1"
VMMCALL = b"\x0f\x01\xd9"
