"""The operations table of docs/control-api.md, generated from the control API's schema
(control-api.schema.json): one row per request, its arguments (`?`: optional) and its answer (x-result,
x-stream). `python -m hyperdisco.toolstack.apidoc [DOC]` rewrites the table between its markers in DOC
(default docs/control-api.md); `--check` only says whether it is current (exit status 1 if not).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .requests import _ref, operations

BEGIN = "<!-- operations: generated from hyperdisco/toolstack/control-api.schema.json by " \
        "`python -m hyperdisco.toolstack.apidoc`; do not edit by hand -->"
END = "<!-- end of the generated operations -->"
DEFAULT_DOC = Path("docs/control-api.md")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def describe(prop: dict[str, Any]) -> str:
    """An argument for the table: its description, else its definition's title, its enum or its type."""
    if "description" in prop:
        text = str(prop["description"])
    else:
        target = {**_ref(prop["$ref"]), **prop} if "$ref" in prop else prop
        if "enum" in target:
            text = " or ".join(str(e) for e in target["enum"])
        elif "title" in target:
            text = str(target["title"])
            if "maximum" in target:
                text += f" ({target.get('minimum', 0)}..{target['maximum']})"
        elif target.get("type") == "boolean":
            text = "bool"
        elif target.get("type") == "number":
            text = "a number"
        else:
            text = str(target.get("type", "a value"))
    if "default" in prop and not isinstance(prop["default"], bool):
        text += f" (default {prop['default']})"
    return text


def row(op: str, definition: dict[str, Any]) -> str:
    required = set(definition.get("required", ()))
    args = [f"`{key}`{'' if key in required else '?'}: {describe(prop)}"
            for key, prop in definition.get("properties", {}).items() if key != "op"]
    result = definition.get("x-result") or {}
    answer = str(result.get("description", "null"))
    return f"| `{op}` | {_cell('; '.join(args)) or '–'} | {_cell(answer)} |"


def table() -> str:
    lines = ["| op | arguments | result |", "|---|---|---|"]
    lines += [row(op, definition) for op, definition in operations().items()]
    return "\n".join(lines)


def render(doc: str) -> str:
    """`doc` with its generated table replaced (ValueError when the markers are missing)."""
    start, end = doc.find(BEGIN), doc.find(END)
    if start < 0 or end < start:
        raise ValueError("the operations table's markers are missing")
    return doc[:start] + BEGIN + "\n" + table() + "\n" + doc[end:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hyperdisco.toolstack.apidoc", description=__doc__)
    p.add_argument("doc", nargs="?", type=Path, default=DEFAULT_DOC)
    p.add_argument("--check", action="store_true", help="exit 1 if the table is not the schema's")
    args = p.parse_args(argv)
    old = args.doc.read_text(encoding="utf-8")
    new = render(old)
    if args.check:
        if new != old:
            print(f"{args.doc}: the operations table differs from the schema; run "
                  "python -m hyperdisco.toolstack.apidoc", file=sys.stderr)
            return 1
        return 0
    if new != old:
        args.doc.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
