/*
 * probe: attempt things from inside a container and print one JSON line per attempt:
 *   {"name": ..., "ret": <return value>, "errno": <errno or 0>, "dev": <st_dev>, "ino": <st_ino>}
 * dev/ino are those of the file actually opened (fstat of the descriptor), so callers compare
 * what the kernel resolved, not the path string.
 *
 *   probe syscalls OUTSIDER_PID   every way out of a chroot the module must refuse
 *   probe open SPEC...            SPEC is PATH, or FD:PATH for openat(FD, PATH); @FD0@ in a SPEC
 *                                 is $CHITAL_FD0 (see ctr_exec -k), @PPID@ the parent's pid
 *   probe create SPEC...          as open, with O_CREAT|O_WRONLY
 *   probe link SPEC NEWPATH       linkat(SPEC, NEWPATH), then open NEWPATH
 *   probe tasks PID               every call that reaches another process, aimed at PID
 *   probe zombie                  signal an own child after it exited, before reaping it
 *   probe sigio HOW PID           make the kernel send SIGKILL to PID as SIGIO of a pipe or socket
 *                                 whose owner is set with HOW: setown, setown_ex or fiosetown
 *   probe ftruncate SPEC          ftruncate(fd, 0) of the descriptor number SPEC expands to
 *   probe sockets                 raw and packet sockets (and an ordinary one as the control)
 *   probe device                  open /dev/chital
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if_ether.h>
#include <linux/ioprio.h>
#include <linux/reboot.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void report(const char *name, long ret, int err, int fd)
{
	struct stat st = { 0 };

	if (fd >= 0)
		fstat(fd, &st);
	printf("{\"name\": \"%s\", \"ret\": %ld, \"errno\": %d, \"dev\": %lu, \"ino\": %lu}\n",
	       name, ret, ret < 0 ? err : 0, (unsigned long)st.st_dev, (unsigned long)st.st_ino);
	fflush(stdout);
}

#define TRY(name, expr) do { errno = 0; long r_ = (long)(expr); report(name, r_, errno, -1); } while (0)

/* A 32-bit system call through int $0x80: getpid is 20 there. Returns -errno like the kernel. */
static long int80_getpid(void)
{
	long ret = 20;

	asm volatile("int $0x80" : "+a"(ret) : : "memory", "cc");
	return ret;
}

/* Expand @NAME@ to $CHITAL_NAME (e.g. @FD0@ -> $CHITAL_FD0) and @PPID@ to the parent's pid. */
static const char *expand(const char *in)
{
	static char out[8][4096];
	static int slot;
	char *o = out[slot++ % 8], *end = o + 4095;
	char *w = o;

	while (*in && w < end) {
		const char *close = *in == '@' ? strchr(in + 1, '@') : NULL;

		if (close && close - in < 32) {
			char name[40], val[32];
			const char *v;

			snprintf(name, sizeof(name), "CHITAL_%.*s", (int)(close - in - 1), in + 1);
			if (!strcmp(name, "CHITAL_PPID")) {
				snprintf(val, sizeof(val), "%d", getppid());
				v = val;
			} else {
				v = getenv(name);
			}
			if (v) {
				w += snprintf(w, end - w, "%s", v);
				in = close + 1;
				continue;
			}
		}
		*w++ = *in++;
	}
	*w = 0;
	return o;
}

/* SPEC is PATH or DIRFD:PATH (after expansion), e.g. "@FD0@:../secret". */
static int split_spec(const char *spec, int *dirfd, const char **path)
{
	const char *colon;

	spec = expand(spec);
	colon = strchr(spec, ':');
	*dirfd = AT_FDCWD;
	*path = spec;
	if (colon && colon != spec && strspn(spec, "0123456789") == (size_t)(colon - spec)) {
		*dirfd = atoi(spec);
		*path = colon + 1;
	}
	return 0;
}

static void probe_open(int argc, char **argv, int flags)
{
	for (int i = 0; i < argc; i++) {
		int dirfd, fd;
		const char *path;

		split_spec(argv[i], &dirfd, &path);
		errno = 0;
		fd = openat(dirfd, path, flags, 0600);
		report(argv[i], fd, errno, fd);
		if (fd >= 0)
			close(fd);
	}
}

static void probe_syscalls(pid_t outsider)
{
	char buf[64] = { 0 };
	int self = open("/proc/self/exe", O_RDONLY);

	if (self < 0)
		self = open("/bin/busybox", O_RDONLY);
	TRY("chroot", chroot("/mnt"));
	TRY("mount", mount("none", "/mnt", "tmpfs", 0, NULL));
	TRY("mount_bind", mount("/", "/mnt", NULL, MS_BIND, NULL));
	TRY("umount", umount2("/mnt", 0));
	TRY("umount_root", umount2("/", MNT_DETACH));
	TRY("pivot_root", syscall(SYS_pivot_root, ".", "/mnt"));
	TRY("unshare_newns", unshare(CLONE_NEWNS));
	TRY("unshare_newuser", unshare(CLONE_NEWUSER));
	TRY("unshare_newpid", unshare(CLONE_NEWPID));
	TRY("setns", setns(0, 0));
	TRY("clone3", syscall(SYS_clone3, NULL, 0));
	TRY("ptrace_attach", ptrace(PTRACE_ATTACH, outsider, 0, 0));
	TRY("ptrace_seize", ptrace(PTRACE_SEIZE, outsider, 0, 0));
	TRY("kill_outsider_sig0", kill(outsider, 0));
	TRY("init_module", syscall(SYS_init_module, buf, sizeof(buf), ""));
	TRY("finit_module", syscall(SYS_finit_module, self, "", 0));
	TRY("delete_module", syscall(SYS_delete_module, "chital", O_NONBLOCK));
	TRY("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0));
	TRY("kexec_file_load", syscall(SYS_kexec_file_load, self, -1, 1, "", 0));
	TRY("reboot_cad_off", syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2,
				      LINUX_REBOOT_CMD_CAD_OFF, NULL));
	TRY("io_uring_setup", syscall(SYS_io_uring_setup, 1, buf));
	TRY("bpf", syscall(SYS_bpf, 0, buf, 16));
	TRY("perf_event_open", syscall(SYS_perf_event_open, buf, 0, -1, -1, 0));
	TRY("open_by_handle_at", syscall(SYS_open_by_handle_at, AT_FDCWD, buf, O_RDONLY));
	TRY("fsopen", syscall(SYS_fsopen, "tmpfs", 0));
	TRY("open_tree", syscall(SYS_open_tree, AT_FDCWD, "/", 0));
	TRY("chital_device", open("/dev/chital", O_RDWR));
	{
		long r = int80_getpid();

		report("int80_getpid", r < 0 ? -1 : r, r < 0 ? (int)-r : 0, -1);
	}
	/* Controls: ordinary calls still work. */
	TRY("getpid", getpid());
	TRY("getppid", getppid());
}

/* Each call reaches another process; a member must get ESRCH for one outside its container. */
static void probe_tasks(pid_t pid)
{
	struct rlimit rl;
	struct sched_param sp = { 0 };
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(0, &set);
	TRY("kill_sig0", kill(pid, 0));
	TRY("prlimit_get", prlimit(pid, RLIMIT_NOFILE, NULL, &rl));
	TRY("getpriority", (errno = 0, getpriority(PRIO_PROCESS, pid) == -1 && errno ? -1 : 0));
	TRY("setpriority", setpriority(PRIO_PROCESS, pid, 0));
	TRY("sched_getaffinity", sched_getaffinity(pid, sizeof(set), &set));
	TRY("sched_setaffinity", sched_setaffinity(pid, sizeof(set), &set));
	TRY("sched_getscheduler", sched_getscheduler(pid));
	TRY("sched_setscheduler", sched_setscheduler(pid, SCHED_OTHER, &sp));
	TRY("ioprio_get", syscall(SYS_ioprio_get, IOPRIO_WHO_PROCESS, pid));
	TRY("ioprio_set", syscall(SYS_ioprio_set, IOPRIO_WHO_PROCESS, pid,
				  IOPRIO_PRIO_VALUE(IOPRIO_CLASS_BE, 4)));
	TRY("getsid", getsid(pid));
	TRY("getpgid", getpgid(pid));
}

/* Linux lets a parent signal its exited, unreaped child; so must the sandbox. */
static void probe_zombie(void)
{
	siginfo_t si;
	pid_t child = fork();

	if (child == 0)
		_exit(7);
	/* Wait until it has exited, without reaping it (WNOWAIT). */
	TRY("waitid_nowait", waitid(P_PID, child, &si, WEXITED | WNOWAIT));
	TRY("kill_zombie_sig0", kill(child, 0));
	TRY("kill_zombie_term", kill(child, SIGTERM));
	TRY("reap", waitpid(child, NULL, 0));
}

/*
 * The owner of a file gets SIGIO (here SIGKILL, by F_SETSIG) when I/O becomes possible; the kernel
 * sends it, so no kill() check applies. Reports whether setting the owner worked, what F_GETOWN
 * says afterwards, and then triggers the signal.
 */
static void probe_sigio(const char *how, pid_t pid)
{
	int fds[2], r = -1, rfd;
	char byte = 'x';

	if (!strcmp(how, "fiosetown"))
		r = socketpair(AF_UNIX, SOCK_STREAM, 0, fds);
	else
		r = pipe(fds);
	if (r < 0) {
		report("setup", -1, errno, -1);
		return;
	}
	rfd = fds[0];
	errno = 0;
	if (!strcmp(how, "setown")) {
		r = fcntl(rfd, F_SETOWN, pid);
	} else if (!strcmp(how, "setown_ex")) {
		struct f_owner_ex owner = { .type = F_OWNER_PID, .pid = pid };

		r = fcntl(rfd, F_SETOWN_EX, &owner);
	} else {
		int who = pid;

		r = ioctl(rfd, FIOSETOWN, &who);
	}
	report("set_owner", r, errno, -1);
	TRY("getown", fcntl(rfd, F_GETOWN));
	TRY("setsig", fcntl(rfd, F_SETSIG, SIGKILL));
	TRY("async", fcntl(rfd, F_SETFL, fcntl(rfd, F_GETFL) | O_ASYNC));
	TRY("trigger", write(fds[1], &byte, 1));
	usleep(100000);
}

static void probe_ftruncate(const char *spec)
{
	TRY("ftruncate", ftruncate(atoi(expand(spec)), 0));
}

static void probe_sockets(void)
{
	int sv[2];

	TRY("af_packet_raw", socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL)));
	TRY("af_packet_dgram", socket(AF_PACKET, SOCK_DGRAM, htons(ETH_P_ALL)));
	TRY("inet_raw_icmp", socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMP));
	TRY("inet_sock_packet", socket(AF_INET, SOCK_PACKET, htons(ETH_P_ALL)));
	TRY("unix_raw_pair", socketpair(AF_UNIX, SOCK_RAW, 0, sv));
	TRY("inet_dgram", socket(AF_INET, SOCK_DGRAM, 0));
}

int main(int argc, char **argv)
{
	if (argc >= 3 && !strcmp(argv[1], "syscalls"))
		probe_syscalls(atoi(argv[2]));
	else if (argc == 3 && !strcmp(argv[1], "tasks"))
		probe_tasks(atoi(argv[2]));
	else if (argc == 2 && !strcmp(argv[1], "zombie"))
		probe_zombie();
	else if (argc == 4 && !strcmp(argv[1], "sigio"))
		probe_sigio(argv[2], atoi(argv[3]));
	else if (argc == 3 && !strcmp(argv[1], "ftruncate"))
		probe_ftruncate(argv[2]);
	else if (argc == 2 && !strcmp(argv[1], "sockets"))
		probe_sockets();
	else if (argc == 2 && !strcmp(argv[1], "device"))
		TRY("device", open("/dev/chital", O_RDWR));
	else if (argc >= 2 && !strcmp(argv[1], "open"))
		probe_open(argc - 2, argv + 2, O_RDONLY);
	else if (argc >= 2 && !strcmp(argv[1], "create"))
		probe_open(argc - 2, argv + 2, O_CREAT | O_WRONLY);
	else if (argc == 4 && !strcmp(argv[1], "link")) {
		int dirfd;
		const char *path;

		split_spec(argv[2], &dirfd, &path);
		errno = 0;
		long r = linkat(dirfd, path, AT_FDCWD, argv[3], 0);
		report("linkat", r, errno, -1);
		probe_open(1, argv + 3, O_RDONLY);
	} else {
		fprintf(stderr, "usage: probe syscalls PID | open SPEC... | create SPEC... | link SPEC NEW"
			" | tasks PID | zombie | sigio HOW PID | ftruncate SPEC | sockets | device\n");
		return 2;
	}
	return 0;
}
