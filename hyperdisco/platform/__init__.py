"""The small virtual platform a PVH kernel insists on: memory layout, ACPI tables, a local APIC, CPUID."""
