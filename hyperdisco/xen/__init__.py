"""The Xen guest ABI as hyperdisco implements it: numbers and structure layouts from Xen's public headers.

One module per public header (xen/include/public/...): xen.py, errno.py, event_channel.py, grant_table.py,
memory.py, vcpu.py, sched.py, hvm.py, elfnote.py, version.py, features.py, arch_x86.py; the I/O protocols
in io/ (ring.py, blkif.py, xenbus.py, protocols.py, xs_wire.py, console.py). abi.py re-exports the
non-I/O ones in one namespace. This package imports nothing else of hyperdisco.
"""
