"""Grant table v1 as backends use it: every check before a page is touched, busy bits while in use."""

from __future__ import annotations

import pytest
from unit_support import DomainHarness

from hyperdisco.core.grant import (
    GRANT_ENTRY_V1,
    GrantError,
    GTF_permit_access,
    GTF_reading,
    GTF_readonly,
    GTF_writing,
)
from hyperdisco.xen import abi

GRANT_GPFN = 0x3000  # above the 32 MiB test domain's RAM


def setup_frame(dh: DomainHarness) -> int:
    arg = dh.put(abi.ADD_TO_PHYSMAP, abi.DOMID_SELF, 0, abi.XENMAPSPACE_grant_table, 0, GRANT_GPFN)
    assert dh.call("memory_op", abi.XENMEM_add_to_physmap, arg) == 0
    return GRANT_GPFN << 12


def grant(dh: DomainHarness, table: int, ref: int, flags: int, domid: int, frame: int) -> None:
    dh.dom.memory.pack(GRANT_ENTRY_V1, table + ref * 8, flags, domid, frame)


def test_read_write_through_a_grant(dh: DomainHarness) -> None:
    t = setup_frame(dh)
    dh.dom.memory.write(0x400000, b"guest data")
    grant(dh, t, 5, GTF_permit_access, 0, 0x400)
    with dh.dom.grants.access(5, 0, write=True) as page:
        assert page.read(0, 10) == b"guest data"
        page.write(100, b"from backend")
        flags = dh.dom.memory.unpack(GRANT_ENTRY_V1, t + 5 * 8)[0]
        assert flags & GTF_reading and flags & GTF_writing  # busy while in use
    assert dh.dom.memory.read(0x400000 + 100, 12) == b"from backend"
    assert dh.dom.memory.unpack(GRANT_ENTRY_V1, t + 5 * 8)[0] == GTF_permit_access


@pytest.mark.parametrize(("flags", "domid", "frame", "write", "why"), [
    (0, 0, 0x400, False, "does not permit"),
    (GTF_permit_access, 3, 0x400, False, "for domain 3"),
    (GTF_permit_access | GTF_readonly, 0, 0x400, True, "read-only"),
    (GTF_permit_access, 0, 0xFEE00, False, "not the granter's RAM"),
    (GTF_permit_access, 0, 0xFFFFFFFF, False, "not the granter's RAM"),
])
def test_bad_grants_are_refused(dh: DomainHarness, flags: int, domid: int, frame: int, write: bool,
                                why: str) -> None:
    t = setup_frame(dh)
    grant(dh, t, 1, flags, domid, frame)
    with pytest.raises(GrantError, match=why), dh.dom.grants.access(1, 0, write=write):
        pass


def test_refs_beyond_the_table_and_page_bounds(dh: DomainHarness) -> None:
    with pytest.raises(GrantError, match="out of range"), dh.dom.grants.access(0, 0, write=False):
        pass
    t = setup_frame(dh)
    with pytest.raises(GrantError, match="out of range"), dh.dom.grants.access(512, 0, write=False):
        pass
    grant(dh, t, 2, GTF_permit_access | GTF_readonly, 0, 0x400)
    with dh.dom.grants.access(2, 0, write=False) as page:
        with pytest.raises(GrantError):
            page.read(4090, 10)
        with pytest.raises(GrantError):
            page.write(0, b"x")
