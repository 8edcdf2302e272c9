"""qcow2 images, versions 2 and 3: reading and writing what ``qemu-img create -f qcow2`` makes.

Format facts are from QEMU's specification, docs/interop/qcow2.txt (also qcow2.rst) in qemu/qemu:

- Header: big-endian; magic "QFI\\xfb", version 2 or 3, backing_file_offset/size (name not NUL-terminated,
  at most 1023 bytes, stored in the first cluster), cluster_bits (>= 9; QEMU's limit is 2 MiB, i.e. 21),
  size, crypt_method, l1_size, l1_table_offset, refcount_table_offset, refcount_table_clusters,
  nb_snapshots, snapshots_offset (72 bytes for v2). Version 3 adds incompatible_features (bit 0 dirty,
  1 corrupt, 2 external data file, 3 compression type, 4 extended L2 entries; "an implementation must
  fail to open an image if an unknown bit is set"), compatible_features, autoclear_features ("may only
  write to an image with unknown auto-clear features if it clears the respective bits ... first"),
  refcount_order (refcount_bits = 1 << order, at most 6; v2 is always 4) and header_length (>= 104,
  a multiple of 8). Header extensions follow (type, length, data padded to 8; 0 ends the list):
  0xe2792aca backing file format, 0x6803f857 feature name table, 0x44415441 external data file.
- Mapping: l2_entries = cluster_size / 8; l1_index = (offset / cluster_size) / l2_entries. L1 and L2
  entries keep the host offset in bits 9-55; bit 63 ("COPIED") is set when the refcount is exactly one.
  L2 bit 62 marks a compressed cluster; bit 0 of a standard descriptor (v3 only) reads as zeros.
  An unallocated cluster reads from the backing file, zeros past its end or without one.
- Refcounts: a refcount table (contiguous, refcount_table_clusters) of refcount block offsets (bits
  9-63), blocks of cluster_size * 8 / refcount_bits entries; sub-byte entries count bit 0 as the least
  significant bit. Refcount 1 = used, 0 = free.

Writing appends clusters at the end of the file. Crash consistency follows "refcount before reference,
data before pointer":

1. a new cluster's refcount is written (pwrite) before anything can point at it; a new refcount block is
   written and fdatasync'ed before the refcount table entry that points at it; a grown refcount table is
   written and fdatasync'ed before the header switches to it, and the old one is freed only afterwards;
2. guest data goes straight to its (new or existing) cluster;
3. L2 entries for new clusters, new L2 tables and L1 entries stay in memory (reads see them) until
   flush(): fdatasync (data, refcounts) -> write the changed L2 tables -> fdatasync -> write the changed
   L1 entries -> fdatasync. Too many dirty L2 tables trigger the same sequence on their own.

So at any crash point the file on disk only holds pointers to clusters whose contents and refcounts were
durable first: at worst clusters are leaked (refcount 1, unreferenced), which ``qemu-img check`` reports
as leaks, never as corruption. Everything written before a flush() reads back after a crash.

Backing files: the name is resolved against the image's directory and followed only inside the
directories allowed for backing files (base.py: the image's own directory tree by default); its format
must be recorded in the backing file format extension (0xe2792aca) and is never guessed from its contents,
which a guest may have written (QEMU refuses such images too since 6.1): an image without it is refused
with the 'qemu-img rebase -u -F' command that records it.

Not supported (one-line ImageError at open): encryption, external data files, extended L2 entries,
dirty images (lazy refcounts needing repair), unknown incompatible features, and writing images with
internal snapshots or the corrupt bit. Reading a compressed cluster fails that request with EIO.
discard() is a no-op.

Metadata checks (QEMU's overlap checks, its "cached" set): at open every metadata cluster is mapped by
kind -- main header, active L1 table, L2 tables, refcount table and blocks, snapshot table, inactive
(snapshot) L1 tables, bitmap directory -- and metadata that overlaps other metadata or lies beyond the
file refuses the image. An L2 entry (standard or preallocated-zero) whose cluster is unaligned, beyond the
file or on metadata is refused when its table is first read. Before an image is opened for writing,
every L2 table is read: no host cluster may be mapped twice and every mapped cluster (and L2 table) must
have a non-zero refcount, else the image is refused (``qemu-img check -r all`` repairs it). Every guest
data write and L2 table write is checked against the map just before it is issued. An inconsistency
found while serving I/O fails that disk alone: the request and every later one raise CorruptImage (an
OSError(EIO) that the block backend turns into an error response, and a one-line ImageError), and a
writable v3 image gets its corrupt bit, as QEMU does, so it is not written again before a repair.
"""

from __future__ import annotations

import array
import bisect
import errno
import os
import struct
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable

from hyperdisco.backends.disk.base import (
    CorruptImage,
    DiskImage,
    FileOpener,
    HostOpener,
    ImageMissing,
    LayeredImage,
    backing_path,
    file_size,
    pread_full,
    pwrite_full,
    pwrite_runs,
    read_padded,
    round_up,
)
from hyperdisco.errors import ImageError

QCOW2_MAGIC = b"QFI\xfb"

_HEADER_V2 = struct.Struct(">4sIQIIQIIQQIIQ")  # 72 bytes
_HEADER_V3 = struct.Struct(">QQQII")  # bytes 72..103
_RT_FIELDS = struct.Struct(">QI")  # refcount_table_offset, refcount_table_clusters at byte 48
_AUTOCLEAR_AT = 88

OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00  # bits 9-55 of L1 and standard L2 entries
RT_OFFSET_MASK = 0xFFFF_FFFF_FFFF_FE00  # bits 9-63 of refcount table entries
OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
_INCOMPAT_NAMES = {0: "dirty", 1: "corrupt", 2: "external data file", 3: "compression type",
                   4: "extended L2 entries"}

EXT_END = 0
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_NAMES = 0x6803F857
EXT_DATA_FILE = 0x44415441
EXT_BITMAPS = 0x23852875

MAX_L1_BYTES = 32 << 20  # QEMU's implementation limits: 32 MiB L1, 8 MiB refcount table
MAX_RT_BYTES = 8 << 20
MAX_SNAPSHOTS = 65536  # hyperdisco's bounds on a snapshot table it will parse
MAX_SNAPSHOT_TABLE_BYTES = 64 << 20
_SNAPSHOT_HEAD = struct.Struct(">QIHHIIQII")  # 40 bytes: l1 offset, l1 size, id/name lengths, ..., extra
L2_CACHE_TABLES = 64
BACKING_FORMATS = ("raw", "qcow2", "cow")

Opener = Callable[[str, str], DiskImage]


def _be_array(data: bytes) -> array.array[int]:
    table = array.array("Q", data)
    if sys.byteorder == "little":
        table.byteswap()
    return table


def _be_bytes(table: array.array[int]) -> bytes:
    if sys.byteorder == "little":
        copy = array.array("Q", table)
        copy.byteswap()
        return copy.tobytes()
    return table.tobytes()


class _MetadataMap:
    """Which host clusters hold qcow2 metadata, by kind (QEMU's overlap-check kinds: main header, active
    L1, active L2, refcount table, refcount blocks, snapshot table, inactive L1, bitmap directory).

    Single clusters (L2 tables, refcount blocks, the header) are a dict; contiguous tables are
    non-overlapping ranges kept sorted by their first cluster.
    """

    def __init__(self) -> None:
        self._single: dict[int, str] = {}
        self._starts: list[int] = []
        self._ranges: list[tuple[int, int, str]] = []  # (first cluster, end cluster, kind)

    def kind(self, cluster: int) -> str | None:
        found = self._single.get(cluster)
        if found is not None:
            return found
        i = bisect.bisect_right(self._starts, cluster) - 1
        if i >= 0 and cluster < self._ranges[i][1]:
            return self._ranges[i][2]
        return None

    def overlap(self, first: int, count: int) -> str | None:
        """The kind of metadata in clusters [first, first+count), if any."""
        i = bisect.bisect_left(self._starts, first + count) - 1
        if i >= 0 and self._ranges[i][1] > first:
            return self._ranges[i][2]
        if count <= len(self._single):
            for c in range(first, first + count):
                if c in self._single:
                    return self._single[c]
        else:
            for c, kind in self._single.items():
                if first <= c < first + count:
                    return kind
        return None

    def add(self, cluster: int, kind: str) -> str | None:
        """Record one metadata cluster; returns the kind already there (nothing recorded) if any."""
        clash = self.kind(cluster)
        if clash is None:
            self._single[cluster] = kind
        return clash

    def add_range(self, first: int, count: int, kind: str) -> str | None:
        clash = self.overlap(first, count) if count else None
        if clash is None and count:
            i = bisect.bisect_left(self._starts, first)
            self._starts.insert(i, first)
            self._ranges.insert(i, (first, first + count, kind))
        return clash

    def remove_range(self, first: int) -> None:
        i = bisect.bisect_left(self._starts, first)
        if i < len(self._starts) and self._starts[i] == first:
            del self._starts[i]
            del self._ranges[i]


class Qcow2Image(LayeredImage):
    """An open qcow2 image (see the module docstring for coverage and the write ordering)."""

    def __init__(self, path: str, readonly: bool, open_backing: Opener,
                 opener: FileOpener | None = None) -> None:
        self.path = path
        self.readonly = readonly
        self.backing: DiskImage | None = None
        files = opener or HostOpener()
        self._fd = files.open(path, readonly)
        self._lock = threading.Lock()
        try:
            self._load(open_backing, files)
        except BaseException:
            os.close(self._fd)
            self._fd = -1
            if self.backing is not None:
                self.backing.close()
            raise

    # ---- opening

    def _bad(self, why: str) -> ImageError:
        return ImageError(f"hyperdisco: {self.path}: {why}")

    def _load(self, open_backing: Opener, files: FileOpener) -> None:
        fd = self._fd
        fsize = file_size(fd)
        head = pread_full(fd, _HEADER_V2.size + _HEADER_V3.size, 0)
        if fsize < _HEADER_V2.size or head[:4] != QCOW2_MAGIC:
            raise self._bad("not a qcow2 image (bad magic)")
        (_, version, backing_off, backing_len, cbits, size, crypt, l1_size, l1_off, rt_off, rt_clusters,
         nb_snapshots, snap_off) = _HEADER_V2.unpack_from(head)
        if version not in (2, 3):
            raise self._bad(f"unsupported qcow2 version {version}")
        if not 9 <= cbits <= 21:
            raise self._bad(f"corrupt qcow2 header: cluster_bits {cbits} outside 9..21")
        cs = 1 << cbits
        incompat = compat = autoclear = 0
        refcount_order, header_len = 4, _HEADER_V2.size
        if version == 3:
            if fsize < _HEADER_V2.size + _HEADER_V3.size:
                raise self._bad("corrupt qcow2 header: truncated")
            incompat, compat, autoclear, refcount_order, header_len = _HEADER_V3.unpack_from(head, 72)
            if header_len < 104 or header_len % 8 or header_len > cs:
                raise self._bad(f"corrupt qcow2 header: header_length {header_len}")
            if refcount_order > 6:
                raise self._bad(f"corrupt qcow2 header: refcount_order {refcount_order} > 6")
        first = pread_full(fd, min(cs, fsize), 0)
        exts = self._extensions(first, header_len, cs)

        if crypt:
            raise self._bad("encrypted qcow2 images are not supported")
        unknown = incompat & ~(INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION
                               | INCOMPAT_EXTL2)
        if unknown:
            names = self._feature_names(exts.get(EXT_FEATURE_NAMES, b""))
            bits = [names.get(b, f"bit {b}") for b in range(64) if unknown >> b & 1]
            raise self._bad(f"qcow2 image uses unsupported incompatible features: {', '.join(bits)}")
        if incompat & INCOMPAT_DATA_FILE or EXT_DATA_FILE in exts:
            raise self._bad("qcow2 images with an external data file are not supported")
        if incompat & INCOMPAT_EXTL2:
            raise self._bad("qcow2 images with extended L2 entries (subclusters) are not supported")
        if incompat & INCOMPAT_DIRTY:
            raise self._bad("qcow2 image is dirty (lazy refcounts); repair it with 'qemu-img check -r all'")
        if incompat & INCOMPAT_CORRUPT and not self.readonly:
            raise self._bad("qcow2 image is marked corrupt; open it read-only or repair it with qemu-img")
        if nb_snapshots and not self.readonly:
            raise self._bad("writing qcow2 images with internal snapshots is not supported (open read-only)")

        l2n = cs // 8
        need_l1 = -(-size // (cs * l2n))
        if l1_size < need_l1:
            raise self._bad(f"corrupt qcow2 header: L1 table of {l1_size} entries is too small for "
                            f"{size} bytes")
        if l1_size * 8 > MAX_L1_BYTES:
            raise self._bad(f"corrupt qcow2 header: absurd L1 table size {l1_size}")
        end = round_up(fsize, cs)
        if l1_size and (l1_off % cs or l1_off == 0 or l1_off + 8 * l1_size > end):
            raise self._bad(f"corrupt qcow2 header: L1 table offset {l1_off:#x} is invalid or beyond "
                            "the file")
        if rt_clusters == 0 or rt_clusters * cs > MAX_RT_BYTES:
            raise self._bad(f"corrupt qcow2 header: absurd refcount table size ({rt_clusters} clusters)")
        if rt_off % cs or rt_off == 0 or rt_off + rt_clusters * cs > end:
            raise self._bad(f"corrupt qcow2 header: refcount table offset {rt_off:#x} is invalid or beyond "
                            "the file")

        self.size = size
        self.version = version
        self._cbits, self._cs, self._l2n = cbits, cs, l2n
        self._end = end
        self._l1_off = l1_off
        self._l1 = _be_array(pread_full(fd, 8 * l1_size, l1_off)) if l1_size else array.array("Q")
        self._rt_off, self._rt_clusters = rt_off, rt_clusters
        self._rt = _be_array(pread_full(fd, rt_clusters * cs, rt_off))
        self._rc_bits = 1 << refcount_order
        self._rc_per_block = cs * 8 // self._rc_bits
        self._l2_cache: OrderedDict[int, array.array[int]] = OrderedDict()
        self._dirty_l2: set[int] = set()
        self._dirty_l1: set[int] = set()
        self.compatible_features = compat
        self._incompat = incompat
        self._broken: CorruptImage | None = None
        self._checked_l2: set[int] = set()  # L2 tables whose entries were checked (or that we made)
        self._meta = _MetadataMap()
        self._map_metadata(nb_snapshots, snap_off, exts)
        if not self.readonly:
            self._check_all_l2()

        if backing_off:
            if backing_len == 0 or backing_len > 1023 or backing_off + backing_len > min(cs, fsize):
                raise self._bad("corrupt qcow2 header: backing file name beyond the first cluster")
            raw_name = first[backing_off:backing_off + backing_len]
            if b"\0" in raw_name:
                raise self._bad("corrupt qcow2 header: backing file name contains NUL bytes")
            name = os.fsdecode(raw_name)
            resolved = backing_path(name, self.path)
            files.check_backing(resolved, self.path)
            # The backing format is what the header records, never guessed from the backing file's
            # contents (which a guest may have written): without the extension the image is refused.
            fmt_raw = exts.get(EXT_BACKING_FORMAT)
            if fmt_raw is None:
                raise self._bad(f"the format of backing file {name} is not recorded; record it with "
                                f"'qemu-img rebase -u -b {name} -F raw|qcow2 {self.path}'")
            fmt = fmt_raw.decode("ascii", errors="replace")
            if fmt not in BACKING_FORMATS:
                raise self._bad(f"backing file format {fmt!r} is not supported (raw, qcow2, cow)")
            try:
                self.backing = open_backing(resolved, fmt)
            except ImageMissing as exc:
                if exc.path != resolved:
                    raise
                raise self._bad(f"backing file {resolved} does not exist") from None
            self.backing_file = resolved

        if autoclear and not self.readonly:
            # We keep no bitmaps up to date: clear the auto-clear bits before the first write.
            pwrite_full(fd, bytes(8), _AUTOCLEAR_AT)
            os.fdatasync(fd)

    def _extensions(self, first: bytes, start: int, cs: int) -> dict[int, bytes]:
        exts: dict[int, bytes] = {}
        off = start
        while off + 8 <= len(first):
            kind, length = struct.unpack_from(">II", first, off)
            if kind == EXT_END:
                break
            if off + 8 + length > len(first):
                raise self._bad("corrupt qcow2 header: header extension beyond the first cluster")
            exts.setdefault(kind, first[off + 8:off + 8 + length])
            off += 8 + round_up(length, 8)
        return exts

    @staticmethod
    def _feature_names(table: bytes) -> dict[int, str]:
        names = dict(_INCOMPAT_NAMES)
        for i in range(0, len(table) - 47, 48):
            if table[i] == 0:  # incompatible feature
                names[table[i + 1]] = table[i + 2:i + 48].rstrip(b"\0").decode(errors="replace")
        return names

    # ---- metadata checks (QEMU's overlap checks: guest data never lands on metadata)

    def _clusters(self, nbytes: int) -> int:
        return -(-nbytes // self._cs)

    def _map_metadata(self, nb_snapshots: int, snap_off: int, exts: dict[int, bytes]) -> None:
        """Record every metadata cluster at open; overlapping or out-of-file metadata refuses the image."""
        cs, meta, end = self._cs, self._meta, self._end

        def place(off: int, nbytes: int, kind: str) -> None:
            if nbytes == 0:
                return
            if off % cs or off + nbytes > end or (off == 0 and kind != "header"):
                raise self._bad(f"corrupt qcow2 image: {kind} at {off:#x} is unaligned or beyond the file")
            clash = meta.add_range(off // cs, self._clusters(nbytes), kind)
            if clash is not None:
                raise self._bad(f"corrupt qcow2 image: {kind} at {off:#x} overlaps the {clash}")

        place(0, cs, "header")
        place(self._l1_off, 8 * len(self._l1), "active L1 table")
        place(self._rt_off, self._rt_clusters * cs, "refcount table")
        if nb_snapshots:
            for l1_off, l1_bytes in self._snapshot_l1s(nb_snapshots, snap_off):
                place(l1_off, l1_bytes, "inactive L1 table")
        bitmaps = exts.get(EXT_BITMAPS)
        if bitmaps is not None and len(bitmaps) >= 24:
            dir_size, dir_off = struct.unpack_from(">QQ", bitmaps, 8)
            if dir_size:
                place(dir_off, dir_size, "bitmap directory")
        def table_cluster(off: int, name: str, kind: str) -> None:
            """One refcount block or L2 table: aligned, inside the file, overlapping no other metadata."""
            if off % cs or off + cs > end:
                raise self._bad(f"corrupt qcow2 image: {name} at {off:#x} is unaligned or beyond the file")
            clash = meta.add(off // cs, kind)
            if clash is not None:
                raise self._bad(f"corrupt qcow2 image: {name} at {off:#x} overlaps the {clash}")

        for ti, entry in enumerate(self._rt):
            if entry & RT_OFFSET_MASK:
                table_cluster(entry & RT_OFFSET_MASK, f"refcount block {ti}", "refcount block")
        for l1i, entry in enumerate(self._l1):
            if entry & OFFSET_MASK:
                table_cluster(entry & OFFSET_MASK, f"L1 entry {l1i}: L2 table", "active L2 table")

    def _snapshot_l1s(self, count: int, off: int) -> list[tuple[int, int]]:
        """(offset, bytes) of each snapshot's L1 table; records the snapshot table itself."""
        if count > MAX_SNAPSHOTS:
            raise self._bad(f"corrupt qcow2 header: {count} snapshots (at most {MAX_SNAPSHOTS})")
        if off % self._cs or off == 0 or off >= self._end:
            raise self._bad(f"corrupt qcow2 header: snapshot table offset {off:#x} is invalid or beyond "
                            "the file")
        limit = min(MAX_SNAPSHOT_TABLE_BYTES, self._end - off)
        table = b""
        l1s: list[tuple[int, int]] = []
        pos = 0
        for i in range(count):
            if pos + _SNAPSHOT_HEAD.size > len(table):  # read on in 64 KiB steps, up to the bound
                if pos + _SNAPSHOT_HEAD.size > limit:
                    raise self._bad(f"corrupt qcow2 image: snapshot table entry {i} beyond the file or "
                                    f"{MAX_SNAPSHOT_TABLE_BYTES >> 20} MiB")
                want = min(limit, max(2 * len(table), pos + _SNAPSHOT_HEAD.size + 65536))
                table = pread_full(self._fd, want, off)
            l1_off, l1_size, id_len, name_len, *_times, extra = _SNAPSHOT_HEAD.unpack_from(table, pos)
            if l1_size * 8 > MAX_L1_BYTES:
                raise self._bad(f"corrupt qcow2 image: snapshot {i} has an absurd L1 table size {l1_size}")
            if l1_size:
                l1s.append((l1_off, 8 * l1_size))
            pos = round_up(pos + _SNAPSHOT_HEAD.size + extra + id_len + name_len, 8)
        if pos > limit:
            raise self._bad("corrupt qcow2 image: snapshot table beyond the file")
        clash = self._meta.add_range(off // self._cs, self._clusters(pos), "snapshot table")
        if clash is not None:
            raise self._bad(f"corrupt qcow2 image: snapshot table at {off:#x} overlaps the {clash}")
        return l1s

    def _l2_problem(self, l1i: int, table: array.array[int], seen: bytearray | None) -> str | None:
        """What is wrong with the entries of L1 entry ``l1i``'s L2 table, if anything: a data cluster
        unaligned, beyond the file or on metadata; with ``seen`` (a bitmap of host clusters already
        referenced) also a data cluster mapped twice."""
        cs, meta, end = self._cs, self._meta, self._end
        for l2i, entry in enumerate(table):
            if not entry or entry & OFLAG_COMPRESSED:
                continue  # unallocated, or compressed (never written in place; reading it fails)
            host = entry & OFFSET_MASK
            if not host:
                continue
            guest = (l1i * self._l2n + l2i) * cs
            if host % cs or host >= end:
                return f"guest offset {guest:#x} maps to {host:#x}, unaligned or beyond the file"
            c = host // cs
            kind = meta.kind(c)
            if kind is not None:
                return f"guest offset {guest:#x} maps onto the {kind} at {host:#x}"
            if seen is not None:
                if seen[c >> 3] >> (c & 7) & 1:
                    return f"guest offset {guest:#x} maps to cluster {host:#x}, which is mapped twice"
                seen[c >> 3] |= 1 << (c & 7)
        return None

    def _check_all_l2(self) -> None:
        """Before an image is written: every L2 table checked, no host cluster mapped twice, and every
        mapped cluster (and L2 table) with a refcount of at least one (so it is never handed out again)."""
        seen = bytearray(self._end // self._cs // 8 + 1)
        blocks: dict[int, bytes] = {}
        for l1i, entry in enumerate(self._l1):
            off = entry & OFFSET_MASK
            if not off:
                continue
            table = _be_array(pread_full(self._fd, self._cs, off))
            why = self._l2_problem(l1i, table, seen)
            if why is None:
                why = self._unreferenced(off, table, blocks)
            if why is not None:
                raise self._bad(f"corrupt qcow2 image: {why}; repair it with 'qemu-img check -r all'")
            self._checked_l2.add(off)

    def _unreferenced(self, l2_off: int, table: array.array[int], blocks: dict[int, bytes]) -> str | None:
        """A cluster this L2 table (or the table itself) uses whose refcount is 0, if any."""
        hosts = [e & OFFSET_MASK for e in table if e and not e & OFLAG_COMPRESSED]
        for host in (l2_off, *hosts):
            if not host:
                continue
            if self._refcount(host // self._cs, blocks) == 0:
                return f"cluster {host:#x} is in use but its refcount is 0"
        return None

    def _refcount(self, cluster: int, blocks: dict[int, bytes]) -> int:
        ti, bi = divmod(cluster, self._rc_per_block)
        if ti >= len(self._rt):
            return 0
        off = self._rt[ti] & RT_OFFSET_MASK
        if not off:
            return 0
        block = blocks.get(off)
        if block is None:
            if len(blocks) >= 64:
                blocks.clear()
            block = blocks[off] = pread_full(self._fd, self._cs, off)
        bits = self._rc_bits
        if bits >= 8:
            width = bits // 8
            return int.from_bytes(block[bi * width:(bi + 1) * width], "big")
        byte, shift = divmod(bi * bits, 8)
        return block[byte] >> shift & ((1 << bits) - 1)

    def _corrupt(self, why: str) -> CorruptImage:
        """Fail this image for good: this request and every later one (QEMU marks the image corrupt and
        stops using it too). A writable v3 image gets its corrupt bit, so it is not written before repair."""
        if self._broken is None:
            self._broken = CorruptImage(f"hyperdisco: {self.path}: corrupt qcow2 image: {why}; the disk is "
                                        "stopped (check it with 'qemu-img check')")
            if not self.readonly and self.version >= 3:
                try:
                    pwrite_full(self._fd, struct.pack(">Q", self._incompat | INCOMPAT_CORRUPT), 72)
                    os.fdatasync(self._fd)
                except OSError:
                    pass
        return self._broken

    def _check_data_write(self, host: int, length: int) -> None:
        """QEMU's pre-write overlap check: guest data must not land on any metadata."""
        cs = self._cs
        first = host // cs
        kind = self._meta.overlap(first, (host + length - 1) // cs - first + 1)
        if kind is not None:
            raise self._corrupt(f"a guest write at {host:#x} would overwrite the {kind}")

    def _keeps_writes(self) -> bool:
        return not self.readonly and self._broken is None  # close() writes nothing more to a corrupt image

    def flush(self) -> None:
        if self._broken is not None:
            raise self._broken  # what was written since the last flush is not durable: say so
        super().flush()

    # ---- metadata access

    def _eio(self, why: str) -> CorruptImage:
        return self._corrupt(why)

    def _l2(self, l1i: int, allocate: bool) -> tuple[int, array.array[int] | None]:
        """The L2 table for L1 index ``l1i`` as (offset, entries); (0, None) when unallocated."""
        off = self._l1[l1i] & OFFSET_MASK
        if off == 0:
            if not allocate:
                return 0, None
            off = self._alloc(1)
            self._meta.add(off // self._cs, "active L2 table")
            self._checked_l2.add(off)
            table = array.array("Q", bytes(self._cs))
            self._l2_cache[off] = table
            self._dirty_l2.add(off)  # written at flush, before the L1 entry that points at it
            self._l1[l1i] = off | OFLAG_COPIED
            self._dirty_l1.add(l1i)
            self._evict()
            return off, table
        cached = self._l2_cache.get(off)
        if cached is not None:
            self._l2_cache.move_to_end(off)
            return off, cached
        if off % self._cs or off + self._cs > self._end:
            raise self._eio(f"L2 table offset {off:#x} is invalid or beyond the file")
        table = _be_array(pread_full(self._fd, self._cs, off))
        if off not in self._checked_l2:  # checked once: only we change it (the image is locked)
            why = self._l2_problem(l1i, table, None)
            if why is not None:
                raise self._corrupt(why)
            self._checked_l2.add(off)
        self._l2_cache[off] = table
        self._evict()
        return off, table

    def _evict(self) -> None:
        if len(self._l2_cache) <= L2_CACHE_TABLES:
            return
        if len(self._dirty_l2) >= L2_CACHE_TABLES:
            self._flush()  # make the dirty tables clean (and durable) so they can go
        for off in list(self._l2_cache):
            if len(self._l2_cache) <= L2_CACHE_TABLES:
                break
            if off not in self._dirty_l2:
                del self._l2_cache[off]

    def _alloc(self, n: int) -> int:
        """n contiguous new clusters at the end of the file, their refcounts already 1 on disk."""
        start = self._end
        self._end += n * self._cs
        self._set_refcounts(start // self._cs, n, 1)
        return start

    def _set_refcounts(self, first: int, n: int, value: int) -> None:
        per = self._rc_per_block
        c, stop = first, first + n
        while c < stop:
            ti, bi = divmod(c, per)
            block = self._refblock(ti)
            k = min(stop - c, per - bi)
            self._write_refcounts(block, bi, k, value)
            c += k

    def _write_refcounts(self, block: int, index: int, count: int, value: int) -> None:
        bits = self._rc_bits
        if bits >= 8:
            width = bits // 8
            pwrite_full(self._fd, value.to_bytes(width, "big") * count, block + index * width)
            return
        lo, hi = index * bits // 8, ((index + count) * bits + 7) // 8
        buf = bytearray(pread_full(self._fd, hi - lo, block + lo))
        mask = (1 << bits) - 1
        for i in range(index, index + count):
            pos = i * bits - lo * 8
            byte, shift = divmod(pos, 8)
            buf[byte] = (buf[byte] & ~(mask << shift)) | ((value & mask) << shift)
        pwrite_full(self._fd, buf, block + lo)

    def _refblock(self, ti: int) -> int:
        """Offset of refcount block ``ti``, creating it (durably, before the table points at it)."""
        if ti >= len(self._rt):
            self._grow_refcount_table(ti)
        off = self._rt[ti] & RT_OFFSET_MASK
        if off:
            if off % self._cs or off + self._cs > self._end:
                raise self._eio(f"refcount block offset {off:#x} is invalid or beyond the file")
            return off
        off = self._end
        self._end += self._cs
        own = off // self._cs
        self._meta.add(own, "refcount block")
        block = bytearray(self._cs)
        self_covered = own // self._rc_per_block == ti
        pwrite_full(self._fd, block, off)
        if self_covered:
            self._write_refcounts(off, own % self._rc_per_block, 1, 1)
        else:
            self._set_refcounts(own, 1, 1)
        os.fdatasync(self._fd)
        self._rt[ti] = off
        pwrite_full(self._fd, struct.pack(">Q", off), self._rt_off + 8 * ti)
        return off

    def _grow_refcount_table(self, ti: int) -> None:
        """Move the refcount table to the end of the file with room for index ``ti`` and itself."""
        cs, per = self._cs, self._rc_per_block
        per_cluster = cs // 8
        clusters = max(2 * self._rt_clusters, -(-(ti + 1) // per_cluster))
        while True:
            # the new table, plus the refcount blocks that may be needed to count it, must be indexable
            last = self._end // cs + clusters + clusters // per + 4
            if clusters * per_cluster > last // per + 1:
                break
            clusters *= 2
        if clusters * cs > MAX_RT_BYTES:
            raise OSError(errno.EFBIG, f"hyperdisco: {self.path}: qcow2 refcount table would exceed "
                          f"{MAX_RT_BYTES >> 20} MiB")
        old_off, old_clusters = self._rt_off, self._rt_clusters
        new_off = self._end
        self._end += clusters * cs
        self._meta.add_range(new_off // cs, clusters, "refcount table")
        table = array.array("Q", self._rt)
        table.extend(array.array("Q", bytes(8 * (clusters * per_cluster - len(table)))))
        self._rt, self._rt_off = table, new_off  # new blocks record themselves in the new table
        self._set_refcounts(new_off // cs, clusters, 1)
        pwrite_full(self._fd, _be_bytes(self._rt), new_off)
        os.fdatasync(self._fd)
        pwrite_full(self._fd, _RT_FIELDS.pack(new_off, clusters), 48)
        os.fdatasync(self._fd)
        self._rt_clusters = clusters
        self._meta.remove_range(old_off // cs)  # free now (never reused: allocation is at the end)
        self._set_refcounts(old_off // cs, old_clusters, 0)  # a crash before this only leaks

    # ---- I/O

    def _read_backing(self, offset: int, length: int) -> bytes:
        if self.backing is None:
            return bytes(length)
        return read_padded(self.backing, offset, length, self.backing.size // 512 * 512)

    def _classify(self, entry: int, guest: int) -> tuple[int, int]:
        """(kind, where) for a cluster's L2 entry: 0 data at host offset, 1 zeros, 2 backing."""
        if entry & OFLAG_COMPRESSED:
            raise OSError(errno.EIO, f"hyperdisco: {self.path}: compressed qcow2 clusters are not supported "
                          "(convert with 'qemu-img convert -O qcow2')")
        if self.version >= 3 and entry & OFLAG_ZERO:
            return 1, 0
        host = entry & OFFSET_MASK
        if host == 0:
            return (2, guest) if self.backing is not None else (1, 0)
        if host % self._cs or host >= self._end:
            raise self._eio(f"data cluster offset {host:#x} is invalid or beyond the file")
        return 0, host

    def _read(self, offset: int, length: int) -> bytes:
        if self._broken is not None:
            raise self._broken
        cs, l2n = self._cs, self._l2n
        parts: list[bytes] = []
        run_kind, run_at, run_len = -1, 0, 0
        pos, end = offset, offset + length
        while pos < end:
            ci, within = divmod(pos, cs)
            l1i, l2i = divmod(ci, l2n)
            _, table = self._l2(l1i, False)
            while pos < end and l2i < l2n:
                n = min(cs - within, end - pos)
                kind, where = self._classify(table[l2i] if table is not None else 0, pos - within)
                where += within if kind != 1 else 0
                if run_len and kind == run_kind and (kind == 1 or where == run_at + run_len):
                    run_len += n
                else:
                    if run_len:
                        parts.append(self._read_run(run_kind, run_at, run_len))
                    run_kind, run_at, run_len = kind, where, n
                pos += n
                within = 0
                l2i += 1
        if run_len:
            parts.append(self._read_run(run_kind, run_at, run_len))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read_run(self, kind: int, at: int, length: int) -> bytes:
        if kind == 0:
            return pread_full(self._fd, length, at)
        if kind == 1:
            return bytes(length)
        return self._read_backing(at, length)

    def _write(self, offset: int, data: memoryview) -> None:
        if self._broken is not None:
            raise self._broken
        cs, l2n = self._cs, self._l2n
        pending: list[tuple[int, memoryview | bytes]] = []
        pos, end, i = offset, offset + len(data), 0
        while pos < end:
            ci = pos // cs
            l1i, l2i0 = divmod(ci, l2n)
            span_end = min(end, (l1i + 1) * l2n * cs)
            l2_off, table = self._l2(l1i, False)
            # which clusters of this span need a new host cluster?
            fresh = 0
            for c in range(ci, (span_end - 1) // cs + 1):
                entry = table[c % l2n] if table is not None else 0
                kind, _ = self._classify(entry, c * cs)
                if kind != 0 and entry & OFFSET_MASK == 0:
                    fresh += 1
            if fresh and table is None:
                l2_off, table = self._l2(l1i, True)
            next_host = self._alloc(fresh) if fresh else 0
            l2i = l2i0
            while pos < span_end:
                within = pos % cs
                n = min(cs - within, span_end - pos)
                piece = data[i:i + n]
                entry = table[l2i] if table is not None else 0
                kind, host = self._classify(entry, pos - within)
                if kind == 0:
                    pending.append((host + within, piece))
                else:
                    assert table is not None
                    if n == cs:
                        content: memoryview | bytes = piece
                    else:
                        base = self._read_backing(pos - within, cs) if kind == 2 else bytes(cs)
                        buf = bytearray(base)
                        buf[within:within + n] = piece
                        content = bytes(buf)
                    host = entry & OFFSET_MASK  # a preallocated zero cluster keeps its host cluster
                    if host == 0:
                        host = next_host
                        next_host += cs
                    pending.append((host, content))
                    table[l2i] = host | OFLAG_COPIED  # in memory now; on disk after the data, at flush
                    self._dirty_l2.add(l2_off)
                pos += n
                i += n
                l2i += 1
            # the data goes out before anything else can run a flush that writes these L2 entries
            for at, chunk in pending:
                self._check_data_write(at, len(chunk))
            pwrite_runs(self._fd, pending)
            pending.clear()
        self._evict()

    def _flush(self) -> None:
        if self._broken is not None:
            raise self._broken
        fd = self._fd
        os.fdatasync(fd)  # data clusters, refcount blocks and table entries
        if self._dirty_l2:
            for off in sorted(self._dirty_l2):
                if self._meta.kind(off // self._cs) != "active L2 table":  # QEMU checks metadata writes too
                    raise self._corrupt(f"an L2 table write at {off:#x} would overwrite the "
                                        f"{self._meta.kind(off // self._cs)}")
                pwrite_full(fd, _be_bytes(self._l2_cache[off]), off)
            self._dirty_l2.clear()
            os.fdatasync(fd)  # L2 tables before the L1 entries that point at new ones
        if self._dirty_l1:
            dirty = sorted(self._dirty_l1)
            lo, hi = dirty[0], dirty[-1] + 1
            pwrite_full(fd, _be_bytes(self._l1[lo:hi]), self._l1_off + 8 * lo)
            self._dirty_l1.clear()
            os.fdatasync(fd)

    def _lower(self) -> DiskImage | None:
        return self.backing
