/*
 * hostile_blkfront: a user-space blkif frontend that sends a backend malformed requests.
 *
 * Run inside a guest as `hostile DEVID`, for a vbd that the kernel's xen-blkfront does not drive (the
 * test unloads that module before it attaches the disk). The program connects to the backend itself,
 * then sends one request per line of output and prints `REQ <name> status <n>`, the backend's status
 * (or "timeout"). A valid read of sector 0 prints the first 32 bytes it got as hex. Last it overflows
 * the ring's producer index and prints the backend's xenbus state afterwards, then `HOSTILE DONE`.
 *
 * Built at test time with `gcc -static` on the host; no Xen headers are needed. ABI facts and sources:
 *  - xen/include/public/io/ring.h (xen-project/xen): DEFINE_RING_TYPES lays the shared ring out as
 *    req_prod, req_event, rsp_prod, rsp_event (RING_IDX = uint32_t), 48 bytes of pvt/pad, then the
 *    entries, each a union of request and response; __RING_SIZE rounds the entry count down to a power
 *    of two (32 entries of 112 bytes in a 4 KiB page). SHARED_RING_INIT sets req_event = rsp_event = 1.
 *  - xen/include/public/io/blkif.h: BLKIF_OP_READ 0, BLKIF_OP_WRITE 1, BLKIF_OP_INDIRECT 6,
 *    BLKIF_MAX_SEGMENTS_PER_REQUEST 11, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST 8, struct blkif_request,
 *    struct blkif_request_segment {gref; first_sect, last_sect}, struct blkif_request_indirect,
 *    struct blkif_response {id; operation; status}, BLKIF_RSP_OKAY 0 / ERROR -1 / EOPNOTSUPP -2; the
 *    frontend nodes ring-ref, event-channel, protocol ("x86_64-abi", io/protocols.h) and state
 *    (enum xenbus_state, io/xenbus.h: Initialised 3, Connected 4, Closing 5).
 *  - xen/include/public/io/xs_wire.h: struct xsd_sockmsg {type, req_id, tx_id, len} (uint32_t each),
 *    XS_READ 2, XS_WRITE 11, XS_ERROR 16.
 *  - Linux include/uapi/xen/gntalloc.h: IOCTL_GNTALLOC_ALLOC_GREF = _IOC(_IOC_NONE, 'G', 5, size) with
 *    struct ioctl_gntalloc_alloc_gref {u16 domid; u16 flags; u32 count; u64 index; u32 gref_ids[1]},
 *    GNTALLOC_FLAG_WRITABLE 1 (without it the grant is read-only for the grantee), mmap at `index`;
 *    IOCTL_GNTALLOC_DEALLOC_GREF = _IOC(_IOC_NONE, 'G', 6, size) {u64 index; u32 count}.
 *  - Linux include/uapi/xen/evtchn.h: IOCTL_EVTCHN_BIND_UNBOUND_PORT = _IOC(_IOC_NONE, 'E', 2, 4)
 *    {unsigned int remote_domain} returns the local port; IOCTL_EVTCHN_NOTIFY = _IOC(_IOC_NONE, 'E', 4, 4)
 *    {unsigned int port}.
 *  - Linux drivers/xen/xenbus/xenbus_dev_frontend.c: each complete xsd_sockmsg written to
 *    /dev/xen/xenbus is sent to xenstored (relative paths are relative to the domain's home); the reply,
 *    header then payload, is queued for read() on the same open file.
 */
#define _GNU_SOURCE
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
#define RING_ENTRIES 32
#define MAX_SEGS 11

#define OP_READ 0
#define OP_WRITE 1
#define OP_INDIRECT 6

#define XS_READ 2
#define XS_WRITE 11
#define XS_ERROR 16

#define STATE_INITIALISED 3
#define STATE_CONNECTED 4

struct seg {
    uint32_t gref;
    uint8_t first_sect, last_sect;
};

struct request {
    uint8_t operation;
    uint8_t nr_segments;
    uint16_t handle;
    uint64_t id;
    uint64_t sector_number;
    struct seg seg[MAX_SEGS];
};

struct request_indirect {
    uint8_t operation;
    uint8_t indirect_op;
    uint16_t nr_segments;
    uint64_t id;
    uint64_t sector_number;
    uint16_t handle;
    uint32_t indirect_grefs[8];
};

struct response {
    uint64_t id;
    uint8_t operation;
    int16_t status;
};

_Static_assert(sizeof(struct seg) == 8, "blkif_request_segment");
_Static_assert(sizeof(struct request) == 112, "blkif_request");
_Static_assert(sizeof(struct request_indirect) <= 112, "blkif_request_indirect");
_Static_assert(sizeof(struct response) == 16, "blkif_response");

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
static unsigned int port;
static volatile uint8_t *ring;
static uint32_t req_prod_pvt, rsp_cons;
static uint64_t next_id = 1000;

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
    m->req_id = 7;
    m->tx_id = 0;
    m->len = la + lb;
    memcpy(buf + sizeof *m, a, la);
    if (b)
        memcpy(buf + sizeof *m + la, b, lb);
    if (write(xs_fd, buf, sizeof *m + m->len) != (ssize_t)(sizeof *m + m->len))
        die("write /dev/xen/xenbus");
    size_t have = 0;
    struct xsmsg hdr;
    while (have < sizeof hdr) {
        ssize_t n = read(xs_fd, (char *)&hdr + have, sizeof hdr - have);
        if (n <= 0)
            die("read /dev/xen/xenbus");
        have += n;
    }
    char payload[4096];
    if (hdr.len > sizeof payload) {
        errno = EMSGSIZE;
        die("xenstore reply");
    }
    have = 0;
    while (have < hdr.len) {
        ssize_t n = read(xs_fd, payload + have, hdr.len - have);
        if (n <= 0)
            die("read /dev/xen/xenbus");
        have += n;
    }
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

static int backend_state(const char *be)
{
    char path[256], v[32];
    snprintf(path, sizeof path, "%s/state", be);
    return xs_read(path, v, sizeof v) == 0 ? atoi(v) : -1;
}

/* -- granted pages ------------------------------------------------------------------------------------ */

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
    struct gpage g = {a.gref_ids[0], a.index, p};
    return g;
}

/* -- the ring ----------------------------------------------------------------------------------------- */

#define REQ_PROD(r) (*(volatile uint32_t *)((r) + 0))
#define REQ_EVENT(r) (*(volatile uint32_t *)((r) + 4))
#define RSP_PROD(r) (*(volatile uint32_t *)((r) + 8))
#define RSP_EVENT(r) (*(volatile uint32_t *)((r) + 12))
#define SLOT(i) ((void *)(ring + RING_HEADER + ((i) % RING_ENTRIES) * sizeof(struct request)))

static void notify(void)
{
    unsigned int p = port;
    if (ioctl(evtchn_fd, IOCTL_EVTCHN_NOTIFY, &p) < 0)
        die("IOCTL_EVTCHN_NOTIFY");
}

/* Push one request (already in its slot), signal the backend, wait for its response. */
static void exchange(const char *name, uint64_t id, const uint8_t *show)
{
    req_prod_pvt++;
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* the request is visible before the index (ring.h wmb) */
    REQ_PROD(ring) = req_prod_pvt;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    notify(); /* always, rather than only when req_event says so: a frontend may signal needlessly */
    double deadline = now() + 20.0;
    while (RSP_PROD(ring) == rsp_cons) {
        if (now() > deadline) {
            printf("REQ %s status timeout\n", name);
            return;
        }
        nap_ms(1);
    }
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* rmb: the index before the entry */
    struct response rsp;
    memcpy(&rsp, SLOT(rsp_cons), sizeof rsp);
    rsp_cons++;
    RSP_EVENT(ring) = rsp_cons + 1;
    if (rsp.id != id) {
        printf("REQ %s status badid %llu\n", name, (unsigned long long)rsp.id);
        return;
    }
    printf("REQ %s status %d", name, rsp.status);
    if (show && rsp.status == 0) {
        printf(" data ");
        for (int i = 0; i < 32; i++)
            printf("%02x", show[i]);
    }
    printf("\n");
}

static void rw(const char *name, uint8_t op, uint8_t nseg, uint64_t sector, uint32_t gref, uint8_t first,
               uint8_t last, const uint8_t *show)
{
    struct request r;
    memset(&r, 0, sizeof r);
    r.operation = op;
    r.nr_segments = nseg;
    r.id = next_id++;
    r.sector_number = sector;
    for (int i = 0; i < MAX_SEGS; i++)
        r.seg[i] = (struct seg){gref, first, last};
    memcpy(SLOT(req_prod_pvt), &r, sizeof r);
    exchange(name, r.id, show);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2) {
        fprintf(stderr, "usage: hostile DEVID\n");
        return 2;
    }
    const char *devid = argv[1];
    if ((xs_fd = open("/dev/xen/xenbus", O_RDWR)) < 0)
        die("open /dev/xen/xenbus");
    if ((evtchn_fd = open("/dev/xen/evtchn", O_RDWR)) < 0)
        die("open /dev/xen/evtchn");
    if ((gnt_fd = open("/dev/xen/gntalloc", O_RDWR)) < 0)
        die("open /dev/xen/gntalloc");

    char fe[128], be[256], path[384], v[64];
    snprintf(fe, sizeof fe, "device/vbd/%s", devid); /* relative: under /local/domain/<our id> */
    snprintf(path, sizeof path, "%s/backend", fe);
    if (xs_read(path, be, sizeof be) < 0) {
        printf("HOSTILE FAILED no %s\n", path);
        return 1;
    }
    snprintf(path, sizeof path, "%s/sectors", be);
    if (xs_read(path, v, sizeof v) < 0) {
        printf("HOSTILE FAILED no %s\n", path);
        return 1;
    }
    uint64_t sectors = strtoull(v, NULL, 10);
    printf("backend %s state %d sectors %llu\n", be, backend_state(be), (unsigned long long)sectors);

    /* the pages: the ring and a data page granted read-write to domain 0, one granted read-only, one
     * granted to a domain that is not the backend, and one granted and then revoked */
    struct gpage rp = grant_page(0, GNTALLOC_FLAG_WRITABLE);
    struct gpage data = grant_page(0, GNTALLOC_FLAG_WRITABLE);
    struct gpage ro = grant_page(0, 0);
    struct gpage other = grant_page(7, GNTALLOC_FLAG_WRITABLE);
    struct gpage gone = grant_page(0, GNTALLOC_FLAG_WRITABLE);
    munmap(gone.mem, PAGE_SIZE);
    struct gntalloc_dealloc d = {gone.index, 1};
    if (ioctl(gnt_fd, IOCTL_GNTALLOC_DEALLOC_GREF, &d) < 0)
        die("IOCTL_GNTALLOC_DEALLOC_GREF");

    ring = rp.mem;
    memset((void *)ring, 0, PAGE_SIZE);
    REQ_EVENT(ring) = 1; /* SHARED_RING_INIT */
    RSP_EVENT(ring) = 1;

    unsigned int remote = 0;
    int p = ioctl(evtchn_fd, IOCTL_EVTCHN_BIND_UNBOUND_PORT, &remote);
    if (p < 0)
        die("IOCTL_EVTCHN_BIND_UNBOUND_PORT");
    port = p;

    snprintf(path, sizeof path, "%s/ring-ref", fe);
    snprintf(v, sizeof v, "%u", rp.gref);
    xs_write(path, v);
    snprintf(path, sizeof path, "%s/event-channel", fe);
    snprintf(v, sizeof v, "%u", port);
    xs_write(path, v);
    snprintf(path, sizeof path, "%s/protocol", fe);
    xs_write(path, "x86_64-abi");
    snprintf(path, sizeof path, "%s/state", fe);
    snprintf(v, sizeof v, "%d", STATE_INITIALISED);
    xs_write(path, v);

    int st = -1;
    for (int i = 0; i < 200 && (st = backend_state(be)) != STATE_CONNECTED; i++)
        nap_ms(50);
    printf("CONNECTED ring-ref %u event-channel %u backend-state %d\n", rp.gref, port, st);
    if (st != STATE_CONNECTED)
        return 1;
    snprintf(v, sizeof v, "%d", STATE_CONNECTED);
    xs_write(path, v);

    memset(data.mem, 0xAA, PAGE_SIZE);
    memcpy(ro.mem + 512, "READONLY-GRANT-SECTOR", 21);

    /* grant references the backend must refuse */
    rw("gref_out_of_range", OP_READ, 1, 0, 999999, 0, 0, NULL);
    rw("gref_revoked", OP_READ, 1, 0, gone.gref, 0, 0, NULL);
    rw("gref_other_domain", OP_READ, 1, 0, other.gref, 0, 0, NULL);
    rw("read_into_readonly_grant", OP_READ, 1, 0, ro.gref, 0, 0, NULL);
    /* sectors outside the disk or the page */
    rw("sector_at_end", OP_READ, 1, sectors, data.gref, 0, 0, NULL);
    rw("sector_straddles_end", OP_WRITE, 1, sectors - 1, data.gref, 0, 7, NULL);
    rw("sector_huge", OP_READ, 1, UINT64_MAX - 3, data.gref, 0, 7, NULL);
    rw("first_after_last", OP_READ, 1, 0, data.gref, 5, 2, NULL);
    rw("last_beyond_page", OP_READ, 1, 0, data.gref, 0, 8, NULL);
    /* malformed requests */
    rw("zero_segments", OP_READ, 0, 0, data.gref, 0, 0, NULL);
    rw("twelve_segments", OP_READ, 12, 0, data.gref, 0, 0, NULL);
    rw("unknown_op", 42, 1, 0, data.gref, 0, 0, NULL);
    {
        struct request_indirect r;
        memset(&r, 0, sizeof r);
        r.operation = OP_INDIRECT;
        r.indirect_op = OP_READ;
        r.nr_segments = 1;
        r.id = next_id++;
        r.indirect_grefs[0] = 999999;
        memcpy(SLOT(req_prod_pvt), &r, sizeof r);
        exchange("indirect_bad_gref", r.id, NULL);
        memset(&r, 0, sizeof r);
        r.operation = OP_INDIRECT;
        r.indirect_op = 3;
        r.nr_segments = 1;
        r.id = next_id++;
        r.indirect_grefs[0] = data.gref;
        memcpy(SLOT(req_prod_pvt), &r, sizeof r);
        exchange("indirect_bad_op", r.id, NULL);
    }
    /* the device still works: a read-only grant is fine as the source of a write */
    rw("write_from_readonly_grant", OP_WRITE, 1, 2, ro.gref, 1, 1, NULL);
    memcpy(data.mem + 1024, "HOSTILE-WROTE-SECTOR-ONE", 24);
    rw("valid_write", OP_WRITE, 1, 1, data.gref, 2, 2, NULL);
    memset(data.mem, 0, PAGE_SIZE);
    rw("valid_read", OP_READ, 1, 0, data.gref, 0, 0, data.mem);

    /* last: a producer index more than a ring ahead (ring.h RING_REQUEST_PROD_OVERFLOW) */
    REQ_PROD(ring) = req_prod_pvt + RING_ENTRIES + 5;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    notify();
    for (int i = 0; i < 200 && (st = backend_state(be)) == STATE_CONNECTED; i++)
        nap_ms(50);
    printf("RING overflow backend-state %d\n", st);
    printf("HOSTILE DONE\n");
    return 0;
}
