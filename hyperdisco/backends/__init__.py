"""Device backends (domain 0's side of the split drivers): console, and later block and network."""
