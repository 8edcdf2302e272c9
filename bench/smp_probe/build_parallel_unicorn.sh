#!/bin/sh
# Build unicorn 2.1.4 (x86 only, ~15 s on 2 cores) from its PyPI sdist with one change: QEMU's
# curr_cflags(), a constant 0 in unicorn, returns the exported global uc_hd_curr_cflags, so a process can
# make every translation block it translates from then on CF_PARALLEL (0x80000): locked instructions
# become host atomics (tcg_gen_atomic_* -> helper_atomic_*_mmu on the host address). Second change: the
# xchg helper (atomic_template.h) becomes a real atomic exchange.
#   sh bench/smp_probe/build_parallel_unicorn.sh OUTDIR      -> OUTDIR/libunicorn.so.2
#   LIBUNICORN_PATH=OUTDIR .venv/bin/python bench/smp_probe/atomic_probe.py
set -eu
OUT=$(realpath -m "${1:?usage: $0 OUTDIR}")
HERE=$(dirname "$(realpath "$0")")
PY=${PYTHON:-$HERE/../../.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PY" -m pip download --no-deps --no-binary :all: unicorn==2.1.4 -d "$WORK" >/dev/null
tar xzf "$WORK"/unicorn-2.1.4.tar.gz -C "$WORK"
SRC="$WORK/unicorn-2.1.4/src"
"$PY" - "$SRC" <<'PYEOF'
import sys
src = sys.argv[1]
p = src + "/qemu/include/exec/exec-all.h"
s = open(p).read()
old = "static inline uint32_t curr_cflags(void)\n{\n    return 0;\n}"
assert old in s, "curr_cflags() not as in 2.1.4"
s = s.replace(old, "extern uint32_t uc_hd_curr_cflags; /* hyperdisco: CF_PARALLEL for SMP guests */\n"
              "static inline uint32_t curr_cflags(void)\n{\n    return uc_hd_curr_cflags;\n}")
open(p, "w").write(s)
p = src + "/uc.c"
s = open(p).read()
anchor = "UNICORN_EXPORT\nuc_err uc_open(uc_arch arch, uc_mode mode, uc_engine **result)"
assert anchor in s
s = s.replace(anchor, "UNICORN_EXPORT uint32_t uc_hd_curr_cflags = 0;\n\n" + anchor, 1)
open(p, "w").write(s)
# unicorn's xchg helper is `ret = *haddr; *haddr = val;`: not atomic even under CF_PARALLEL
p = src + "/qemu/accel/tcg/atomic_template.h"
s = open(p).read()
old = "    ret = *haddr;\n    *haddr = val;\n"
assert s.count(old) == 1, "xchg helper not as in 2.1.4"
open(p, "w").write(s.replace(old, "    ret = __atomic_exchange_n(haddr, val, __ATOMIC_SEQ_CST);\n"))
PYEOF
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DUNICORN_BUILD_TESTS=off -DUNICORN_ARCH=x86 >/dev/null
cmake --build "$WORK/build" -j"$(nproc)" >/dev/null
mkdir -p "$OUT"
cp -L "$WORK/build/libunicorn.so.2" "$OUT/libunicorn.so.2"
echo "$OUT/libunicorn.so.2"
