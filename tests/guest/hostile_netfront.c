/*
 * hostile_netfront: a user-space netif frontend that sends a backend malformed packets.
 *
 * Run inside a guest as `hostile_net DEVID MY_IP PEER_IP`, for a vif that the kernel's xen-netfront does
 * not drive (the test unbinds the device from that driver and unloads it first). The program becomes the
 * vif's only frontend: it takes the device back to InitWait if the stock driver left it Closed (frontend
 * Closing, Closed, Initialising), does the netif handshake itself and prints one line per thing it tried:
 *   HANDSHAKE <name> ... backend-state <n> [error <the backend's error node>]   refused ones first, then
 *                                           "main" and one "after_<case>" per reconnection
 *   TX <case> status <s1>[,<s2>...]         the status of each slot's response, in slot order
 *   RX <buffer> id <n> status <n> flags <n> [ethertype <hex> src <mac>] [arp-reply-from-peer]
 *   RX readonly status <n> / RX arp_reply status <n>   summaries ("none" when nothing came back)
 *   TX flood sent <n> okay <n> other <n> seconds <t>   rounds of good frames filling the ring
 *   FATAL <case> backend-state <n> responses <n>    a packet the backend must treat as a broken ring
 * and `HOSTILE DONE` at the end. MY_IP is the address it claims in its ARP requests (the guest kernel
 * has no interface on the vif), PEER_IP the address of another domain on the same network that answers.
 *
 * Built at test time with `gcc -static` on the host; no Xen headers are needed. ABI facts and sources:
 *  - xen/include/public/io/ring.h: the shared ring is req_prod, req_event, rsp_prod, rsp_event
 *    (RING_IDX = uint32_t), padding to 64 bytes, then the entries, each the union of request and
 *    response; __RING_SIZE rounds the count down to a power of two; SHARED_RING_INIT sets req_event =
 *    rsp_event = 1. RING_REQUEST_PROD_OVERFLOW: a producer more than a ring ahead of the responses.
 *  - xen/include/public/io/netif.h: struct netif_tx_request {grant_ref_t gref; uint16_t offset, flags,
 *    id, size} (12 bytes: 256 entries a page), struct netif_tx_response {uint16_t id; int16_t status},
 *    struct netif_extra_info {uint8_t type, flags; union {struct {uint16_t size; uint8_t type, pad;
 *    uint16_t features} gso; uint16_t pad[3]} u} (8 bytes, occupying a tx slot), struct
 *    netif_rx_request {uint16_t id; grant_ref_t gref} (8 bytes), struct netif_rx_response {uint16_t id,
 *    offset, flags; int16_t status} (8 bytes: 256 entries); NETTXF_more_data 4, NETTXF_extra_info 8,
 *    XEN_NETIF_EXTRA_TYPE_GSO 1, XEN_NETIF_EXTRA_FLAG_MORE 1, XEN_NETIF_RSP_OKAY 0 / ERROR -1 / NULL 1;
 *    the frontend nodes tx-ring-ref, rx-ring-ref, event-channel, request-rx-copy, feature-rx-notify,
 *    feature-sg; the frontend's `mac` node.
 *  - xen/include/public/io/xenbus.h: enum xenbus_state (Initialising 1, InitWait 2, Initialised 3,
 *    Connected 4, Closing 5, Closed 6).
 *  - xen/include/public/io/xs_wire.h: struct xsd_sockmsg {type, req_id, tx_id, len} (uint32_t each),
 *    XS_READ 2, XS_WRITE 11.
 *  - Linux include/uapi/xen/gntalloc.h: IOCTL_GNTALLOC_ALLOC_GREF = _IOC(_IOC_NONE, 'G', 5, size) with
 *    struct ioctl_gntalloc_alloc_gref {u16 domid; u16 flags; u32 count; u64 index; u32 gref_ids[1]},
 *    GNTALLOC_FLAG_WRITABLE 1, mmap at `index`; IOCTL_GNTALLOC_DEALLOC_GREF = _IOC(_IOC_NONE, 'G', 6,
 *    size) {u64 index; u32 count}.
 *  - Linux include/uapi/xen/evtchn.h: IOCTL_EVTCHN_BIND_UNBOUND_PORT = _IOC(_IOC_NONE, 'E', 2, 4)
 *    {unsigned int remote_domain} returns the local port; IOCTL_EVTCHN_NOTIFY = _IOC(_IOC_NONE, 'E', 4, 4).
 *  - Linux drivers/xen/xenbus/xenbus_dev_frontend.c: a complete xsd_sockmsg written to /dev/xen/xenbus
 *    goes to xenstored (relative paths are under the domain's home); the reply is read() back.
 *  - RFC 826 (ARP over Ethernet, ethertype 0x0806): htype 1, ptype 0x0800, hlen 6, plen 4, oper 1
 *    request / 2 reply, then sha, spa, tha, tpa.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE_SIZE 4096
#define RING_HEADER 64
#define TX_ENTRIES 256
#define RX_ENTRIES 256

#define NETTXF_more_data (1 << 2)
#define NETTXF_extra_info (1 << 3)
#define EXTRA_TYPE_GSO 1
#define EXTRA_FLAG_MORE 1

#define XS_READ 2
#define XS_WRITE 11

#define ST_INITIALISING 1
#define ST_INITWAIT 2
#define ST_INITIALISED 3
#define ST_CONNECTED 4
#define ST_CLOSING 5
#define ST_CLOSED 6

struct tx_request {
    uint32_t gref;
    uint16_t offset;
    uint16_t flags;
    uint16_t id;
    uint16_t size;
};

struct tx_response {
    uint16_t id;
    int16_t status;
};

struct extra_info {
    uint8_t type;
    uint8_t flags;
    union {
        struct {
            uint16_t size;
            uint8_t type;
            uint8_t pad;
            uint16_t features;
        } gso;
        uint16_t pad[3];
    } u;
};

struct rx_request {
    uint16_t id;
    uint32_t gref;
};

struct rx_response {
    uint16_t id;
    uint16_t offset;
    uint16_t flags;
    int16_t status;
};

union tx_slot {
    struct tx_request req;
    struct extra_info extra;
    uint8_t raw[12];
};

_Static_assert(sizeof(struct tx_request) == 12, "netif_tx_request");
_Static_assert(sizeof(struct extra_info) == 8, "netif_extra_info");
_Static_assert(sizeof(union tx_slot) == 12, "tx ring entry");
_Static_assert(sizeof(struct rx_request) == 8, "netif_rx_request");
_Static_assert(sizeof(struct rx_response) == 8, "netif_rx_response");

struct gntalloc_alloc {
    uint16_t domid;
    uint16_t flags;
    uint32_t count;
    uint64_t index;
    uint32_t gref_ids[1];
};
struct gntalloc_dealloc {
    uint64_t index;
    uint32_t count;
};
#define GNTALLOC_FLAG_WRITABLE 1
#define IOCTL_GNTALLOC_ALLOC_GREF _IOC(_IOC_NONE, 'G', 5, sizeof(struct gntalloc_alloc))
#define IOCTL_GNTALLOC_DEALLOC_GREF _IOC(_IOC_NONE, 'G', 6, sizeof(struct gntalloc_dealloc))
#define IOCTL_EVTCHN_BIND_UNBOUND_PORT _IOC(_IOC_NONE, 'E', 2, sizeof(unsigned int))
#define IOCTL_EVTCHN_NOTIFY _IOC(_IOC_NONE, 'E', 4, sizeof(unsigned int))

struct xsmsg {
    uint32_t type, req_id, tx_id, len;
};

static int xs_fd, evtchn_fd, gnt_fd;
static char fe[128], be[256];
static uint8_t my_mac[6];
static uint32_t my_ip, peer_ip; /* network byte order */

static void die(const char *what)
{
    printf("HOSTILE FAILED %s: %s\n", what, strerror(errno));
    exit(1);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void nap_ms(int ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* -- xenstore through /dev/xen/xenbus ---------------------------------------------------------------- */

static void read_full(void *buf, size_t len)
{
    size_t have = 0;
    while (have < len) {
        ssize_t n = read(xs_fd, (char *)buf + have, len - have);
        if (n <= 0)
            die("read /dev/xen/xenbus");
        have += n;
    }
}

/* One request; the reply payload (NUL-terminated) into out. Returns the reply type. */
static uint32_t xs_request(uint32_t type, const char *a, const char *b, char *out, size_t outlen)
{
    char buf[4096 + sizeof(struct xsmsg)];
    struct xsmsg *m = (struct xsmsg *)buf;
    size_t la = strlen(a) + 1, lb = b ? strlen(b) : 0;
    if (la + lb > 4096) {
        errno = E2BIG;
        die("xenstore request");
    }
    m->type = type;
    m->req_id = 9;
    m->tx_id = 0;
    m->len = la + lb;
    memcpy(buf + sizeof *m, a, la);
    if (b)
        memcpy(buf + sizeof *m + la, b, lb);
    if (write(xs_fd, buf, sizeof *m + m->len) != (ssize_t)(sizeof *m + m->len))
        die("write /dev/xen/xenbus");
    struct xsmsg hdr;
    read_full(&hdr, sizeof hdr);
    char payload[4096];
    if (hdr.len > sizeof payload) {
        errno = EMSGSIZE;
        die("xenstore reply");
    }
    read_full(payload, hdr.len);
    if (out) {
        size_t n = hdr.len < outlen - 1 ? hdr.len : outlen - 1;
        memcpy(out, payload, n);
        out[n] = 0;
    }
    return hdr.type;
}

static int xs_read(const char *path, char *out, size_t outlen)
{
    return xs_request(XS_READ, path, NULL, out, outlen) == XS_READ ? 0 : -1;
}

static void xs_write(const char *path, const char *value)
{
    char err[64];
    if (xs_request(XS_WRITE, path, value, err, sizeof err) != XS_WRITE) {
        printf("HOSTILE FAILED xenstore write %s: %s\n", path, err);
        exit(1);
    }
}

static void fe_write(const char *node, const char *value)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", fe, node);
    xs_write(path, value);
}

static void fe_write_uint(const char *node, unsigned int value)
{
    char v[32];
    snprintf(v, sizeof v, "%u", value);
    fe_write(node, v);
}

static int backend_state(void)
{
    char path[384], v[32];
    snprintf(path, sizeof path, "%s/state", be);
    return xs_read(path, v, sizeof v) == 0 ? atoi(v) : -1;
}

/* Wait until the backend's state is one of `want` (a bit per state); the last state seen. */
static int wait_backend(unsigned int want, double timeout)
{
    double deadline = now() + timeout;
    int st;
    while (!((st = backend_state()) >= 0 && (want & (1u << st))) && now() < deadline)
        nap_ms(20);
    return st;
}

/* -- granted pages and the event channel ------------------------------------------------------------- */

struct gpage {
    uint32_t gref;
    uint64_t index;
    uint8_t *mem;
};

static struct gpage grant_page(uint16_t domid, uint16_t flags)
{
    struct gntalloc_alloc a = {.domid = domid, .flags = flags, .count = 1};
    if (ioctl(gnt_fd, IOCTL_GNTALLOC_ALLOC_GREF, &a) < 0)
        die("IOCTL_GNTALLOC_ALLOC_GREF");
    void *p = mmap(NULL, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, gnt_fd, a.index);
    if (p == MAP_FAILED)
        die("mmap gntalloc");
    memset(p, 0, PAGE_SIZE);
    struct gpage g = {a.gref_ids[0], a.index, p};
    return g;
}

/* -- one connection: both rings and the event channel --------------------------------------------- */

#define REQ_PROD(r) (*(volatile uint32_t *)((r) + 0))
#define REQ_EVENT(r) (*(volatile uint32_t *)((r) + 4))
#define RSP_PROD(r) (*(volatile uint32_t *)((r) + 8))
#define RSP_EVENT(r) (*(volatile uint32_t *)((r) + 12))

static struct {
    uint8_t *tx, *rx;
    uint32_t tx_gref, rx_gref;
    unsigned int port;
    uint32_t tx_prod, tx_cons; /* our req_prod_pvt and rsp_cons */
    uint32_t rx_prod, rx_cons;
} c;

static uint16_t next_id = 1;

static union tx_slot *tx_slot(uint32_t i)
{
    return (union tx_slot *)(c.tx + RING_HEADER + (i % TX_ENTRIES) * sizeof(union tx_slot));
}

static void *rx_slot(uint32_t i)
{
    return c.rx + RING_HEADER + (i % RX_ENTRIES) * 8;
}

static void notify(void)
{
    unsigned int p = c.port;
    if (ioctl(evtchn_fd, IOCTL_EVTCHN_NOTIFY, &p) < 0)
        die("IOCTL_EVTCHN_NOTIFY");
}

static void fence(void)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

/* Take the device back to InitWait: the stock driver left it Closed, or a broken ring left it Closing. */
static void reset(void)
{
    int st = backend_state();
    if (st == ST_INITWAIT)
        return;
    fe_write_uint("state", ST_CLOSING);
    wait_backend(1u << ST_CLOSING | 1u << ST_CLOSED, 10);
    fe_write_uint("state", ST_CLOSED);
    wait_backend(1u << ST_CLOSED, 10);
    fe_write_uint("state", ST_INITIALISING);
    st = wait_backend(1u << ST_INITWAIT, 10);
    if (st != ST_INITWAIT) {
        printf("HOSTILE FAILED backend did not come back to InitWait (state %d)\n", st);
        exit(1);
    }
}

/* The netif handshake with fresh rings and a fresh event channel; returns the backend's state. A bad
 * handshake: rx_copy 0 (no request-rx-copy), tx_flags 0 (a read-only tx ring), port_override (an event
 * channel that is not ours to offer). */
static int handshake(const char *name, int rx_copy, uint16_t tx_flags, int port_override)
{
    struct gpage t = grant_page(0, tx_flags), r = grant_page(0, GNTALLOC_FLAG_WRITABLE);
    memset(&c, 0, sizeof c);
    c.tx = t.mem;
    c.rx = r.mem;
    c.tx_gref = t.gref;
    c.rx_gref = r.gref;
    REQ_EVENT(c.tx) = RSP_EVENT(c.tx) = 1; /* SHARED_RING_INIT */
    REQ_EVENT(c.rx) = RSP_EVENT(c.rx) = 1;
    unsigned int remote = 0;
    int p = ioctl(evtchn_fd, IOCTL_EVTCHN_BIND_UNBOUND_PORT, &remote);
    if (p < 0)
        die("IOCTL_EVTCHN_BIND_UNBOUND_PORT");
    c.port = p;
    if (port_override >= 0)
        c.port = port_override;

    fe_write_uint("tx-ring-ref", c.tx_gref);
    fe_write_uint("rx-ring-ref", c.rx_gref);
    fe_write_uint("event-channel", c.port);
    fe_write("request-rx-copy", rx_copy ? "1" : "0");
    fe_write("feature-rx-notify", "1");
    fe_write("feature-sg", "1");
    fe_write_uint("state", ST_INITIALISED);
    int st = wait_backend(1u << ST_CONNECTED | 1u << ST_CLOSING | 1u << ST_CLOSED, 10);
    printf("HANDSHAKE %s tx-ring-ref %u rx-ring-ref %u event-channel %u backend-state %d", name, c.tx_gref,
           c.rx_gref, c.port, st);
    if (st != ST_CONNECTED) {
        char path[384], err[256];
        snprintf(path, sizeof path, "%s/error", be);
        if (xs_read(path, err, sizeof err) == 0)
            printf(" error %s", err);
    }
    printf("\n");
    if (st == ST_CONNECTED)
        fe_write_uint("state", ST_CONNECTED);
    return st;
}

static int connect_vif(const char *name)
{
    return handshake(name, 1, GNTALLOC_FLAG_WRITABLE, -1);
}

/* -- the tx ring ------------------------------------------------------------------------------------- */

static void tx_push(const union tx_slot *slots, int n)
{
    for (int i = 0; i < n; i++)
        memcpy(tx_slot(c.tx_prod++), &slots[i], sizeof slots[i]);
    fence(); /* the requests are visible before the index (ring.h wmb) */
    REQ_PROD(c.tx) = c.tx_prod;
    fence();
    notify(); /* always: a frontend may signal needlessly */
}

/* Send one packet of n slots and print the status of each slot's response. */
static void tx_case(const char *name, const union tx_slot *slots, const int *is_extra, int n)
{
    tx_push(slots, n);
    double deadline = now() + 10.0;
    while (RSP_PROD(c.tx) - c.tx_cons < (uint32_t)n) {
        if (now() > deadline) {
            printf("TX %s status timeout (%u responses)\n", name, RSP_PROD(c.tx) - c.tx_cons);
            c.tx_cons = RSP_PROD(c.tx);
            return;
        }
        nap_ms(1);
    }
    fence(); /* rmb: the index before the entries */
    char line[512];
    int len = snprintf(line, sizeof line, "TX %s status ", name);
    int badid = 0;
    for (int i = 0; i < n; i++) {
        struct tx_response rsp;
        memcpy(&rsp, tx_slot(c.tx_cons++), sizeof rsp);
        if (!is_extra[i] && rsp.id != slots[i].req.id)
            badid = 1;
        len += snprintf(line + len, sizeof line - len, "%s%d", i ? "," : "", rsp.status);
    }
    RSP_EVENT(c.tx) = c.tx_cons + 1;
    printf("%s%s\n", line, badid ? " badid" : "");
}

/* Send a packet the backend must take as a broken ring: it disconnects and goes Closing. */
static void tx_fatal(const char *name, const union tx_slot *slots, int n)
{
    tx_push(slots, n);
    int st = wait_backend(1u << ST_CLOSING | 1u << ST_CLOSED, 10);
    nap_ms(100);
    printf("FATAL %s backend-state %d responses %u\n", name, st, RSP_PROD(c.tx) - c.tx_cons);
}

static union tx_slot request(uint32_t gref, uint16_t offset, uint16_t flags, uint16_t size)
{
    union tx_slot s;
    memset(&s, 0, sizeof s);
    s.req = (struct tx_request){gref, offset, flags, next_id++, size};
    return s;
}

/* An ARP request "who has PEER_IP, tell MY_IP" from our MAC, padded to the 60-byte Ethernet minimum. */
static uint16_t arp_frame(uint8_t *p, uint16_t op, const uint8_t *src_mac)
{
    memset(p, 0, 60);
    memset(p, 0xff, 6);
    memcpy(p + 6, src_mac, 6);
    p[12] = 0x08, p[13] = 0x06;
    p[14] = 0, p[15] = 1;    /* htype Ethernet */
    p[16] = 0x08, p[17] = 0; /* ptype IPv4 */
    p[18] = 6, p[19] = 4;
    p[20] = op >> 8, p[21] = op & 0xff;
    memcpy(p + 22, src_mac, 6);
    memcpy(p + 28, &my_ip, 4);
    memcpy(p + 38, &peer_ip, 4);
    return 60;
}

static void good_frame(const char *name, struct gpage *page)
{
    uint16_t len = arp_frame(page->mem, 1, my_mac);
    union tx_slot s = request(page->gref, 0, 0, len);
    int extra[1] = {0};
    tx_case(name, &s, extra, 1);
}

/* Fill the ring again and again with good frames to a MAC nobody has (flooded by the switch, dropped by
 * the other guests): every one is answered OKAY, whatever the switch did with it. */
static void tx_flood(struct gpage *page, int rounds, int per_round)
{
    uint8_t *p = page->mem + 1024;
    memset(p, 0, 60);
    memcpy(p, "\x02\x00\x00\x00\x00\x99", 6);
    memcpy(p + 6, my_mac, 6);
    p[12] = 0x88, p[13] = 0xb5; /* IEEE 802 local experimental ethertype */
    int sent = 0, okay = 0, other = 0;
    double t0 = now();
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < per_round; i++) {
            union tx_slot s = request(page->gref, 1024, 0, 60);
            memcpy(tx_slot(c.tx_prod++), &s, sizeof s);
        }
        fence();
        REQ_PROD(c.tx) = c.tx_prod;
        fence();
        notify();
        sent += per_round;
        double deadline = now() + 20.0;
        while (RSP_PROD(c.tx) != c.tx_prod && now() < deadline)
            nap_ms(1);
        fence();
        while (c.tx_cons != RSP_PROD(c.tx)) {
            struct tx_response rsp;
            memcpy(&rsp, tx_slot(c.tx_cons++), sizeof rsp);
            if (rsp.status == 0)
                okay++;
            else
                other++;
        }
        RSP_EVENT(c.tx) = c.tx_cons + 1;
    }
    printf("TX flood sent %d okay %d other %d seconds %.1f\n", sent, okay, other, now() - t0);
}

/* -- the rx ring ------------------------------------------------------------------------------------- */

static void rx_post(uint16_t id, uint32_t gref)
{
    struct rx_request r;
    memset(&r, 0, sizeof r);
    r.id = id;
    r.gref = gref;
    memcpy(rx_slot(c.rx_prod++), &r, sizeof r);
    fence();
    REQ_PROD(c.rx) = c.rx_prod;
    fence();
    notify();
}

/* Post a read-only buffer, then writable ones (reposted as they fill) while asking the peer for its MAC,
 * until its ARP reply lands in a writable buffer. */
static void rx_phase(struct gpage *txpage)
{
    enum { NRW = 4 };
    struct gpage ro = grant_page(0, 0);
    struct gpage rw[NRW];
    for (int i = 0; i < NRW; i++)
        rw[i] = grant_page(0, GNTALLOC_FLAG_WRITABLE);
    RSP_EVENT(c.rx) = c.rx_cons + 1;
    rx_post(100, ro.gref);
    for (int i = 0; i < NRW; i++)
        rx_post(200 + i, rw[i].gref);
    int ro_status = 0, ro_seen = 0, reply_status = 0, reply_seen = 0, frames = 0;
    double deadline = now() + 20.0, next_ask = 0;
    int asked = 0;
    while (now() < deadline && !(ro_seen && reply_seen)) {
        if (now() >= next_ask) {
            char name[32];
            snprintf(name, sizeof name, "arp_request_%d", ++asked);
            uint16_t len = arp_frame(txpage->mem, 1, my_mac);
            union tx_slot s = request(txpage->gref, 0, 0, len);
            int extra[1] = {0};
            tx_case(name, &s, extra, 1);
            next_ask = now() + 1.0;
        }
        if (RSP_PROD(c.rx) == c.rx_cons) {
            nap_ms(5);
            continue;
        }
        fence();
        struct rx_response rsp;
        memcpy(&rsp, rx_slot(c.rx_cons++), sizeof rsp);
        RSP_EVENT(c.rx) = c.rx_cons + 1;
        frames++;
        if (rsp.id == 100) {
            ro_seen = 1;
            ro_status = rsp.status;
            printf("RX readonly id %u status %d flags %u\n", rsp.id, rsp.status, rsp.flags);
            continue;
        }
        if (rsp.id < 200 || rsp.id >= 200 + NRW) {
            printf("RX unknown id %u status %d flags %u\n", rsp.id, rsp.status, rsp.flags);
            continue;
        }
        const uint8_t *p = rw[rsp.id - 200].mem + (rsp.offset < PAGE_SIZE ? rsp.offset : 0);
        printf("RX writable id %u status %d flags %u offset %u", rsp.id, rsp.status, rsp.flags, rsp.offset);
        if (rsp.status >= 14 && rsp.offset + rsp.status <= PAGE_SIZE) {
            printf(" ethertype %02x%02x src %02x:%02x:%02x:%02x:%02x:%02x", p[12], p[13], p[6], p[7], p[8],
                   p[9], p[10], p[11]);
            if (rsp.status >= 42 && p[12] == 0x08 && p[13] == 0x06 && p[20] == 0 && p[21] == 2 &&
                !memcmp(p + 28, &peer_ip, 4) && !memcmp(p + 32, my_mac, 6) && !memcmp(p + 38, &my_ip, 4)) {
                printf(" arp-reply-from-peer");
                reply_seen = 1;
                reply_status = rsp.status;
            }
        }
        printf("\n");
        memset(rw[rsp.id - 200].mem, 0, PAGE_SIZE);
        rx_post(rsp.id, rw[rsp.id - 200].gref); /* the buffer goes back to the backend */
    }
    if (ro_seen)
        printf("RX readonly status %d\n", ro_status);
    else
        printf("RX readonly status none\n");
    if (reply_seen)
        printf("RX arp_reply status %d\n", reply_status);
    else
        printf("RX arp_reply status none\n");
    printf("RX frames %d\n", frames);
}

/* -- main ---------------------------------------------------------------------------------------------- */

static int parse_mac(const char *s, uint8_t *out)
{
    unsigned int b[6];
    if (sscanf(s, "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6)
        return -1;
    for (int i = 0; i < 6; i++)
        out[i] = b[i];
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 4 || inet_pton(AF_INET, argv[2], &my_ip) != 1 || inet_pton(AF_INET, argv[3], &peer_ip) != 1) {
        fprintf(stderr, "usage: hostile_net DEVID MY_IP PEER_IP\n");
        return 2;
    }
    if ((xs_fd = open("/dev/xen/xenbus", O_RDWR)) < 0)
        die("open /dev/xen/xenbus");
    if ((evtchn_fd = open("/dev/xen/evtchn", O_RDWR)) < 0)
        die("open /dev/xen/evtchn");
    if ((gnt_fd = open("/dev/xen/gntalloc", O_RDWR)) < 0)
        die("open /dev/xen/gntalloc");

    char path[384], v[64];
    snprintf(fe, sizeof fe, "device/vif/%s", argv[1]); /* relative: under /local/domain/<our id> */
    snprintf(path, sizeof path, "%s/backend", fe);
    if (xs_read(path, be, sizeof be) < 0) {
        printf("HOSTILE FAILED no %s\n", path);
        return 1;
    }
    snprintf(path, sizeof path, "%s/mac", fe);
    if (xs_read(path, v, sizeof v) < 0 || parse_mac(v, my_mac) < 0) {
        printf("HOSTILE FAILED no MAC in %s\n", path);
        return 1;
    }
    printf("backend %s state %d mac %s\n", be, backend_state(), v);

    /* handshakes the backend must refuse: Closing, with its error node */
    reset();
    handshake("no_rx_copy", 0, GNTALLOC_FLAG_WRITABLE, -1);
    reset();
    handshake("readonly_tx_ring", 1, 0, -1);
    reset();
    handshake("event_channel_not_offered", 1, GNTALLOC_FLAG_WRITABLE, 1); /* one of the kernel's own */
    reset();
    handshake("event_channel_out_of_range", 1, GNTALLOC_FLAG_WRITABLE, 4095);
    reset();
    if (connect_vif("main") != ST_CONNECTED)
        return 1;

    /* the pages packets come from: granted read-write and read-only to domain 0, one granted to a
     * domain that is not the backend's, one granted and then revoked */
    struct gpage data = grant_page(0, GNTALLOC_FLAG_WRITABLE);
    struct gpage ro = grant_page(0, 0);
    struct gpage other = grant_page(7, GNTALLOC_FLAG_WRITABLE);
    struct gpage gone = grant_page(0, GNTALLOC_FLAG_WRITABLE);
    munmap(gone.mem, PAGE_SIZE);
    struct gntalloc_dealloc d = {gone.index, 1};
    if (ioctl(gnt_fd, IOCTL_GNTALLOC_DEALLOC_GREF, &d) < 0)
        die("IOCTL_GNTALLOC_DEALLOC_GREF");
    arp_frame(data.mem, 1, my_mac);
    arp_frame(ro.mem, 1, my_mac);
    arp_frame(other.mem, 1, my_mac);
    memcpy(data.mem + 2048, data.mem, 60);

    union tx_slot s[24];
    int extra[24];
    memset(extra, 0, sizeof extra);

    /* packets the backend takes */
    good_frame("good_frame", &data);
    s[0] = request(ro.gref, 0, 0, 60);
    tx_case("good_from_readonly_grant", s, extra, 1); /* tx only reads the page */
    s[0] = request(data.gref, 0, NETTXF_more_data, 60); /* 20 bytes here, 40 in the second fragment */
    s[1] = request(data.gref, 2048 + 20, 0, 40);
    tx_case("good_two_fragments", s, extra, 2);

    /* packets the backend must answer with an error, the ring intact */
    s[0] = request(999999, 0, 0, 60);
    tx_case("gref_out_of_range", s, extra, 1);
    s[0] = request(gone.gref, 0, 0, 60);
    tx_case("gref_revoked", s, extra, 1);
    s[0] = request(other.gref, 0, 0, 60);
    tx_case("gref_other_domain", s, extra, 1);
    s[0] = request(data.gref, 0, NETTXF_more_data, 60);
    s[1] = request(999999, 0, 0, 40);
    tx_case("second_fragment_bad_gref", s, extra, 2);
    s[0] = request(data.gref, 0, NETTXF_more_data, 30); /* the fragments hold 100 of a 30-byte packet */
    s[1] = request(data.gref, 2048, 0, 100);
    tx_case("size_below_fragments", s, extra, 2);
    s[0] = request(data.gref, 0, 0, 10);
    tx_case("shorter_than_ethernet_header", s, extra, 1);
    s[0] = request(data.gref, 0, 0, 0);
    tx_case("empty_packet", s, extra, 1);
    s[0] = request(data.gref, 0, NETTXF_extra_info, 60);
    memset(&s[1], 0, sizeof s[1]);
    s[1].extra.type = EXTRA_TYPE_GSO;
    s[1].extra.u.gso.size = 1400;
    s[1].extra.u.gso.type = 9; /* no such GSO type */
    extra[1] = 1;
    tx_case("gso_unknown_type", s, extra, 2);
    extra[1] = 0;
    good_frame("good_after_errors", &data);
    tx_flood(&data, 10, 200);
    good_frame("good_after_flood", &data);

    /* rx: a read-only buffer gets no data; writable ones get the peer's ARP reply */
    rx_phase(&data);

    /* packets that break the ring: the backend disconnects the vif; each time we reconnect afresh */
    s[0] = request(data.gref, 4000, 0, 200);
    tx_fatal("offset_crosses_page", s, 1);
    reset();
    connect_vif("after_offset_crosses_page");
    good_frame("good_after_reconnect_1", &data);

    s[0] = request(data.gref, 0, NETTXF_extra_info, 60);
    memset(&s[1], 0, sizeof s[1]);
    s[1].extra.type = 42;
    tx_fatal("unknown_extra_type", s, 2);
    reset();
    connect_vif("after_unknown_extra_type");
    good_frame("good_after_reconnect_2", &data);

    for (int i = 0; i < 22; i++)
        s[i] = request(data.gref, 100 * i, i < 21 ? NETTXF_more_data : 0, i ? 10 : 220);
    tx_fatal("twenty_two_slots", s, 22);
    reset();
    connect_vif("after_twenty_two_slots");
    good_frame("good_after_reconnect_3", &data);

    s[0] = request(data.gref, 0, NETTXF_more_data, 60); /* its second fragment never comes */
    s[1] = request(data.gref, 0, NETTXF_more_data, 20);
    tx_fatal("packet_cut_off", s, 2);
    reset();
    connect_vif("after_packet_cut_off");
    good_frame("good_after_reconnect_4", &data);

    /* last: a producer index far beyond the ring (RING_REQUEST_PROD_OVERFLOW); left broken */
    REQ_PROD(c.tx) = c.tx_prod + 100000;
    fence();
    notify();
    int st = wait_backend(1u << ST_CLOSING | 1u << ST_CLOSED, 10);
    printf("FATAL req_prod_overflow backend-state %d responses %u\n", st, RSP_PROD(c.tx) - c.tx_cons);
    printf("HOSTILE DONE\n");
    return 0;
}
