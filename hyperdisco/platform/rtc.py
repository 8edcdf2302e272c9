"""A read-only MC146818 CMOS real-time clock at ports 0x70/0x71, reading the host's UTC time.

Without it the kernel's RTC probe spins on the update-in-progress bit of a floating bus (0xff): some
20 000 port reads, each a trap. Register numbers: the MC146818 data sheet (seconds 0x00, minutes 0x02,
hours 0x04, weekday 0x06, day 0x07, month 0x08, year 0x09, status A-D 0x0a-0x0d, century 0x32).
"""

from __future__ import annotations

import time

INDEX_PORT, DATA_PORT = 0x70, 0x71


def _bcd(v: int) -> int:
    return (v // 10) << 4 | (v % 10)


class CmosRtc:
    def __init__(self) -> None:
        self.index = 0

    def write_index(self, value: int) -> None:
        self.index = value & 0x7F  # bit 7 is the NMI mask

    def read_data(self) -> int:
        t = time.gmtime()
        regs = {
            0x00: _bcd(t.tm_sec), 0x02: _bcd(t.tm_min), 0x04: _bcd(t.tm_hour),
            0x06: _bcd(t.tm_wday + 1), 0x07: _bcd(t.tm_mday), 0x08: _bcd(t.tm_mon),
            0x09: _bcd(t.tm_year % 100), 0x32: _bcd(t.tm_year // 100),
            0x0A: 0x26,  # divider on, 1024 Hz, no update in progress
            0x0B: 0x02,  # 24-hour mode, BCD, no interrupts
            0x0C: 0x00,
            0x0D: 0x80,  # valid RAM and time
        }
        return regs.get(self.index, 0)
