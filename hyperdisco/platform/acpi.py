"""Minimal ACPI tables: RSDP, XSDT, a hardware-reduced FADT, a DSDT with \\_S5 and the VM Generation ID
device (platform/vmgenid.py), and a MADT.

Linux installs the Xen clockevent only when a local APIC is described (MADT), and powers a PVH guest off
through ACPI S5: the DSDT's \\_S5 package gives SLP_TYP, the FADT's hardware-reduced sleep control
register (an I/O port) takes SLP_TYP|SLP_EN. A reset register (I/O port) lets the guest reboot.
Layouts: ACPI 6.x specification (tables 5.x: RSDP, XSDT, FADT, MADT).
"""

from __future__ import annotations

import struct

from . import aml, vmgenid

SLEEP_CONTROL_PORT = 0x600
SLEEP_STATUS_PORT = 0x601
RESET_PORT = 0xCF9
RESET_VALUE = 0x06
SLP_EN = 1 << 5

OEM_ID = b"HDISCO"
OEM_TABLE = b"HYPERDSC"


def _checksum(b: bytes) -> int:
    return (-sum(b)) & 0xFF


def _table(sig: bytes, rev: int, body: bytes) -> bytes:
    hdr = sig + struct.pack("<IBB", 36 + len(body), rev, 0) + OEM_ID + OEM_TABLE
    hdr += struct.pack("<I4sI", 1, b"HDSC", 1)
    t = bytearray(hdr + body)
    t[9] = _checksum(bytes(t))
    return bytes(t)


def _gas(space: int, bits: int, address: int) -> bytes:
    """Generic Address Structure: space id, bit width, bit offset, access size, address."""
    return struct.pack("<BBBBQ", space, bits, 0, 1, address)


def build_tables(base: int, nr_cpus: int = 1, generation_id: bytes | None = None) -> dict[int, bytes]:
    """Tables to place at guest-physical addresses, RSDP at `base`; with `generation_id`, also the VM
    Generation ID (16 bytes) at vmgenid.GENID_GPA."""
    # the DSDT last: it grows with the AML in it (platform/vmgenid.py); the MADT holds up to 255 LAPICs
    xsdt_a, fadt_a, madt_a, dsdt_a = base + 0x40, base + 0x200, base + 0x400, base + 0x1000
    # DSDT AML: Name(_S5, Package(2){5, 5}), then Scope(\_SB) { Device(VGEN) {...} }
    s5 = aml.name("_S5", aml.package(aml.integer(5), aml.integer(5)))
    dsdt = _table(b"DSDT", 2, s5 + vmgenid.device_aml())
    fadt = bytearray(276 - 36)

    def put(off: int, data: bytes) -> None:
        fadt[off - 36:off - 36 + len(data)] = data

    put(40, struct.pack("<I", dsdt_a))  # DSDT (32-bit)
    put(112, struct.pack("<I", (1 << 20) | (1 << 10)))  # Flags: HW_REDUCED_ACPI | RESET_REG_SUP
    put(116, _gas(1, 8, RESET_PORT))  # RESET_REG
    put(128, bytes([RESET_VALUE]))  # RESET_VALUE
    put(131, bytes([1]))  # FADT minor version
    put(140, struct.pack("<Q", dsdt_a))  # X_DSDT
    put(244, _gas(1, 8, SLEEP_CONTROL_PORT))  # SLEEP_CONTROL_REG
    put(256, _gas(1, 8, SLEEP_STATUS_PORT))  # SLEEP_STATUS_REG
    fadt_t = _table(b"FACP", 6, bytes(fadt))
    lapics = b"".join(bytes([0, 8, i, i]) + struct.pack("<I", 1) for i in range(nr_cpus))
    madt = _table(b"APIC", 4, struct.pack("<II", 0xFEE00000, 0) + lapics)
    xsdt = _table(b"XSDT", 1, struct.pack("<QQ", fadt_a, madt_a))
    rsdp = bytearray(b"RSD PTR " + b"\0" + OEM_ID + bytes([2]) + struct.pack("<I", 0))
    rsdp[8] = _checksum(bytes(rsdp))
    rsdp += struct.pack("<IQ", 36, xsdt_a)
    rsdp += bytes([0, 0, 0, 0])
    rsdp[32] = _checksum(bytes(rsdp))
    tables = {base: bytes(rsdp), xsdt_a: xsdt, dsdt_a: dsdt, fadt_a: fadt_t, madt_a: madt}
    if generation_id is not None:
        if len(generation_id) != vmgenid.GENID_SIZE:
            raise ValueError("a VM generation ID is 16 bytes")
        tables[vmgenid.GENID_GPA] = generation_id
    return tables
