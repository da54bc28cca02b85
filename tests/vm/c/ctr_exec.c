/*
 * ctr_exec: run a program as a member of a fresh chital container, the way the agent does.
 *
 *   ctr_exec [-r ROOT] [-n NAME] [-C] [-M] [-R] [-S] [-u UID] [-k PATH]... [-w PATH]... [-d NR]...
 *            -- PROG ARGS...
 *
 * Creates container NAME (default ctr-<pid>) rooted at ROOT (default /), forks; the child chroots
 * into ROOT (unless -C or ROOT is /), chdirs to /, and waits on a pipe while the parent adds it
 * with ADD_PROC (the module refuses a self-add; a child blocked in read() cannot race the add with
 * a fork); with -M it is not added (a plain chrooted process, the control case). Then it execs PROG. -k PATH opens PATH
 * (O_PATH) before the chroot and leaves the descriptor open across exec; its number is in
 * $CHITAL_FD0, $CHITAL_FD1, ... -w PATH does the same with O_RDWR (numbered with the -k ones).
 * -d NR adds system call NR to the deny policy, -R sets CHITAL_POLICY_DENY_RAW_SOCKETS. -u UID
 * makes the child drop to UID (gid UID, no supplementary groups) after the chroot. -S prints the
 * container's counters (chital_print_counters()) on stderr once the child is gone. The parent waits,
 * destroys the container (killing leftover members) and exits with the child's status
 * (128+signal when killed).
 */
#define _GNU_SOURCE
#include <grp.h>
#include <signal.h>
#include <sys/wait.h>

#include "chital_user.h"

int main(int argc, char **argv)
{
	const char *root = "/";
	char name[64];
	int chroot_it = 1, member = 1, opt, nkeep = 0, status, fd, rc, counters = 0;
	int ready[2], go[2], keep_flags[8];
	char byte = 0;
	const char *keep[8];
	uint64_t deny[CHITAL_POLICY_WORDS] = { 0 }, policy_flags = 0;
	long uid = -1;
	long id;
	pid_t pid;

	snprintf(name, sizeof(name), "ctr-%d", getpid());
	while ((opt = getopt(argc, argv, "+r:n:CMRSu:k:w:d:")) != -1) {
		switch (opt) {
		case 'r': root = optarg; break;
		case 'n': snprintf(name, sizeof(name), "%s", optarg); break;
		case 'C': chroot_it = 0; break;
		case 'M': member = 0; break;
		case 'R': policy_flags |= CHITAL_POLICY_DENY_RAW_SOCKETS; break;
		case 'S': counters = 1; break;
		case 'u': uid = atol(optarg); break;
		case 'k':
		case 'w':
			if (nkeep < 8) {
				keep_flags[nkeep] = opt == 'k' ? O_PATH : O_RDWR;
				keep[nkeep++] = optarg;
			}
			break;
		case 'd': {
			int nr = atoi(optarg);
			if (nr >= 0 && nr < CHITAL_NR_SYSCALLS)
				deny[nr / 64] |= 1ULL << (nr % 64);
			break;
		}
		default:
			fprintf(stderr, "usage: ctr_exec [-r ROOT] [-n NAME] [-C] [-M] [-R] [-S] [-u UID] [-k PATH] [-w PATH] [-d NR] -- PROG ARGS\n");
			return 112;
		}
	}
	if (optind >= argc)
		return 112;
	fd = chital_open();
	id = chital_create(fd, name, root, deny, policy_flags);
	if (id < 0) {
		fprintf(stderr, "ctr_exec: CREATE %s at %s: %s\n", name, root, strerror((int)-id));
		return 113;
	}
	if (pipe2(ready, O_CLOEXEC) < 0 || pipe2(go, O_CLOEXEC) < 0)
		return 114;
	pid = fork();
	if (pid < 0)
		return 114;
	if (pid == 0) {
		for (int i = 0; i < nkeep; i++) {
			char var[32], val[16];
			int k = open(keep[i], keep_flags[i]);

			if (k < 0) {
				fprintf(stderr, "ctr_exec: open %s: %s\n", keep[i], strerror(errno));
				_exit(115);
			}
			snprintf(var, sizeof(var), "CHITAL_FD%d", i);
			snprintf(val, sizeof(val), "%d", k);
			setenv(var, val, 1);
		}
		if (chroot_it && strcmp(root, "/") != 0) {
			if (chroot(root) < 0) {
				perror("ctr_exec: chroot");
				_exit(116);
			}
		}
		if (chroot_it && chdir("/") < 0)
			_exit(117);
		if (uid >= 0 && (setgroups(0, NULL) < 0 || setgid((gid_t)uid) < 0 ||
				 setuid((uid_t)uid) < 0)) {
			perror("ctr_exec: drop to uid");
			_exit(120);
		}
		close(fd);
		if (write(ready[1], &byte, 1) != 1 || read(go[0], &byte, 1) != 1 || byte != 'g')
			_exit(118);
		execv(argv[optind], argv + optind);
		fprintf(stderr, "ctr_exec: exec %s: %s\n", argv[optind], strerror(errno));
		_exit(119);
	}
	if (read(ready[0], &byte, 1) != 1)
		return 118;
	if (member) {
		rc = chital_add_proc(fd, (uint32_t)id, pid, 0);
		if (rc < 0) {
			fprintf(stderr, "ctr_exec: ADD_PROC %d: %s\n", pid, strerror(-rc));
			kill(pid, SIGKILL);
		}
	}
	byte = 'g';
	if (write(go[1], &byte, 1) != 1)
		kill(pid, SIGKILL);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (counters)
		chital_print_counters(fd, (uint32_t)id);
	rc = chital_destroy(fd, (uint32_t)id, 1);
	if (rc < 0)
		fprintf(stderr, "ctr_exec: DESTROY: %s\n", strerror(-rc));
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return WEXITSTATUS(status);
}
