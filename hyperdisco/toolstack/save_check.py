"""The whole-file check of a save file on its own thread, while the domain is built from it.

restore reads the header first (core/savefile.read_save_header: the configuration to validate and build),
starts this check (read_save: every section, every memory run, the SHA-256 over the file) and builds the
domain paused meanwhile; the domain runs only once the check has passed (dom0/host.py create calls
`wait` before it unpauses), and a file that fails it is refused in one line, the domain undone. The
domain process checks the file whole too before it maps any of it (vmm/snapshot.py open_save): both
checks run at once instead of one after the other (37 ms each for a 64 MiB file on a quiet host).
"""

from __future__ import annotations

import threading
from typing import Any

from ..core.savefile import SaveFileError, read_save
from .requests import RequestError


class SaveCheck:
    def __init__(self, path: str, header: dict[str, Any]) -> None:
        self.path = path
        self.header = header
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name="hd-save-check", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            checked = read_save(self.path)
        except SaveFileError as exc:
            self._error = f"hyperdisco: restore: {exc}"
            return
        except Exception as exc:  # noqa: BLE001 - the restore reports it in one line
            self._error = f"hyperdisco: restore: {self.path}: {type(exc).__name__}: {exc}"[:400]
            return
        if checked.header != self.header:  # rewritten between the two reads: neither is what was built
            self._error = f"hyperdisco: restore: {self.path} changed while it was being restored"

    def failure(self) -> str | None:
        """Once the check is done: the one line a failed check gives, or None."""
        self._thread.join()
        return self._error

    def wait(self) -> None:
        """Returns once the file has passed the check; RequestError (one line) if it has not."""
        error = self.failure()
        if error is not None:
            raise RequestError(error)
