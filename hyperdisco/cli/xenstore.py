"""`hyperdisco xenstore CMD`: Xen's xenstore-utils (xenstore-ls, -read, -write, -rm, -list, -exists,
-chmod, -watch; tools/xenstore/xenstore_client.c) over the daemon's control socket, with their options,
output and exit codes: 0 on success, 1 on any failure (a usage error too). Paths and values are shown
the way they are: xenstore-ls's escaping of values (\\t \\n \\r \\\\, \\ooo below 8, \\xHH otherwise outside
printable ASCII), and `write` takes the same escapes back (unless -R).

Several paths given to read, write, rm, list, exists, chmod or mkdir are done in one transaction, as
xenstore-utils do: at the first failure nothing is changed, what was read before it is printed.
"""

from __future__ import annotations

import argparse
import base64
import errno
import json
import os
import sys
from typing import Any, NoReturn

from ..errors import HyperdiscoError
from ..toolstack.protocol import Client, DaemonError, encode

TAG_LEN = len(' = "..."')  # what xenstore-ls keeps free on a line for a value's quotes and ellipsis
LS_DESIRED_WIDTH = 60  # where xenstore-ls -p lines up the permissions (dots up to this column)


class UsageError(Exception):
    pass


class XsArgumentParser(argparse.ArgumentParser):
    """xenstore-utils exit with status 1 on a usage error (argparse's is 2)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[Any, list[str]]:
        ns, extras = super().parse_known_args(args, namespace)
        if extras:  # refused here, not by the top parser (which would exit with 2)
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns, extras


# -- xenstore-utils' escaping -----------------------------------------------------------------------------
def sanitise(value: bytes) -> str:
    """A value as xenstore-ls and xenstore-read print it: printable ASCII but the backslash as it is; tab,
    newline, carriage return and backslash as \\t \\n \\r \\\\; bytes below 8 as three octal digits, any
    other as \\x and two hex digits."""
    named = {9: "\\t", 10: "\\n", 13: "\\r", 92: "\\\\"}
    out = []
    for b in value:
        if 32 <= b <= 126 and b != 92:
            out.append(chr(b))
        elif b in named:
            out.append(named[b])
        elif b < 8:
            out.append(f"\\{b:03o}")
        else:
            out.append(f"\\x{b:02x}")
    return "".join(out)


def unsanitise(text: bytes) -> bytes:
    """What xenstore-write stores for an argument: the escapes sanitise() prints turned back into bytes
    (\\x takes up to two hex digits, \\0-\\7 up to three octal ones, any other escaped character stands for
    itself, a backslash at the very end is a NUL)."""
    out = bytearray()
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        i += 1
        if c != 0x5C:
            out.append(c)
            continue
        if i == n:
            out.append(0)
            break
        c = text[i]
        i += 1
        simple = {ord("t"): 9, ord("n"): 10, ord("r"): 13, 0x5C: 0x5C}
        if c in simple:
            out.append(simple[c])
        elif c == ord("x"):
            digits = _run(text, i, b"0123456789abcdefABCDEF", 2)
            out.append(int(digits, 16) if digits else c)
            i += len(digits)
        elif ord("0") <= c <= ord("7"):
            digits = _run(text, i - 1, b"01234567", 3)
            out.append(int(digits, 8) & 0xFF)
            i += len(digits) - 1
        else:
            out.append(c)
    return bytes(out)


def _run(text: bytes, start: int, allowed: bytes, most: int) -> bytes:
    end = start
    while end < len(text) and end - start < most and text[end] in allowed:
        end += 1
    return text[start:end]


# -- xenstore-ls's lines ------------------------------------------------------------------------------
def ls_line(row: dict[str, Any], value: bytes | None, show_perms: bool, full_path: bool,
            max_width: int) -> str:
    """One node as xenstore-ls prints it: indented name (or, with -f, the full path), ` = "value"` cut to
    the line's width with `\\...`, and with -p its permissions after a dotted leader."""
    desired = 0 if full_path else LS_DESIRED_WIDTH
    if full_path:
        text, width = row["path"], 0  # xenstore-ls -f does not count the path in the line's width
    else:
        room = max_width - TAG_LEN - row["depth"]
        name = row["name"] if room < 0 else row["name"][:room]
        text, width = " " * row["depth"] + name, row["depth"] + len(name)
    if value is None:
        code = getattr(errno, str(row.get("errno")), errno.ENOENT)
        text += f": ({os.strerror(code)})"
    else:
        shown = sanitise(value)
        if max_width < width + len(value) + TAG_LEN:
            room = max_width - TAG_LEN - width
            text += ' = "' + (shown if room < 0 else shown[:room]) + '\\..."'
        else:
            part = f' = "{shown}"'
            text += part
            width += len(part)
            if show_perms:
                text += " "
                width += 1
                while width < min(desired, max_width):
                    text += "." if width & 1 else " "
                    width += 1
    if show_perms and row.get("perms") is not None:
        text += "  (" + ",".join(row["perms"]) + ")"
    return text


def _max_width(full_path: bool) -> int:
    if full_path:
        return (1 << 31) // 2
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns - 2
    except (OSError, ValueError):
        return 80


# -- the commands ----------------------------------------------------------------------------------------
def _arg_bytes(arg: str) -> bytes:
    return os.fsencode(arg)  # the argument's own bytes (argv need not be UTF-8)


def _value(res: Any) -> bytes:
    return base64.b64decode(res) if isinstance(res, str) else b""


def _fail(err: DaemonError | dict[str, Any]) -> int:
    msg = str(err.get("error")) if isinstance(err, dict) else str(err)
    print(msg if msg.startswith("hyperdisco:") else f"hyperdisco: {msg}", file=sys.stderr)
    return 1


def _run_ops(c: Client, ops: list[dict[str, Any]]) -> tuple[list[Any], dict[str, Any] | None]:
    """Requests in one transaction when there are several: (results of those that succeeded, the
    failure or None)."""
    if len(ops) == 1:
        try:
            return [c.call("xenstore", **ops[0])], None
        except DaemonError as e:
            return [], {"ok": False, "errno": e.errno, "error": str(e)}
    done: list[Any] = []
    for res in c.call("xenstore_tx", ops=ops):
        if not res["ok"]:
            return done, res
        done.append(res["result"])
    return done, None


def cmd_read(c: Client, args: argparse.Namespace) -> int:
    done, failed = _run_ops(c, [{"cmd": "read", "path": p, "base64": True} for p in args.keys])
    status = _fail(failed) if failed else 0
    out = sys.stdout.buffer
    for path, res in zip(args.keys, done, strict=False):
        if args.prefix:
            out.write(os.fsencode(path) + b": ")
        value = _value(res)
        out.write(value if args.raw else sanitise(value).encode() + b"\n")
    out.flush()
    return status


def cmd_write(c: Client, args: argparse.Namespace) -> int:
    if len(args.pairs) % 2:
        raise UsageError("write takes pairs: key value [key value ...]")
    ops = []
    for key, value in zip(args.pairs[::2], args.pairs[1::2], strict=True):
        data = _arg_bytes(value) if args.raw else unsanitise(_arg_bytes(value))
        ops.append({"cmd": "write", "path": key, "value": base64.b64encode(data).decode(), "base64": True})
    _done, failed = _run_ops(c, ops)
    return _fail(failed) if failed else 0


def _simple(cmd: str, **extra: Any) -> Any:
    def run(c: Client, args: argparse.Namespace) -> int:
        _done, failed = _run_ops(c, [{"cmd": cmd, "path": p, **extra} for p in args.keys])
        return _fail(failed) if failed else 0
    return run


def cmd_rm(c: Client, args: argparse.Namespace) -> int:
    ops = [{"cmd": "rm", "path": p, **({"tidy": True} if args.tidy else {})} for p in args.keys]
    _done, failed = _run_ops(c, ops)
    return _fail(failed) if failed else 0


def cmd_list(c: Client, args: argparse.Namespace) -> int:
    done, failed = _run_ops(c, [{"cmd": "list", "path": p} for p in args.keys])
    status = _fail(failed) if failed else 0
    for path, names in zip(args.keys, done, strict=False):
        for name in names:
            print(f"{path}/{name}" if args.prefix else name)
    return status


def cmd_exists(c: Client, args: argparse.Namespace) -> int:
    done, failed = _run_ops(c, [{"cmd": "exists", "path": p} for p in args.keys])
    if failed:
        return _fail(failed)
    return 0 if all(done) else 1  # xenstore-exists says nothing: its status is the answer


def cmd_chmod(c: Client, args: argparse.Namespace) -> int:
    for mode in args.modes:
        if mode[:1] not in ("n", "r", "w", "b"):
            print(f"hyperdisco: xenstore chmod: invalid permission specification: {mode[:1]!r}",
                  file=sys.stderr)
            return 1
    req: dict[str, Any] = {"cmd": "chmod", "path": args.key, "perms": args.modes}
    if args.recurse:
        req["recurse"] = True
    if args.upto:
        req["upto"] = True
    _done, failed = _run_ops(c, [req])
    return _fail(failed) if failed else 0


def cmd_ls(c: Client, args: argparse.Namespace) -> int:
    width = _max_width(args.full)
    out = sys.stdout
    for path in args.paths or ["/"]:
        try:
            rows = c.call("xenstore", cmd="ls", path=path, with_perms=args.perms, base64=True)
        except DaemonError as e:
            out.flush()
            return _fail(e)
        for row in rows:
            value = None if row.get("value") is None else base64.b64decode(row["value"])
            out.write(ls_line(row, value, args.perms, args.full, width) + "\n")
    out.flush()
    return 0


def cmd_watch(c: Client, args: argparse.Namespace) -> int:
    c.sock.sendall(encode({"op": "watch", "path": args.keys}))
    first = c.file.readline()
    try:
        reply = json.loads(first) if first else {"ok": False, "error": "the daemon closed the connection"}
    except ValueError:
        reply = {"ok": False, "error": "the daemon answered something that is not JSON"}
    if not reply.get("ok"):
        return _fail(reply)
    seen = 0
    while args.number is None or args.number < 0 or seen < args.number:
        line = c.file.readline()
        if not line:
            print("hyperdisco: xenstore watch: the daemon closed the connection", file=sys.stderr)
            return 1
        print(json.loads(line)["path"], flush=True)
        seen += 1
    return 0


def cmd_xenstore(args: argparse.Namespace) -> int:
    try:
        c = Client(getattr(args, "socket", None))
    except HyperdiscoError as e:
        print(str(e), file=sys.stderr)
        return 1
    try:
        return int(args.xs_fn(c, args))
    except UsageError as e:
        print(f"hyperdisco: xenstore {args.xs_cmd}: {e}", file=sys.stderr)
        return 1
    except HyperdiscoError as e:
        return _fail(e) if isinstance(e, DaemonError) else _fail(DaemonError(str(e)))
    finally:
        c.close()


def add_xenstore(p: argparse.ArgumentParser) -> None:
    """The xenstore sub-commands on the `xenstore` verb's parser."""
    p.set_defaults(fn=cmd_xenstore)
    xs = p.add_subparsers(dest="xs_cmd", required=True, metavar="CMD", parser_class=XsArgumentParser)

    def sub(name: str, fn: Any, help: str, keys: str | None = "+") -> argparse.ArgumentParser:
        q: argparse.ArgumentParser = xs.add_parser(name, help=help)
        q.set_defaults(xs_fn=fn)
        q.add_argument("-s", "--socket-only", action="store_true", help=argparse.SUPPRESS)  # xenstore-utils'
        if keys:
            q.add_argument("keys", nargs=keys, metavar="key")
        return q

    q = sub("ls", cmd_ls, "every node below each path (default /), as xenstore-ls", keys=None)
    q.add_argument("paths", nargs="*", metavar="path")
    q.add_argument("-f", "--flat", dest="full", action="store_true", help="full paths, values not cut")
    q.add_argument("-p", "--prefix", dest="perms", action="store_true", help="show permissions")
    q = sub("read", cmd_read, "print values (escaped as xenstore-read)")
    q.add_argument("-p", "--prefix", action="store_true", help="each value after its path")
    q.add_argument("-R", "--raw", action="store_true", help="the value's bytes as they are, no newline")
    q = sub("write", cmd_write, "write key value pairs (escapes like \\n \\x01 \\000 understood)", keys=None)
    q.add_argument("pairs", nargs="+", metavar="key value")
    q.add_argument("-R", "--raw", action="store_true", help="store each value as given, no escapes")
    q = sub("rm", cmd_rm, "remove nodes and everything below them")
    q.add_argument("-t", "--tidy", action="store_true", help="then remove parents left empty")
    q = sub("list", cmd_list, "list the children of nodes")
    q.add_argument("-p", "--prefix", action="store_true", help="as full paths")
    sub("exists", cmd_exists, "exit 0 if every node exists, else 1")
    sub("mkdir", _simple("mkdir"), "create nodes (and missing parents) with empty values")
    q = sub("chmod", cmd_chmod, "set a node's permissions: owner first (n0 r1 w2 b3...)", keys=None)
    q.add_argument("key")
    q.add_argument("modes", nargs="+", metavar="mode")
    q.add_argument("-r", "--recurse", action="store_true", help="and every node below it")
    q.add_argument("-u", "--upto", action="store_true", help="and every ancestor but the root")
    q = sub("watch", cmd_watch, "print the path of every change below the keys")
    q.add_argument("-n", "--number", type=int, default=None, metavar="NR", help="exit after NR events")

