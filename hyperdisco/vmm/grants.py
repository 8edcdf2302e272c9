"""Grant mappings between domains in different processes, brokered by domain 0 (dom0/grants.py).

Xen's GNTTABOP_map_grant_ref (xen/include/public/grant_table.h) lets domain B map a page domain A granted
it (A's grant entry: GTF_permit_access, domid B, GTF_readonly or not, the frame) at one of B's own
guest-physical pages. A Linux PVH guest's gntdev maps at a page of its unpopulated address space
(xen_alloc_unpopulated_pages: guest-physical space outside its RAM) with GNTMAP_host_map and host_addr =
that page's guest-physical address, and unmaps with GNTTABOP_unmap_grant_ref.

Here A and B are jailed processes that cannot reach each other's memory:

  B maps:   B -> dom0  gnt-map {id, remote A, ref, write}
            dom0 -> A  gnt-peer-map {id, grantee B, ref, write, mid}: A checks the entry as Xen does (and
                       that the frame is plain RAM: no grant frame, shared info, vcpu_info, nor a page A
                       itself maps from another domain), sets GTF_reading/GTF_writing, and makes that one
                       page shareable: its content moves to a new one-page memfd (sealed against resizing)
                       mapped MAP_SHARED|MAP_FIXED at the same host address, its vCPUs held out of guest
                       code meanwhile; A answers gnt-shared {id, status} with the memfd
            dom0 -> B  gnt-mapped {id, status, mid} with the memfd (reopened read-only by domain 0 for a
                       read-only map): B maps it at the requested page, its vCPUs held likewise
  B unmaps: B restores its own memory there, B -> dom0 gnt-unmap {mid}; dom0 -> A gnt-peer-unmap
            {grantee, mid}: A drops the busy bits; once no mapping of the page is left, the page gets
            private memory again (with its current content), so a memfd B kept gives it nothing more.

A domain that dies: domain 0 unmaps its mappings from the granters (gnt-peer-unmap); mappings of a dead
granter's pages stay valid in the grantee (the memfd lives on) until it unmaps them.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.domain import Domain
from ..core.grant import GrantError, GrantOutOfRange
from ..core.memory import PAGE, Region
from ..platform import layout
from ..xen import abi

if TYPE_CHECKING:
    from ..core.vcpu import VcpuContext

MAP_TIMEOUT_S = 5.0
MAX_MAPS = 256  # this domain's live mappings of other domains' pages
MAX_SHARED = 256  # this domain's pages that other domains map (one memfd each)
FOREIGN_LIMIT = 1 << 40  # guest-physical pages above this are refused as mapping places


@dataclass
class _Mapping:  # one of our mappings of another domain's page
    mid: int
    gpa: int
    region: Region | None  # None: it replaced a RAM page in place
    remote: int
    ref: int


@dataclass
class _Share:  # one of our pages that other domains map
    fd: int
    users: int
    given_back: bool = False  # the guest gave the page back meanwhile: the last unmap only closes fd


@dataclass
class _Lent:  # one mapping another domain made of one of our grants
    grantee: int
    ref: int
    write: bool
    gpa: int
    share: _Share  # the page's memfd (still this one if the guest gave the page back meanwhile)


class _Waiter:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: tuple[dict[str, Any], list[int]] | None = None


class BrokeredGrants:
    def __init__(self, dom: Domain, send: Callable[[dict[str, Any], list[int]], None]) -> None:
        self.dom = dom
        self.send = send  # to domain 0, with descriptors
        self._lock = threading.Lock()
        self._handles = itertools.count(1)
        self._ids = itertools.count(1)
        self._waiting: dict[int, _Waiter] = {}
        self._maps: dict[int, _Mapping] = {}  # handle -> mapping
        self._busy_gpas: set[int] = set()  # pages being mapped or mapped
        self._shared: dict[int, _Share] = {}  # our gpa -> its memfd
        self._lent: dict[tuple[int, int], _Lent] = {}  # (grantee, mid) -> what it maps
        self._work: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._worker: threading.Thread | None = None
        # ballooning (core/reservation.py): a page holding another domain's page cannot be given back;
        # a page of ours that others map is dropped here only (they keep theirs)
        dom.reservation.refuse.append(self._balloon_refused)
        dom.reservation.on_release.append(self._given_back)

    # -- the guest's hypercalls (as grantee) ------------------------------------------------------------
    def _place_refused(self, gpa: int) -> bool:
        """Whether guest-physical page `gpa` may not receive another domain's page."""
        dom, mem = self.dom, self.dom.memory
        if gpa % PAGE or gpa in self._busy_gpas or gpa in self._shared:
            return True
        if gpa < mem.ram_bytes:
            return not dom.is_ram(gpa) or dom.hypervisor_page(gpa) is not None
        if not (gpa < layout.MMIO_START or 1 << 32 <= gpa < FOREIGN_LIMIT):
            return True
        return mem.region_at(gpa) is not None

    def map(self, ctx: VcpuContext, remote: int, ref: int, flags: int, gpa: int) -> tuple[int, int]:
        write = not flags & abi.GNTMAP_readonly
        with self._lock:
            if self._place_refused(gpa):
                return abi.GNTST_bad_virt_addr, 0
            if len(self._busy_gpas) >= MAX_MAPS:
                return abi.GNTST_no_device_space, 0
            if not write and gpa < self.dom.memory.ram_bytes:
                return abi.GNTST_general_error, 0  # a read-only page cannot stand in for a RAM page here
            self._busy_gpas.add(gpa)
            req = next(self._ids)
            waiter = self._waiting[req] = _Waiter()
        try:
            sched = self.dom.scheduler
            self.send({"t": "gnt-map", "id": req, "remote": remote, "ref": ref, "write": write}, [])
            if sched is not None:
                with sched.outside_guest(ctx):  # the granter may need us out of guest code meanwhile
                    waiter.done.wait(MAP_TIMEOUT_S)
            else:
                waiter.done.wait(MAP_TIMEOUT_S)
            with self._lock:
                self._waiting.pop(req, None)
                answer = waiter.value
            if answer is None:
                return abi.GNTST_general_error, 0  # a late answer is undone by mapped()
            msg, fds = answer
            status, mid = msg.get("status"), msg.get("mid")
            if status != abi.GNTST_okay or len(fds) != 1 or not isinstance(mid, int):
                for fd in fds:
                    os.close(fd)
                if status == abi.GNTST_okay and isinstance(mid, int):
                    self.send({"t": "gnt-unmap", "mid": mid}, [])
                ok = isinstance(status, int) and -12 <= status < 0
                return (status if ok and isinstance(status, int) else abi.GNTST_general_error), 0
            try:
                region = self._map_locally(ctx, gpa, fds[0], write)
            except (OSError, ValueError) as exc:
                self.dom.log(f"grant map of d{remote} ref {ref} at {gpa:#x} failed: {exc}")
                self.send({"t": "gnt-unmap", "mid": mid}, [])
                return abi.GNTST_general_error, 0
            finally:
                os.close(fds[0])
            with self._lock:
                handle = next(self._handles)
                self._maps[handle] = _Mapping(mid, gpa, region, remote, ref)
                gpa = -1  # kept busy by the mapping
            return abi.GNTST_okay, handle
        finally:
            with self._lock:
                self._waiting.pop(req, None)
                if gpa >= 0:
                    self._busy_gpas.discard(gpa)

    def _map_locally(self, ctx: VcpuContext, gpa: int, fd: int, write: bool) -> Region | None:
        dom = self.dom
        with dom.quiesced(ctx):
            region = dom.memory.map_foreign_page(gpa, fd, write)
            if region is not None:
                done = []
                try:
                    for v in dom.vcpus:
                        v.ev.map_ram(gpa, PAGE, region.host_address, write)
                        done.append(v)
                except Exception:
                    for v in done:
                        v.ev.unmap_ram(gpa, PAGE)
                    dom.memory.unmap_foreign_page(gpa, region)
                    raise
        return region

    def unmap(self, ctx: VcpuContext, handle: int, gpa: int) -> int:
        with self._lock:
            m = self._maps.get(handle)
            if m is None:
                return abi.GNTST_bad_handle
            if gpa and gpa != m.gpa:
                return abi.GNTST_general_error
            del self._maps[handle]
        dom = self.dom
        with dom.quiesced(ctx):
            if m.region is not None:
                for v in dom.vcpus:
                    v.ev.unmap_ram(m.gpa, PAGE)
            dom.memory.unmap_foreign_page(m.gpa, m.region)
        with self._lock:
            self._busy_gpas.discard(m.gpa)
        self.send({"t": "gnt-unmap", "mid": m.mid}, [])
        return abi.GNTST_okay

    def mapped(self, msg: dict[str, Any], fds: list[int]) -> None:
        """Domain 0's answer to one of our gnt-map requests (on the channel's reader thread)."""
        req = msg.get("id")
        with self._lock:
            waiter = self._waiting.pop(req, None) if isinstance(req, int) else None
            if waiter is not None:
                waiter.value = (msg, fds)
                waiter.done.set()
                return
        for fd in fds:  # nobody waits any more: undo
            os.close(fd)
        if msg.get("status") == abi.GNTST_okay and isinstance(msg.get("mid"), int):
            self.send({"t": "gnt-unmap", "mid": msg["mid"]}, [])

    def _balloon_refused(self, gpa: int) -> str | None:
        with self._lock:
            return "another domain's page is mapped there" if gpa in self._busy_gpas else None

    def _given_back(self, gpa: int) -> bool:
        """The guest gave back page `gpa`: True if other domains map it (its memfd stays theirs)."""
        with self._lock:
            share = self._shared.pop(gpa, None)
            if share is None:
                return False
            share.given_back = True  # its mappings (_Lent.share) still hold it
            return True

    def foreign_pages(self) -> set[int]:
        with self._lock:
            return set(self._busy_gpas)

    # -- as granter: from domain 0, served in order on a thread of our own ---------------------------------
    def peer_request(self, kind: str, msg: dict[str, Any]) -> None:
        """gnt-peer-map / gnt-peer-unmap from domain 0 (its reader must not wait for our vCPUs)."""
        self._work.put((kind, msg))
        if self._worker is None:
            self._worker = threading.Thread(target=self._serve, name="hd-grants", daemon=True)
            self._worker.start()

    def _serve(self) -> None:
        while True:
            kind, msg = self._work.get()
            try:
                if kind == "map":
                    status, fds = self.peer_map(msg)
                    self.send({"t": "gnt-shared", "id": msg.get("id"), "status": status}, fds)
                else:
                    self.peer_unmap(msg)
            except Exception as exc:  # noqa: BLE001 - a bug here must not end the thread silently
                self.dom.log(f"grant {kind} for another domain failed: {type(exc).__name__}: {exc}")
                if kind == "map":
                    self.send({"t": "gnt-shared", "id": msg.get("id"), "status": abi.GNTST_general_error}, [])
            finally:
                self._work.task_done()

    def _frame_refused(self, gpa: int) -> str | None:
        why = self.dom.hypervisor_page(gpa)
        if why is None and gpa in self.foreign_pages():
            why = "a page this domain maps from another domain"
        return why

    def peer_map(self, msg: dict[str, Any]) -> tuple[int, list[int]]:
        """Domain `grantee` maps our grant `ref` (mapping `mid`): Xen's checks, busy bits, the memfd."""
        grantee, ref, write, mid = msg.get("grantee"), msg.get("ref"), msg.get("write"), msg.get("mid")
        if not (isinstance(grantee, int) and isinstance(ref, int) and isinstance(mid, int)
                and isinstance(write, bool)) or isinstance(grantee, bool) or isinstance(ref, bool):
            return abi.GNTST_general_error, []
        with self._lock:
            if (grantee, mid) in self._lent:
                return abi.GNTST_general_error, []
        try:
            gpa = self.dom.grants.pin(ref, grantee, write, check=self._frame_refused)
        except GrantOutOfRange:  # grant_table.c map_grant_ref: ref >= nr_grant_entries
            return abi.GNTST_bad_gntref, []
        except GrantError:  # _set_status_v1: not granted to the mapper ("Bad flags or dom"), or a
            return abi.GNTST_general_error, []  # writable mapping of a read-only grant
        try:
            with self._lock:
                share = self._shared.get(gpa)
                if share is None and len(self._shared) >= MAX_SHARED:
                    raise _Refused(abi.GNTST_no_device_space)
            if share is None:
                with self.dom.quiesced():
                    fd = self.dom.memory.share_ram_page(gpa)
                share = _Share(fd, 0)
                with self._lock:
                    self._shared[gpa] = share
            with self._lock:
                share.users += 1
                self._lent[(grantee, mid)] = _Lent(grantee, ref, write, gpa, share)
            return abi.GNTST_okay, [share.fd]
        except _Refused as exc:
            self.dom.grants.unpin(ref, write)
            return exc.status, []
        except BaseException:
            self.dom.grants.unpin(ref, write)
            raise

    def peer_unmap(self, msg: dict[str, Any]) -> None:
        grantee, mid = msg.get("grantee"), msg.get("mid")
        with self._lock:
            lent = self._lent.pop((grantee, mid), None) if isinstance(grantee, int) and isinstance(mid, int) \
                else None
            if lent is None:
                return
            share = lent.share
            share.users -= 1
            last = share.users == 0
            if last and not share.given_back:
                del self._shared[lent.gpa]
        self.dom.grants.unpin(lent.ref, lent.write)
        if last and share.given_back:
            os.close(share.fd)  # the page here is another one now (or none): nothing to copy back
        elif last:
            with self.dom.quiesced():
                self.dom.memory.unshare_ram_page(lent.gpa, share.fd)

    def lent(self) -> list[tuple[int, int, bool, int]]:
        """(grantee, ref, write, gpa) of each mapping other domains hold of our pages."""
        with self._lock:
            return [(v.grantee, v.ref, v.write, v.gpa) for v in self._lent.values()]


class _Refused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status
