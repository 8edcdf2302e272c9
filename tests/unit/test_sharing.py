"""Boot images shared copy-on-write between domains (loader/shared_image.py)."""

from __future__ import annotations

from unit_support import KERNEL_PADDR, make_elf

from hyperdisco.core.memory import GuestMemory
from hyperdisco.loader.elf import parse_kernel
from hyperdisco.loader.pvh import load_pvh
from hyperdisco.loader.shared_image import shared_kernel_image


def test_one_image_many_domains_private_writes() -> None:
    code = bytes(range(256)) * 16
    k = parse_kernel(make_elf(code=code, memsz=0x3000))
    a, b = GuestMemory(32 << 20), GuestMemory(32 << 20)
    try:
        for m in (a, b):
            load_pvh(m, k, None, "console=hvc0", 1)
            assert m.shared_bytes == 0x3000
            assert m.read(KERNEL_PADDR, len(code)) == code  # the image, as a copy would have been
            assert m.read(KERNEL_PADDR + len(code), 0x3000 - len(code)) == bytes(0x3000 - len(code))
        img = shared_kernel_image(k)
        assert shared_kernel_image(k) is img  # one image per kernel, however many domains
        a.write(KERNEL_PADDR, b"patched by domain a")  # the guest writes its kernel (alternatives...)
        assert a.read(KERNEL_PADDR, 19) == b"patched by domain a"
        assert b.read(KERNEL_PADDR, len(code)) == code  # the other domain still sees the original
        assert shared_kernel_image(k) is img
        b.write(KERNEL_PADDR - 4096, b"below")  # RAM around the image is the domain's own, as before
        assert b.read(KERNEL_PADDR - 4096, 5) == b"below" and a.read(KERNEL_PADDR - 4096, 5) == bytes(5)
    finally:
        a.close()
        b.close()
