"""Pick kernel modules and their dependencies out of an unpacked linux-image package.

Debian's kernel packages do not ship ``modules.dep`` (``depmod`` runs at install time), so the
dependencies come from each module's ``.modinfo`` ELF section (``depends=a,b``) and this module writes
a ``modules.dep``/``modules.alias`` for the selected subset in the format busybox ``modprobe`` reads.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from hyperdisco.errors import ImageError


def module_name(path: str | Path) -> str:
    """Canonical module name: file name without ``.ko`` with dashes turned into underscores."""
    name = Path(path).name
    for suffix in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


def modinfo(ko: bytes) -> dict[str, list[str]]:
    """The key=value strings of an ELF64 module's ``.modinfo`` section (keys may repeat, e.g. alias)."""
    if ko[:4] != b"\x7fELF" or ko[4] != 2:
        raise ValueError("not an ELF64 kernel module")
    (e_shoff,) = struct.unpack_from("<Q", ko, 0x28)
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", ko, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        sh = e_shoff + i * e_shentsize
        (sh_name,) = struct.unpack_from("<I", ko, sh)
        sh_offset, sh_size = struct.unpack_from("<QQ", ko, sh + 0x18)
        return sh_name, sh_offset, sh_size

    _, str_off, _ = section(e_shstrndx)
    info: dict[str, list[str]] = {}
    for i in range(e_shnum):
        sh_name, off, size = section(i)
        end = ko.index(b"\0", str_off + sh_name)
        if ko[str_off + sh_name : end] != b".modinfo":
            continue
        for item in ko[off : off + size].split(b"\0"):
            key, sep, value = item.decode(errors="replace").partition("=")
            if sep:
                info.setdefault(key, []).append(value)
        break
    return info


@dataclass(frozen=True)
class Module:
    name: str
    relpath: str  # relative to lib/modules/<release>/, e.g. kernel/drivers/block/xen-blkfront.ko
    depends: tuple[str, ...]
    aliases: tuple[str, ...]


class ModuleTree:
    """The modules of one kernel release in an unpacked package (``<root>/lib/modules/<release>``)."""

    def __init__(self, modules_dir: Path) -> None:
        self.dir = modules_dir
        if not (modules_dir / "kernel").is_dir():
            raise ImageError(f"hyperdisco: {modules_dir}: no kernel modules directory")
        self._paths: dict[str, str] = {}
        for ko in sorted((modules_dir / "kernel").rglob("*.ko")):
            self._paths.setdefault(module_name(ko), ko.relative_to(modules_dir).as_posix())
        self._cache: dict[str, Module] = {}

    def __contains__(self, name: str) -> bool:
        return module_name(name) in self._paths

    def module(self, name: str) -> Module:
        key = module_name(name)
        if key not in self._cache:
            if key not in self._paths:
                raise ImageError(f"hyperdisco: {self.dir}: kernel module {name} not found")
            rel = self._paths[key]
            try:
                info = modinfo((self.dir / rel).read_bytes())
            except (ValueError, struct.error, OSError) as exc:
                raise ImageError(f"hyperdisco: {self.dir / rel}: unreadable kernel module ({exc})") from None
            deps = tuple(d for v in info.get("depends", []) for d in v.split(",") if d)
            self._cache[key] = Module(
                key, rel, tuple(module_name(d) for d in deps), tuple(info.get("alias", []))
            )
        return self._cache[key]

    def load_order(self, names: list[str]) -> list[Module]:
        """``names`` and everything they depend on, each after all of its dependencies."""
        order: list[Module] = []
        done: set[str] = set()
        active: set[str] = set()

        def visit(name: str) -> None:
            mod = self.module(name)
            if mod.name in done:
                return
            if mod.name in active:
                raise ImageError(f"hyperdisco: {self.dir}: circular module dependency through {mod.name}")
            active.add(mod.name)
            for dep in mod.depends:
                visit(dep)
            active.discard(mod.name)
            done.add(mod.name)
            order.append(mod)

        for n in names:
            visit(n)
        return order

    def dependency_closure(self, name: str) -> list[Module]:
        """The modules ``name`` needs, not itself, in load order."""
        return self.load_order([name])[:-1]

    def modules_dep(self, modules: list[Module]) -> str:
        """``modules.dep`` text: each module followed by its dependencies in reverse load order
        (modprobe loads the last listed dependency first), as depmod writes it."""
        lines = []
        for mod in modules:
            deps = [d.relpath for d in reversed(self.dependency_closure(mod.name))]
            lines.append(f"{mod.relpath}: {' '.join(deps)}".rstrip() + "\n")
        return "".join(lines)

    @staticmethod
    def modules_alias(modules: list[Module]) -> str:
        return "".join(f"alias {a} {m.name}\n" for m in modules for a in m.aliases)
