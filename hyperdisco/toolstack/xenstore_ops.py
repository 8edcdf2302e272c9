"""The control API's xenstore requests (`xenstore`, `xenstore_tx`; docs/control-api.md), done as domain 0
through a xenstore client connection, with the semantics of xenstore-utils (Xen's
tools/xenstore/xenstore_client.c): `rm` with tidy, `chmod` recursive or up to the root, `ls` rows for
xenstore-ls, `exists`; several requests in one transaction, retried while it ends with EAGAIN, aborted
at the first that fails.

Every failure is an XsRequestError carrying Xen's error name (xsd_errors: EINVAL, ENOENT, EACCES,
E2BIG...): xenstored's own answers, and what libxenstore refuses before sending (a request over
XENSTORE_PAYLOAD_MAX is E2BIG). Nothing else escapes. Directories whose listing does not fit one reply
are read with DIRECTORY_PART, as libxenstore's xs_directory does.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
from collections.abc import Callable, Iterator
from typing import Any

from ..backends.xenstore.client import XenstoreClient
from ..backends.xenstore.wire import PAYLOAD_MAX, XS_DIRECTORY_PART, XS_ERROR, XsError
from .requests import XsRequestError, _shown

MAX_TX_ATTEMPTS = 16  # a transaction ending with EAGAIN is redone (xenstore-utils: without bound)
MAX_LS_ROWS = 1 << 20  # an `ls` answer is bounded (the whole store of 1000 nodes a domain fits easily)
MAX_DIR_PART_RESTARTS = 16  # a directory that keeps changing while it is read in parts


class XenstoreOps:
    """Requests as checked by requests.py (XS_OP), on `connect()`'s connections (domain 0's, privileged).
    """

    def __init__(self, connect: Callable[[], XenstoreClient]) -> None:
        self.connect = connect

    # -- entry points --------------------------------------------------------------------------------
    def one(self, req: dict[str, Any]) -> Any:
        """One request. A modifying one with more steps (rm -t, chmod -r/-u) runs in a transaction."""
        steps = req["cmd"] == "rm" and req.get("tidy") or req["cmd"] == "chmod" and (
            req.get("recurse") or req.get("upto"))
        if steps:
            (result,) = self.batch([req])
            if not result["ok"]:
                raise XsRequestError(result["errno"], result["error"])
            return result["result"]
        xs = self.connect()
        try:
            return self._do(xs, 0, req)
        except XsError as e:
            raise _error(req, e) from None
        finally:
            xs.close()

    def batch(self, reqs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Requests in one transaction (as xenstore-utils do with several paths): results in order, up to
        and including the first that fails ({"ok": false, "errno", "error"}), in which case nothing was
        changed; retried while the commit conflicts (EAGAIN)."""
        xs = self.connect()
        try:
            for _attempt in range(MAX_TX_ATTEMPTS):
                try:
                    tx = xs.transaction_start()
                except XsError as e:
                    raise XsRequestError(e.name, f"hyperdisco: xenstore: cannot start a transaction: "
                                                 f"{_why(e)}") from None
                results: list[dict[str, Any]] = []
                failed = False
                for req in reqs:
                    try:
                        results.append({"ok": True, "result": self._do(xs, tx, req)})
                    except XsError as e:
                        err = _error(req, e)
                        results.append({"ok": False, "errno": err.errno, "error": str(err)})
                        failed = True
                        break
                try:
                    if xs.transaction_end(tx, commit=not failed):
                        return results
                except XsError as e:
                    raise XsRequestError(e.name, f"hyperdisco: xenstore: cannot end the transaction: "
                                                 f"{_why(e)}") from None
            raise XsRequestError("EAGAIN", f"hyperdisco: xenstore: the transaction conflicted "
                                           f"{MAX_TX_ATTEMPTS} times in a row; try again")
        finally:
            xs.close()

    # -- the commands ----------------------------------------------------------------------------------
    def _do(self, xs: XenstoreClient, tx: int, req: dict[str, Any]) -> Any:
        cmd, path = req["cmd"], req["path"]
        b64 = bool(req.get("base64"))
        if cmd == "read":
            value = xs.read_bytes(path, tx)
            if value is None:
                raise XsError("ENOENT", "no such node")
            return _out(value, b64)
        if cmd == "exists":
            try:
                return xs.read_bytes(path, tx) is not None
            except XsError as e:
                if e.name == "EACCES":  # xenstore-exists: whatever the reason, it is not there for you
                    return False
                raise
        if cmd == "write":
            data = _in(req["value"], b64)
            if len(path) + 1 + len(data) > PAYLOAD_MAX:  # libxenstore's xs_talkv: E2BIG, never sent
                raise XsError("E2BIG", f"{len(path) + 1 + len(data)} bytes with the path, over "
                                       f"XENSTORE_PAYLOAD_MAX ({PAYLOAD_MAX})")
            xs.write(path, data, tx)
            return None
        if cmd == "mkdir":
            xs.mkdir(path, tx)
            return None
        if cmd == "rm":
            self._rm(xs, tx, path, bool(req.get("tidy")))
            return None
        if cmd == "list":
            return children(xs, path, tx)
        if cmd == "getperms":
            return xs.get_perms(path, tx)
        if cmd == "chmod":
            self._chmod(xs, tx, path, req["perms"], bool(req.get("recurse")), bool(req.get("upto")))
            return None
        if cmd == "ls":
            return list(self._ls(xs, path, bool(req.get("with_perms")), b64))
        raise XsError("EINVAL", f"unknown command {cmd!r}")  # pragma: no cover - requests.py checks it

    @staticmethod
    def _rm(xs: XenstoreClient, tx: int, path: str, tidy: bool) -> None:
        """xenstore-rm [-t]: with tidy, then each parent whose value is empty and that has no children
        left, up to the root."""
        xs.rm(path, tx)
        while tidy and "/" in path:
            path = path[:path.rindex("/")]
            try:
                if not path or xs.read_bytes(path, tx) != b"" or children(xs, path, tx):
                    return
            except XsError:
                return
            xs.rm(path, tx)

    @staticmethod
    def _chmod(xs: XenstoreClient, tx: int, path: str, perms: list[str], recurse: bool, upto: bool) -> None:
        """xenstore-chmod [-r] [-u]: the node, with -u every ancestor up to the root, with -r everything
        below it."""
        xs.set_perms(path, perms, tx)
        if upto:
            parent = path
            while "/" in parent:
                parent = parent[:parent.rindex("/")]
                if not parent:
                    break
                xs.set_perms(parent, perms, tx)
        if recurse:
            stack = [path]
            while stack:
                node = stack.pop()
                for child in reversed(children(xs, node, tx)):
                    full = _join(node, child)
                    xs.set_perms(full, perms, tx)
                    stack.append(full)

    @staticmethod
    def _ls(xs: XenstoreClient, path: str, with_perms: bool, b64: bool) -> Iterator[dict[str, Any]]:
        """xenstore-ls's walk: every node below `path` in depth-first order as
        {path, name, depth, value (null if it could not be read), errno?, perms?}. A node that vanishes
        during the walk is left out (as xenstore-ls does since Xen 4.13); `path` itself must exist."""
        stack: list[tuple[int, str, Iterator[str]]] = [(0, path, iter(children(xs, path)))]
        rows = 0
        while stack:
            depth, parent, it = stack[-1]
            name = next(it, None)
            if name is None:
                stack.pop()
                continue
            full = _join(parent, name)
            row: dict[str, Any] = {"path": full, "name": name, "depth": depth}
            try:
                value = xs.read_bytes(full)
                row["value"] = None if value is None else _out(value, b64)
                if value is None:
                    row["errno"] = "ENOENT"
            except XsError as e:
                row["value"], row["errno"] = None, e.name
            if with_perms:
                try:
                    row["perms"] = xs.get_perms(full)
                except XsError as e:
                    row["perms"] = None
                    row.setdefault("errno", e.name)
            rows += 1
            if rows > MAX_LS_ROWS:
                raise XsError("E2BIG", f"more than {MAX_LS_ROWS} nodes below {path}")
            yield row
            try:
                below = children(xs, full)
            except XsError as e:
                if e.name in ("ENOENT", "EACCES"):
                    continue  # gone (or hidden) since it was listed: move on
                raise
            if below:
                stack.append((depth + 1, full, iter(below)))


def children(xs: XenstoreClient, path: str, tx: int = 0) -> list[str]:
    """A node's children: DIRECTORY, or, when the list does not fit one reply (E2BIG), DIRECTORY_PART
    from successive offsets until its end (an empty name), restarted if the node's generation changes
    between parts (docs/misc/xenstore.txt; libxenstore's xs_directory does the same)."""
    try:
        return xs.directory(path, tx)
    except XsError as e:
        if e.name != "E2BIG":
            raise
    arg = path.encode("latin-1") + b"\0"
    for _restart in range(MAX_DIR_PART_RESTARTS):
        names: list[bytes] = []
        gen: bytes | None = None
        offset = 0
        while True:
            rtype, reply = xs.request(XS_DIRECTORY_PART, arg + str(offset).encode() + b"\0", tx)
            if rtype == XS_ERROR:
                raise XsError(reply.rstrip(b"\0").decode("latin-1"))
            head, _, rest = reply.partition(b"\0")
            if gen is not None and head != gen:
                break  # changed under us: read it again from the start
            gen = head
            done = rest.endswith(b"\0\0") or rest == b"\0" or not rest
            body = rest[:-1] if done else rest
            part = [n for n in body.split(b"\0") if n] if body else []
            names.extend(part)
            offset += sum(len(n) + 1 for n in part)
            if done or not part:
                return [n.decode("latin-1") for n in names]
    raise XsError("EAGAIN", f"{path} kept changing while it was read")


def _join(parent: str, name: str) -> str:
    return parent + name if parent.endswith("/") else f"{parent}/{name}"


def _out(value: bytes, b64: bool) -> str:
    """A value for the answer: base64 when asked, else UTF-8 text (invalid bytes replaced)."""
    return base64.b64encode(value).decode() if b64 else value.decode("utf-8", "replace")


def _in(value: str, b64: bool) -> bytes:
    if b64:
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise XsError("EINVAL", "value is not base64") from None
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise XsError("EINVAL", "value is not valid Unicode text (a lone surrogate)") from None


def _why(e: XsError) -> str:
    """`ENOENT (no such node)`: the name and why (xenstored's reason, else the C library's text)."""
    code = getattr(errno, e.name, None)
    why = e.why or (os.strerror(code) if isinstance(code, int) else "")
    return f"{e.name} ({why})" if why else e.name


def _error(req: dict[str, Any], e: XsError) -> XsRequestError:
    """Xen's error name in one line: `hyperdisco: xenstore read /tool/x: ENOENT (no such node)`."""
    return XsRequestError(e.name, f"hyperdisco: xenstore {req['cmd']} {_shown(req['path'])}: {_why(e)}")
