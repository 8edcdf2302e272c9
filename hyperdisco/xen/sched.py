"""xen/include/public/sched.h: the sched_op hypercall's commands, shutdown reasons and argument layouts."""

from __future__ import annotations

import struct

__all__ = [
    "SCHEDOP_yield", "SCHEDOP_block", "SCHEDOP_shutdown", "SCHEDOP_poll", "SCHEDOP_remote_shutdown",
    "SCHEDOP_shutdown_code", "SCHEDOP_watchdog", "SHUTDOWN_poweroff", "SHUTDOWN_reboot", "SHUTDOWN_suspend",
    "SHUTDOWN_crash", "SHUTDOWN_watchdog", "SHUTDOWN_soft_reset", "SHUTDOWN_NAMES", "SCHED_POLL",
    "SCHED_WATCHDOG", "NR_DOMAIN_WATCHDOG_TIMERS",
]

# --- sched.h ------------------------------------------------------------------------------------------
SCHEDOP_yield, SCHEDOP_block, SCHEDOP_shutdown, SCHEDOP_poll = 0, 1, 2, 3
SCHEDOP_remote_shutdown, SCHEDOP_shutdown_code, SCHEDOP_watchdog = 4, 5, 6
SHUTDOWN_poweroff, SHUTDOWN_reboot, SHUTDOWN_suspend, SHUTDOWN_crash = 0, 1, 2, 3
SHUTDOWN_watchdog, SHUTDOWN_soft_reset = 4, 5
SHUTDOWN_NAMES = {0: "poweroff", 1: "reboot", 2: "suspend", 3: "crash", 4: "watchdog", 5: "soft_reset"}
SCHED_POLL = struct.Struct("<QI4xQ")  # ports (handle), nr_ports, timeout
SCHED_WATCHDOG = struct.Struct("<II")  # struct sched_watchdog {uint32_t id; uint32_t timeout;}
NR_DOMAIN_WATCHDOG_TIMERS = 2  # xen/include/xen/sched.h: the watchdog timers a domain has
