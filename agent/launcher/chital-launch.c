// SPDX-License-Identifier: Apache-2.0
/*
 * chital-launch: the small program between the chital agent and a container's processes.
 *
 * Started fresh (fork+exec) by the agent for every container and every process, so no
 * interpreter start-up sits on the exec path. The agent never forks itself (gRPC threads run
 * in it); everything that needs a fork without exec happens here.
 *
 *   chital-launch --status-fd N [--go-fd M]     spec on stdin (never on argv: the environment
 *                                               may hold secrets, and argv is world-readable in
 *                                               /proc/<pid>/cmdline)
 *
 * The spec is a list of NUL-terminated "key=value" records (the value runs to the NUL and may
 * contain '='). Keys: mode (holder | exec | plain), root, cwd, hostname, netns (0/1), holder
 * (host pid), cgroup (host path of the group), uid, gid ("none": unchanged, plain mode only),
 * caps (capability bit mask to keep, decimal), deny (system call number, repeated), raw (1: deny
 * raw sockets in the seccomp filter), stdout and stderr (log files, opened for appending),
 * arg (repeated, argv in order), env ("K=V", repeated).
 *
 * Reports on the status fd, one line each (atomic: shorter than PIPE_BUF):
 *   "pid <host pid>"                  the holder / the process, as the agent's pid namespace sees it
 *   "ready"                           holder mode: the namespaces are set up
 *   "err <stage> <errno> <message>"   a stage failed; nothing of the program ran
 * In exec and plain mode the status fd is close-on-exec: EOF without "err" means the program runs.
 *
 * Modes:
 * - holder: one per container. unshare(mount, pid, UTS, IPC and, unless netns=0, network
 *   namespaces), fork so the child is pid 1 of the new pid namespace, and in it: mounts private,
 *   the root bound onto itself, a fresh /proc of the new pid namespace with runc's masked paths,
 *   a minimal /dev on a tmpfs (null, zero, full, random, urandom, tty; a devpts instance of its
 *   own with /dev/ptmx; /dev/shm), the hostname, lo up, pivot_root with the old root detached.
 *   Then it drops every privilege (uid/gid 65534, empty bounding set, not dumpable, no_new_privs)
 *   and reaps orphans until the agent kills it. It never becomes a module member. Its death
 *   kills every process of the pid namespace.
 * - exec: one per process. Join the container's cgroup, enter the holder's namespaces
 *   (setns on the /proc/<holder>/ns files, and its root through /proc/<holder>/root), chdir to cwd,
 *   fork the child into the pid namespace (twice, so that the holder becomes its parent) and report
 *   its pid. The child waits on the go fd while the
 *   agent makes it a member (ADD_PROC through the agent's own handle of the control device:
 *   that device has one owner); meanwhile it drops everything: capability bounding set (all
 *   but the kept ones), ambient/inheritable, groups/gid/uid, no_new_privs, rlimits, inherited
 *   fds, signal dispositions and mask, the seccomp filter last. On "g" it execs. The program's
 *   first instruction runs as a member, fully dropped. The launcher exits once the pid is reported;
 *   the program is reparented to the holder, which reaps it; the module reports its exit.
 * - plain: no isolation (hollow agents with the fake device, on a host): cgroup, chdir to cwd
 *   (a host path), uid/gid if asked, signals and fds reset, execve in place. With "exitfile" the
 *   launcher stays as the program's parent (a shim, as containerd's): it forwards every signal
 *   it can catch to the program, writes the program's wait status to exitfile (atomically, by
 *   rename) when it ends, and then ends the same way. The program dies with it (PDEATHSIG). So
 *   the exit of a program that ends while no agent runs is kept for the next agent, as the
 *   kernel module's event queue keeps it on a real host.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define SPEC_MAX (2u << 20)	/* argv and env are capped at 256 KiB each by the agent */
#define LIST_MAX 8192
#define DENY_MAX 512
#define NOBODY 65534
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_RAISE 2
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif

struct spec {
	const char *mode, *root, *cwd, *hostname, *cgroup, *stdout_path, *stderr_path, *exitfile;
	int netns, raw;
	long holder;
	long uid, gid;		/* -1: unchanged */
	uint64_t caps;
	int ndeny;
	unsigned int deny[DENY_MAX];
	int nargs, nenv;
	char *args[LIST_MAX + 1];
	char *env[LIST_MAX + 2];
};

static int status_fd = -1;

static void report(const char *fmt, ...)
{
	char line[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	if (status_fd >= 0 && write(status_fd, line, n) < 0)
		_exit(126);
}

/* Report a failed stage and exit: nothing of the program has run. */
static void __attribute__((noreturn)) fail(const char *stage, int err, const char *what)
{
	char msg[300];
	size_t i;

	snprintf(msg, sizeof(msg), "%s: %s", what, strerror(err));
	for (i = 0; msg[i]; i++)	/* one line */
		if (msg[i] == '\n')
			msg[i] = ' ';
	report("err %s %d %s", stage, err, msg);
	_exit(127);
}

static long parse_long(const char *s, long lo, long hi, const char *what)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		fail("spec", EINVAL, what);
	return v;
}

/* Parse the NUL-separated records in buf[0..len); every record must end with a NUL. */
static void parse_spec(char *buf, size_t len, struct spec *sp)
{
	size_t off = 0;

	memset(sp, 0, sizeof(*sp));
	sp->uid = sp->gid = -1;
	sp->holder = -1;
	sp->netns = 1;
	if (len && buf[len - 1] != '\0')
		fail("spec", EINVAL, "spec does not end with a NUL");
	while (off < len) {
		char *rec = buf + off, *val = strchr(rec, '=');
		size_t rlen = strlen(rec);

		off += rlen + 1;
		if (!val)
			fail("spec", EINVAL, "record without '='");
		*val++ = '\0';
		if (!strcmp(rec, "mode")) {
			sp->mode = val;
		} else if (!strcmp(rec, "root")) {
			sp->root = val;
		} else if (!strcmp(rec, "cwd")) {
			sp->cwd = val;
		} else if (!strcmp(rec, "hostname")) {
			sp->hostname = val;
		} else if (!strcmp(rec, "cgroup")) {
			sp->cgroup = val;
		} else if (!strcmp(rec, "stdout")) {
			sp->stdout_path = val;
		} else if (!strcmp(rec, "stderr")) {
			sp->stderr_path = val;
		} else if (!strcmp(rec, "exitfile")) {
			sp->exitfile = val;
		} else if (!strcmp(rec, "netns")) {
			sp->netns = parse_long(val, 0, 1, "netns");
		} else if (!strcmp(rec, "raw")) {
			sp->raw = parse_long(val, 0, 1, "raw");
		} else if (!strcmp(rec, "holder")) {
			sp->holder = parse_long(val, 2, INT_MAX, "holder pid");
		} else if (!strcmp(rec, "uid")) {
			sp->uid = strcmp(val, "none") ? parse_long(val, 0, 0xfffffffeL, "uid") : -1;
		} else if (!strcmp(rec, "gid")) {
			sp->gid = strcmp(val, "none") ? parse_long(val, 0, 0xfffffffeL, "gid") : -1;
		} else if (!strcmp(rec, "caps")) {
			char *end;

			errno = 0;
			sp->caps = strtoull(val, &end, 10);
			if (errno || end == val || *end)
				fail("spec", EINVAL, "caps");
		} else if (!strcmp(rec, "deny")) {
			if (sp->ndeny >= DENY_MAX)
				fail("spec", E2BIG, "too many denied system calls");
			sp->deny[sp->ndeny++] = parse_long(val, 0, 1023, "deny");
		} else if (!strcmp(rec, "arg")) {
			if (sp->nargs >= LIST_MAX)
				fail("spec", E2BIG, "too many arguments");
			sp->args[sp->nargs++] = val;
		} else if (!strcmp(rec, "env")) {
			if (sp->nenv >= LIST_MAX)
				fail("spec", E2BIG, "too many environment variables");
			if (!strchr(val, '=') || val[0] == '=')
				fail("spec", EINVAL, "environment entry without a name");
			sp->env[sp->nenv++] = val;
		} else {
			fail("spec", EINVAL, "unknown spec key");
		}
	}
	if (!sp->mode)
		fail("spec", EINVAL, "no mode");
}

static char *read_spec(size_t *len)
{
	size_t cap = 65536, n = 0;
	char *buf = malloc(cap);

	if (!buf)
		fail("spec", ENOMEM, "spec buffer");
	for (;;) {
		ssize_t r;

		if (n == cap) {
			char *more;

			if (cap >= SPEC_MAX)
				fail("spec", E2BIG, "spec larger than 2 MiB");
			cap *= 2;
			more = realloc(buf, cap);
			if (!more)
				fail("spec", ENOMEM, "spec buffer");
			buf = more;
		}
		r = read(0, buf + n, cap - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			fail("spec", errno, "reading the spec");
		if (r == 0)
			break;
		n += r;
	}
	*len = n;
	return buf;
}

/* The program's stdout/stderr: the log files the agent named (opened before entering the root). */
static void open_logs(const struct spec *sp)
{
	const char *paths[2] = { sp->stdout_path, sp->stderr_path };

	for (int i = 0; i < 2; i++) {
		int fd;

		if (!paths[i])
			continue;
		fd = open(paths[i], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
		if (fd < 0)
			fail("logs", errno, paths[i]);
		if (dup2(fd, i + 1) < 0)
			fail("logs", errno, paths[i]);
		close(fd);
	}
}

static void null_stdin(void)
{
	int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		fail("spec", errno, "open /dev/null");
	if (dup2(fd, 0) < 0)
		fail("spec", errno, "dup2 stdin");
	close(fd);
}

/*
 * fork(), the child born in the cgroup `cgroup_fd` (clone3 CLONE_INTO_CGROUP: no migration of a
 * running task, which costs a synchronize_rcu() in the kernel); kernels without it: join, then fork.
 */
static pid_t fork_into_cgroup(int cgroup_fd, const char *group)
{
	struct clone_args args;
	char self[32];
	int fd, n;
	long pid;

	if (cgroup_fd < 0)
		return fork();
	memset(&args, 0, sizeof(args));
	args.flags = CLONE_INTO_CGROUP;
	args.exit_signal = SIGCHLD;
	args.cgroup = cgroup_fd;
	pid = syscall(SYS_clone3, &args, sizeof(args));
	if (pid >= 0 || (errno != ENOSYS && errno != E2BIG && errno != EINVAL))
		return pid;
	/* The cgroupfs is out of sight here (we are in the container's mount namespace): the fd. */
	fd = openat(cgroup_fd, "cgroup.procs", O_WRONLY | O_CLOEXEC);
	n = snprintf(self, sizeof(self), "%d", getpid());
	if (fd < 0 || write(fd, self, n) != n)
		fail("cgroup", errno, group);
	close(fd);
	return fork();
}

static void join_cgroup(const char *group)
{
	char path[PATH_MAX], pid[32];
	int fd, n;

	if (snprintf(path, sizeof(path), "%s/cgroup.procs", group) >= (int)sizeof(path))
		fail("cgroup", ENAMETOOLONG, group);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		fail("cgroup", errno, path);
	n = snprintf(pid, sizeof(pid), "%d", getpid());
	if (write(fd, pid, n) != n)
		fail("cgroup", errno, path);
	close(fd);
}

/* -- signals, fds, limits ------------------------------------------------------------------ */

/* Every disposition back to default and an empty mask: exec keeps "ignored" dispositions and
 * the mask, and whoever started us (Python ignores SIGPIPE and SIGXFSZ) must not leak into the
 * program (`yes | head -n1` must die of SIGPIPE). */
static void reset_signals(void)
{
	unsigned long long ignored = ~0ULL;	/* unknown: reset them all */
	struct {
		void (*handler)(int);
		unsigned long flags;
		void (*restorer)(void);
		uint64_t mask;
	} ksa;
	sigset_t none;
	char buf[4096];
	ssize_t n;
	int fd;

	/* exec resets caught signals by itself; only ignored ones survive it: find them in one read. */
	fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		n = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		if (n > 0) {
			char *line;

			buf[n] = '\0';
			line = strstr(buf, "\nSigIgn:");
			if (line)
				ignored = strtoull(line + 8, NULL, 16);
		}
	}
	/*
	 * The raw system call: glibc's sigaction() refuses its own signals (32, 33), which a
	 * posix_spawn()ing parent leaves ignored. SIG_DFL needs no restorer. EINVAL for SIGKILL and
	 * SIGSTOP: fine.
	 */
	memset(&ksa, 0, sizeof(ksa));
	ksa.handler = SIG_DFL;
	for (int sig = 1; sig < _NSIG && sig <= 64; sig++)
		if (ignored & (1ULL << (sig - 1)))
			syscall(SYS_rt_sigaction, sig, &ksa, NULL, sizeof(ksa.mask));
	sigemptyset(&none);
	if (sigprocmask(SIG_SETMASK, &none, NULL))
		fail("signals", errno, "sigprocmask");
}

/* Close-on-exec for every fd above 2: the status fd must stay open until the exec. */
static void cloexec_fds(void)
{
	if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) == 0)
		return;
	for (int fd = 3; fd < 65536; fd++)
		if (fd != status_fd)
			close(fd);
}

static void set_rlimits(void)
{
	struct rlimit core = { 0, 0 }, nofile;

	if (setrlimit(RLIMIT_CORE, &core))
		fail("rlimits", errno, "RLIMIT_CORE");
	if (getrlimit(RLIMIT_NOFILE, &nofile))
		fail("rlimits", errno, "RLIMIT_NOFILE");
	/* As systemd's defaults: select()-safe soft limit, a generous hard one. */
	if (nofile.rlim_max > 524288)
		nofile.rlim_max = 524288;
	if (nofile.rlim_cur > 1024)
		nofile.rlim_cur = 1024;
	if (setrlimit(RLIMIT_NOFILE, &nofile))
		fail("rlimits", errno, "RLIMIT_NOFILE");
}

/* -- credentials and capabilities ------------------------------------------------------------ */

static void drop_bounding_set(uint64_t keep)
{
	for (int cap = 0; cap < 64; cap++) {
		if (keep & (1ULL << cap))
			continue;
		if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)) {
			if (errno == EINVAL)
				break;	/* past CAP_LAST_CAP */
			fail("capabilities", errno, "PR_CAPBSET_DROP");
		}
	}
}

static void set_caps(uint64_t keep)
{
	struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct data[2];

	memset(data, 0, sizeof(data));
	data[0].effective = data[0].permitted = data[0].inheritable = (uint32_t)keep;
	data[1].effective = data[1].permitted = data[1].inheritable = (uint32_t)(keep >> 32);
	if (syscall(SYS_capset, &hdr, data))
		fail("capabilities", errno, "capset");
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0))
		fail("capabilities", errno, "clearing ambient capabilities");
	/* Ambient, so that a non-root program keeps them across execve (root gets the bounding set). */
	for (int cap = 0; cap < 64; cap++)
		if ((keep & (1ULL << cap)) && prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0))
			fail("capabilities", errno, "raising an ambient capability");
}

/* Bounding set emptied but for `keep`, groups, gid, uid, then exactly `keep` in every set. */
static void drop_privileges(uid_t uid, gid_t gid, uint64_t keep)
{
	drop_bounding_set(keep);
	if (setgroups(0, NULL))
		fail("credentials", errno, "setgroups");
	if (setresgid(gid, gid, gid))
		fail("credentials", errno, "setresgid");
	if (keep && prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0))
		fail("credentials", errno, "PR_SET_KEEPCAPS");
	if (setresuid(uid, uid, uid))
		fail("credentials", errno, "setresuid");
	set_caps(keep);
	if (prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0))
		fail("credentials", errno, "PR_SET_KEEPCAPS");
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		fail("no_new_privs", errno, "PR_SET_NO_NEW_PRIVS");
}

/* -- seccomp --------------------------------------------------------------------------------- */

#define INSNS_MAX (2 * DENY_MAX + 32)
#define ARG_LO(n) (offsetof(struct seccomp_data, args) + 8 * (n))
#define RET_ERRNO(e) (SECCOMP_RET_ERRNO | ((e) & SECCOMP_RET_DATA))

struct bpf_prog {
	int n;
	struct sock_filter insn[INSNS_MAX];
};

static void emit(struct bpf_prog *p, uint16_t code, uint8_t jt, uint8_t jf, uint32_t k)
{
	if (p->n >= INSNS_MAX)
		fail("seccomp", E2BIG, "filter too long");
	p->insn[p->n++] = (struct sock_filter)BPF_JUMP(code, k, jt, jf);
}

/*
 * The second layer under the module, in the spirit of Docker's and containerd's default profile
 * (a deny list here: the list itself is data the agent sends, see chital.agent.policy):
 *   1. anything but a native x86_64 call (int $0x80 and other i386 entries, x32) kills the process;
 *   2. the listed system calls fail with EPERM;
 *   3. clone3() fails with ENOSYS (its flags live in user memory, out of the filter's reach), so
 *      libc falls back to clone(), whose namespace flags the module checks in a register;
 *   4. raw: socket() of AF_PACKET or of type SOCK_RAW fails with EPERM.
 * What the module denies itself is not listed: seccomp runs before the module's tracepoint, and
 * the module counts every denial it makes.
 */
static void install_seccomp(const struct spec *sp)
{
	static struct bpf_prog p;
	struct sock_fprog prog;

	p.n = 0;
	emit(&p, BPF_LD | BPF_W | BPF_ABS, 0, 0, offsetof(struct seccomp_data, arch));
	emit(&p, BPF_JMP | BPF_JEQ | BPF_K, 1, 0, AUDIT_ARCH_X86_64);
	emit(&p, BPF_RET | BPF_K, 0, 0, SECCOMP_RET_KILL_PROCESS);
	emit(&p, BPF_LD | BPF_W | BPF_ABS, 0, 0, offsetof(struct seccomp_data, nr));
	emit(&p, BPF_JMP | BPF_JGE | BPF_K, 0, 1, 0x40000000);	/* __X32_SYSCALL_BIT */
	emit(&p, BPF_RET | BPF_K, 0, 0, SECCOMP_RET_KILL_PROCESS);
	for (int i = 0; i < sp->ndeny; i++) {
		emit(&p, BPF_JMP | BPF_JEQ | BPF_K, 0, 1, sp->deny[i]);
		emit(&p, BPF_RET | BPF_K, 0, 0, RET_ERRNO(EPERM));
	}
	emit(&p, BPF_JMP | BPF_JEQ | BPF_K, 0, 1, SYS_clone3);
	emit(&p, BPF_RET | BPF_K, 0, 0, RET_ERRNO(ENOSYS));
	if (sp->raw) {
		emit(&p, BPF_JMP | BPF_JEQ | BPF_K, 0, 6, SYS_socket);
		emit(&p, BPF_LD | BPF_W | BPF_ABS, 0, 0, ARG_LO(0));
		emit(&p, BPF_JMP | BPF_JEQ | BPF_K, 3, 0, AF_PACKET);
		emit(&p, BPF_LD | BPF_W | BPF_ABS, 0, 0, ARG_LO(1));
		emit(&p, BPF_ALU | BPF_AND | BPF_K, 0, 0, 0xf);	/* SOCK_TYPE_MASK */
		emit(&p, BPF_JMP | BPF_JEQ | BPF_K, 0, 1, SOCK_RAW);
		emit(&p, BPF_RET | BPF_K, 0, 0, RET_ERRNO(EPERM));
	}
	emit(&p, BPF_RET | BPF_K, 0, 0, SECCOMP_RET_ALLOW);
	prog.len = p.n;
	prog.filter = p.insn;
	if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog))
		fail("seccomp", errno, "installing the filter");
}

/* -- exec ------------------------------------------------------------------------------------ */

/* execvpe with the program's own PATH (glibc's would search ours). */
static void __attribute__((noreturn)) exec_program(struct spec *sp)
{
	const char *path = DEFAULT_PATH, *file = sp->args[0];
	char full[PATH_MAX];
	int saw_eacces = 0, err;

	for (int i = 0; i < sp->nenv; i++)
		if (!strncmp(sp->env[i], "PATH=", 5))
			path = sp->env[i] + 5;
	if (strchr(file, '/')) {
		execve(file, sp->args, sp->env);
		fail("exec", errno, file);
	}
	for (;;) {
		const char *colon = strchr(path, ':');
		size_t dlen = colon ? (size_t)(colon - path) : strlen(path);

		if (dlen + strlen(file) + 2 <= sizeof(full)) {
			if (dlen == 0)	/* an empty entry is the working directory */
				snprintf(full, sizeof(full), "%s", file);
			else
				snprintf(full, sizeof(full), "%.*s/%s", (int)dlen, path, file);
			execve(full, sp->args, sp->env);
			err = errno;
			if (err == EACCES)
				saw_eacces = 1;
			else if (err != ENOENT && err != ENOTDIR && err != ENAMETOOLONG)
				fail("exec", err, file);
		}
		if (!colon)
			break;
		path = colon + 1;
	}
	fail("exec", saw_eacces ? EACCES : ENOENT, file);
}

static void add_default_path(struct spec *sp)
{
	static char default_path[] = "PATH=" DEFAULT_PATH;

	for (int i = 0; i < sp->nenv; i++)
		if (!strncmp(sp->env[i], "PATH=", 5))
			return;
	sp->env[sp->nenv++] = default_path;
}

/* -- holder: the container's namespaces ------------------------------------------------------- */

static void must_mount(const char *src, const char *dst, const char *type, unsigned long flags,
		       const char *data)
{
	if (mount(src, dst, type, flags, data))
		fail("mounts", errno, dst);
}

static void ensure_dir(const char *path, mode_t mode)
{
	if (mkdir(path, mode) && errno != EEXIST)
		fail("mounts", errno, path);
}

/* runc's masked and read-only paths of /proc: kernel memory, keys, triggers and tunables. */
static void mask_proc(void)
{
	static const char *const masked_files[] = {
		"proc/kcore", "proc/keys", "proc/latency_stats", "proc/timer_list",
		"proc/sched_debug", "proc/kallsyms", "proc/sysrq-trigger", NULL,
	};
	static const char *const masked_dirs[] = { "proc/acpi", "proc/scsi", NULL };
	static const char *const readonly[] = {
		"proc/bus", "proc/fs", "proc/irq", "proc/sys", NULL,
	};

	for (int i = 0; masked_files[i]; i++)
		if (mount("/dev/null", masked_files[i], NULL, MS_BIND, NULL) && errno != ENOENT)
			fail("mounts", errno, masked_files[i]);
	for (int i = 0; masked_dirs[i]; i++)
		if (mount("tmpfs", masked_dirs[i], "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
			  "size=0") && errno != ENOENT)
			fail("mounts", errno, masked_dirs[i]);
	for (int i = 0; readonly[i]; i++) {
		if (mount(readonly[i], readonly[i], NULL, MS_BIND | MS_REC, NULL)) {
			if (errno == ENOENT)
				continue;
			fail("mounts", errno, readonly[i]);
		}
		must_mount(NULL, readonly[i], NULL,
			   MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	}
}

/* A /dev of our own: made here, so members never need mknod. */
static void make_dev(void)
{
	static const struct {
		const char *name;
		unsigned int major, minor;
	} nodes[] = {
		{ "dev/null", 1, 3 }, { "dev/zero", 1, 5 }, { "dev/full", 1, 7 },
		{ "dev/random", 1, 8 }, { "dev/urandom", 1, 9 }, { "dev/tty", 5, 0 },
	};
	static const char *const links[][2] = {
		{ "pts/ptmx", "dev/ptmx" }, { "/proc/self/fd", "dev/fd" },
		{ "/proc/self/fd/0", "dev/stdin" }, { "/proc/self/fd/1", "dev/stdout" },
		{ "/proc/self/fd/2", "dev/stderr" },
	};

	must_mount("tmpfs", "dev", "tmpfs", MS_NOSUID | MS_NOEXEC | MS_STRICTATIME, "mode=755,size=1m");
	for (size_t i = 0; i < sizeof(nodes) / sizeof(nodes[0]); i++) {
		char host[64];

		if (mknod(nodes[i].name, S_IFCHR | 0666, makedev(nodes[i].major, nodes[i].minor)) == 0) {
			if (chmod(nodes[i].name, 0666))	/* past the umask */
				fail("mounts", errno, nodes[i].name);
			continue;
		}
		/* No mknod here (a user namespace): bind the host's node instead. */
		snprintf(host, sizeof(host), "/%s", nodes[i].name);
		if (mknod(nodes[i].name, S_IFREG | 0666, 0) && errno != EEXIST)
			fail("mounts", errno, nodes[i].name);
		must_mount(host, nodes[i].name, NULL, MS_BIND, NULL);
	}
	ensure_dir("dev/pts", 0755);
	must_mount("devpts", "dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
		   "newinstance,ptmxmode=0666,mode=0620");
	ensure_dir("dev/shm", 01777);
	must_mount("shm", "dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=64m");
	for (size_t i = 0; i < sizeof(links) / sizeof(links[0]); i++)
		if (symlink(links[i][0], links[i][1]) && errno != EEXIST)
			fail("mounts", errno, links[i][1]);
}

static void loopback_up(void)
{
	struct ifreq ifr;
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		fail("network", errno, "socket");
	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, "lo");
	if (ioctl(fd, SIOCGIFFLAGS, &ifr))
		fail("network", errno, "SIOCGIFFLAGS lo");
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	if (ioctl(fd, SIOCSIFFLAGS, &ifr))
		fail("network", errno, "SIOCSIFFLAGS lo");
	close(fd);
}

/* mount_setattr(2) (5.12+); glibc's <sys/mount.h> and <linux/mount.h> do not mix. */
struct launch_mount_attr {
	uint64_t attr_set, attr_clr, propagation, userns_fd;
};
#define LAUNCH_MOUNT_ATTR_NOSUID 0x00000002
#define LAUNCH_MOUNT_ATTR_NODEV 0x00000004
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif

static void setup_root(const struct spec *sp)
{
	/*
	 * Device nodes and setuid bits anywhere in the root tree (a root directory may hold nodes:
	 * an unpacked image, or a careless root such as the host's /dev) are inert: root in the
	 * container passes the permission checks of root-owned nodes without any capability. The
	 * container's /dev is a tmpfs of its own, mounted afterwards with the nodes it needs.
	 */
	struct launch_mount_attr inert = {
		.attr_set = LAUNCH_MOUNT_ATTR_NODEV | LAUNCH_MOUNT_ATTR_NOSUID,
	};

	if (!sp->root || sp->root[0] != '/')
		fail("spec", EINVAL, "holder needs an absolute root");
	must_mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
	must_mount(sp->root, sp->root, NULL, MS_BIND | MS_REC, NULL);
	if (syscall(SYS_mount_setattr, AT_FDCWD, sp->root, AT_RECURSIVE, &inert, sizeof(inert)))
		fail("mounts", errno, "nodev,nosuid on the root");
	if (chdir(sp->root))
		fail("mounts", errno, sp->root);
	ensure_dir("proc", 0555);
	ensure_dir("dev", 0755);
	must_mount("proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	make_dev();		/* before mask_proc: it binds dev/null */
	if (chdir("proc/.."))	/* keep cwd at the root */
		fail("mounts", errno, "root");
	mask_proc();
	if (sp->hostname && sethostname(sp->hostname, strlen(sp->hostname)))
		fail("hostname", errno, "sethostname");
	if (sp->netns)
		loopback_up();
	/* pivot_root(".", "."): the old root is stacked on the new one, then detached. */
	if (syscall(SYS_pivot_root, ".", "."))
		fail("pivot_root", errno, "pivot_root");
	if (umount2(".", MNT_DETACH))
		fail("pivot_root", errno, "detaching the old root");
	if (chdir("/"))
		fail("pivot_root", errno, "chdir /");
}

/* pid 1 of the container: reap orphans until killed (only a signal from outside can). */
static void __attribute__((noreturn)) holder_loop(void)
{
	sigset_t all;

	sigfillset(&all);
	sigprocmask(SIG_SETMASK, &all, NULL);
	for (;;) {
		siginfo_t info;

		if (sigwaitinfo(&all, &info) == SIGCHLD)
			while (waitpid(-1, NULL, WNOHANG) > 0)
				;
	}
}

static int run_holder(struct spec *sp)
{
	int flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC;
	pid_t pid;

	if (sp->netns)
		flags |= CLONE_NEWNET;
	if (unshare(flags))
		fail("namespaces", errno, "unshare");
	pid = fork();
	if (pid < 0)
		fail("namespaces", errno, "fork");
	if (pid > 0) {
		report("pid %d", pid);
		return 0;	/* the holder is reparented; the agent follows it by pid + start time */
	}
	if (setsid() < 0)
		fail("namespaces", errno, "setsid");
	setup_root(sp);
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0))	/* members (same uid) cannot reach /proc/1/... */
		fail("credentials", errno, "PR_SET_DUMPABLE");
	drop_privileges(NOBODY, NOBODY, 0);
	null_stdin();
	if (dup2(0, 1) < 0 || dup2(0, 2) < 0)
		fail("spec", errno, "dup2");
	for (int fd = 3; fd < status_fd; fd++)
		close(fd);
	if (syscall(SYS_close_range, status_fd + 1, ~0U, 0))
		for (int fd = status_fd + 1; fd < 65536; fd++)
			close(fd);
	report("ready");
	close(status_fd);
	status_fd = -1;
	holder_loop();
}

/* -- exec: one process in the holder's namespaces --------------------------------------------- */

static int open_ns(long holder, const char *name)
{
	char path[64];
	int fd;

	snprintf(path, sizeof(path), "/proc/%ld/%s", holder, name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		fail("namespaces", errno == ENOENT ? ESRCH : errno, path);
	return fd;
}

static void wait_for_go(int go_fd)
{
	char c = 0;
	ssize_t r;

	do
		r = read(go_fd, &c, 1);
	while (r < 0 && errno == EINTR);
	if (r != 1 || c != 'g')
		_exit(125);	/* the agent gave up on us (or died): nothing runs */
	close(go_fd);
}

/*
 * The program's host pid, sent by the program itself: with SO_PASSCRED on our end the kernel
 * attaches the sender's credentials, its pid translated into our (the host's) pid namespace.
 * Returns -1 when the sender died without a word (its error, if any, is on the status fd).
 */
static pid_t receive_pid(int sock)
{
	union {
		struct cmsghdr hdr;
		char buf[CMSG_SPACE(sizeof(struct ucred))];
	} control;
	struct msghdr msg;
	struct iovec iov;
	struct cmsghdr *cmsg;
	struct ucred cred;
	char byte;
	ssize_t n;

	memset(&msg, 0, sizeof(msg));
	iov.iov_base = &byte;
	iov.iov_len = 1;
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	msg.msg_control = control.buf;
	msg.msg_controllen = sizeof(control.buf);
	do
		n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n != 1)
		return -1;
	for (cmsg = CMSG_FIRSTHDR(&msg); cmsg; cmsg = CMSG_NXTHDR(&msg, cmsg))
		if (cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_CREDENTIALS) {
			memcpy(&cred, CMSG_DATA(cmsg), sizeof(cred));
			return cred.pid;
		}
	return -1;
}

/*
 * Fork twice inside the pid namespace, so that the program's parent is a process of the
 * namespace that exits at once: the program is then reparented to the namespace's init (the
 * holder), which reaps it, and sees its parent as pid 1, as in any container. A child of ours
 * would be reparented to the host's init instead (we live in the host's pid namespace; orphans go
 * to the reaper of their dead parent's namespace). Returns the program's host pid in the launcher
 * and 0 in the program.
 */
static pid_t fork_program(int cgroup_fd, const char *group)
{
	static const int one = 1;
	pid_t mid, pid;
	int sv[2], status;

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv))
		fail("fork", errno, "socketpair");
	if (setsockopt(sv[0], SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)))
		fail("fork", errno, "SO_PASSCRED");
	mid = fork_into_cgroup(cgroup_fd, group);	/* born in the pid namespace and the cgroup */
	if (mid < 0)
		fail("fork", errno, "fork");
	if (mid > 0) {
		close(sv[1]);
		pid = receive_pid(sv[0]);
		close(sv[0]);
		while (waitpid(mid, &status, 0) < 0 && errno == EINTR)
			;
		if (pid <= 0)
			fail("fork", ECHILD, "the process died before it started");
		return pid;
	}
	close(sv[0]);
	pid = fork();
	if (pid < 0)
		fail("fork", errno, "fork");
	if (pid > 0)
		_exit(0);
	if (send(sv[1], "p", 1, MSG_NOSIGNAL) != 1)
		fail("fork", errno, "reporting the pid");
	close(sv[1]);
	return 0;
}

static int run_exec(struct spec *sp, int go_fd)
{
	static const char *const names[] = { "ns/ipc", "ns/uts", "ns/net", "ns/pid", "ns/mnt" };
	int fds[5], root_fd, cgroup_fd = -1;
	pid_t pid;

	if (sp->holder < 0 || go_fd < 0 || !sp->cwd)
		fail("spec", EINVAL, "exec mode needs holder, cwd and --go-fd");
	if (sp->uid < 0 || sp->gid < 0)
		fail("spec", EINVAL, "exec mode needs uid and gid");
	for (int i = 0; i < 5; i++)
		fds[i] = open_ns(sp->holder, names[i]);
	root_fd = open_ns(sp->holder, "root");
	if (sp->cgroup) {	/* first: the cgroupfs is not visible from inside */
		cgroup_fd = open(sp->cgroup, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (cgroup_fd < 0)
			fail("cgroup", errno, sp->cgroup);
	}
	for (int i = 0; i < 5; i++) {
		if (setns(fds[i], 0))
			fail("namespaces", errno, names[i]);
		close(fds[i]);
	}
	/* setns(mnt) leaves us at the namespace's first mount; the holder's root is the container's. */
	if (fchdir(root_fd) || chroot("."))
		fail("namespaces", errno, "entering the holder's root");
	close(root_fd);
	if (chdir(sp->cwd))
		fail("chdir", errno, sp->cwd);
	pid = fork_program(cgroup_fd, sp->cgroup);
	if (pid > 0) {
		report("pid %d", pid);
		return 0;	/* the child reports its own errors; the holder reaps it */
	}
	if (setsid() < 0)
		fail("setsid", errno, "setsid");
	/*
	 * Everything is dropped while the agent makes us a member (in parallel, and none of this is
	 * counted as the container's system calls); after "go" only read, close and execve remain,
	 * all allowed by the filter. A non-root child is not dumpable from here on (the kernel's rule
	 * for a changed uid), and members cannot touch a non-member: nothing in the container can
	 * reach it while it waits.
	 */
	drop_privileges(sp->uid, sp->gid, sp->caps);
	set_rlimits();
	cloexec_fds();
	reset_signals();
	install_seccomp(sp);
	wait_for_go(go_fd);
	exec_program(sp);
}

static volatile pid_t shim_child;

static void shim_forward(int sig)
{
	int saved = errno;

	if (shim_child > 0)
		kill(shim_child, sig);
	errno = saved;
}

static void shim_write_status(const char *path, int status)
{
	char tmp[PATH_MAX], line[32];
	int fd, n;

	n = snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	if (n < 0 || n >= (int)sizeof(tmp))
		return;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return;
	n = snprintf(line, sizeof(line), "%d\n", status);
	if (write(fd, line, n) != n || fsync(fd)) {
		close(fd);
		unlink(tmp);
		return;
	}
	close(fd);
	if (rename(tmp, path))
		unlink(tmp);
}

/*
 * Fork the program; in the parent, forward signals, wait, record the status and end as the
 * program did. Returns only in the child.
 */
static void run_shim(struct spec *sp)
{
	struct rlimit no_core = { 0, 0 };
	struct sigaction sa;
	pid_t parent = getpid(), pid;
	int status, sig;

	pid = fork();
	if (pid < 0)
		fail("fork", errno, "shim");
	if (pid == 0) {
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) || getppid() != parent)
			_exit(127);
		return;
	}
	shim_child = pid;
	/* The child reports start errors; the status pipe must see EOF when it execs. */
	close(status_fd);
	status_fd = -1;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = shim_forward;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	for (sig = 1; sig < NSIG; sig++) {
		if (sig == SIGKILL || sig == SIGSTOP || sig == SIGCHLD)
			continue;
		sigaction(sig, &sa, NULL);	/* fails for the C library's reserved signals: fine */
	}
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR)
			_exit(126);
	}
	shim_write_status(sp->exitfile, status);
	if (WIFEXITED(status))
		_exit(WEXITSTATUS(status));
	sig = WTERMSIG(status);
	setrlimit(RLIMIT_CORE, &no_core);
	signal(sig, SIG_DFL);
	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, sig);
	sigprocmask(SIG_UNBLOCK, &sa.sa_mask, NULL);
	raise(sig);
	_exit(128 + sig);
}

static int run_plain(struct spec *sp)
{
	if (sp->exitfile)
		run_shim(sp);
	if (sp->cgroup)
		join_cgroup(sp->cgroup);
	if (sp->cwd && chdir(sp->cwd))
		fail("chdir", errno, sp->cwd);
	if (sp->gid >= 0) {
		if (setgroups(0, NULL) || setresgid(sp->gid, sp->gid, sp->gid))
			fail("credentials", errno, "gid");
	}
	if (sp->uid >= 0 && setresuid(sp->uid, sp->uid, sp->uid))
		fail("credentials", errno, "uid");
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		fail("no_new_privs", errno, "PR_SET_NO_NEW_PRIVS");
	cloexec_fds();
	reset_signals();
	exec_program(sp);
}

int main(int argc, char **argv)
{
	int go_fd = -1;
	struct spec *sp;
	size_t len;
	char *buf;

	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--status-fd"))
			status_fd = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--go-fd"))
			go_fd = atoi(argv[i + 1]);
	}
	if (status_fd < 3 || fcntl(status_fd, F_SETFD, FD_CLOEXEC)) {
		fprintf(stderr, "usage: chital-launch --status-fd N [--go-fd M]  (spec on stdin)\n");
		return 2;
	}
	if (go_fd >= 0 && fcntl(go_fd, F_SETFD, FD_CLOEXEC))
		fail("spec", errno, "--go-fd");
	sp = calloc(1, sizeof(*sp));
	if (!sp)
		fail("spec", ENOMEM, "spec");
	buf = read_spec(&len);
	parse_spec(buf, len, sp);
	null_stdin();		/* the spec came on stdin; the program gets /dev/null */
	open_logs(sp);
	if (!strcmp(sp->mode, "holder"))
		return run_holder(sp);
	if (sp->nargs == 0 || !sp->args[0][0])
		fail("spec", EINVAL, "no program");
	add_default_path(sp);
	if (!strcmp(sp->mode, "exec"))
		return run_exec(sp, go_fd);
	if (!strcmp(sp->mode, "plain"))
		return run_plain(sp);
	fail("spec", EINVAL, "unknown mode");
}
