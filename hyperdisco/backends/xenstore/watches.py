"""Watches (docs/misc/xenstore.txt, WATCH / WATCH_EVENT / UNWATCH).

A watch on <wpath> fires for a change to any child of <wpath> (the path itself, or below it). When the
change is the recursive removal of a parent of <wpath>, the event's path is <wpath> itself. A watch
set with a relative path reports relative event paths. A <wpath> starting with @ names a special event
invented by the daemon: @introduceDomain (on INTRODUCE) and @releaseDomain (on RELEASE or a domain's
end). Every new watch fires once straight away with <path> = <wpath>.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .store import is_child

INTRODUCE_DOMAIN = "@introduceDomain"
RELEASE_DOMAIN = "@releaseDomain"
SPECIAL = (INTRODUCE_DOMAIN, RELEASE_DOMAIN)


@dataclass(frozen=True)
class Watch:
    path: str  # absolute path, or an @special name
    token: str
    relative_to: str | None = None  # the home prefix when the watch was set with a relative path

    @property
    def given_path(self) -> str:
        """The path as the client wrote it."""
        if self.relative_to is None:
            return self.path
        return self.path[len(self.relative_to) + 1:]

    def match(self, event_path: str, removal: bool) -> str | None:
        """The path to report for an event on `event_path`, or None if this watch does not fire."""
        if event_path.startswith("@") or self.path.startswith("@"):
            return self.given_path if event_path == self.path else None
        if is_child(event_path, self.path):
            if self.relative_to is None:
                return event_path
            return event_path[len(self.relative_to) + 1:]
        if removal and is_child(self.path, event_path):
            return self.given_path
        return None


class WatchList:
    """One connection's watches, in the order they were set."""

    def __init__(self) -> None:
        self._watches: dict[tuple[str, str], Watch] = {}

    def __len__(self) -> int:
        return len(self._watches)

    def __iter__(self) -> Iterator[Watch]:
        return iter(list(self._watches.values()))

    def add(self, watch: Watch) -> bool:
        key = (watch.path, watch.token)
        if key in self._watches:
            return False
        self._watches[key] = watch
        return True

    def remove(self, path: str, token: str) -> bool:
        return self._watches.pop((path, token), None) is not None

    def clear(self) -> None:
        self._watches.clear()

    def matches(self, event_path: str, removal: bool) -> list[tuple[Watch, str]]:
        out = []
        for w in self._watches.values():
            reported = w.match(event_path, removal)
            if reported is not None:
                out.append((w, reported))
        return out
