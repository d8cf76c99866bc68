/* entitled-bench's slower disk, for `--fsync-delay-us`: loaded with LD_PRELOAD into
 * the bench and the daemon it starts, it makes every fsync(2) and fdatasync(2) take
 * ENTITLED_BENCH_FSYNC_DELAY_US microseconds longer (a sleep after the real call, as a
 * disk whose flush is slower would keep the caller waiting, not the CPU busy).
 * Built by the bench with the C compiler rusqlite's build already needs; never part
 * of entitled. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static long delay_ns = 0;

__attribute__((constructor)) static void init(void) {
    const char *us = getenv("ENTITLED_BENCH_FSYNC_DELAY_US");
    delay_ns = us ? atol(us) * 1000L : 0;
    /* Threads inherit it: sleeps end on time, not up to 50 us late. */
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
}

/* Sleeps the delay out, signals or not, and leaves errno as the real call set it. */
static void slower(void) {
    int saved = errno;
    if (delay_ns > 0) {
        struct timespec t = {delay_ns / 1000000000L, delay_ns % 1000000000L};
        while (nanosleep(&t, &t) != 0 && errno == EINTR) {
        }
    }
    errno = saved;
}

int fsync(int fd) {
    long r = syscall(SYS_fsync, fd);
    slower();
    return (int)r;
}

int fdatasync(int fd) {
    long r = syscall(SYS_fdatasync, fd);
    slower();
    return (int)r;
}
