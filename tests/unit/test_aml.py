"""The AML encoder (hyperdisco/platform/aml.py) against the ACPI 6.5 encodings (chapter 20), and the VM
Generation ID device it builds into the DSDT (platform/vmgenid.py, platform/acpi.py)."""

from __future__ import annotations

import pytest

from hyperdisco.platform import acpi, aml, layout, vmgenid


def test_pkg_length_boundaries() -> None:
    # one byte up to 63 (the length counts itself); then the lead byte's bits 7-6 give the extra bytes,
    # its bits 3-0 the low nibble, each extra byte the next 8 bits (20.2.4)
    assert aml.pkg_length(0) == bytes([1])
    assert aml.pkg_length(62) == bytes([63])
    assert aml.pkg_length(63) == bytes([0x40 | (65 & 0xF), 65 >> 4])          # 65 = 63 + 2 bytes
    assert aml.pkg_length(0xFFD) == bytes([0x4F, 0xFF])                       # 0xFFF fits in 12 bits
    assert aml.pkg_length(0xFFE) == bytes([0x80 | 1, 0x00, 0x01])            # 0x1001 needs two bytes
    assert aml.pkg_length((1 << 28) - 5) == bytes([0xC0 | 0xF, 0xFF, 0xFF, 0xFF])
    with pytest.raises(aml.AmlError):
        aml.pkg_length(1 << 28)


def test_integers() -> None:
    assert aml.integer(0) == b"\x00" and aml.integer(1) == b"\x01" and aml.integer(2**64 - 1) == b"\xff"
    assert aml.integer(5) == b"\x0a\x05"
    assert aml.integer(0x1234) == b"\x0b\x34\x12"
    assert aml.integer(0xFF000) == b"\x0c\x00\xf0\x0f\x00"
    assert aml.integer(1 << 32) == b"\x0e" + (1 << 32).to_bytes(8, "little")
    for bad in (-1, 1 << 64):
        with pytest.raises(aml.AmlError):
            aml.integer(bad)


def test_names_and_strings() -> None:
    assert aml.name_string("_S5") == b"_S5_"
    assert aml.name_string("\\_SB") == b"\\_SB_"
    assert aml.name_string("\\_SB.VGEN") == b"\\\x2e_SB_VGEN"
    assert aml.name_string("^^A.B.C") == b"^^\x2f\x03A___B___C___"
    assert aml.name_string("\\") == b"\\\x00"
    for bad in ("1ABC", "ABCDE", "ab", "A.B-"):
        with pytest.raises(aml.AmlError):
            aml.name_string(bad)
    assert aml.string("VMGENCTR") == b"\x0dVMGENCTR\x00"
    for bad in ("a\0b", "é"):
        with pytest.raises(aml.AmlError):
            aml.string(bad)


def test_s5_as_before() -> None:
    # Name(_S5, Package(2){5, 5}): the bytes the DSDT has always had
    s5 = aml.name("_S5", aml.package(aml.integer(5), aml.integer(5)))
    assert s5 == bytes.fromhex("085F53355F1206020A050A05")


def _pkg2(n: int) -> bytes:
    """A two-byte PkgLength of total n (64 <= n < 4096)."""
    return bytes([0x40 | (n & 0xF), n >> 4])


def test_vmgenid_device_bytes() -> None:
    """Scope(\\_SB) { Device(VGEN) { Name(_HID, "VMGENCTR") Name(_CID, "VM_Gen_Counter")
    Name(_DDN, "VM_Gen_Counter") Method(ADDR, 0) { Return (Package(2) {0xFF000, 0}) } }
    Device(VGNT) { Name(_HID, "ACPI0013") Name(_CRS, Buffer(2) {0x79, 0})
    OperationRegion(VGNR, SystemMemory, 0xFF010, 4) Field(VGNR, DWordAcc, NoLock, Preserve) { CHNG, 32 }
    Method(_PSC) { If (CHNG) { Return (3) } Return (0) }
    Method(_PS0) { If (CHNG) { Store (0, CHNG) Notify (\\_SB.VGEN, 0x80) } } Method(_PS3) {} } },
    spelled out from the ACPI 6.5 encodings."""
    method = (b"\x14" + bytes([1 + 4 + 1 + 1 + 9]) + b"ADDR" + b"\x00" + b"\xa4"
              + b"\x12\x08\x02" + b"\x0c\x00\xf0\x0f\x00" + b"\x00")
    names = (b"\x08_HID\x0dVMGENCTR\x00" + b"\x08_CID\x0dVM_Gen_Counter\x00"
             + b"\x08_DDN\x0dVM_Gen_Counter\x00")
    vgen_body = b"VGEN" + names + method
    vgen = b"\x5b\x82" + _pkg2(len(vgen_body) + 2) + vgen_body
    psc_if = b"\xa0" + bytes([1 + 4 + 3]) + b"CHNG" + b"\xa4\x0a\x03"
    psc = b"\x14" + bytes([1 + 4 + 1 + len(psc_if) + 2]) + b"_PSC\x00" + psc_if + b"\xa4\x00"
    notify = b"\x86" + b"\\\x2e_SB_VGEN" + b"\x0a\x80"
    ps0_if = b"\xa0" + bytes([1 + 4 + 6 + len(notify)]) + b"CHNG" + b"\x70\x00CHNG" + notify
    ps0 = b"\x14" + bytes([1 + 4 + 1 + len(ps0_if)]) + b"_PS0\x00" + ps0_if
    vgnt_body = (b"VGNT" + b"\x08_HID\x0dACPI0013\x00" + b"\x08_CRS\x11\x05\x0a\x02\x79\x00"
                 + b"\x5b\x80VGNR\x00\x0c\x10\xf0\x0f\x00\x0a\x04"
                 + b"\x5b\x81\x0bVGNR\x03CHNG\x20"
                 + psc + ps0 + b"\x14\x06_PS3\x00")
    vgnt = b"\x5b\x82" + _pkg2(len(vgnt_body) + 2) + vgnt_body
    scope_body = b"\\_SB_" + vgen + vgnt
    assert vmgenid.device_aml() == b"\x10" + _pkg2(len(scope_body) + 2) + scope_body
    assert vmgenid.GENID_GPA % 8 == 0 and vmgenid.CHANGED_GPA == 0xFF010
    assert layout.ACPI_BASE <= vmgenid.GENID_GPA < layout.ACPI_BASE + layout.ACPI_SIZE


def test_field_and_buffer_encodings() -> None:
    assert aml.field("R", 3, ("A", 8), ("B", 64)) == b"\x5b\x81" + bytes([1 + 4 + 1 + 5 + 5 + 1]) + \
        b"R___\x03A___\x08B___" + bytes([0x40, 0x04])  # 64 bits: a two-byte length, not counting itself
    assert aml.buffer(b"") == b"\x11\x02\x00"
    assert aml.notify("X", 0x80) == b"\x86X___\x0a\x80"
    assert aml.store(aml.integer(1), "X") == b"\x70\x01X___"


def test_dsdt_and_generation_id_in_tables() -> None:
    gen = bytes(range(16))
    tables = acpi.build_tables(layout.ACPI_BASE, 1, gen)
    assert tables[vmgenid.GENID_GPA] == gen
    dsdt = next(b for b in tables.values() if b[:4] == b"DSDT")
    assert sum(dsdt) & 0xFF == 0 and int.from_bytes(dsdt[4:8], "little") == len(dsdt)
    assert dsdt[36:] == aml.name("_S5", aml.package(aml.integer(5), aml.integer(5))) + vmgenid.device_aml()
    assert vmgenid.GENID_GPA not in acpi.build_tables(layout.ACPI_BASE, 1)
    with pytest.raises(ValueError):
        acpi.build_tables(layout.ACPI_BASE, 1, b"short")
    assert vmgenid.new_generation_id() != vmgenid.new_generation_id()
