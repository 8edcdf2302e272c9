"""Domain 0: the host's domains (each a jailed process), xenstored, consoles, and their supervision."""
