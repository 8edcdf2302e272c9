/* Unbacked guest-physical memory (issue 13): as Xen's null handler for a PVH domU, reads give all ones,
 * writes are dropped, and the domain keeps running. The IO-APIC and HPET are absent on purpose. */
#include "kernel.h"

static unsigned long peek(unsigned long pa, int size)
{
    volatile void *p = (volatile void *)pa;
    switch (size) {
    case 1: return *(volatile uint8_t *)p;
    case 2: return *(volatile uint16_t *)p;
    case 4: return *(volatile uint32_t *)p;
    default: return *(volatile uint64_t *)p;
    }
}

CASE(unbacked)
{
    EXPECT_EQ("hpet_id", peek(0xfed00000, 4), 0xffffffffUL);      /* no HPET: its ID register floats */
    *(volatile uint32_t *)0xfed00010 = 1;                            /* "enable": dropped */
    EXPECT_EQ("hpet_config_after_write", peek(0xfed00010, 4), 0xffffffffUL);
    *(volatile uint32_t *)0xfec00000 = 1;                            /* IO-APIC index register */
    EXPECT_EQ("ioapic_window", peek(0xfec00010, 4), 0xffffffffUL);
    unsigned long hole = (ram_end + 0x10000000UL) & ~0xfffUL;       /* well above RAM, below 4 GiB */
    if (hole < 0xf0000000UL) {
        EXPECT_EQ("hole_byte", peek(hole + 3, 1), 0xffUL);
        EXPECT_EQ("hole_word", peek(hole + 6, 2), 0xffffUL);
        EXPECT_EQ("hole_quad", peek(hole + 8, 8), (long)~0UL);
        *(volatile uint64_t *)(hole + 8) = 0x1234;
        EXPECT_EQ("hole_after_write", peek(hole + 8, 8), (long)~0UL);
    }
    EXPECT("still_running", 1);
}
