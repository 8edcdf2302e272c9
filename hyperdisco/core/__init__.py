"""The hypervisor core: domains, vCPUs, guest memory, event channels, time, scheduling."""
