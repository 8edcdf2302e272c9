"""Transactions: an overlay on the store, committed only if nothing it looked at has changed.

docs/misc/xenstore.txt (TRANSACTION_START/END): reads and writes inside a transaction see its own
changes; TRANSACTION_END with "T" commits, and fails with EAGAIN if there were intervening writes, "with
the plan that only conflicting writes cause EAGAIN, meaning writes which changed paths which were read
or written in the transaction". That plan is what this does (as Xen's xenstored does today): the
generation of every node the transaction touched (or its absence) is recorded at first access, and the
commit fails if any of them differs in the store. Watches fire only when the commit succeeds.
"""

from __future__ import annotations

from .store import Change, Node, NodeView, Store
from .wire import XsError


class Transaction(NodeView):
    def __init__(self, tx_id: int, store: Store, max_nodes: int | None) -> None:
        self.tx_id = tx_id
        self.store = store
        self.max_nodes = max_nodes  # xenstored's quota_trans_nodes (None: unlimited, domain 0)
        self.overlay: dict[str, Node | None] = {}  # None: removed in this transaction
        self.seen: dict[str, int | None] = {}  # generation at first access; None: did not exist
        self.count_delta: dict[int, int] = {}
        self.changes: list[Change] = []

    def _touch(self, path: str) -> Node | None:
        if path in self.overlay:
            return self.overlay[path]
        node = self.store.get(path)
        if path not in self.seen:
            if self.max_nodes is not None and len(self.seen) >= self.max_nodes:
                raise XsError("ENOSPC", f"transaction accesses more than {self.max_nodes} nodes")
            self.seen[path] = None if node is None else node.gen
        return node

    def get(self, path: str) -> Node | None:
        return self._touch(path)

    def put(self, path: str, node: Node) -> None:
        old = self._touch(path)
        if old is not None:
            self._count(old.owner, -1)
        self._count(node.owner, +1)
        self.overlay[path] = node

    def delete(self, path: str) -> None:
        old = self._touch(path)
        if old is not None:
            self._count(old.owner, -1)
            self.overlay[path] = None

    def owned(self, domid: int) -> int:
        return self.store.owned(domid) + self.count_delta.get(domid, 0)

    def _count(self, domid: int, delta: int) -> None:
        self.count_delta[domid] = self.count_delta.get(domid, 0) + delta

    def conflicts(self) -> bool:
        for path, gen in self.seen.items():
            node = self.store.get(path)
            if (None if node is None else node.gen) != gen:
                return True
        return False

    def over_quota(self, max_nodes: int) -> list[int]:
        """Domains that would own more than `max_nodes` nodes after the commit (the store may have
        changed since the transaction's own checks)."""
        return [d for d, delta in self.count_delta.items()
                if delta > 0 and self.store.owned(d) + delta > max_nodes]

    def apply(self) -> None:
        for path, node in self.overlay.items():
            if node is None:
                self.store.delete(path)
            else:
                self.store.put(path, node)
