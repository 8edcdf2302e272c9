"""The split-driver I/O protocols: one module per header of xen/include/public/io/."""
