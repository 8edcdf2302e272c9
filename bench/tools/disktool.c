/* Guest-side helper for bench/disk.py, built on the host with `gcc -static -O2` and put into the guest's
 * initramfs as /bin/disktool.
 *
 *   disktool clock                         print CLOCK_MONOTONIC in seconds (ns resolution)
 *   disktool randread DEV SECONDS SPAN     4 KiB O_DIRECT preads at random 4 KiB-aligned offsets in
 *                                          [0, SPAN bytes) of DEV, queue depth 1, for SECONDS seconds;
 *                                          prints "RANDREAD ops=N seconds=S iops=R"
 *
 * busybox's date has no %N and /proc/uptime only has 10 ms resolution, hence `clock`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 4096

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t xorshift64(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static int randread(const char *dev, double seconds, uint64_t span)
{
    uint64_t blocks = span / BLOCK;
    if (blocks == 0) {
        fprintf(stderr, "disktool: span too small\n");
        return 2;
    }
    int fd = open(dev, O_RDONLY | O_DIRECT);
    if (fd < 0) {
        fprintf(stderr, "disktool: open %s: %s\n", dev, strerror(errno));
        return 1;
    }
    void *buf;
    if (posix_memalign(&buf, BLOCK, BLOCK) != 0) {
        fprintf(stderr, "disktool: out of memory\n");
        return 1;
    }
    uint64_t seed = 0x9e3779b97f4a7c15ULL;
    uint64_t ops = 0;
    double t0 = now(), t = t0;
    for (;;) {
        off_t off = (off_t)((xorshift64(&seed) % blocks) * BLOCK);
        ssize_t n = pread(fd, buf, BLOCK, off);
        if (n != BLOCK) {
            fprintf(stderr, "disktool: pread %s at %lld: %s\n", dev, (long long)off,
                    n < 0 ? strerror(errno) : "short read");
            return 1;
        }
        ops++;
        if ((ops & 15) == 0) {
            t = now();
            if (t - t0 >= seconds)
                break;
        }
    }
    close(fd);
    printf("RANDREAD ops=%llu seconds=%.6f iops=%.1f\n", (unsigned long long)ops, t - t0,
           (double)ops / (t - t0));
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "clock") == 0) {
        printf("%.9f\n", now());
        return 0;
    }
    if (argc == 5 && strcmp(argv[1], "randread") == 0)
        return randread(argv[2], atof(argv[3]), strtoull(argv[4], NULL, 0));
    fprintf(stderr, "usage: disktool clock | disktool randread DEV SECONDS SPAN_BYTES\n");
    return 2;
}
