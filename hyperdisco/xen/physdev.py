"""xen/include/public/physdev.h: the physdev_op commands a PVH domU may name (refused: core/misc_ops.py)."""

from __future__ import annotations

__all__ = [
    "PHYSDEVOP_irq_status_query", "PHYSDEVOP_eoi", "PHYSDEVOP_map_pirq", "PHYSDEVOP_unmap_pirq",
    "PHYSDEVOP_get_free_pirq",
]

PHYSDEVOP_irq_status_query, PHYSDEVOP_eoi, PHYSDEVOP_map_pirq, PHYSDEVOP_unmap_pirq = 5, 12, 13, 14
PHYSDEVOP_get_free_pirq = 23
