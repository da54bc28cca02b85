/*
 * race: the rename race against path walks that cross "..".
 *
 *   race flip A B              rename A -> B -> A ... until killed (run outside the container)
 *   race open PATH N DEV INO   open PATH N times; count opens whose descriptor is the file
 *                              (DEV, INO) (an escape), other successful opens, and failures;
 *                              print {"tries": N, "escaped": E, "other": O, "failed": F}
 *
 * The member opens e.g. /race/d/../../secret while the flipper moves d out of the root: a walk
 * that entered d before the move climbs ".." from outside the root and reaches the outside
 * secret unless the kernel (or the module) checks the resolved path. Only the descriptor's inode
 * decides what counts as an escape.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
	(void)sig;
	stop = 1;
}

int main(int argc, char **argv)
{
	if (argc == 4 && !strcmp(argv[1], "flip")) {
		volatile unsigned long flips = 0;

		signal(SIGTERM, on_term);
		while (!stop) {
			if (rename(argv[2], argv[3]) == 0)
				flips++;
			asm volatile("" ::: "memory");	/* keep the loop: the test must not pass vacuously */
			if (rename(argv[3], argv[2]) == 0)
				flips++;
			asm volatile("" ::: "memory");
		}
		fprintf(stderr, "flips %lu\n", (unsigned long)flips);
		return flips ? 0 : 1;
	}
	if (argc == 6 && !strcmp(argv[1], "open")) {
		long n = atol(argv[3]), escaped = 0, other = 0, failed = 0;
		unsigned long dev = strtoul(argv[4], NULL, 0), ino = strtoul(argv[5], NULL, 0);

		for (long i = 0; i < n; i++) {
			struct stat st;
			int fd = open(argv[2], O_RDONLY);

			if (fd < 0) {
				failed++;
				continue;
			}
			if (fstat(fd, &st) == 0 && st.st_dev == dev && st.st_ino == ino)
				escaped++;
			else
				other++;
			close(fd);
		}
		printf("{\"tries\": %ld, \"escaped\": %ld, \"other\": %ld, \"failed\": %ld}\n",
		       n, escaped, other, failed);
		return 0;
	}
	fprintf(stderr, "usage: race flip A B | race open PATH N DEV INO\n");
	return 2;
}
