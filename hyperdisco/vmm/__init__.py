"""The domain process: one per domain, started and supervised by domain 0 (the daemon), jailed."""
