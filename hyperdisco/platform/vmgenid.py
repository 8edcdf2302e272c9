"""The ACPI Virtual Machine Generation ID device (docs/clones.md).

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
"""

from __future__ import annotations

import os

from . import aml, layout

GENID_GPA = layout.ACPI_BASE + layout.ACPI_SIZE - 0x1000  # one page, only its first 16 bytes used
GENID_SIZE = 16
DEVICE = "\\_SB.VGEN"


def device_aml() -> bytes:
    r"""Scope(\_SB) { Device(VGEN) { _HID "VMGENCTR", _CID "VM_Gen_Counter", _DDN, Method(ADDR) } }."""
    return aml.scope("\\_SB", aml.device(
        "VGEN",
        aml.name("_HID", aml.string("VMGENCTR")),
        aml.name("_CID", aml.string("VM_Gen_Counter")),
        aml.name("_DDN", aml.string("VM_Gen_Counter")),
        aml.method("ADDR", 0, aml.return_(aml.package(aml.integer(GENID_GPA & 0xFFFFFFFF),
                                                      aml.integer(GENID_GPA >> 32))))))


def new_generation_id() -> bytes:
    """A fresh generation ID: 128 random bits from the host's CSPRNG."""
    return os.urandom(GENID_SIZE)
