"""The virtual platform on its own: ACPI tables, the local APIC model, the CPUID policy, the layout."""

from __future__ import annotations

import struct

import pytest

from hyperdisco.platform import acpi, layout
from hyperdisco.platform.cpuid import XEN_BASE, CpuidPolicy
from hyperdisco.platform.lapic import EOI, ICR_HI, ICR_LO, ID, LVT, SVR, TPR, VERSION, Lapic
from hyperdisco.xen import abi

BASE = layout.ACPI_BASE


# -- ACPI -----------------------------------------------------------------------------------------------
def _tables(nr_cpus: int = 1) -> dict[bytes, tuple[int, bytes]]:
    out = {}
    for addr, blob in acpi.build_tables(BASE, nr_cpus).items():
        out[blob[:8] if blob.startswith(b"RSD PTR ") else blob[:4]] = (addr, blob)
    return out


@pytest.mark.parametrize("nr_cpus", [1, 2, 8, 64])
def test_every_table_checksums_to_zero(nr_cpus: int) -> None:
    for sig, (_, blob) in _tables(nr_cpus).items():
        if sig == b"RSD PTR ":
            continue
        assert sum(blob) % 256 == 0, sig
        assert struct.unpack_from("<I", blob, 4)[0] == len(blob), sig


def test_rsdp_v2() -> None:
    addr, rsdp = _tables()[b"RSD PTR "]
    assert addr == BASE
    assert len(rsdp) == 36
    assert sum(rsdp[:20]) % 256 == 0  # ACPI 1.0 checksum
    assert sum(rsdp) % 256 == 0  # extended checksum
    assert rsdp[15] == 2  # revision
    length, xsdt = struct.unpack_from("<IQ", rsdp, 20)
    assert length == 36
    assert xsdt == _tables()[b"XSDT"][0]
    assert rsdp[9:15] == acpi.OEM_ID


def test_xsdt_points_at_fadt_and_madt() -> None:
    t = _tables()
    _, xsdt = t[b"XSDT"]
    ptrs = struct.unpack_from("<QQ", xsdt, 36)
    assert len(xsdt) == 36 + 16
    assert set(ptrs) == {t[b"FACP"][0], t[b"APIC"][0]}


def test_fadt() -> None:
    t = _tables()
    _, fadt = t[b"FACP"]
    assert len(fadt) == 276 and fadt[8] == 6
    dsdt_addr = t[b"DSDT"][0]
    assert struct.unpack_from("<I", fadt, 40)[0] == dsdt_addr
    assert struct.unpack_from("<Q", fadt, 140)[0] == dsdt_addr
    flags = struct.unpack_from("<I", fadt, 112)[0]
    assert flags & (1 << 20) and flags & (1 << 10)  # HW_REDUCED_ACPI, RESET_REG_SUP
    space, bits, _, _, addr = struct.unpack_from("<BBBBQ", fadt, 244)
    assert (space, bits, addr) == (1, 8, acpi.SLEEP_CONTROL_PORT)
    assert struct.unpack_from("<BBBBQ", fadt, 256)[4] == acpi.SLEEP_STATUS_PORT
    assert struct.unpack_from("<BBBBQ", fadt, 116)[4] == acpi.RESET_PORT
    assert fadt[128] == acpi.RESET_VALUE


def test_dsdt_has_s5() -> None:
    _, dsdt = _tables()[b"DSDT"]
    assert b"_S5_" in dsdt[36:]


@pytest.mark.parametrize("nr_cpus", [1, 3, 16])
def test_madt_one_lapic_per_cpu(nr_cpus: int) -> None:
    _, madt = _tables(nr_cpus)[b"APIC"]
    lapic_addr, flags = struct.unpack_from("<II", madt, 36)
    assert lapic_addr == layout.LAPIC_BASE
    o, seen = 44, []
    while o < len(madt):
        typ, length = madt[o], madt[o + 1]
        assert length >= 2
        if typ == 0:
            uid, apic_id, lflags = struct.unpack_from("<BBI", madt, o + 2)
            assert lflags & 1  # enabled
            seen.append((uid, apic_id))
        o += length
    assert o == len(madt)
    assert seen == [(i, i) for i in range(nr_cpus)]


def test_tables_fit_their_window() -> None:
    for addr, blob in acpi.build_tables(BASE, 64).items():
        assert BASE <= addr and addr + len(blob) <= BASE + layout.ACPI_SIZE
    spans = sorted((a, a + len(b)) for a, b in acpi.build_tables(BASE, 64).items())
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end <= start


# -- LAPIC ----------------------------------------------------------------------------------------------
def test_lapic_reset_state() -> None:
    la = Lapic(3)
    assert la.read(ID) >> 24 == 3
    assert la.read(VERSION) & 0xFF == 0x14
    for r in LVT:
        assert la.read(r) & 0x10000  # masked
    assert la.read(0x800) == 0 and la.read(0x3F0) == 0
    assert la.pending == set()


def test_lapic_id_version_eoi_writes_ignored() -> None:
    la = Lapic(2)
    la.write(ID, 7 << 24)
    la.write(VERSION, 0)
    la.write(EOI, 0x55)
    assert la.read(ID) == 2 << 24
    assert la.read(VERSION) == 0x00050014
    assert la.read(EOI) == 0


def test_lapic_plain_registers_are_stored() -> None:
    la = Lapic()
    la.write(TPR, 0x20)
    la.write(SVR, 0x1FF)
    la.write(SVR + 4, 0x1EF)  # sub-register offsets address the same register
    assert la.read(TPR) == 0x20
    assert la.read(SVR) == 0x1EF
    la.write(TPR, 1 << 40 | 5)
    assert la.read(TPR) == 5


@pytest.mark.parametrize("shorthand", [1, 2])
def test_lapic_self_ipi_by_shorthand(shorthand: int) -> None:
    la = Lapic(0)
    la.write(ICR_LO, shorthand << 18 | 0xF6)
    assert la.pending == {0xF6}
    assert la.take_pending() == 0xF6
    assert la.take_pending() is None


def test_lapic_self_ipi_by_destination() -> None:
    la = Lapic(5)
    la.write(ICR_HI, 5 << 24)
    la.write(ICR_LO, 0x41)
    assert la.pending == {0x41}
    la.write(ICR_HI, 4 << 24)  # another CPU: not delivered here
    la.write(ICR_LO, 0x42)
    assert la.pending == {0x41}


def test_lapic_ipis_not_delivered_here() -> None:
    la = Lapic(0)
    la.write(ICR_LO, 3 << 18 | 0x50)  # all excluding self
    la.write(ICR_LO, 1 << 18 | 4 << 8 | 0x51)  # NMI mode
    la.write(ICR_LO, 1 << 18 | 5 << 8 | 0x00)  # INIT
    la.write(ICR_LO, 1 << 18 | 0x0F)  # illegal vector
    assert la.pending == set()


def test_lapic_takes_highest_vector_first() -> None:
    la = Lapic()
    for v in (0x30, 0xF0, 0x80, 0x30):
        la.write(ICR_LO, 1 << 18 | v)
    assert [la.take_pending() for _ in range(4)] == [0xF0, 0x80, 0x30, None]


# -- CPUID ----------------------------------------------------------------------------------------------
NATIVE = {
    (0, 0): (0xD, 0x756E6547, 0x6C65746E, 0x49656E69),
    (1, 0): (0x306A9, 0x00010800, (1 << 21) | (1 << 24) | (1 << 0), 0x078BFBFF),
    (7, 0): (0, 0x11, 0, 0),
    (7, 1): (0, 0x22, 0, 0),
    (0x80000007, 0): (0, 0, 0, 0),
}


@pytest.fixture
def policy() -> CpuidPolicy:
    return CpuidPolicy(NATIVE, 7, (4, 17), 2_500_000)


def test_cpuid_xen_signature(policy: CpuidPolicy) -> None:
    a, b, c, d = policy.lookup(XEN_BASE, 0, 0)
    assert struct.pack("<III", b, c, d) == b"XenVMMXenVMM"
    assert a >= XEN_BASE + 4
    assert policy.lookup(XEN_BASE + 1, 0, 0)[0] == 4 << 16 | 17
    assert policy.lookup(XEN_BASE + 2, 0, 0)[:2] == (1, XEN_BASE)
    assert policy.lookup(XEN_BASE + 3, 0, 0)[2] == 2_500_000
    assert policy.lookup(XEN_BASE + 5, 0, 0) == (0, 0, 0, 0)
    assert policy.lookup(XEN_BASE + 0x100, 0, 0) == (0, 0, 0, 0)


def test_cpuid_hvm_leaf(policy: CpuidPolicy) -> None:
    a, b, c, _ = policy.lookup(XEN_BASE + 4, 0, 3)
    assert a & (1 << 3) and a & (1 << 4)  # vCPU id and domid present
    assert b == 3
    assert c == 7


def test_cpuid_leaf1_policy(policy: CpuidPolicy) -> None:
    a, b, c, d = policy.lookup(1, 0, 2)
    assert c >> 31 & 1  # hypervisor
    assert not c >> 21 & 1  # no x2APIC
    assert not c >> 24 & 1  # no TSC deadline
    assert c & 1  # other bits kept
    assert b >> 24 == 2 and b & 0xFFFFFF == 0x010800
    assert (a, d) == (0x306A9, 0x078BFBFF)
    assert policy.lookup(1, 0, 0)[1] >> 24 == 0


def test_cpuid_passthrough_and_subleaves(policy: CpuidPolicy) -> None:
    assert policy.lookup(0, 0, 0)[1:] == NATIVE[(0, 0)][1:]  # the vendor string
    assert policy.lookup(0, 0, 0)[0] >= NATIVE[(0, 0)][0]
    assert policy.lookup(0, 5, 0) == policy.lookup(0, 0, 0)  # subleaf ignored outside the subleaf leaves
    assert policy.lookup(0xA, 0, 0) == (0, 0, 0, 0)  # leaves up to the new maximum exist, empty
    assert policy.lookup(7, 1, 0)[1] == 0x22
    assert policy.lookup(7, 0, 0)[1] == 0x11
    assert policy.lookup(0x1234, 0, 0) == (0, 0, 0, 0)
    assert policy.lookup(0x80000007, 0, 0)[3] & 1 << 8  # invariant TSC


def _tsc_hz_from_leaf_15h(p: CpuidPolicy) -> float:
    a, b, c, _ = p.lookup(0x15, 0, 0)
    assert a and b and c
    return c * b / a


@pytest.mark.parametrize("tsc_khz", [1_000_000, 2_500_000, 3_999_999])
def test_cpuid_tsc_frequency_leaves(tsc_khz: int) -> None:
    p = CpuidPolicy(NATIVE, 1, (4, 17), tsc_khz)
    assert p.lookup(0, 0, 0)[0] >= 0x16
    assert _tsc_hz_from_leaf_15h(p) == pytest.approx(tsc_khz * 1000, rel=1e-6)
    assert p.lookup(0x16, 0, 0)[0] == tsc_khz // 1000


def test_cpuid_tsc_frequency_above_4ghz() -> None:
    p = CpuidPolicy(NATIVE, 1, (4, 17), 5_000_000)
    assert _tsc_hz_from_leaf_15h(p) == pytest.approx(5e9, rel=1e-6)


def test_cpuid_policy_does_not_modify_native_table() -> None:
    native = dict(NATIVE)
    CpuidPolicy(native, 1, (4, 17), 1000)
    assert native == NATIVE


def test_cpuid_policy_without_leaf1() -> None:
    p = CpuidPolicy({(0, 0): (0xD, 0, 0, 0)}, 1, (4, 17), 1000)
    assert p.lookup(1, 0, 0) == (0, 0, 0, 0)


def test_cpuid_never_offers_rdrand_or_rdseed() -> None:
    """unicorn's RDRAND is a Mersenne Twister the guest can predict (platform/cpuid.py): a CPU model that
    has RDRAND/RDSEED must not pass them on, and nothing else in those leaves changes."""
    native = dict(NATIVE)
    native[(1, 0)] = (0x306A9, 0x00010800, (1 << 30) | (1 << 0), 0x078BFBFF)
    native[(7, 0)] = (0, (1 << 18) | 0x11, 0, 0)
    p = CpuidPolicy(native, 1, (4, 17), 1000)
    c = p.lookup(1, 0, 0)[2]
    assert not c >> 30 & 1 and c & 1
    assert p.lookup(7, 0, 0)[1] == 0x11
    assert p.lookup(7, 1, 0)[1] == 0x22
    table = p.engine_table(0)
    assert not table[(1, None)][2] >> 30 & 1
    assert not table[(7, 0)][1] >> 18 & 1


# -- layout ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ram", [layout.MIN_RAM, 512 * layout.MiB, layout.MAX_RAM])
def test_e820(ram: int) -> None:
    e = layout.e820(ram)
    spans = sorted((a, a + s, t) for a, s, t in e)
    for (_, end, _), (start, _, _) in zip(spans, spans[1:], strict=False):
        assert end <= start
    ram_total = sum(s for _, s, t in e if t == abi.E820_RAM)
    assert ram_total == ram - 0x100000 + 0x9F000
    assert (layout.ACPI_BASE, layout.ACPI_SIZE, abi.E820_ACPI) in e
    assert all(a % 4096 == 0 and s % 4096 == 0 for a, s, _ in e)
    assert max(a + s for a, s, t in e if t == abi.E820_RAM) == ram


def test_layout_constants() -> None:
    assert layout.MAX_RAM <= layout.LAPIC_BASE
    assert layout.LAPIC_BASE + 4096 <= layout.SPECIAL_BASE
    assert layout.SPECIAL_BASE + layout.SPECIAL_PAGES * 4096 <= 1 << 32
    assert layout.special_gpa(layout.CONSOLE_PAGE) == layout.SPECIAL_BASE
    assert layout.special_gpa(layout.STORE_PAGE) == layout.SPECIAL_BASE + 4096
