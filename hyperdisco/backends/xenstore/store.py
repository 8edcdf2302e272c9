"""The xenstore tree: nodes, permissions, paths, and the operations on them.

Semantics follow docs/misc/xenstore.txt (xen-project/xen) and Xen's xenstored:
  - Paths are /-separated, start with /, use ASCII alphanumerics and -/_@ only, no doubled or trailing
    slash (except the root), not empty, at most XENSTORE_ABS_PATH_MAX (3072) bytes. A relative path is
    taken relative to /local/domain/<domid>.
  - Permissions are a list of `<letter><domid>` strings (GET_PERMS/SET_PERMS): n = none, r = read,
    w = write, b = both. The first entry names the node's owner, and its letter is the access of every
    domain not listed after it; later entries grant per-domain access. The owner (and a domain whose
    SET_TARGET target is the owner) may do everything; so may the privileged domain 0.
  - A node created by a domain inherits its parent's permissions, but an unprivileged creator becomes
    the owner; missing parents are created with empty values (WRITE, MKDIR).
  - Access to a missing node is refused with EACCES if the nearest existing ancestor cannot be read by
    the caller, ENOENT otherwise (so a domain cannot probe for names it cannot see).

Nodes are immutable values (`Node`) so a transaction's overlay can hold them without copying; every
change stores a new Node with a fresh generation number, which transactions compare at commit.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace

from .wire import ABS_PATH_MAX, REL_PATH_MAX, XsError

PERM_READ = 1
PERM_WRITE = 2
PERM_OWNER = 4
PERM_ALL = PERM_READ | PERM_WRITE | PERM_OWNER
_LETTER_BITS = {"n": 0, "r": PERM_READ, "w": PERM_WRITE, "b": PERM_READ | PERM_WRITE}
_BITS_LETTER = {v: k for k, v in _LETTER_BITS.items()}

_VALID_PATH = re.compile(r"/|(/[A-Za-z0-9_@-]+)+")
DOMID_MAX = 0xFFFF


@dataclass(frozen=True)
class Perm:
    bits: int  # PERM_READ | PERM_WRITE subset
    domid: int

    @classmethod
    def parse(cls, text: str) -> Perm:
        if len(text) < 2 or text[0] not in _LETTER_BITS or not text[1:].isdigit() or not text[1:].isascii():
            raise XsError("EINVAL", f"bad permission {text!r}")
        domid = int(text[1:])
        if domid > DOMID_MAX:
            raise XsError("EINVAL", f"bad domain id in permission {text!r}")
        return cls(_LETTER_BITS[text[0]], domid)

    def __str__(self) -> str:
        return f"{_BITS_LETTER[self.bits]}{self.domid}"


Perms = tuple[Perm, ...]


def perms_to_strings(perms: Perms) -> list[str]:
    return [str(p) for p in perms]


def parse_perms(texts: list[str]) -> Perms:
    if not texts:
        raise XsError("EINVAL", "no permissions")
    return tuple(Perm.parse(t) for t in texts)


@dataclass(frozen=True)
class Node:
    value: bytes
    perms: Perms
    children: tuple[str, ...] = ()
    gen: int = 0

    @property
    def owner(self) -> int:
        return self.perms[0].domid


@dataclass(frozen=True)
class Caller:
    """Who is asking: the domain, whether it is privileged (domain 0), and its SET_TARGET target."""
    domid: int
    privileged: bool = False
    target: int | None = None

    def access(self, perms: Perms) -> int:
        """Xen's permission rule (see module docstring)."""
        if self.privileged:
            return PERM_ALL
        owner = perms[0].domid
        if owner == self.domid or (self.target is not None and owner == self.target):
            return PERM_ALL
        for p in perms[1:]:
            if p.domid == self.domid:
                return p.bits
        if self.target is not None:
            for p in perms[1:]:
                if p.domid == self.target:
                    return p.bits
        return perms[0].bits


def home_path(domid: int) -> str:
    return f"/local/domain/{domid}"


def canonical_path(caller: Caller, path: str, path_max: int = REL_PATH_MAX) -> str:
    """Absolute, validated form of a request's path (relative paths resolve to the caller's home).

    Unprivileged callers are limited to `path_max` bytes below their home directory (xenstored's
    quota_max_path_len, XENSTORE_REL_PATH_MAX by default), everyone to XENSTORE_ABS_PATH_MAX."""
    if not path:
        raise XsError("EINVAL", "empty path")
    home = home_path(caller.domid)
    absolute = path if path.startswith("/") else f"{home}/{path}"
    if len(absolute) > ABS_PATH_MAX or not _VALID_PATH.fullmatch(absolute):
        raise XsError("EINVAL", f"invalid path {path[:80]!r}")
    if not caller.privileged:
        local = absolute[len(home):] if is_child(absolute, home) else absolute
        if len(local) > path_max:
            raise XsError("EINVAL", "path too long")
    return absolute


def is_child(path: str, parent: str) -> bool:
    """docs/misc/xenstore.txt: <child> is a child of <parent> if identical, if <parent> is /, or if
    <parent>/ is an initial substring of <child>."""
    return path == parent or parent == "/" or path.startswith(parent + "/")


def parent_of(path: str) -> str:
    cut = path.rfind("/")
    return "/" if cut <= 0 else path[:cut]


def leaf_of(path: str) -> str:
    return path[path.rfind("/") + 1:]


def join(parent: str, leaf: str) -> str:
    return f"/{leaf}" if parent == "/" else f"{parent}/{leaf}"


class NodeView(ABC):
    """Where nodes live: the store itself, or a transaction's overlay on it."""

    @abstractmethod
    def get(self, path: str) -> Node | None: ...

    @abstractmethod
    def put(self, path: str, node: Node) -> None: ...

    @abstractmethod
    def delete(self, path: str) -> None: ...

    @abstractmethod
    def owned(self, domid: int) -> int:
        """How many nodes `domid` owns (per-domain node quota)."""


class Store(NodeView):
    def __init__(self) -> None:
        self.generation = 0
        self.nodes: dict[str, Node] = {}
        self.counts: dict[int, int] = {}
        root = (Perm(0, 0),)  # "n0": owned by domain 0, nobody else may read or write
        self.put("/", Node(b"", root))
        for path in ("/local", "/local/domain", "/tool"):
            self.put(parent_of(path), _with_child(self.nodes[parent_of(path)], leaf_of(path)))
            self.put(path, Node(b"", root))

    def get(self, path: str) -> Node | None:
        return self.nodes.get(path)

    def put(self, path: str, node: Node) -> None:
        self.generation += 1
        old = self.nodes.get(path)
        if old is not None:
            self._count(old.owner, -1)
        self.nodes[path] = replace(node, gen=self.generation)
        self._count(node.owner, +1)

    def delete(self, path: str) -> None:
        old = self.nodes.pop(path, None)
        if old is not None:
            self.generation += 1
            self._count(old.owner, -1)

    def owned(self, domid: int) -> int:
        return self.counts.get(domid, 0)

    def _count(self, domid: int, delta: int) -> None:
        n = self.counts.get(domid, 0) + delta
        if n:
            self.counts[domid] = n
        else:
            self.counts.pop(domid, None)


@dataclass(frozen=True)
class Change:
    """A modification that fires watches: the node's path, the permissions that decide who may see the
    event, and whether the node was removed together with everything below it."""
    path: str
    perms: Perms
    removal: bool = False


@dataclass
class Context:
    """One operation's limits (the parts of the quota the tree enforces on unprivileged callers) and
    the changes it made, which fire watches."""
    max_nodes: int
    max_node_size: int
    max_perms: int
    changes: list[Change] = field(default_factory=list)


def _with_child(node: Node, leaf: str) -> Node:
    return node if leaf in node.children else replace(node, children=node.children + (leaf,))


def _check(caller: Caller, node: Node, want: int, path: str) -> None:
    if caller.access(node.perms) & want != want:
        raise XsError("EACCES", f"no {_want_name(want)} access to {path}")


def _want_name(want: int) -> str:
    return {PERM_READ: "read", PERM_WRITE: "write"}.get(want, "owner")


def _missing(view: NodeView, caller: Caller, path: str) -> XsError:
    """xenstored's errno_from_parents: EACCES if the nearest existing ancestor is unreadable."""
    p = path
    while p != "/":
        p = parent_of(p)
        node = view.get(p)
        if node is not None:
            if caller.access(node.perms) & PERM_READ:
                return XsError("ENOENT", path)
            return XsError("EACCES", f"no read access to {p} (looking for {path})")
    return XsError("ENOENT", path)


def get_node(view: NodeView, caller: Caller, path: str, want: int) -> Node:
    node = view.get(path)
    if node is None:
        raise _missing(view, caller, path)
    _check(caller, node, want, path)
    return node


def read(view: NodeView, caller: Caller, path: str) -> bytes:
    return get_node(view, caller, path, PERM_READ).value


def directory(view: NodeView, caller: Caller, path: str) -> tuple[Node, list[str]]:
    node = get_node(view, caller, path, PERM_READ)
    return node, list(node.children)


def get_perms(view: NodeView, caller: Caller, path: str) -> Perms:
    return get_node(view, caller, path, PERM_READ).perms


def _check_size(caller: Caller, ctx: Context, value: bytes) -> None:
    if not caller.privileged and len(value) > ctx.max_node_size:
        # xenstored's write_node_raw: a node over quota_max_entry_size is refused with ENOSPC
        raise XsError("ENOSPC", f"value of {len(value)} bytes exceeds {ctx.max_node_size}")


def _create(view: NodeView, caller: Caller, path: str, value: bytes, ctx: Context) -> None:
    missing = [path]
    anchor = parent_of(path)
    while view.get(anchor) is None:
        missing.append(anchor)
        anchor = parent_of(anchor)
    top = view.get(anchor)
    assert top is not None  # "/" always exists
    _check(caller, top, PERM_WRITE, anchor)
    _check_size(caller, ctx, value)
    if not caller.privileged and view.owned(caller.domid) + len(missing) > ctx.max_nodes:
        # xenstored refuses a node beyond quota_nb_entry_per_domain with ENOSPC
        raise XsError("ENOSPC", f"domain {caller.domid} would own more than {ctx.max_nodes} nodes")
    parent_path, parent = anchor, top
    for p in reversed(missing):
        view.put(parent_path, _with_child(parent, leaf_of(p)))
        perms = parent.perms
        if not caller.privileged:
            perms = (Perm(perms[0].bits, caller.domid),) + perms[1:]
        node = Node(value if p == path else b"", perms)
        view.put(p, node)
        parent_path, parent = p, node
    ctx.changes.append(Change(path, parent.perms))


def write(view: NodeView, caller: Caller, path: str, value: bytes, ctx: Context) -> None:
    node = view.get(path)
    if node is None:
        _create(view, caller, path, value, ctx)
        return
    _check(caller, node, PERM_WRITE, path)
    _check_size(caller, ctx, value)
    view.put(path, replace(node, value=value))
    ctx.changes.append(Change(path, node.perms))


def mkdir(view: NodeView, caller: Caller, path: str, ctx: Context) -> None:
    node = view.get(path)
    if node is None:
        _create(view, caller, path, b"", ctx)
    else:
        _check(caller, node, PERM_WRITE, path)  # "If it already exists, fine" - given write access


def rm(view: NodeView, caller: Caller, path: str, ctx: Context) -> None:
    if path == "/":
        raise XsError("EINVAL", "cannot remove the root")
    node = view.get(path)
    if node is None:
        # "It is not an error if <path> does not exist, but it _is_ an error if <path>'s immediate
        # parent does not exist either." (docs/misc/xenstore.txt)
        if view.get(parent_of(path)) is None:
            raise _missing(view, caller, path)
        return
    _check(caller, node, PERM_WRITE, path)
    stack = [path]
    while stack:  # iterative: the tree's depth is bounded by the path length, but stay flat anyway
        p = stack.pop()
        n = view.get(p)
        if n is None:
            continue
        stack.extend(join(p, c) for c in n.children)
        view.delete(p)
    parent_path = parent_of(path)
    parent = view.get(parent_path)
    assert parent is not None
    leaf = leaf_of(path)
    view.put(parent_path, replace(parent, children=tuple(c for c in parent.children if c != leaf)))
    ctx.changes.append(Change(path, node.perms, removal=True))


def set_perms(view: NodeView, caller: Caller, path: str, perms: Perms, ctx: Context) -> None:
    node = get_node(view, caller, path, PERM_WRITE | PERM_OWNER)
    check_new_perms(caller, node.perms, perms, ctx)
    view.put(path, replace(node, perms=perms))
    ctx.changes.append(Change(path, perms))


def check_new_perms(caller: Caller, old: Perms, new: Perms, ctx: Context) -> None:
    if caller.privileged:
        return
    if len(new) > ctx.max_perms:
        # xenstored: more than quota_nb_perms_per_node entries is ENOSPC
        raise XsError("ENOSPC", f"more than {ctx.max_perms} permission entries")
    if new[0].domid != old[0].domid:
        # xenstored refuses an unprivileged change of owner (EPERM, which is not among xsd_errors)
        raise XsError("EACCES", "only domain 0 may change a node's owner")
