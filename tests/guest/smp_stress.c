/* SMP checks for a guest with several vCPUs (tests/integration/test_smp.py), built static.
 *
 *   smp_stress lock ITERATIONS THREADS   each thread does ITERATIONS `lock incl` on one shared counter,
 *                                        pinned to CPU (thread % nproc); prints "total N expected M"
 *   smp_stress spin SECONDS THREADS      each thread spins on arithmetic for SECONDS of wall time, pinned
 *                                        as above; prints "spun THREADS threads for S s, ops N"
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile unsigned int counter;
static long iterations;
static double seconds;
static volatile unsigned long ops[64];

static void pin(long id)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET((int)(id % (n > 0 ? n : 1)), &set);
    sched_setaffinity(0, sizeof(set), &set); /* best effort: an offline CPU just leaves it unpinned */
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *lock_worker(void *arg)
{
    pin((long)arg);
    for (long i = 0; i < iterations; i++)
        __asm__ volatile("lock incl %0" : "+m"(counter) : : "memory");
    return NULL;
}

static void *spin_worker(void *arg)
{
    long id = (long)arg;
    pin(id);
    double end = now() + seconds;
    unsigned long x = 1, n = 0;
    while (now() < end) {
        for (int i = 0; i < 100000; i++)
            x = x * 6364136223846793005UL + 1442695040888963407UL;
        n++;
    }
    ops[id] = n + (x & 1);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s lock ITERATIONS THREADS | spin SECONDS THREADS\n", argv[0]);
        return 2;
    }
    long threads = atol(argv[3]);
    if (threads < 1 || threads > 64)
        return 2;
    int lock = strcmp(argv[1], "lock") == 0;
    if (lock)
        iterations = atol(argv[2]);
    else
        seconds = atof(argv[2]);
    pthread_t t[64];
    for (long i = 0; i < threads; i++)
        if (pthread_create(&t[i], NULL, lock ? lock_worker : spin_worker, (void *)i) != 0)
            return 1;
    for (long i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    if (lock) {
        printf("total %u expected %ld\n", counter, iterations * threads);
    } else {
        unsigned long sum = 0;
        for (long i = 0; i < threads; i++)
            sum += ops[i];
        printf("spun %ld threads for %.1f s, ops %lu\n", threads, seconds, sum);
    }
    return 0;
}
