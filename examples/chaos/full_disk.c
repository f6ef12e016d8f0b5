/* A full disk for examples/chaos: LD_PRELOADed into the daemon, it makes writes to files under
 * $FULL_DISK_DIR fail with ENOSPC while the file $FULL_DISK_FLAG exists, as a full filesystem
 * does: the first write of each full spell lands only half its bytes (a torn line), the rest fail
 * outright. Other files (the latch, stderr, sockets) are untouched. Built by the chaos example
 * with the system's C compiler; never installed. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static int torn_this_spell = 0;

/* 1: fail this write (after tearing it if it is the spell's first); 0: write normally. */
static int disk_full_for(int fd) {
    const char *flag = getenv("FULL_DISK_FLAG");
    const char *dir = getenv("FULL_DISK_DIR");
    if (!flag || !dir || access(flag, F_OK) != 0) {
        torn_this_spell = 0;
        return 0;
    }
    char link[64], target[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t len = readlink(link, target, sizeof target - 1);
    if (len <= 0) return 0;
    target[len] = '\0';
    return strncmp(target, dir, strlen(dir)) == 0;
}

ssize_t write(int fd, const void *buf, size_t count) {
    static ssize_t (*real)(int, const void *, size_t);
    if (!real) real = (ssize_t (*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    if (count > 1 && disk_full_for(fd)) {
        if (!torn_this_spell) {
            torn_this_spell = 1;
            return real(fd, buf, count / 2);
        }
        errno = ENOSPC;
        return -1;
    }
    return real(fd, buf, count);
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    static ssize_t (*real)(int, const struct iovec *, int);
    if (!real) real = (ssize_t (*)(int, const struct iovec *, int))dlsym(RTLD_NEXT, "writev");
    if (disk_full_for(fd)) {
        errno = ENOSPC;
        return -1;
    }
    return real(fd, iov, iovcnt);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
    static ssize_t (*real)(int, const void *, size_t, off_t);
    if (!real) real = (ssize_t (*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite64");
    if (disk_full_for(fd)) {
        errno = ENOSPC;
        return -1;
    }
    return real(fd, buf, count, offset);
}
