"""Domain 0's toolstack: building domains from images and configs, consoles, command execution."""
