/*
 * grant_peer: one end of a grant shared between two guests, driven from user space through
 * /dev/xen/gntalloc (the granting side) and /dev/xen/gntdev (the mapping side). Built at test time with
 * `gcc -static` (tests/integration/test_interdomain_grants.py) and run inside guests; every result is one
 * line on stdout.
 *
 *   grant_peer share REMOTE_DOMID [rw|ro] [TIMEOUT_S]
 *       allocate one page granted to REMOTE_DOMID (writable for it unless `ro`), write PATTERN at offset
 *       0 and print `GREF <ref>`; then, until an answer shows at ANSWER_OFF or TIMEOUT_S (default 30)
 *       pass, bump a counter at COUNTER_OFF every 10 ms (so that a mapper can see the page live). Prints
 *       `ANSWER <text>` (or `TIMEOUT answer`), then frees the grant (IOCTL_GNTALLOC_DEALLOC_GREF) and
 *       prints `FREED`, and after it `PAGE <text at offset 0>` read through its own mapping; exits 0 when
 *       an answer came, 3 on the timeout. SIGUSR1 ends the wait early (`STOPPED`, then as on a timeout).
 *   grant_peer map REMOTE_DOMID GREF [rw|ro] [HOLD_S]
 *       map REMOTE_DOMID's grant GREF (IOCTL_GNTDEV_MAP_GRANT_REF, then mmap: PROT_READ|PROT_WRITE, or
 *       PROT_READ for `ro`), print `READ <text at offset 0>` and `LIVE <counter> <counter 300 ms later>`;
 *       unless `ro`, write ANSWER_TEXT at ANSWER_OFF and print `WROTE`; with HOLD_S, print `HOLDING` and
 *       keep the mapping that long; munmap, IOCTL_GNTDEV_UNMAP_GRANT_REF, print `DONE`, exit 0.
 *
 * Failures print `ERR <what> <errno name>` and exit 1 (a map or grant the hypervisor refused: the gntdev
 * ioctl or mmap) or 2 (anything else).
 *
 * ABI, from Linux include/uapi/xen/gntalloc.h and gntdev.h (ioctls are _IOC(_IOC_NONE, 'G', nr, size)):
 *  - gntalloc ALLOC_GREF nr 5 {u16 domid, u16 flags, u32 count; OUT u64 index; u32 gref_ids[count]}:
 *    flags GNTALLOC_FLAG_WRITABLE (1) makes the grant writable for the grantee, without it read-only.
 *    mmap(fd, offset index) maps the granted pages in the granter. DEALLOC_GREF nr 6 {u64 index, u32
 *    count}: the grant ends (Linux defers freeing the page while the grantee still maps it).
 *  - gntdev MAP_GRANT_REF nr 0 {u32 count, u32 pad; OUT u64 index; {u32 domid, u32 ref} refs[count]}
 *    only records the grants; the hypercall (GNTTABOP_map_grant_ref) is made by mmap(fd, offset index),
 *    with GNTMAP_readonly when the mapping is not writable (a writable mapping must be MAP_SHARED). A
 *    refused map fails the mmap. UNMAP_GRANT_REF nr 1 {u64 index, u32 count, u32 pad}, after munmap.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE_SIZE 4096
#define COUNTER_OFF 1024
#define ANSWER_OFF 2048
#define TEXT_MAX 200
#define ANSWER_TEXT "answer-from-B"

struct alloc_gref {
    uint16_t domid;
    uint16_t flags;
    uint32_t count;
    uint64_t index;
    uint32_t gref_ids[1];
};

struct dealloc_gref {
    uint64_t index;
    uint32_t count;
};

struct grant_ref {
    uint32_t domid;
    uint32_t ref;
};

struct map_grant_ref {
    uint32_t count;
    uint32_t pad;
    uint64_t index;
    struct grant_ref refs[1];
};

struct unmap_grant_ref {
    uint64_t index;
    uint32_t count;
    uint32_t pad;
};

#define GNTALLOC_FLAG_WRITABLE 1
#define IOCTL_GNTALLOC_ALLOC_GREF _IOC(_IOC_NONE, 'G', 5, sizeof(struct alloc_gref))
#define IOCTL_GNTALLOC_DEALLOC_GREF _IOC(_IOC_NONE, 'G', 6, sizeof(struct dealloc_gref))
#define IOCTL_GNTDEV_MAP_GRANT_REF _IOC(_IOC_NONE, 'G', 0, sizeof(struct map_grant_ref))
#define IOCTL_GNTDEV_UNMAP_GRANT_REF _IOC(_IOC_NONE, 'G', 1, sizeof(struct unmap_grant_ref))

static volatile sig_atomic_t stop;

static const char *errname(int e)
{
    static char buf[16];
    switch (e) {
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case ESRCH: return "ESRCH";
    case EINTR: return "EINTR";
    case EIO: return "EIO";
    case ENXIO: return "ENXIO";
    case EBADF: return "EBADF";
    case EAGAIN: return "EAGAIN";
    case ENOMEM: return "ENOMEM";
    case EACCES: return "EACCES";
    case EFAULT: return "EFAULT";
    case EBUSY: return "EBUSY";
    case EEXIST: return "EEXIST";
    case ENODEV: return "ENODEV";
    case EINVAL: return "EINVAL";
    case ENOSPC: return "ENOSPC";
    case ENOSYS: return "ENOSYS";
    case ENOTTY: return "ENOTTY";
    case ETIMEDOUT: return "ETIMEDOUT";
    default:
        snprintf(buf, sizeof buf, "E%d", e);
        return buf;
    }
}

static void out(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void out(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

static void fail(const char *what, int status)
{
    out("ERR %s %s", what, errname(errno));
    exit(status);
}

static unsigned int parse(const char *s, const char *what)
{
    char *end;
    unsigned long v;
    errno = 0;
    v = strtoul(s, &end, 0);
    if (errno || *s == '\0' || *end != '\0' || v > 0xffffffffUL) {
        out("ERR bad %s '%s'", what, s);
        exit(2);
    }
    return (unsigned int)v;
}

/* The printable text at `p` (at most TEXT_MAX bytes, up to the first NUL; others shown as '.'). */
static const char *text(const volatile char *p)
{
    static char buf[TEXT_MAX + 1];
    int i;
    for (i = 0; i < TEXT_MAX && p[i]; i++)
        buf[i] = (p[i] > ' ' && p[i] < 127) ? p[i] : '.';
    buf[i] = '\0';
    return buf;
}

static int read_only_arg(int argc, char **argv, int at)
{
    if (argc <= at || strcmp(argv[at], "rw") == 0)
        return 0;
    if (strcmp(argv[at], "ro") == 0)
        return 1;
    out("ERR bad mode '%s'", argv[at]);
    exit(2);
}

static void on_usr1(int sig)
{
    (void)sig;
    stop = 1;
}

static int share(unsigned int remote, int ro, unsigned int timeout_s)
{
    int fd = open("/dev/xen/gntalloc", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        fail("open /dev/xen/gntalloc", 2);
    struct alloc_gref op;
    memset(&op, 0, sizeof op);
    op.domid = (uint16_t)remote;
    op.flags = ro ? 0 : GNTALLOC_FLAG_WRITABLE;
    op.count = 1;
    if (ioctl(fd, IOCTL_GNTALLOC_ALLOC_GREF, &op) < 0)
        fail("alloc_gref", 1);
    volatile char *page = mmap(NULL, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)op.index);
    if (page == MAP_FAILED)
        fail("mmap gntalloc", 2);
    char pattern[64];
    snprintf(pattern, sizeof pattern, "hello-from-A-%d-%s", (int)getpid(), ro ? "ro" : "rw");
    memcpy((char *)page, pattern, strlen(pattern) + 1);
    volatile uint32_t *counter = (volatile uint32_t *)(page + COUNTER_OFF);
    *counter = 1;
    out("GREF %u", op.gref_ids[0]);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    struct timespec tick = {0, 10 * 1000 * 1000};
    unsigned long ticks = (unsigned long)timeout_s * 100;
    int answered = 0;
    for (unsigned long i = 0; i < ticks && !stop; i++) {
        if (page[ANSWER_OFF]) {
            answered = 1;
            break;
        }
        (*counter)++;
        nanosleep(&tick, NULL);
    }
    if (answered)
        out("ANSWER %s", text(page + ANSWER_OFF));
    else if (stop)
        out("STOPPED");
    else
        out("TIMEOUT answer");

    struct dealloc_gref d = {.index = op.index, .count = 1};
    if (ioctl(fd, IOCTL_GNTALLOC_DEALLOC_GREF, &d) < 0)
        fail("dealloc_gref", 2);
    out("FREED");
    out("PAGE %s", text(page));
    if (munmap((void *)page, PAGE_SIZE) < 0)
        fail("munmap gntalloc", 2);
    close(fd);
    return answered ? 0 : 3;
}

static int map(unsigned int remote, unsigned int gref, int ro, unsigned int hold_s)
{
    int fd = open("/dev/xen/gntdev", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        fail("open /dev/xen/gntdev", 2);
    struct map_grant_ref op;
    memset(&op, 0, sizeof op);
    op.count = 1;
    op.refs[0].domid = remote;
    op.refs[0].ref = gref;
    if (ioctl(fd, IOCTL_GNTDEV_MAP_GRANT_REF, &op) < 0)
        fail("map_grant_ref", 1);
    int prot = ro ? PROT_READ : PROT_READ | PROT_WRITE;
    volatile char *page = mmap(NULL, PAGE_SIZE, prot, MAP_SHARED, fd, (off_t)op.index);
    if (page == MAP_FAILED) {
        int e = errno;
        struct unmap_grant_ref u = {.index = op.index, .count = 1};
        ioctl(fd, IOCTL_GNTDEV_UNMAP_GRANT_REF, &u);
        errno = e;
        fail("mmap gntdev", 1);
    }
    out("READ %s", text(page));
    volatile uint32_t *counter = (volatile uint32_t *)(page + COUNTER_OFF);
    uint32_t c0 = *counter;
    struct timespec wait = {0, 300 * 1000 * 1000};
    nanosleep(&wait, NULL);
    out("LIVE %u %u", c0, *counter);
    if (!ro) {
        memcpy((char *)page + ANSWER_OFF, ANSWER_TEXT, sizeof ANSWER_TEXT);
        out("WROTE");
    }
    if (hold_s) {
        out("HOLDING");
        sleep(hold_s);
    }
    if (munmap((void *)page, PAGE_SIZE) < 0)
        fail("munmap gntdev", 2);
    struct unmap_grant_ref u = {.index = op.index, .count = 1};
    if (ioctl(fd, IOCTL_GNTDEV_UNMAP_GRANT_REF, &u) < 0)
        fail("unmap_grant_ref", 1);
    close(fd);
    out("DONE");
    return 0;
}

static int usage(void)
{
    fprintf(stderr, "usage: grant_peer share REMOTE_DOMID [rw|ro] [TIMEOUT_S]\n"
                    "       grant_peer map REMOTE_DOMID GREF [rw|ro] [HOLD_S]\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return usage();
    unsigned int remote = parse(argv[2], "domid");
    if (strcmp(argv[1], "share") == 0)
        return share(remote, read_only_arg(argc, argv, 3), argc > 4 ? parse(argv[4], "timeout") : 30);
    if (strcmp(argv[1], "map") == 0 && argc >= 4)
        return map(remote, parse(argv[3], "gref"), read_only_arg(argc, argv, 4),
                   argc > 5 ? parse(argv[5], "hold") : 0);
    return usage();
}
