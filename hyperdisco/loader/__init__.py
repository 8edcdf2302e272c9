"""Guest loaders: a kernel ELF with Xen notes, placed for the PVH entry with its start_info."""
