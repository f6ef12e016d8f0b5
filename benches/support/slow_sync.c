/* A slow disk for benches/trigger_latency.rs: LD_PRELOADed into the real release binary, it
 * makes every fsync(2) and fdatasync(2) wait SLOW_SYNC_US microseconds before the real call, as
 * a network-attached volume does. The shipped binary has no such knob; this file is built by the
 * bench with the system's C compiler and never installed. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>

static void slow_down(void) {
    const char *value = getenv("SLOW_SYNC_US");
    long us = value ? atol(value) : 0;
    if (us > 0) {
        struct timespec pause = {us / 1000000L, (us % 1000000L) * 1000L};
        nanosleep(&pause, NULL);
    }
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    slow_down();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    slow_down();
    return real(fd);
}
