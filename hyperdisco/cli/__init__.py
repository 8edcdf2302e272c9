"""The `hyperdisco` command line."""
