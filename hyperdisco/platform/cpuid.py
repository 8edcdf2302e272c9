"""CPUID as the guest sees it: the engine's own CPU model, honestly, plus the Xen leaves.

Xen's leaves (xen/include/public/arch-x86/cpuid.h): 0x40000000 signature "XenVMMXenVMM" and the last
leaf; 0x40000001 version; 0x40000002 hypercall pages and MSR base; 0x40000003 time (TSC frequency);
0x40000004 HVM features (vCPU id and domain id present).
"""

from __future__ import annotations

import struct

XEN_BASE = 0x40000000
XEN_HVM_CPUID_VCPU_ID_PRESENT = 1 << 3
XEN_HVM_CPUID_DOMID_PRESENT = 1 << 4
SUBLEAF_LEAVES = (4, 7, 0xB, 0xD, 0xF, 0x10, 0x14)
# Never offered, whatever CPU model the engine emulates: unicorn 2.1.4's RDRAND/RDSEED helper draws from
# a Mersenne Twister per host thread (its glib_compat g_rand, seeded once from 16 bytes of /dev/urandom),
# not a cryptographic generator. Its state follows from 312 RDRAND results, so any guest process could
# predict (and, the generator being invertible, recompute) what the guest kernel draws; and the stock
# Debian kernel (CONFIG_RANDOM_TRUST_CPU=y) credits RDRAND as full entropy to seed its RNG. (On the qemu64
# model the tcg engine uses, TCG raises #UD for both anyway: it checks the model's own feature bits.)
LEAF1_ECX_RDRAND = 1 << 30
LEAF7_EBX_RDSEED = 1 << 18

Regs = tuple[int, int, int, int]


class CpuidPolicy:
    def __init__(self, native: dict[tuple[int, int], Regs], domid: int, xen_version: tuple[int, int],
                 tsc_khz: int) -> None:
        table = {k: list(v) for k, v in native.items()}
        if (1, 0) in table:
            ecx = table[(1, 0)][2]
            ecx &= ~((1 << 21) | (1 << 24))  # no x2APIC, no TSC deadline timer: not modelled
            ecx |= 1 << 31  # running on a hypervisor
            ecx &= ~LEAF1_ECX_RDRAND  # see LEAF1_ECX_RDRAND
            table[(1, 0)][2] = ecx
        if (7, 0) in table:
            table[(7, 0)][1] &= ~LEAF7_EBX_RDSEED
        if (0x80000007, 0) in table:
            table[(0x80000007, 0)][3] |= 1 << 8  # invariant TSC: it is the host's
        # The TSC frequency, stated the way Intel CPUs state it (SDM vol. 2, CPUID leaves 15H and 16H):
        # the kernel then needs no PIT calibration loop (~140 000 port reads, each a trap).
        if (0, 0) in table and table[(0, 0)][0] < 0x16:
            for leaf in range(table[(0, 0)][0] + 1, 0x15):
                table.setdefault((leaf, 0), [0, 0, 0, 0])
            table[(0, 0)][0] = 0x16
        mhz = max(1, tsc_khz // 1000)
        # a 1 MHz "crystal" and the ratio tsc_khz/1000: exact for any TSC frequency
        table[(0x15, 0)] = [1000, tsc_khz & 0xFFFFFFFF, 1_000_000, 0]
        table[(0x16, 0)] = [mhz, mhz, 100, 0]  # base, max and bus MHz
        self.table = {k: (v[0], v[1], v[2], v[3]) for k, v in table.items()}
        self.domid = domid
        sig = struct.unpack("<III", b"XenVMMXenVMM")
        self.xen: dict[int, Regs] = {
            XEN_BASE: (XEN_BASE + 4, sig[0], sig[1], sig[2]),
            XEN_BASE + 1: ((xen_version[0] << 16) | xen_version[1], 0, 0, 0),
            XEN_BASE + 2: (1, XEN_BASE, 0, 0),
            XEN_BASE + 3: (0, 0, tsc_khz, 0),
        }

    def engine_table(self, vcpu_id: int) -> dict[tuple[int, int | None], Regs]:
        """Every answer `lookup` gives for this vCPU, as a table an engine can answer from by itself:
        (leaf, None) matches any subleaf; leaves not in it read as zeros, as in `lookup`."""
        out: dict[tuple[int, int | None], Regs] = {}
        for leaf, sub in sorted(self.table):
            out[(leaf, sub if leaf in SUBLEAF_LEAVES else None)] = self.lookup(leaf, sub, vcpu_id)
        for leaf in (*self.xen, XEN_BASE + 4):
            out[(leaf, None)] = self.lookup(leaf, 0, vcpu_id)
        return out

    def lookup(self, leaf: int, subleaf: int, vcpu_id: int) -> Regs:
        if leaf == XEN_BASE + 4:
            return (XEN_HVM_CPUID_VCPU_ID_PRESENT | XEN_HVM_CPUID_DOMID_PRESENT, vcpu_id, self.domid, 0)
        if leaf in self.xen:
            return self.xen[leaf]
        if XEN_BASE <= leaf < XEN_BASE + 0x10000:
            return (0, 0, 0, 0)
        sub = subleaf if leaf in SUBLEAF_LEAVES else 0
        regs = self.table.get((leaf, sub))
        if regs is None:
            return (0, 0, 0, 0)
        if leaf == 1:  # initial APIC id in EBX[31:24]
            return (regs[0], (regs[1] & 0x00FFFFFF) | (vcpu_id << 24), regs[2], regs[3])
        return regs
