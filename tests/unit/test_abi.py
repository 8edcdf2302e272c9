"""The Xen ABI layouts against the sizes and offsets of the C structures in Xen's public headers."""

from __future__ import annotations

import importlib
import types

import pytest

from hyperdisco.xen import abi


@pytest.mark.parametrize(("fmt", "size"), [
    (abi.HVM_START_INFO, 56), (abi.HVM_MODLIST_ENTRY, 32), (abi.HVM_MEMMAP_ENTRY, 24),
    (abi.VCPU_TIME_INFO, 32), (abi.WALLCLOCK, 16), (abi.ADD_TO_PHYSMAP, 24), (abi.MEMORY_MAP, 16),
    (abi.E820_ENTRY, 20), (abi.MEMORY_RESERVATION, 32), (abi.HVM_PARAM, 16), (abi.SINGLESHOT_TIMER, 16),
    (abi.REGISTER_VCPU_INFO, 16), (abi.SCHED_POLL, 24), (abi.EVTCHN_ALLOC_UNBOUND, 8),
    (abi.EVTCHN_BIND_INTERDOMAIN, 12), (abi.EVTCHN_BIND_VIRQ, 12), (abi.EVTCHN_BIND_IPI, 8),
    (abi.EVTCHN_BIND_VCPU, 8), (abi.EVTCHN_PORT, 4), (abi.EVTCHN_STATUS, 16), (abi.GNTTAB_QUERY_SIZE, 16),
    (abi.GNTTAB_SETUP_TABLE, 24),
])
def test_struct_sizes(fmt: object, size: int) -> None:
    assert fmt.size == size  # type: ignore[attr-defined]


def test_field_offsets() -> None:
    # struct xen_hvm_param: domid at 0, index at 4, value at 8
    assert abi.HVM_PARAM.pack(0x1111, 0x22222222, 0x33)[4:8] == b"\x22" * 4
    # struct xen_add_to_physmap: gpfn at 16
    assert abi.ADD_TO_PHYSMAP.pack(0, 0, 0, 0, 0x0102030405060708)[16:] == bytes.fromhex("0807060504030201")
    # struct sched_poll: timeout at 16
    assert abi.SCHED_POLL.pack(0, 0, 1)[16] == 1
    # struct vcpu_time_info: tsc_shift (signed) at 28, flags at 29
    raw = abi.VCPU_TIME_INFO.pack(0, 0, 0, 0, 0, -1, 1)
    assert raw[28] == 0xFF and raw[29] == 1
    assert abi.EVTCHN_STATUS_UNION == abi.EVTCHN_STATUS.size


def test_shared_info_and_vcpu_info_layout() -> None:
    assert abi.VCPU_INFO_SIZE * abi.XEN_LEGACY_MAX_VCPUS == abi.SI_EVTCHN_PENDING
    assert abi.VI_TIME + abi.VCPU_TIME_INFO.size == abi.VCPU_INFO_SIZE
    assert abi.SI_WC_VERSION + abi.WALLCLOCK.size <= 4096
    assert abi.EVTCHN_2L_NR_CHANNELS == 64 * 64


def test_hypercall_numbers() -> None:
    expected = {"memory_op": 12, "set_timer_op": 15, "xen_version": 17, "console_io": 18,
                "grant_table_op": 20, "vcpu_op": 24, "sched_op": 29, "event_channel_op": 32, "hvm_op": 34}
    for name, nr in expected.items():
        assert abi.HYPERCALL_NUMBERS[name] == nr
        assert abi.HYPERCALLS[nr] == name
    assert len(abi.HYPERCALL_NUMBERS) == len(abi.HYPERCALLS)


def test_misc_constants() -> None:
    assert abi.HVM_START_MAGIC == 0x336EC578
    assert abi.DOMID_SELF == 0x7FF0
    assert abi.XEN_ELFNOTE_PHYS32_ENTRY == 18
    assert abi.VMCALL == b"\x0f\x01\xc1" and abi.VMMCALL == b"\x0f\x01\xd9"
    assert (abi.EINVAL, abi.EFAULT, abi.ENOSYS, abi.EPERM, abi.ENOENT, abi.ETIME) == (22, 14, 38, 1, 2, 62)
    assert sorted(abi.SHUTDOWN_NAMES) == list(range(6))



HEADER_MODULES = ("xen", "errno", "event_channel", "grant_table", "memory", "vcpu", "sched", "hvm", "elfnote",
                  "version", "features", "arch_x86", "physdev")
IO_MODULES = ("ring", "blkif", "xenbus", "protocols", "xs_wire", "console")


def _defined_names(mod: types.ModuleType) -> set[str]:
    """The public names a module defines itself: not the modules, functions and classes it imports."""
    names = set()
    for name, value in vars(mod).items():
        if name.startswith("_") or name == "annotations" or isinstance(value, types.ModuleType):
            continue
        if isinstance(value, (types.FunctionType, type)) and value.__module__ != mod.__name__:
            continue
        names.add(name)
    return names


def test_one_module_per_header_each_name_defined_once() -> None:
    seen: dict[str, str] = {}
    for package, modules in (("hyperdisco.xen", HEADER_MODULES), ("hyperdisco.xen.io", IO_MODULES)):
        for m in modules:
            mod = importlib.import_module(f"{package}.{m}")
            exported = list(mod.__all__)
            assert len(exported) == len(set(exported)), m
            own = _defined_names(mod) - ({"PAGE"} if m != "xen" else set())  # PAGE is imported from xen.py
            assert set(exported) == own, (m, set(exported) ^ own)
            for name in exported:
                assert name not in seen, f"{name} defined in {seen.get(name)} and {m}"
                seen[name] = m
    # the facade re-exports every non-I/O header name, and nothing else
    facade = {name for name in vars(abi) if not name.startswith("_") and name != "annotations"}
    assert facade == {name for name, m in seen.items() if m in HEADER_MODULES}
