/*
 * syscall_loop: time N iterations of one system call pattern; prints ns per iteration.
 *
 *   syscall_loop getppid N
 *   syscall_loop openclose N PATH
 *
 * getppid goes through syscall(2) so no libc caching can hide the kernel entry.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	long n;
	double t0, t1;
	volatile long sink = 0;

	if (argc < 3)
		return 2;
	n = atol(argv[2]);
	if (!strcmp(argv[1], "getppid")) {
		t0 = now_ns();
		for (long i = 0; i < n; i++)
			sink += syscall(SYS_getppid);
		t1 = now_ns();
	} else if (!strcmp(argv[1], "openclose") && argc == 4) {
		t0 = now_ns();
		for (long i = 0; i < n; i++) {
			int fd = open(argv[3], O_RDONLY);

			if (fd < 0) {
				perror(argv[3]);
				return 1;
			}
			close(fd);
		}
		t1 = now_ns();
	} else {
		return 2;
	}
	printf("%.1f\n", (t1 - t0) / n);
	return sink == -1;
}
