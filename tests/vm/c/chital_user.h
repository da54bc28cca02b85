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

/* Create a container; returns its id, or -errno. */
static inline long chital_create(int fd, const char *name, const char *root,
				 const uint64_t *deny /* CHITAL_POLICY_WORDS or NULL */)
{
	struct chital_create c;

	memset(&c, 0, sizeof(c));
	snprintf((char *)c.name, sizeof(c.name), "%s", name);
	c.root_ptr = (uintptr_t)root;
	c.root_len = strlen(root);
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

#endif
