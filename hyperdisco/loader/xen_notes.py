"""The Xen ELF notes of a PVH kernel, read and checked as Xen's libelf does.

Sources: xen/include/public/elfnote.h (the note types and what their descriptors hold) and
xen/common/libelf/libelf-dominfo.c (elf_xen_parse_note, elf_xen_parse_features, elf_xen_note_check and
elf_xen_addr_calc_check with hvm = true, the PVH case), libelf-tools.c (elf_note_numeric,
elf_note_numeric_array). What Xen does with each note for a PVH guest, and what we do:

- PHYS32_ENTRY: the 32-bit physical entry point; required (a PVH image needs only this note). Xen keeps
  it as a uint32_t, so an 8-byte descriptor is truncated to 32 bits. It must lie within the loaded image
  [pstart, pend] (Xen's "ELF start or entries are out of bounds").
- ENTRY, VIRT_BASE, PADDR_OFFSET, HYPERCALL_PAGE, HV_START_LOW, PAE_MODE, BSD_SYMTAB, L1_MFN_VALID,
  SUSPEND_CANCEL, MOD_START_PFN: read (PV-only meaning); for PVH Xen forces virt_base and paddr_offset to 0
  and takes the entry from PHYS32_ENTRY, and a PVH guest asks for its hypercall page through the MSR CPUID
  leaf 0x40000002 names, never through this note. We ignore them the same way.
- INIT_P2M: must not fall inside the kernel image (Xen checks it for PVH too).
- XEN_VERSION, GUEST_OS, GUEST_VERSION, LOADER: strings; Xen checks "xen-3.0" / "generic" / "linux" only
  for images without PHYS32_ENTRY, which we refuse anyway.
- FEATURES: '|'-separated names, '!' marks a required one; a required name libelf does not know refuses
  the image; a kernel that requires XENFEAT_dom0 cannot run as an unprivileged domain (libxc's
  xc_dom_parse_elf_kernel refuses it).
- SUPPORTED_FEATURES: an array of 32-bit bitmaps, one per feature submap, ORed into the supported set.
- Any other note type (INFO, or a number elfnote.h does not define): ignored, as Xen logs and skips it.

Numeric descriptors of 1, 2, 4 or 8 bytes are read little-endian; other sizes read as 0 (as Xen). A string
descriptor runs to its NUL, which may be in the note's padding (Linux's FEATURES is an .ascii with none),
within 4096 bytes (libelf's elf_strval and ELF_MAX_STRING_LENGTH); without one the image is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ImageError
from ..xen import elfnote as en
from ..xen import features as ft

# libelf's elf_xen_feature_names: the only names FEATURES may use
FEATURE_NAMES: dict[str, int] = {
    "writable_page_tables": ft.XENFEAT_writable_page_tables,
    "writable_descriptor_tables": ft.XENFEAT_writable_descriptor_tables,
    "auto_translated_physmap": ft.XENFEAT_auto_translated_physmap,
    "supervisor_mode_kernel": ft.XENFEAT_supervisor_mode_kernel,
    "pae_pgdir_above_4gb": ft.XENFEAT_pae_pgdir_above_4gb,
    "hvm_callback_vector": ft.XENFEAT_hvm_callback_vector,
    "dom0": ft.XENFEAT_dom0,
}

# note type -> (name as libelf prints it, True for a string descriptor); libelf-dominfo.c's note_desc
NOTE_KINDS: dict[int, tuple[str, bool]] = {
    en.XEN_ELFNOTE_ENTRY: ("ENTRY", False),
    en.XEN_ELFNOTE_HYPERCALL_PAGE: ("HYPERCALL_PAGE", False),
    en.XEN_ELFNOTE_VIRT_BASE: ("VIRT_BASE", False),
    en.XEN_ELFNOTE_INIT_P2M: ("INIT_P2M", False),
    en.XEN_ELFNOTE_PADDR_OFFSET: ("PADDR_OFFSET", False),
    en.XEN_ELFNOTE_HV_START_LOW: ("HV_START_LOW", False),
    en.XEN_ELFNOTE_XEN_VERSION: ("XEN_VERSION", True),
    en.XEN_ELFNOTE_GUEST_OS: ("GUEST_OS", True),
    en.XEN_ELFNOTE_GUEST_VERSION: ("GUEST_VERSION", True),
    en.XEN_ELFNOTE_LOADER: ("LOADER", True),
    en.XEN_ELFNOTE_PAE_MODE: ("PAE_MODE", True),
    en.XEN_ELFNOTE_FEATURES: ("FEATURES", True),
    en.XEN_ELFNOTE_SUPPORTED_FEATURES: ("SUPPORTED_FEATURES", False),
    en.XEN_ELFNOTE_BSD_SYMTAB: ("BSD_SYMTAB", True),
    en.XEN_ELFNOTE_L1_MFN_VALID: ("L1_MFN_VALID", False),
    en.XEN_ELFNOTE_SUSPEND_CANCEL: ("SUSPEND_CANCEL", False),
    en.XEN_ELFNOTE_MOD_START_PFN: ("MOD_START_PFN", False),
    en.XEN_ELFNOTE_PHYS32_ENTRY: ("PHYS32_ENTRY", False),
}


@dataclass(frozen=True)
class XenNote:
    """One note owned by "Xen": its type, descriptor, and the NUL-terminated string starting there (None
    when there is no NUL within libelf's limit)."""

    type: int
    desc: bytes
    text: bytes | None


@dataclass(frozen=True)
class XenNotes:
    """What a kernel's Xen notes say, by libelf's names (numbers for numeric notes, text for strings)."""

    numbers: dict[str, int] = field(default_factory=dict)
    strings: dict[str, str] = field(default_factory=dict)
    features_supported: int = 0  # submap 0 bits (XENFEAT_NR_SUBMAPS is 1)
    features_required: int = 0
    ignored: tuple[int, ...] = ()  # note types Xen does not know, skipped

    @property
    def phys32_entry(self) -> int | None:
        return self.numbers.get("PHYS32_ENTRY")


def _numeric(desc: bytes) -> int:
    """libelf's elf_note_numeric: 1, 2, 4 or 8 bytes little-endian, anything else 0."""
    return int.from_bytes(desc, "little") if len(desc) in (1, 2, 4, 8) else 0


def _numeric_array(desc: bytes, unit: int, idx: int) -> int:
    """libelf's elf_note_numeric_array: element `idx` of `unit`-byte numbers, 0 when it is not there."""
    if len(desc) % unit or idx >= len(desc) // unit:
        return 0
    return int.from_bytes(desc[idx * unit:(idx + 1) * unit], "little")


def _string(text: bytes | None, what: str, name: str) -> str:
    if text is None:
        raise ImageError(f"hyperdisco: {name}: Xen ELF note {what} is not a NUL-terminated string")
    return text.decode("latin-1")


def _features(text: str, name: str) -> tuple[int, int]:
    """libelf's elf_xen_parse_features: (supported, required) bits of submap 0."""
    supported = required = 0
    for token in text.split("|"):
        wanted = token.startswith("!")
        bit = FEATURE_NAMES.get(token[1:] if wanted else token)
        if bit is None:
            if wanted:
                raise ImageError(f"hyperdisco: {name}: kernel requires Xen feature {token[1:64]!r}, "
                                 "which Xen does not know (XEN_ELFNOTE_FEATURES)")
            continue
        supported |= 1 << bit
        if wanted:
            required |= 1 << bit
    return supported, required


def parse_xen_notes(notes: list[XenNote], name: str) -> XenNotes:
    """Read the Xen-owned notes (type, descriptor), in file order: a later note of a type overrides an
    earlier one, features accumulate (as libelf's parms)."""
    numbers: dict[str, int] = {}
    strings: dict[str, str] = {}
    supported = required = 0
    ignored: list[int] = []
    for note in notes:
        typ, desc = note.type, note.desc
        kind = NOTE_KINDS.get(typ)
        if kind is None:
            ignored.append(typ)
            continue
        what, is_str = kind
        if is_str:
            text = _string(note.text, what, name)
            strings[what] = text
            if typ == en.XEN_ELFNOTE_FEATURES:
                s, r = _features(text, name)
                supported, required = supported | s, required | r
        elif typ == en.XEN_ELFNOTE_SUPPORTED_FEATURES:
            for i in range(ft.XENFEAT_NR_SUBMAPS):
                supported |= _numeric_array(desc, 4, i) << (32 * i)
        else:
            value = _numeric(desc)
            if typ == en.XEN_ELFNOTE_PHYS32_ENTRY:
                value &= 0xFFFFFFFF  # libelf's parms->phys_entry is a uint32_t
            numbers[what] = value
    return XenNotes(numbers, strings, supported, required, tuple(ignored))


def check_pvh(notes: XenNotes, pstart: int, pend: int, name: str) -> int:
    """elf_xen_note_check and elf_xen_addr_calc_check for a PVH (hvm) image, and libxc's refusal of a
    dom0-only kernel: the checked entry point."""
    entry = notes.phys32_entry
    if entry is None:
        raise ImageError(f"hyperdisco: {name}: kernel has no Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")
    if notes.features_required & (1 << ft.XENFEAT_dom0):
        raise ImageError(f"hyperdisco: {name}: kernel requires XENFEAT_dom0: it cannot run as an "
                         "unprivileged domain")
    # for PVH virt_base and paddr_offset are 0: the kernel's range is its physical one
    if not pstart <= entry <= pend:
        raise ImageError(f"hyperdisco: {name}: PVH entry point {entry:#x} lies outside the kernel image "
                         f"[{pstart:#x}, {pend:#x}]")
    p2m = notes.numbers.get("INIT_P2M")
    if p2m is not None and pstart <= p2m < pend:
        raise ImageError(f"hyperdisco: {name}: Xen ELF note INIT_P2M ({p2m:#x}) lies inside the kernel image")
    return entry
