/* A full disk for examples/chaos: LD_PRELOADed into the daemon and the CLI commands beside it,
 * it makes writes to files under $FULL_DISK_DIR fail with ENOSPC while the file $FULL_DISK_FLAG
 * exists, as a full filesystem does: the first write of each full spell (per process) lands
 * only half its bytes (a torn line), the rest fail outright. It touches nothing else: other
 * files (the latch, stderr, sockets) are written as usual, errno is left as the real call left
 * it, and it must never be installed. Built by the chaos example with the system's C compiler. */
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

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off64_t);
/* The directory, resolved and with a trailing slash; empty: the shim does nothing. */
static char full_dir[PATH_MAX + 1];
static int torn_this_spell = 0;

__attribute__((constructor)) static void init(void) {
    real_write = (ssize_t (*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    real_writev = (ssize_t (*)(int, const struct iovec *, int))dlsym(RTLD_NEXT, "writev");
    real_pwrite64 = (ssize_t (*)(int, const void *, size_t, off64_t))dlsym(RTLD_NEXT, "pwrite64");
    const char *dir = getenv("FULL_DISK_DIR");
    char resolved[PATH_MAX];
    if (dir && realpath(dir, resolved) && strlen(resolved) < PATH_MAX - 1) {
        snprintf(full_dir, sizeof full_dir, "%s/", resolved);
    }
}

/* 1 when this write must fail: the flag exists and fd is a file under the directory. */
static int disk_full_for(int fd) {
    const char *flag = getenv("FULL_DISK_FLAG");
    if (!flag || !full_dir[0]) return 0;
    int saved = errno;
    int full = access(flag, F_OK) == 0;
    if (!full) {
        __atomic_store_n(&torn_this_spell, 0, __ATOMIC_SEQ_CST);
    } else {
        char link[64], target[PATH_MAX];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t len = readlink(link, target, sizeof target - 1);
        full = len > 0 && (target[len] = '\0', strncmp(target, full_dir, strlen(full_dir)) == 0);
    }
    errno = saved;
    return full;
}

ssize_t write(int fd, const void *buf, size_t count) {
    if (count > 1 && disk_full_for(fd)) {
        if (!__atomic_exchange_n(&torn_this_spell, 1, __ATOMIC_SEQ_CST)) {
            return real_write(fd, buf, count / 2);
        }
        errno = ENOSPC;
        return -1;
    }
    return real_write(fd, buf, count);
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    if (disk_full_for(fd)) {
        errno = ENOSPC;
        return -1;
    }
    return real_writev(fd, iov, iovcnt);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off64_t offset) {
    if (disk_full_for(fd)) {
        errno = ENOSPC;
        return -1;
    }
    return real_pwrite64(fd, buf, count, offset);
}
