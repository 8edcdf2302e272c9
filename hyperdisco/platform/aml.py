"""A small encoder of ACPI Machine Language (ACPI 6.5 specification, chapter 20 "ACPI Machine Language
(AML) Specification": 20.2.2 name objects, 20.2.3 data objects, 20.2.4 package length, 20.2.5 term
objects). Only what the DSDT needs: names, integers, strings, packages, scopes, devices and methods that
return a value. Each function returns the bytes of one AML term.
"""

from __future__ import annotations

import struct

ROOT_CHAR = 0x5C        # '\'
PARENT_PREFIX = 0x5E    # '^'
DUAL_NAME_PREFIX = 0x2E
MULTI_NAME_PREFIX = 0x2F
ZERO_OP = 0x00
ONE_OP = 0x01
ONES_OP = 0xFF
BYTE_PREFIX = 0x0A
WORD_PREFIX = 0x0B
DWORD_PREFIX = 0x0C
STRING_PREFIX = 0x0D
QWORD_PREFIX = 0x0E
NAME_OP = 0x08
SCOPE_OP = 0x10
PACKAGE_OP = 0x12
METHOD_OP = 0x14
RETURN_OP = 0xA4
EXT_OP_PREFIX = 0x5B
DEVICE_OP = 0x82        # after EXT_OP_PREFIX
MAX_PKG_LENGTH = (1 << 28) - 1


class AmlError(ValueError):
    """A value AML cannot encode (a bad name, a package too long, a string with a NUL...)."""


def name_seg(seg: str) -> bytes:
    """NameSeg: a lead character A-Z or '_', then up to three of A-Z, 0-9, '_'; padded with '_' to 4."""
    if not 1 <= len(seg) <= 4:
        raise AmlError(f"name segment {seg!r} is not 1-4 characters")
    if not ("A" <= seg[0] <= "Z" or seg[0] == "_"):
        raise AmlError(f"name segment {seg!r} does not start with A-Z or _")
    if any(not ("A" <= c <= "Z" or "0" <= c <= "9" or c == "_") for c in seg[1:]):
        raise AmlError(f"name segment {seg!r} has a character other than A-Z, 0-9, _")
    return seg.ljust(4, "_").encode("ascii")


def name_string(name: str) -> bytes:
    r"""NameString: an optional root ('\') or parent ('^'...) prefix, then a NamePath of dot-separated
    segments (one: NameSeg, two: DualNamePath, more: MultiNamePath; none: NullName)."""
    out = bytearray()
    rest = name
    if rest.startswith("\\"):
        out.append(ROOT_CHAR)
        rest = rest[1:]
    else:
        while rest.startswith("^"):
            out.append(PARENT_PREFIX)
            rest = rest[1:]
    segs = [name_seg(s) for s in rest.split(".")] if rest else []
    if not segs:
        out.append(0)  # NullName
    elif len(segs) == 1:
        out += segs[0]
    elif len(segs) == 2:
        out += bytes([DUAL_NAME_PREFIX]) + segs[0] + segs[1]
    elif len(segs) <= 255:
        out += bytes([MULTI_NAME_PREFIX, len(segs)]) + b"".join(segs)
    else:
        raise AmlError(f"name {name[:40]!r} has more than 255 segments")
    return bytes(out)


def pkg_length(body_len: int) -> bytes:
    """PkgLength for a body of `body_len` bytes: the encoded length counts its own bytes too. One byte
    (bits 0-5) up to 63; else bits 7-6 of the lead byte give 1-3 following bytes, its bits 0-3 the low
    nibble and each following byte the next 8 bits."""
    for extra in range(4):
        total = body_len + 1 + extra
        if extra == 0 and total <= 0x3F:
            return bytes([total])
        if extra and total < 1 << (4 + 8 * extra):
            if total > MAX_PKG_LENGTH:
                break
            rest = total >> 4
            return bytes([(extra << 6) | (total & 0x0F)]) + rest.to_bytes(extra, "little")
    raise AmlError(f"package of {body_len} bytes is too long for AML")


def integer(value: int) -> bytes:
    """ComputationalData for an integer: ZeroOp, OneOp, OnesOp (all 64 bits set) or the smallest prefix."""
    if not 0 <= value < 1 << 64:
        raise AmlError(f"integer {value} is not a 64-bit unsigned value")
    if value == 0:
        return bytes([ZERO_OP])
    if value == 1:
        return bytes([ONE_OP])
    if value == (1 << 64) - 1:
        return bytes([ONES_OP])
    for prefix, fmt, limit in ((BYTE_PREFIX, "<B", 1 << 8), (WORD_PREFIX, "<H", 1 << 16),
                               (DWORD_PREFIX, "<I", 1 << 32), (QWORD_PREFIX, "<Q", 1 << 64)):
        if value < limit:
            return bytes([prefix]) + struct.pack(fmt, value)
    raise AssertionError("unreachable")


def string(text: str) -> bytes:
    """String: StringPrefix, ASCII characters 0x01-0x7F, NUL."""
    if not text.isascii() or "\0" in text:
        raise AmlError(f"string {text[:40]!r} is not NUL-free ASCII")
    return bytes([STRING_PREFIX]) + text.encode("ascii") + b"\0"


def package(*elements: bytes) -> bytes:
    """DefPackage: PackageOp PkgLength NumElements (a byte) PackageElementList."""
    if len(elements) > 255:
        raise AmlError("a Package holds at most 255 elements")
    body = bytes([len(elements)]) + b"".join(elements)
    return bytes([PACKAGE_OP]) + pkg_length(len(body)) + body


def name(path: str, value: bytes) -> bytes:
    """DefName: NameOp NameString DataRefObject."""
    return bytes([NAME_OP]) + name_string(path) + value


def scope(path: str, *terms: bytes) -> bytes:
    """DefScope: ScopeOp PkgLength NameString TermList."""
    body = name_string(path) + b"".join(terms)
    return bytes([SCOPE_OP]) + pkg_length(len(body)) + body


def device(path: str, *terms: bytes) -> bytes:
    """DefDevice: ExtOpPrefix DeviceOp PkgLength NameString TermList."""
    body = name_string(path) + b"".join(terms)
    return bytes([EXT_OP_PREFIX, DEVICE_OP]) + pkg_length(len(body)) + body


def method(path: str, args: int, *terms: bytes, serialized: bool = False) -> bytes:
    """DefMethod: MethodOp PkgLength NameString MethodFlags TermList (flags: bits 0-2 the argument count,
    bit 3 SerializeFlag, bits 4-7 SyncLevel 0)."""
    if not 0 <= args <= 7:
        raise AmlError("a method takes 0-7 arguments")
    body = name_string(path) + bytes([args | (8 if serialized else 0)]) + b"".join(terms)
    return bytes([METHOD_OP]) + pkg_length(len(body)) + body


def return_(value: bytes) -> bytes:
    """DefReturn: ReturnOp ArgObject."""
    return bytes([RETURN_OP]) + value


# -- what the generation ID's change notification needs (platform/vmgenid.py) ------------------------------
IF_OP = 0xA0
STORE_OP = 0x70
NOTIFY_OP = 0x86
BUFFER_OP = 0x11
OP_REGION_OP = 0x80     # after EXT_OP_PREFIX
FIELD_OP = 0x81         # after EXT_OP_PREFIX
SYSTEM_MEMORY = 0x00    # RegionSpace
DWORD_ACC = 0x03        # FieldFlags: AccessType DWordAcc, NoLock, Preserve


def op_region(path: str, space: int, offset: int, length: int) -> bytes:
    """DefOpRegion: ExtOpPrefix OpRegionOp NameString RegionSpace RegionOffset RegionLen."""
    return bytes([EXT_OP_PREFIX, OP_REGION_OP]) + name_string(path) + bytes([space]) + integer(offset) + \
        integer(length)


def field(region: str, flags: int, *fields: tuple[str, int]) -> bytes:
    """DefField: ExtOpPrefix FieldOp PkgLength NameString FieldFlags FieldList; each NamedField is a
    NameSeg and its width in bits, encoded as a PkgLength that does not count itself (20.2.5.2)."""
    body = name_string(region) + bytes([flags])
    for seg, bits in fields:
        if not 0 < bits <= MAX_PKG_LENGTH:
            raise AmlError(f"field {seg} of {bits} bits")
        body += name_seg(seg) + _bit_length(bits)
    return bytes([EXT_OP_PREFIX, FIELD_OP]) + pkg_length(len(body)) + body


def _bit_length(bits: int) -> bytes:
    if bits <= 0x3F:
        return bytes([bits])
    extra = 1 if bits < 1 << 12 else 2 if bits < 1 << 20 else 3
    return bytes([(extra << 6) | (bits & 0x0F)]) + (bits >> 4).to_bytes(extra, "little")


def if_(predicate: bytes, *terms: bytes) -> bytes:
    """DefIfElse without Else: IfOp PkgLength Predicate TermList."""
    body = predicate + b"".join(terms)
    return bytes([IF_OP]) + pkg_length(len(body)) + body


def store(value: bytes, target: str) -> bytes:
    """DefStore: StoreOp TermArg SuperName (a named object)."""
    return bytes([STORE_OP]) + value + name_string(target)


def notify(target: str, value: int) -> bytes:
    """DefNotify: NotifyOp NotifyObject NotifyValue."""
    return bytes([NOTIFY_OP]) + name_string(target) + integer(value)


def buffer(data: bytes) -> bytes:
    """DefBuffer: BufferOp PkgLength BufferSize ByteList."""
    body = integer(len(data)) + data
    return bytes([BUFFER_OP]) + pkg_length(len(body)) + body


def ref(path: str) -> bytes:
    """A name used as a TermArg (its value is read)."""
    return name_string(path)
