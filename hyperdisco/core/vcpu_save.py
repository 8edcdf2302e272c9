"""A vCPU's state outside the engine, for the save file (docs/save-format.md, section LAPC, "Several
vCPUs"): whether it is up, has a context, is parked offline (HLT with interrupts off) or waits for a
STARTUP IPI, whether it is halted, its single-shot and periodic timers, and its local APIC's registers
and pending vectors. The engine's part (registers, MSRs, FPU state) is the VCPU section's blob.

What a guest saved while suspending looks like (Linux, drivers/xen/manage.c do_suspend): the boot CPU
makes SCHEDOP_shutdown(suspend) from inside stop_machine(xen_suspend, cpumask_of(0)), so every other
online CPU spins in multi_cpu_stop with interrupts disabled, running, until the boot CPU lets it go; a CPU
taken offline before (native_play_dead) is parked in HLT with interrupts off. Both are restored as they
were, and the guest takes it from there (arch/x86/xen/enlighten.c xen_vcpu_restore: VCPUOP_is_up, then
VCPUOP_down, vcpu_info registered again, VCPUOP_up, for each other CPU that is up; events/events_base.c
xen_irq_resume: each CPU's VIRQs and IPIs bound again).

Timers are kept relative to the domain's system time at the save (the time left, never negative): the
new domain's system time may have another origin (another domain 0, another host). A restored
single-shot timer is armed only once the guest has bound that vCPU's VIRQ_TIMER again (`timer_bound`,
from EVTCHNOP_bind_virq: xen_irq_resume on the boot CPU, while the others still spin in stop_machine):
armed at once, one that had expired would fire into the new domain's empty VIRQ table and be lost, and
Linux, whose clockevent then believes an event is programmed, may never program that CPU's timer again
(hrtimer reprograms only for an expiry earlier than the one it believes pending). vcpu_info and runstate
registrations are not kept: the new domain has none and the guest registers them again. A vCPU blocked
in SCHEDOP_block/poll is restored runnable: the hypercall returns as after a spurious wake-up, which
Linux's callers check for.

The file is untrusted input: every field is type- and range-checked (HyperdiscoError, one line).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import HyperdiscoError
from ..platform import lapic

if TYPE_CHECKING:
    from .vcpu import VcpuContext

_FLAGS = ("up", "initialised", "stopped", "halted", "wait_for_sipi")
_MAX_NS = 1 << 62
_LAPIC_REG_LIMIT = 0x400  # the xAPIC page's registers: offsets 0x000-0x3F0, 16-byte aligned


def timer_bound(caller: VcpuContext, target: VcpuContext) -> None:
    """The guest bound `target`'s VIRQ_TIMER (from `caller`'s thread): its restored timer, if it has one
    still waiting, is armed now (firing at once if its time has passed)."""
    deadline, target.restored_timer_ns = target.restored_timer_ns, None
    if deadline is None or target.timer_ns is not None:  # the guest set a timer of its own meanwhile
        return
    target.set_timer(deadline, own_thread=caller is target)
    if caller is not target:
        target.wake()


def _remaining(deadline: int | None, now_ns: int) -> int | None:
    return None if deadline is None else max(0, deadline - now_ns)


def vcpu_record(ctx: VcpuContext, now_ns: int) -> dict[str, Any]:
    """The vCPU's state outside the engine (JSON-able), its timers as the time left at `now_ns`."""
    return {"index": ctx.index, **{k: bool(getattr(ctx, k)) for k in _FLAGS},
            "timer_in_ns": _remaining(ctx.timer_ns if ctx.timer_ns is not None else ctx.restored_timer_ns,
                                      now_ns),
            "periodic_ns": ctx.periodic_ns,
            "periodic_in_ns": _remaining(ctx.periodic_next, now_ns) if ctx.periodic_ns else None,
            "lapic_regs": {f"{off:#x}": val for off, val in sorted(ctx.lapic.regs.items())},
            "lapic_pending": sorted(ctx.lapic.pending)}


def _bad(index: Any, what: str) -> HyperdiscoError:
    return HyperdiscoError(f"hyperdisco: restore: saved state of vCPU {str(index)[:12]}: {what}")


def _ns(rec: dict[str, Any], key: str, index: int) -> int | None:
    v = rec.get(key)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < _MAX_NS:
        raise _bad(index, f"bad {key}")
    return v


def apply_vcpu_record(ctx: VcpuContext, rec: Any, now_ns: int) -> None:
    """Give a freshly built vCPU (engine state already imported) the state `rec` holds; its timers run
    from `now_ns` on. HyperdiscoError (one line) if anything in `rec` is malformed."""
    if not isinstance(rec, dict):
        raise _bad(ctx.index, "not an object")
    flags = {}
    for k in _FLAGS:
        v = rec.get(k)
        if not isinstance(v, bool):
            raise _bad(ctx.index, f"bad {k}")
        flags[k] = v
    timer = _ns(rec, "timer_in_ns", ctx.index)
    period = _ns(rec, "periodic_ns", ctx.index)
    period_in = _ns(rec, "periodic_in_ns", ctx.index)
    if period == 0:
        raise _bad(ctx.index, "bad periodic_ns")
    regs_in, pending_in = rec.get("lapic_regs"), rec.get("lapic_pending")
    if not isinstance(regs_in, dict) or len(regs_in) > _LAPIC_REG_LIMIT // 16:
        raise _bad(ctx.index, "bad lapic_regs")
    regs = {}
    for key, val in regs_in.items():
        try:
            off = int(key, 16) if isinstance(key, str) and key.startswith("0x") and len(key) <= 6 else -1
        except ValueError:
            off = -1
        if not 0 <= off < _LAPIC_REG_LIMIT or off % 16 or not isinstance(val, int) or isinstance(val, bool) \
                or not 0 <= val <= 0xFFFFFFFF:
            raise _bad(ctx.index, "bad lapic_regs")
        regs[off] = val
    if not isinstance(pending_in, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0xFF for v in pending_in):
        raise _bad(ctx.index, "bad lapic_pending")
    if flags["wait_for_sipi"] and flags["up"]:
        raise _bad(ctx.index, "up and waiting for a STARTUP IPI")
    if flags["up"] and not flags["initialised"]:
        raise _bad(ctx.index, "up without a context")
    for k, v in flags.items():
        setattr(ctx, k, v)
    ctx.blocked = False
    ctx.timer_ns = None
    ctx.restored_timer_ns = None if timer is None else now_ns + timer
    ctx.periodic_ns = period
    ctx.periodic_next = now_ns + (period_in or 0) if period else 0
    # the ID register is the vCPU's own (read-only to the guest), whatever the file says
    ctx.lapic.regs = {**ctx.lapic.regs, **regs, lapic.ID: ctx.lapic.regs[lapic.ID]}
    ctx.lapic.pending = set(pending_in)
    # its runstate follows at its first step (runstate.transition, on its own thread)
