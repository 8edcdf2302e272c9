"""core/migstream.py: the live-migration stream round-trips, and the destination refuses whatever is not a
whole, well-formed stream for its memory (it is network input) before anything of it is used."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from hyperdisco.core.migstream import PAGE, StreamError, StreamReader, StreamWriter

RAM = 64 * PAGE


def _receive(data: bytes, ram: bytearray) -> tuple[dict[str, object], list[tuple[int, bytes]]]:
    a, b = socket.socketpair()
    t = threading.Thread(target=lambda: (a.sendall(data), a.close()))
    t.start()
    view = memoryview(ram)
    vcpus: list[tuple[int, bytes]] = []

    def place(gpa: int, n: int) -> memoryview | None:
        return view[gpa:gpa + n] if 0 <= gpa and gpa + n <= RAM else None

    try:
        stats = StreamReader(b, place, lambda: False, idle_timeout=5).receive(
            lambda i, s: vcpus.append((i, s)))
    finally:
        t.join()
        b.close()
    return stats, vcpus


def _stream(build: object) -> bytes:
    a, b = socket.socketpair()
    w = StreamWriter(a)
    out = bytearray()
    def drain() -> None:
        while chunk := b.recv(1 << 16):
            out.extend(chunk)

    t = threading.Thread(target=drain)
    t.start()
    build(w)  # type: ignore[operator]
    a.close()
    t.join()
    b.close()
    return bytes(out)


def _good(w: StreamWriter) -> None:
    src = bytearray(RAM)
    src[3 * PAGE:5 * PAGE] = b"\x11" * (2 * PAGE)
    w.pages_from(3 * PAGE, memoryview(src)[3 * PAGE:5 * PAGE])
    w.vcpu(0, b"state")
    w.done({"rounds": 1, "pages": 2})


def test_round_trip() -> None:
    ram = bytearray(RAM)
    stats, vcpus = _receive(_stream(_good), ram)
    assert stats == {"rounds": 1, "pages": 2}
    assert vcpus == [(0, b"state")]
    assert ram[3 * PAGE:5 * PAGE] == b"\x11" * (2 * PAGE) and ram[:3 * PAGE] == bytes(3 * PAGE)


def test_every_flipped_byte_outside_pages_and_every_cut_is_refused() -> None:
    data = _stream(_good)
    page_data = range(8 + 12, 8 + 12 + 2 * PAGE)
    for i in list(range(len(data))):
        if i in page_data and i % 97:
            continue  # a stride through the pages themselves
        bad = data[:i] + bytes([data[i] ^ 0x40]) + data[i + 1:]
        with pytest.raises(StreamError):
            _receive(bad, bytearray(RAM))
    for cut in range(0, len(data), 61):
        with pytest.raises(StreamError):
            _receive(data[:cut], bytearray(RAM))


def test_pages_outside_memory_are_refused() -> None:
    def outside(w: StreamWriter) -> None:
        w.pages_from(RAM - PAGE, memoryview(bytes(2 * PAGE)))
        w.done({})

    with pytest.raises(StreamError, match="not this domain's memory"):
        _receive(_stream(outside), bytearray(RAM))
    # a record whose page count does not match its length
    rec = b"PAGE" + struct.pack("<I", 12 + PAGE) + struct.pack("<QI", 0, 2) + bytes(PAGE)
    with pytest.raises(StreamError, match="page record"):
        _receive(rec, bytearray(RAM))
    with pytest.raises(StreamError, match="unknown"):
        _receive(b"EVIL" + struct.pack("<I", 0), bytearray(RAM))
