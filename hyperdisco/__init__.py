"""hyperdisco: a hypervisor in Python that runs stock Linux kernels as Xen PVH guests."""

__version__ = "0.1.0"
