"""Both layers: daemons started by tests serve xenstored's socket in a temporary directory, not at the
machine's /run/xenstored/socket (hyperdisco daemon reads $XENSTORED_PATH for its default)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def private_xenstored_path() -> Iterator[None]:
    if "XENSTORED_PATH" in os.environ:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="hd-xenstored-") as d:
        os.environ["XENSTORED_PATH"] = os.path.join(d, "socket")
        try:
            yield
        finally:
            os.environ.pop("XENSTORED_PATH", None)
