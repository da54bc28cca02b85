/* Shared helpers of the VM test programs: open the device, create/destroy containers, add a pid. */
#ifndef CHITAL_USER_H
#define CHITAL_USER_H

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <linux/chital.h>

static inline int chital_open(void)
{
	int fd = open("/dev/chital", O_RDWR | O_CLOEXEC);

	if (fd < 0) {
		perror("open /dev/chital");
		exit(111);
	}
	return fd;
}

/* Create a container; returns its id, or -errno. policy_flags: CHITAL_POLICY_*. */
static inline long chital_create(int fd, const char *name, const char *root,
				 const uint64_t *deny /* CHITAL_POLICY_WORDS or NULL */,
				 uint64_t policy_flags)
{
	struct chital_create c;

	memset(&c, 0, sizeof(c));
	snprintf((char *)c.name, sizeof(c.name), "%s", name);
	c.root_ptr = (uintptr_t)root;
	c.root_len = strlen(root);
	c.policy.flags = policy_flags;
	if (deny)
		memcpy(c.policy.deny, deny, sizeof(c.policy.deny));
	if (ioctl(fd, CHITAL_IOC_CREATE, &c) < 0)
		return -errno;
	return c.id;
}

static inline int chital_destroy(int fd, uint32_t id, int kill)
{
	struct chital_destroy d = { .id = id, .flags = kill ? CHITAL_DESTROY_KILL : 0 };

	return ioctl(fd, CHITAL_IOC_DESTROY, &d) < 0 ? -errno : 0;
}

static inline int chital_add_proc(int fd, uint32_t id, pid_t pid, uint32_t flags)
{
	struct chital_proc p = { .id = id, .pid = (uint32_t)pid, .flags = flags };

	return ioctl(fd, CHITAL_IOC_ADD_PROC, &p) < 0 ? -errno : 0;
}

/*
 * Print the container's counters as one JSON line on stderr: denied_total, syscalls_total and the
 * per-number denials that are not zero.
 */
static inline void chital_print_counters(int fd, uint32_t id)
{
	static struct chital_syscall_stat st[CHITAL_NR_SYSCALLS];
	struct chital_info info = { .id = id };
	struct chital_stats s = { .id = id, .stats_ptr = (uintptr_t)st, .capacity = CHITAL_NR_SYSCALLS };
	const char *sep = "";

	if (ioctl(fd, CHITAL_IOC_INFO, &info) < 0 || ioctl(fd, CHITAL_IOC_STATS, &s) < 0) {
		fprintf(stderr, "{\"counters_error\": %d}\n", errno);
		return;
	}
	fprintf(stderr, "{\"denied_total\": %llu, \"syscalls_total\": %llu, \"denied\": {",
		(unsigned long long)info.denied_total, (unsigned long long)info.syscalls_total);
	for (uint32_t i = 0; i < s.count; i++) {
		if (!st[i].denied)
			continue;
		fprintf(stderr, "%s\"%u\": %llu", sep, i, (unsigned long long)st[i].denied);
		sep = ", ";
	}
	fprintf(stderr, "}}\n");
}

#endif
