"""What every back end of a split driver does on xenbus, whatever its device (io/xenbus.h's states, as
Linux's xenbus backends drive them): read the frontend's nodes (untrusted: parsed defensively), publish
our state and features, follow the frontend's state, refuse a frontend through the backend's `error`
node (xenbus_dev_fatal), and give the guest's end of the event channel back when we disconnect.

A device class (blkback's VbdBackend, netback's VifBackend, the console channels' ChannelBackend) calls
this constructor first (the domain, the xenstore connection `xs`, the two directories `be` and `fe`, the
rate-limited `log`, the device thread), then sets up its own state, and provides `_run` (the thread),
`_on_watch`, `_advertise`, `_connect`, `_disconnect`, `_kick` and `connected`; `_attach`/`_detach` map and
give back the frontend's ring pages and event channel.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from typing import Any

from ..core.evtchn import EvtchnError
from ..core.grant import GrantError
from ..core.ratelimit import RateLimiter
from ..xen import abi as xen_abi
from ..xen.io import xenbus as xb
from .back_ring import RingError


class XenbusBackend:
    def __init__(self, dom: Any, xenstored: Any, kind: str, devid: int, label: str, thread_name: str,
                 log: Callable[[str], None]) -> None:
        """Device `devid` of xenstore type `kind` (console, vif, vbd) of domain `dom`: its lines go to `log`
        prefixed by `label`, its thread (`_run`, started by start()) is named `thread_name`. The xenstore
        connection calls `_on_watch` only for watches, which `_run` sets: a subclass may set up what
        `_on_watch` uses after this constructor."""
        self.dom = dom
        self.devid = devid
        self._log = log
        self._label = label
        self.limit = RateLimiter()  # lines the guest can cause (reconnect loops, broken rings), by kind
        self.be = f"/local/domain/0/backend/{kind}/{dom.domid}/{devid}"
        self.fe = f"/local/domain/{dom.domid}/device/{kind}/{devid}"
        self.state = xb.XenbusStateInitialising
        self.closed = threading.Event()  # frontend and backend both Closed
        self.port: int | None = None  # the guest's event channel, bound to us while connected
        self._port_obj: Any = None
        self._stack: ExitStack | None = None  # the ring pages' grants, held while connected
        self.xs = xenstored.local_connection(self._on_watch)
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    def log(self, msg: str) -> None:
        self._log(f"{self._label}: {msg}")

    def start(self) -> None:
        self._thread.start()

    def _notify(self) -> None:
        """Signal the frontend through its event channel, while it is still the port we bound."""
        port = self.port
        if port is not None and self.dom.evtchn.ports.get(port) is self._port_obj:
            self.dom.evtchn.notify(port)

    def _run(self) -> None:
        """The device thread: publish our features, go InitWait, then the device's `_loop` until it is
        stopped. A bug in it stops this device only (logged), which lets go of the frontend either way."""
        try:
            self.xs.watch(f"{self.fe}/state", "fe")
            self._advertise()
            self._switch(xb.XenbusStateInitWait)
            self._loop()
        except Exception as e:  # never let a bug escape into the domain process: this device stops
            self.limit.log(self.log, "internal", f"internal error: {e!r}")
        finally:
            with self._state_lock():
                self._disconnect()

    # -- the device's part ------------------------------------------------------------------------------
    def _loop(self) -> None:
        """Wait for the frontend, the guest and domain 0, and serve them, until stopped."""
        raise NotImplementedError

    def _state_lock(self) -> AbstractContextManager[Any]:
        """What the device holds while its connection changes (none: only its thread changes it)."""
        return nullcontext()

    def _on_watch(self, path: str, token: str) -> None:
        raise NotImplementedError

    @property
    def connected(self) -> bool:
        raise NotImplementedError

    def _advertise(self) -> None:
        raise NotImplementedError

    def _connect(self) -> None:
        raise NotImplementedError

    def _disconnect(self) -> None:
        raise NotImplementedError

    def _kick(self) -> None:
        raise NotImplementedError

    # -- the frontend's rings and event channel ---------------------------------------------------------
    def _attach(self, refs: dict[str, int], port_node: str, port: int) -> list[Any] | None:
        """Map the frontend's granted ring pages (node name -> grant reference) and bind its event channel
        `port` (read from node `port_node`) to `_kick`: the pages, or None when any of it fails (the
        frontend is then refused through _fatal and nothing is held)."""
        stack = ExitStack()
        try:
            pages = [stack.enter_context(self.dom.grants.access(ref, 0, write=True)) for ref in refs.values()]
            self.dom.evtchn.bind_backend(port, self._kick)
        except (GrantError, EvtchnError) as e:
            stack.close()
            named = " ".join(f"{node} {ref}" for node, ref in refs.items())
            self._fatal(f"cannot connect {named} {port_node} {port}: {e}")
            return None
        self._stack, self.port = stack, port
        self._port_obj = self.dom.evtchn.ports.get(port)
        return pages

    def _ring_failed(self, e: RingError | GrantError) -> bool:
        """The frontend broke its ring (an index or a request no frontend writes) or took a page of it
        away: say so (rate-limited, by kind), disconnect and close, as Linux's backends do. False: nothing
        more to serve."""
        if isinstance(e, GrantError):
            self.limit.log(self.log, "ring page", f"ring page not accessible, disconnecting: {e}")
        else:
            self.limit.log(self.log, "ring broken", f"ring broken, disconnecting: {e}")
        self._disconnect()
        self._switch(xb.XenbusStateClosing)
        return False

    def _detach(self) -> None:
        """Give back what _attach took: the guest's port, then the ring pages' grants."""
        release_port(self.dom.evtchn, self.port, self._port_obj)
        self.port, self._port_obj = None, None
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    # -- nodes ------------------------------------------------------------------------------------------
    def _read(self, rel: str) -> str | None:
        try:
            v = self.xs.read(f"{self.fe}/{rel}")
        except Exception:
            return None
        return None if v is None else str(v)

    def _read_uint(self, rel: str, limit: int) -> int | None:
        v = self._read(rel)
        if v is None or not v.strip().isdigit() or not v.strip().isascii():
            return None
        n = int(v.strip())
        return n if n < limit else None

    def _read_port(self, rel: str) -> int | None:
        """The frontend's event-channel port from node `rel`, or None unless the domain's event channels
        hold it valid now (Xen's port_is_valid, which evtchn_bind_interdomain checks for the remote port:
        below the ABI's ports, 4096 with 2-level and 2^17 with FIFO, and within max_event_channels)."""
        port = self._read_uint(rel, 1 << 32)
        return port if port is not None and self.dom.evtchn.valid(port) else None

    def _switch(self, state: int) -> None:
        self.state = state
        try:
            self.xs.write(f"{self.be}/state", str(state))
        except Exception as e:
            self.limit.log(self.log, "state", f"cannot write state {state}: {e}")

    def _publish(self, nodes: dict[str, str]) -> None:
        """Backend nodes (features, device properties) in one transaction."""
        tx = self.xs.transaction_start()
        for k, v in nodes.items():
            self.xs.write(f"{self.be}/{k}", v, tx)
        self.xs.transaction_end(tx)

    # -- states -----------------------------------------------------------------------------------------
    def _frontend_changed(self) -> None:
        raw = self._read("state")
        if raw is None and self.connected:
            self.log("frontend state unreadable")
        fstate = xb.XenbusStateClosed if raw is None or not raw.isdigit() else int(raw)
        if fstate in (xb.XenbusStateInitialising, xb.XenbusStateInitWait):
            if self.state == xb.XenbusStateClosed:  # the frontend reconnects (e.g. its module reloaded)
                self.closed.clear()
                self._advertise()
                self._switch(xb.XenbusStateInitWait)
        elif fstate in (xb.XenbusStateInitialised, xb.XenbusStateConnected):
            if not self.connected and self.state in (xb.XenbusStateInitWait, xb.XenbusStateInitialised):
                self._connect()
        elif fstate == xb.XenbusStateClosing:
            self._disconnect()
            if self.state != xb.XenbusStateClosing:
                self._switch(xb.XenbusStateClosing)
        else:  # Closed, Unknown, or nonsense
            self._disconnect()
            if self.state != xb.XenbusStateClosed:
                self._switch(xb.XenbusStateClosed)
            self.closed.set()

    def _fatal(self, msg: str) -> None:
        """As xenbus_dev_fatal: say why in the backend's error node and close."""
        self.limit.log(self.log, "fatal", msg)
        try:
            self.xs.write(f"{self.be}/error", msg)
        except Exception:
            pass
        self._disconnect()
        self._switch(xb.XenbusStateClosing)

    def _clear_error(self) -> None:
        try:
            self.xs.rm(f"{self.be}/error")  # a refusal of an earlier attempt is history now
        except Exception:
            pass


def release_port(evtchn: Any, port: int | None, port_obj: Any) -> None:
    """Our end of the guest's event channel goes away (as Xen's evtchn_close on our side): the guest's
    port is unbound again, still offered to us, if it is still the one we bound."""
    if port is not None and port_obj is not None and evtchn.ports.get(port) is port_obj:
        port_obj.state, port_obj.on_send = xen_abi.EVTCHNSTAT_unbound, None


def write_device_nodes(xs: Any, domid: int, be: str, fe: str, back: Sequence[tuple[str, str]],
                       front: Sequence[tuple[str, str]], ro_front: Sequence[tuple[str, str]] = ()) -> None:
    """The toolstack's side of a new device (libxl's libxl__device_generic_add), in one transaction
    retried until it commits: whatever was at the two directories goes, the backend directory `be` is
    domain 0's and readable by the guest, the frontend directory `fe` the guest's and readable by
    domain 0; `back` and `front` are their nodes, `ro_front` frontend nodes the guest may only read."""
    while True:
        tx = xs.transaction_start()
        for path in (be, fe):
            try:
                xs.rm(path, tx)
            except Exception:
                pass
        xs.mkdir(be, tx)
        xs.set_perms(be, ["n0", f"r{domid}"], tx)
        for k, v in back:
            xs.write(f"{be}/{k}", v, tx)
        xs.mkdir(fe, tx)
        xs.set_perms(fe, [f"n{domid}", "r0"], tx)
        for k, v in front:
            xs.write(f"{fe}/{k}", v, tx)
        for k, v in ro_front:
            xs.write(f"{fe}/{k}", v, tx)
            xs.set_perms(f"{fe}/{k}", ["n0", f"r{domid}"], tx)
        if xs.transaction_end(tx):
            return


def remove_device_nodes(xs: Any, kind: str, domid: int, devid: int) -> None:
    """The toolstack's side of a device going away (libxl's libxl__device_destroy): remove the frontend
    and backend directories of device `devid` of type `kind` (vbd, vif), and the domain's backend
    directory of that type once it is empty. Nodes that are already gone are no error."""
    parent = f"/local/domain/0/backend/{kind}/{domid}"
    for path in (f"/local/domain/{domid}/device/{kind}/{devid}", f"{parent}/{devid}"):
        try:
            xs.rm(path)
        except Exception:
            pass
    try:
        if not xs.directory(parent):
            xs.rm(parent)
    except Exception:
        pass
