/*
 * evtchn_peer: one end of an inter-domain event channel between two guests, driven from user space
 * through /dev/xen/evtchn. Built at test time with `gcc -static` (tests/integration/
 * test_interdomain_evtchn.py) and run inside guests; every result is one line on stdout.
 *
 *   evtchn_peer offer REMOTE_DOMID [TIMEOUT_S]
 *       allocate a port offered to REMOTE_DOMID, print `PORT <n>`; wait for an event, print `GOT <n>`,
 *       unmask it and notify back; wait for a second event, print `GOT2`; exit 0.
 *   evtchn_peer bind REMOTE_DOMID REMOTE_PORT [HOLD_S]
 *       bind to the remote port, print `LOCAL <n>` (or `ERR <errno name>`, exit 1); notify, wait for the
 *       answer, print `GOT <n>`, notify again; with HOLD_S, keep the channel open that long (`HOLDING`)
 *       before closing it; exit 0.
 *   evtchn_peer echo REMOTE_DOMID [IDLE_S]
 *       allocate a port offered to REMOTE_DOMID, print `PORT <n>`, then answer every event on it with one
 *       notification back, until IDLE_S seconds pass without an event (`ECHOED <count>`, exit 0).
 *       SIGUSR1 makes it notify its port once unprompted and print `KICK <0 or errno name>`.
 *   evtchn_peer ping REMOTE_DOMID REMOTE_PORT N
 *       bind to an `echo` peer's port, make N round trips, print
 *       `RTT n <N> min <us> median <us> max <us>` (microseconds); exit 0.
 *
 * A timeout while waiting prints `TIMEOUT <what>` and exits 3; any other failure prints `ERR ...` and
 * exits 1 (a bind the hypervisor refuses) or 2 (anything else).
 *
 * ABI, from Linux include/uapi/xen/evtchn.h and drivers/xen/evtchn.c:
 *  - every ioctl is _IOC(_IOC_NONE, 'E', nr, sizeof(struct)): BIND_INTERDOMAIN nr 1
 *    {unsigned int remote_domain, remote_port}, BIND_UNBOUND_PORT nr 2 {unsigned int remote_domain},
 *    UNBIND nr 3 {unsigned int port}, NOTIFY nr 4 {unsigned int port}. The binds return the new local
 *    port as the ioctl's value; a hypercall error comes back as -1 with errno set to Xen's error.
 *  - read() returns fired ports as 32-bit evtchn_port_t values, blocking (or poll() POLLIN) while there
 *    are none. A port that fired is disabled until its number is written back with write().
 *  - Xen's evtchn_bind_interdomain sets the new local port pending (notifications sent to the unbound
 *    end may have been lost), so the binding side may see one event of its own first: `bind` and `ping`
 *    drain what arrives before they send anything.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define IOCTL_EVTCHN_BIND_INTERDOMAIN _IOC(_IOC_NONE, 'E', 1, 2 * sizeof(unsigned int))
#define IOCTL_EVTCHN_BIND_UNBOUND_PORT _IOC(_IOC_NONE, 'E', 2, sizeof(unsigned int))
#define IOCTL_EVTCHN_UNBIND _IOC(_IOC_NONE, 'E', 3, sizeof(unsigned int))
#define IOCTL_EVTCHN_NOTIFY _IOC(_IOC_NONE, 'E', 4, sizeof(unsigned int))

struct bind_interdomain {
    unsigned int remote_domain, remote_port;
};

#define DRAIN_MS 300
#define MAX_PINGS 100000

static int fd = -1;
static volatile sig_atomic_t kicked;

static const char *errname(int e)
{
    static char buf[16];
    switch (e) {
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case ESRCH: return "ESRCH";
    case EINTR: return "EINTR";
    case EIO: return "EIO";
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
    case EFBIG: return "EFBIG";
    case ENOSYS: return "ENOSYS";
    case ENOTCONN: return "ENOTCONN";
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

static void fail(const char *what)
{
    out("ERR %s %s", what, errname(errno));
    exit(2);
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

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/* Wait up to timeout_ms (< 0: forever) for one fired port; 1 and *port set, 0 on timeout, -1 when a
 * signal interrupted the wait. The port is unmasked (written back) before returning. */
static int wait_event(int timeout_ms, unsigned int *port)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    uint32_t got;
    int r = poll(&p, 1, timeout_ms);
    if (r < 0 && errno == EINTR)
        return -1;
    if (r < 0)
        fail("poll");
    if (r == 0)
        return 0;
    if (p.revents & POLLERR) {
        errno = EFBIG;  /* the driver's ring of fired ports overflowed */
        fail("poll");
    }
    ssize_t n = read(fd, &got, sizeof got);
    if (n < 0 && errno == EINTR)
        return -1;
    if (n != (ssize_t)sizeof got)
        fail("read");
    if (write(fd, &got, sizeof got) != (ssize_t)sizeof got)
        fail("write (unmask)");
    *port = got;
    return 1;
}

static unsigned int must_wait(int timeout_ms, const char *what)
{
    unsigned int port;
    for (;;) {
        int r = wait_event(timeout_ms, &port);
        if (r > 0)
            return port;
        if (r == 0) {
            out("TIMEOUT %s", what);
            exit(3);
        }
    }
}

static void notify(unsigned int port)
{
    unsigned int arg = port;
    if (ioctl(fd, IOCTL_EVTCHN_NOTIFY, &arg) < 0)
        fail("notify");
}

static unsigned int offer_port(unsigned int remote)
{
    unsigned int arg = remote;
    int port = ioctl(fd, IOCTL_EVTCHN_BIND_UNBOUND_PORT, &arg);
    if (port < 0) {
        out("ERR %s", errname(errno));
        exit(1);
    }
    out("PORT %d", port);
    return (unsigned int)port;
}

/* Bind, print LOCAL, and swallow the event Xen sets on a freshly bound port. */
static unsigned int bind_port(unsigned int remote, unsigned int rport)
{
    struct bind_interdomain arg = {.remote_domain = remote, .remote_port = rport};
    unsigned int p;
    int port = ioctl(fd, IOCTL_EVTCHN_BIND_INTERDOMAIN, &arg);
    if (port < 0) {
        out("ERR %s", errname(errno));
        exit(1);
    }
    out("LOCAL %d", port);
    int initial = 0;
    while (wait_event(DRAIN_MS, &p) != 0)
        initial++;
    out("INITIAL %d", initial);
    return (unsigned int)port;
}

static void unbind(unsigned int port)
{
    unsigned int arg = port;
    if (ioctl(fd, IOCTL_EVTCHN_UNBIND, &arg) < 0)
        fail("unbind");
}

static void on_usr1(int sig)
{
    (void)sig;
    kicked = 1;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int usage(void)
{
    fprintf(stderr, "usage: evtchn_peer offer REMOTE_DOMID [TIMEOUT_S]\n"
                    "       evtchn_peer bind REMOTE_DOMID REMOTE_PORT [HOLD_S]\n"
                    "       evtchn_peer echo REMOTE_DOMID [IDLE_S]\n"
                    "       evtchn_peer ping REMOTE_DOMID REMOTE_PORT N\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return usage();
    const char *mode = argv[1];
    unsigned int remote = parse(argv[2], "domid");

    fd = open("/dev/xen/evtchn", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        fail("open /dev/xen/evtchn");

    if (strcmp(mode, "offer") == 0) {
        int timeout_ms = (argc > 3 ? (int)parse(argv[3], "timeout") : 30) * 1000;
        unsigned int port = offer_port(remote);
        unsigned int got = must_wait(timeout_ms, "first event");
        out("GOT %u", got);
        notify(port);
        must_wait(timeout_ms, "second event");
        out("GOT2");
        unbind(port);
        out("DONE");
        return 0;
    }
    if (strcmp(mode, "bind") == 0) {
        if (argc < 4)
            return usage();
        unsigned int rport = parse(argv[3], "port");
        unsigned int hold = argc > 4 ? parse(argv[4], "hold") : 0;
        unsigned int port = bind_port(remote, rport);
        notify(port);
        out("GOT %u", must_wait(10000, "answer"));
        notify(port);
        if (hold) {
            out("HOLDING");
            sleep(hold);
        }
        unbind(port);
        out("DONE");
        return 0;
    }
    if (strcmp(mode, "echo") == 0) {
        int idle_ms = (argc > 3 ? (int)parse(argv[3], "idle") : 30) * 1000;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_usr1;  /* no SA_RESTART: the poll returns EINTR */
        sigaction(SIGUSR1, &sa, NULL);
        unsigned int port = offer_port(remote), got;
        unsigned long echoed = 0;
        for (;;) {
            int r = wait_event(idle_ms, &got);
            if (kicked) {
                unsigned int arg = port;
                kicked = 0;
                out("KICK %s", ioctl(fd, IOCTL_EVTCHN_NOTIFY, &arg) < 0 ? errname(errno) : "0");
            }
            if (r == 0)
                break;
            if (r > 0) {
                notify(port);
                echoed++;
            }
        }
        out("ECHOED %lu", echoed);
        return 0;
    }
    if (strcmp(mode, "ping") == 0) {
        if (argc < 5)
            return usage();
        unsigned int rport = parse(argv[3], "port");
        unsigned int n = parse(argv[4], "count");
        if (n == 0 || n > MAX_PINGS) {
            out("ERR bad count %u", n);
            return 2;
        }
        double *rtt = calloc(n, sizeof *rtt);
        if (rtt == NULL)
            fail("calloc");
        unsigned int port = bind_port(remote, rport);
        for (unsigned int i = 0; i < n; i++) {
            double t0 = now_us();
            notify(port);
            must_wait(10000, "echo");
            rtt[i] = now_us() - t0;
        }
        qsort(rtt, n, sizeof *rtt, cmp_double);
        out("RTT n %u min %.0f median %.0f max %.0f", n, rtt[0], rtt[n / 2], rtt[n - 1]);
        unbind(port);
        out("DONE");
        return 0;
    }
    return usage();
}
