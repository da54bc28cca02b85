// SPDX-License-Identifier: Apache-2.0
/*
 * sbx: probes for the sandbox tests (escape attempts) and the compatibility suite, one per
 * argument. Static, so it runs inside a busybox container root. Each probe prints one line
 * "<name> ok" or "<name> <ERRNO name>" (or its own result) and the program exits 0.
 *
 *   sbx mknod iopl klogctl clock acct sethostname add_key packet lo_mtu fanotify devmem
 *   sbx connect <ipv4> <port>          TCP connect
 *   sbx listen <port> <seconds>        listen on 127.0.0.1:<port>, accept and answer "hi"
 *   sbx int80                          waits for a line on stdin, then getpid through int $0x80
 *   sbx zombie threads pty tcp-self    compatibility probes
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/io.h>
#include <sys/ioctl.h>
#include <sys/klog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include <linux/if_ether.h>

static const char *ename(int e)
{
	switch (e) {
	case 0: return "ok";
	case EPERM: return "EPERM";
	case EACCES: return "EACCES";
	case ENOENT: return "ENOENT";
	case ENOSYS: return "ENOSYS";
	case EINVAL: return "EINVAL";
	case ECONNREFUSED: return "ECONNREFUSED";
	case ENETUNREACH: return "ENETUNREACH";
	case EHOSTUNREACH: return "EHOSTUNREACH";
	case ETIMEDOUT: return "ETIMEDOUT";
	case ENODEV: return "ENODEV";
	case EROFS: return "EROFS";
	case EEXIST: return "EEXIST";
	case EAFNOSUPPORT: return "EAFNOSUPPORT";
	case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
	default: return "EOTHER";
	}
}

static void result(const char *name, long rc)
{
	printf("%s %s\n", name, ename(rc < 0 ? errno : 0));
	fflush(stdout);
}

static int tcp_connect(const char *ip, int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
	int fd = socket(AF_INET, SOCK_STREAM, 0), rc;
	struct timeval tv = { 3, 0 };

	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	inet_pton(AF_INET, ip, &sa.sin_addr);
	rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
	if (rc == 0) {
		char buf[8] = { 0 };
		ssize_t n;

		/* Reached: the server spoke, or waits for the client to speak first (TLS) */
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		n = read(fd, buf, sizeof(buf) - 1);
		rc = n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) ? 0 : -1;
	}
	close(fd);
	return rc;
}

static void *thread_add(void *arg)
{
	long *n = arg;

	__atomic_add_fetch(n, 1, __ATOMIC_SEQ_CST);
	return NULL;
}

static void probe_threads(void)
{
	pthread_t t[8];
	long n = 0;

	for (int i = 0; i < 8; i++)
		if (pthread_create(&t[i], NULL, thread_add, &n))
			return result("threads", -1);
	for (int i = 0; i < 8; i++)
		pthread_join(t[i], NULL);
	printf("threads %ld\n", n);
}

/* Signal and wait for our own exited, unreaped child: allowed on Linux (subprocess libraries do). */
static void probe_zombie(void)
{
	pid_t pid = fork();
	int status, k0, kt;

	if (pid == 0)
		_exit(5);
	for (int i = 0; i < 200; i++) {	/* until it is a zombie */
		char path[64], st = 0;
		FILE *f;

		snprintf(path, sizeof(path), "/proc/%d/stat", pid);
		f = fopen(path, "r");
		if (f) {
			if (fscanf(f, "%*d %*s %c", &st) != 1)
				st = 0;
			fclose(f);
		}
		if (st == 'Z')
			break;
		usleep(10000);
	}
	k0 = kill(pid, 0) ? errno : 0;
	kt = kill(pid, SIGTERM) ? errno : 0;
	waitpid(pid, &status, 0);
	printf("zombie kill0=%s killterm=%s exit=%d\n", ename(k0), ename(kt), WEXITSTATUS(status));
}

static void probe_pty(void)
{
	int master = posix_openpt(O_RDWR | O_NOCTTY), slave;
	char buf[64] = { 0 };
	pid_t pid;
	ssize_t n;

	if (master < 0 || grantpt(master) || unlockpt(master))
		return result("pty", -1);
	slave = open(ptsname(master), O_RDWR | O_NOCTTY);
	if (slave < 0)
		return result("pty-open", -1);
	pid = fork();
	if (pid == 0) {
		setsid();
		if (ioctl(slave, TIOCSCTTY, 0))
			_exit(1);
		if (write(slave, isatty(slave) ? "tty-ok" : "no-tty", 6) != 6)
			_exit(2);
		_exit(0);
	}
	waitpid(pid, NULL, 0);
	n = read(master, buf, sizeof(buf) - 1);
	printf("pty %s\n", n > 0 ? buf : "read-failed");
}

static void probe_tcp_self(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t len = sizeof(sa);
	int l = socket(AF_INET, SOCK_STREAM, 0), c, a;
	char buf[8] = { 0 };

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (l < 0 || bind(l, (struct sockaddr *)&sa, sizeof(sa)) || listen(l, 1) ||
	    getsockname(l, (struct sockaddr *)&sa, &len))
		return result("tcp-self", -1);
	c = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(c, (struct sockaddr *)&sa, sizeof(sa)))
		return result("tcp-self", -1);
	a = accept(l, NULL, NULL);
	if (a < 0 || write(a, "pong", 4) != 4 || read(c, buf, 4) != 4)
		return result("tcp-self", -1);
	printf("tcp-self %s\n", buf);
}

static void probe_listen(int port, int seconds)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
	int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(l, (struct sockaddr *)&sa, sizeof(sa)) || listen(l, 8))
		return result("listen", -1);
	printf("listening %d\n", port);
	fflush(stdout);
	alarm(seconds);
	for (;;) {
		int a = accept(l, NULL, NULL);

		if (a >= 0) {
			if (write(a, "hi", 2) != 2)
				perror("write");
			close(a);
		}
	}
}

static void probe_int80(void)
{
	char line[16];
	long ret;

	if (!fgets(line, sizeof(line), stdin))
		return;
	/* getpid is 20 in the i386 table */
	__asm__ volatile("int $0x80" : "=a"(ret) : "a"(20L) : "memory");
	printf("int80 %ld\n", ret);
}

static void probe_lo_mtu(void)
{
	struct ifreq ifr;
	int fd = socket(AF_INET, SOCK_DGRAM, 0);

	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, "lo");
	if (fd < 0 || ioctl(fd, SIOCGIFMTU, &ifr))
		return result("lo_mtu", -1);
	/* the same MTU: a no-op that still needs CAP_NET_ADMIN over lo's network namespace */
	result("lo_mtu", ioctl(fd, SIOCSIFMTU, &ifr));
	close(fd);
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *p = argv[i];

		if (!strcmp(p, "mknod")) {
			long rc = mknod("/tmp/sbx-mem", S_IFCHR | 0600, makedev(1, 1));

			result("mknod", rc);
			unlink("/tmp/sbx-mem");
		} else if (!strcmp(p, "devmem")) {
			int fd = open("/dev/mem", O_RDONLY);

			result("devmem", fd);
			if (fd >= 0)
				close(fd);
		} else if (!strcmp(p, "iopl")) {
			long rc = iopl(3);

			result("iopl", rc);
			if (rc == 0)
				iopl(0);
		} else if (!strcmp(p, "klogctl")) {
			char buf[256];

			result("klogctl", klogctl(3, buf, sizeof(buf)));
		} else if (!strcmp(p, "clock")) {
			struct timespec ts;

			clock_gettime(CLOCK_REALTIME, &ts);
			result("clock", clock_settime(CLOCK_REALTIME, &ts));
		} else if (!strcmp(p, "acct")) {
			result("acct", acct(NULL));
		} else if (!strcmp(p, "sethostname")) {
			char name[65] = { 0 };

			gethostname(name, sizeof(name) - 1);
			result("sethostname", sethostname(name, strlen(name)));
		} else if (!strcmp(p, "add_key")) {
			result("add_key", syscall(SYS_add_key, "user", "sbx", "v", 1, -4 /* user keyring */));
		} else if (!strcmp(p, "packet")) {
			int fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));

			result("packet", fd);
			if (fd >= 0)
				close(fd);
		} else if (!strcmp(p, "rawip")) {
			int fd = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);

			result("rawip", fd);
			if (fd >= 0)
				close(fd);
		} else if (!strcmp(p, "fanotify")) {
			int fd = fanotify_init(FAN_CLASS_NOTIF, O_RDONLY);

			result("fanotify", fd);
			if (fd >= 0)
				close(fd);
		} else if (!strcmp(p, "lo_mtu")) {
			probe_lo_mtu();
		} else if (!strcmp(p, "connect") && i + 2 < argc) {
			char name[64];
			long rc = tcp_connect(argv[i + 1], atoi(argv[i + 2]));

			snprintf(name, sizeof(name), "connect-%s:%s", argv[i + 1], argv[i + 2]);
			result(name, rc);
			i += 2;
		} else if (!strcmp(p, "listen") && i + 2 < argc) {
			probe_listen(atoi(argv[i + 1]), atoi(argv[i + 2]));
		} else if (!strcmp(p, "int80")) {
			probe_int80();
		} else if (!strcmp(p, "zombie")) {
			probe_zombie();
		} else if (!strcmp(p, "threads")) {
			probe_threads();
		} else if (!strcmp(p, "pty")) {
			probe_pty();
		} else if (!strcmp(p, "tcp-self")) {
			probe_tcp_self();
		} else {
			printf("%s unknown-probe\n", p);
		}
	}
	return 0;
}
