r"""The ACPI Virtual Machine Generation ID device (docs/clones.md).

Microsoft's "Virtual Machine Generation ID" specification (as Linux's drivers/virt/vmgenid.c and QEMU's
hw/acpi/vmgenid.c implement it): a device in the ACPI namespace whose _CID is "VM_Gen_Counter" (Linux
matches "VMGENCTR" and "VM_GEN_COUNTER"; ACPICA upper-cases _HID/_CID strings) with a method ADDR
returning a Package of two integers, the low and high 32 bits of the guest-physical address of a
16-byte, 8-byte aligned generation ID: a cryptographically random 128-bit value the hypervisor changes
whenever the VM may run again from the same state (restored from a snapshot, cloned). The guest reads it
at boot (Linux: add_device_randomness) and again on a Notify(device, 0x80) (Linux: add_vmfork_randomness,
which reseeds its random pool at once).

Here: the ID lives in the last page of the ACPI tables' region (e820 type ACPI, never the guest's RAM):
a new random one at every boot and every restore (vmm/snapshot.py), so every clone has its own.

The notification. ACPI notifies normally come from AML run on an SCI (a GPE's _Lxx) or a Generic Event
Device's interrupt; a PVH guest has neither (hardware-reduced ACPI, no IO-APIC, so no GSI for a GED's
_CRS: Xen gives PVH guests no ACPI events either). But a restored guest runs AML of ours on its own:
Linux's Xen resume (drivers/xen/manage.c do_suspend) restores its devices with PMSG_RESTORE, and a
platform device in the generic ACPI PM domain (drivers/acpi/device_pm.c) gets acpi_subsys_restore_early
-> acpi_dev_resume -> acpi_device_set_power(D0), which for a device already in D0 evaluates its _PSC and,
when that says it is not in D0, its _PS0. So a second device, VGNT, a Generic Event Device (ACPI0013,
which Linux's built-in evged driver binds as a platform device, so it joins that PM domain) with an
empty _CRS (no interrupt), has _PSC answer D3 while the word CHNG after the ID is set, and _PS0 clear
CHNG and Notify(\_SB.VGEN, 0x80). The restore sets CHNG with the new ID; the guest's own resume then
delivers the notify, and a kernel with the vmgenid driver calls add_vmfork_randomness.
"""

from __future__ import annotations

import os

from . import aml, layout

GENID_GPA = layout.ACPI_BASE + layout.ACPI_SIZE - 0x1000  # one page, only its first 16 bytes used
GENID_SIZE = 16
CHANGED_GPA = GENID_GPA + GENID_SIZE  # u32: non-zero from a restore until the guest's _PS0 notified
DEVICE = "\\_SB.VGEN"
D3 = 3


def device_aml() -> bytes:
    r"""Scope(\_SB) { Device(VGEN) { _HID "VMGENCTR", _CID "VM_Gen_Counter", _DDN, Method(ADDR) }
    Device(VGNT) { _HID "ACPI0013", _CRS (empty), OperationRegion over CHANGED_GPA, Field CHNG,
    _PSC: If (CHNG) Return (3) else 0, _PS0: If (CHNG) { CHNG = 0, Notify(VGEN, 0x80) }, _PS3 } }."""
    vgen = aml.device(
        "VGEN",
        aml.name("_HID", aml.string("VMGENCTR")),
        aml.name("_CID", aml.string("VM_Gen_Counter")),
        aml.name("_DDN", aml.string("VM_Gen_Counter")),
        aml.method("ADDR", 0, aml.return_(aml.package(aml.integer(GENID_GPA & 0xFFFFFFFF),
                                                      aml.integer(GENID_GPA >> 32)))))
    vgnt = aml.device(
        "VGNT",
        aml.name("_HID", aml.string("ACPI0013")),
        aml.name("_CRS", aml.buffer(bytes([0x79, 0x00]))),  # ResourceTemplate() {}: the End Tag alone
        aml.op_region("VGNR", aml.SYSTEM_MEMORY, CHANGED_GPA, 4),
        aml.field("VGNR", aml.DWORD_ACC, ("CHNG", 32)),
        aml.method("_PSC", 0, aml.if_(aml.ref("CHNG"), aml.return_(aml.integer(D3))),
                   aml.return_(aml.integer(0))),
        aml.method("_PS0", 0, aml.if_(aml.ref("CHNG"), aml.store(aml.integer(0), "CHNG"),
                                      aml.notify(DEVICE, 0x80))),
        aml.method("_PS3", 0))
    return aml.scope("\\_SB", vgen, vgnt)


def changed_marker() -> bytes:
    """What a restore writes at CHANGED_GPA after the new ID (the guest's _PS0 clears it)."""
    return (1).to_bytes(4, "little")


def new_generation_id() -> bytes:
    """A fresh generation ID: 128 random bits from the host's CSPRNG."""
    return os.urandom(GENID_SIZE)
