/*
 * evtchn_many: as many event channels as the domain may have, through Linux's /dev/xen/evtchn
 * (drivers/xen/evtchn.c), then an event delivered on the highest of them.
 *
 *   evtchn_many DOMID      bind unbound ports offered to DOMID (our own) until the hypervisor refuses;
 *                          print "BOUND <count> MAX <highest port> ERR <errno name>"; then free the
 *                          first, bind it to the highest (a loopback inter-domain channel), notify it
 *                          and wait for the event on the highest port: "DELIVERED <port>" (or
 *                          "TIMEOUT"). Each bind makes the guest kernel set the port up in its event
 *                          ABI (FIFO: EVTCHNOP_expand_array as the ports pass each 1024).
 *
 * The ioctl numbers and argument layouts are Linux's include/uapi/xen/evtchn.h.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define IOCTL_EVTCHN_BIND_INTERDOMAIN _IOC(_IOC_NONE, 'E', 1, 2 * sizeof(unsigned int))
#define IOCTL_EVTCHN_BIND_UNBOUND_PORT _IOC(_IOC_NONE, 'E', 2, sizeof(unsigned int))
#define IOCTL_EVTCHN_UNBIND _IOC(_IOC_NONE, 'E', 3, sizeof(unsigned int))
#define IOCTL_EVTCHN_NOTIFY _IOC(_IOC_NONE, 'E', 4, sizeof(unsigned int))
#define MAX_PORTS (1 << 17)

struct bind_interdomain {
    unsigned int remote_domain, remote_port;
};

static unsigned int ports[MAX_PORTS];

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: evtchn_many DOMID\n");
        return 2;
    }
    unsigned int self = (unsigned int)strtoul(argv[1], NULL, 0);
    int fd = open("/dev/xen/evtchn", O_RDWR);
    if (fd < 0) {
        printf("ERR open %s\n", strerror(errno));
        return 1;
    }
    unsigned int n = 0, max = 0;
    int err = 0;
    while (n < MAX_PORTS) {
        unsigned int arg = self;
        int port = ioctl(fd, IOCTL_EVTCHN_BIND_UNBOUND_PORT, &arg);
        if (port < 0) {
            err = errno;
            break;
        }
        ports[n++] = (unsigned int)port;
        if ((unsigned int)port > max)
            max = (unsigned int)port;
    }
    printf("BOUND %u MAX %u ERR %s\n", n, max, err == ENOSPC ? "ENOSPC" : strerror(err));
    fflush(stdout);
    if (n < 2)
        return 1;
    unsigned int first = ports[0];
    if (ioctl(fd, IOCTL_EVTCHN_UNBIND, &first) < 0) {
        printf("ERR unbind %s\n", strerror(errno));
        return 1;
    }
    struct bind_interdomain b = {.remote_domain = self, .remote_port = max};
    int local = ioctl(fd, IOCTL_EVTCHN_BIND_INTERDOMAIN, &b);
    if (local < 0) {
        printf("ERR bind %s\n", strerror(errno));
        return 1;
    }
    unsigned int arg = (unsigned int)local;
    if (ioctl(fd, IOCTL_EVTCHN_NOTIFY, &arg) < 0) {
        printf("ERR notify %s\n", strerror(errno));
        return 1;
    }
    for (int tries = 0; tries < 50; tries++) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 200) <= 0)
            continue;
        unsigned int got;
        if (read(fd, &got, sizeof got) != (ssize_t)sizeof got)
            break;
        if (write(fd, &got, sizeof got) != (ssize_t)sizeof got)  /* unmask it again */
            break;
        if (got == max) {
            printf("DELIVERED %u\n", got);
            return 0;
        }
    }
    printf("TIMEOUT\n");
    return 3;
}
