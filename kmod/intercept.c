// SPDX-License-Identifier: GPL-2.0
/*
 * chital: interception of member tasks.
 *
 *  - tracepoints (not exported, found with for_each_kernel_tracepoint()):
 *    sched_process_fork extends membership, sched_process_exit ends it,
 *    raw_syscalls:sys_enter counts and denies members' system calls (a
 *    denied call gets orig_ax = -1, so the kernel skips it, and ax = -EPERM);
 *  - ftrace hooks on security_* functions confine members' file opens and
 *    path operations to the container root and keep members away from
 *    other tasks (ptrace, signals, priority, scheduling): the hook sends
 *    the call to a stub that returns the error;
 *  - a hook on __f_setown() keeps members from aiming SIGIO/SIGURG at
 *    other tasks.
 * Every denial, by the probe or by a hook, is counted for the container and
 * the system call in progress and queued as a DENIED event.
 *
 * Non-members pay one atomic read in each probe while no container has
 * members, and a hash lookup otherwise.
 */
#include <linux/fcntl.h>
#include <linux/ftrace.h>
#include <linux/ioprio.h>
#include <linux/namei.h>
#include <linux/net.h>
#include <linux/ptrace.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/socket.h>
#include <linux/syscalls.h>
#include <linux/tracepoint.h>
#include <linux/umh.h>
#include <asm/syscall.h>
#include <asm/unistd.h>

#include "chital_internal.h"

#define CHITAL_CLONE_NS_FLAGS	(CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | \
				 CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | \
				 CLONE_NEWNET | CLONE_NEWTIME)

/*
 * What a verdict below answers for a system call it does not look at. The
 * probe never sees it: chital_checked_init() asks each verdict about every
 * system call number once, with all-zero arguments, and the probe asks the
 * verdicts only about the numbers they look at (chital_checked), so that
 * the case lists below are the only lists of checked calls.
 */
#define CHITAL_UNCHECKED	1

/*
 * Containment: the system calls no member may make, whatever its policy.
 * Keep in sync with the list in include/uapi/linux/chital.h.
 */
static long chital_containment_verdict(struct pt_regs *regs, long nr)
{
	switch (nr) {
	case __NR_chroot:
	case __NR_pivot_root:
	case __NR_mount:
	case __NR_umount2:
	case __NR_fsopen:
	case __NR_fsconfig:
	case __NR_fsmount:
	case __NR_fspick:
	case __NR_open_tree:
	case __NR_move_mount:
	case __NR_mount_setattr:
	case __NR_setns:
	case __NR_init_module:
	case __NR_finit_module:
	case __NR_delete_module:
	case __NR_kexec_load:
	case __NR_kexec_file_load:
	case __NR_reboot:
	case __NR_io_uring_setup:
	case __NR_open_by_handle_at:
	case __NR_bpf:
	case __NR_perf_event_open:
		return -EPERM;
	case __NR_unshare:
	case __NR_clone:
		/* The flags come from the saved registers: no race with user space. */
		return regs->di & CHITAL_CLONE_NS_FLAGS ? -EPERM : 0;
	case __NR_clone3:
		/*
		 * Its flags live in user memory, where they can change after a
		 * check. Answer as a kernel without clone3 would (ENOSYS), so
		 * that libc falls back to clone.
		 */
		return -ENOSYS;
	}
	return CHITAL_UNCHECKED;
}

static void chital_deny(struct pt_regs *regs, long err)
{
	regs->orig_ax = -1;
	regs->ax = err;
}

/*
 * Whether task @p counts as inside container @c for a member of @c.
 * A task that has exited is no longer in the member table, yet Linux lets
 * a process signal (and wait for) its own exited, unreaped children, and
 * subprocess libraries rely on it; a thread group whose leader exited
 * first is still a live process. So an exited task is inside if its parent
 * or a thread of its group is a member of @c.
 * Caller holds rcu_read_lock() (or runs with preemption disabled).
 */
static bool chital_task_inside(struct chital_container *c,
			       struct task_struct *p)
{
	struct task_struct *t;

	if (chital_member_container(p) == c)
		return true;
	if (!READ_ONCE(p->exit_state))
		return false;
	if (chital_member_container(rcu_dereference(p->real_parent)) == c)
		return true;
	for_each_thread(p, t)
		if (chital_member_container(t) == c)
			return true;
	return false;
}

/*
 * Whether every task that @pid names as @type is inside @c (a pid without
 * tasks names nobody, which is harmless).
 */
static bool chital_pid_inside(struct chital_container *c, struct pid *pid,
			      enum pid_type type)
{
	struct task_struct *p;
	bool inside = true;

	rcu_read_lock();
	if (type <= PIDTYPE_TGID) {
		p = pid_task(pid, PIDTYPE_PID);
		inside = !p || chital_task_inside(c, p);
		goto out_unlock;
	}
	do_each_pid_task(pid, type, p) {
		if (!chital_task_inside(c, p)) {
			inside = false;
			goto out_unlock;
		}
	} while_each_pid_task(pid, type, p);
out_unlock:
	rcu_read_unlock();
	return inside;
}

/*
 * Whether the number @nr (a process, a thread, or with @type PIDTYPE_PGID a
 * process group, in the caller's pid namespace) names only tasks inside @c.
 * A number that names nothing is left to the system call to refuse.
 */
static bool chital_vpid_inside(struct chital_container *c, pid_t nr,
			       enum pid_type type)
{
	struct pid *pid;
	bool inside;

	rcu_read_lock();
	pid = find_vpid(nr);
	inside = !pid || chital_pid_inside(c, pid, type);
	rcu_read_unlock();
	return inside;
}

/*
 * fcntl(fd, F_SETOWN, who): the owner receives SIGIO (any signal, with
 * F_SETSIG) and SIGURG from the file, sent by the kernel and so never
 * through security_task_kill. who is in a register, so it is checked here
 * without a race: a process outside answers -ESRCH (as if it did not
 * exist), a process group with a task outside -EPERM. The other ways to
 * choose an owner (F_SETOWN_EX, and the FIOSETOWN and SIOCSPGRP ioctls) pass
 * it through user memory; they are caught, with the pid already resolved,
 * by the __f_setown() hook, which this check also backs.
 */
static long chital_setown_verdict(struct chital_container *c, int who)
{
	if (who > 0 && !chital_vpid_inside(c, who, PIDTYPE_TGID))
		return -ESRCH;
	if (who < 0 && who != INT_MIN && !chital_vpid_inside(c, -who, PIDTYPE_PGID))
		return -EPERM;
	return 0;
}

/*
 * Checks of system call arguments that live in registers (so no race with
 * user space), for calls whose kernel hooks cannot tell the error apart or
 * see too little:
 *  - kill(pid > 0), tkill(tid), tgkill(tgid, tid), rt_sigqueueinfo(pid),
 *    rt_tgsigqueueinfo(tgid, tid): a task outside answers -ESRCH, as if it
 *    did not exist. The security_task_kill hook cannot say so: kill_pid_info()
 *    retries for ever while the permission check answers -ESRCH (it takes it
 *    for a race with exec), so the hook answers -EPERM, for the signals it
 *    alone sees (pidfd_send_signal, process groups, kill(-1)) and in case a
 *    pid is reused between this check and the call;
 *  - the calls on another task by pid (ptrace, process_vm_readv/writev,
 *    kcmp, priority, scheduling, ioprio, session and group, page migration,
 *    pidfd_open): a task outside answers -ESRCH
 *    here, before the kernel's own permission checks, which answer -EPERM
 *    for a task of another user and so would tell that it exists (their
 *    security hooks, below, run after those checks); prlimit64's hook gets
 *    only credentials, getpriority has none;
 *  - fcntl(F_SETOWN): see chital_setown_verdict();
 *  - socket()/socketpair() under CHITAL_POLICY_DENY_RAW_SOCKETS: AF_PACKET,
 *    SOCK_RAW in any family, and SOCK_PACKET (which AF_INET turns into a
 *    packet socket) see and forge traffic of the whole host.
 */
/* A pid argument (a register value, truncated to pid_t as the kernel does). */
static long chital_pid_verdict(struct chital_container *c, unsigned long reg)
{
	pid_t pid = (pid_t)reg;

	return pid > 0 && !chital_vpid_inside(c, pid, PIDTYPE_PID) ? -ESRCH : 0;
}

static long chital_raw_socket_verdict(struct pt_regs *regs,
				      struct chital_container *c)
{
	int type = (int)regs->si & SOCK_TYPE_MASK;

	/* The arguments first: chital_checked_init() passes no container. */
	if ((int)regs->di != AF_PACKET && type != SOCK_RAW && type != SOCK_PACKET)
		return 0;
	return READ_ONCE(c->policy_flags) & CHITAL_POLICY_DENY_RAW_SOCKETS ? -EPERM : 0;
}

static long chital_argument_verdict(struct pt_regs *regs, long nr,
				    struct chital_container *c)
{
	switch (nr) {
	case __NR_kill:
	case __NR_rt_sigqueueinfo:
	case __NR_tkill:
	case __NR_prlimit64:
	case __NR_sched_setaffinity:
	case __NR_sched_getaffinity:
	case __NR_sched_setscheduler:
	case __NR_sched_getscheduler:
	case __NR_sched_setparam:
	case __NR_sched_getparam:
	case __NR_sched_setattr:
	case __NR_sched_getattr:
	case __NR_sched_rr_get_interval:
	case __NR_getsid:
	case __NR_getpgid:
	case __NR_migrate_pages:
	case __NR_move_pages:
	case __NR_pidfd_open:
	case __NR_process_vm_readv:
	case __NR_process_vm_writev:
		return chital_pid_verdict(c, regs->di);
	case __NR_tgkill:
	case __NR_rt_tgsigqueueinfo:
		return chital_pid_verdict(c, regs->si);	/* the thread */
	case __NR_kcmp:
		return chital_pid_verdict(c, regs->di) ?: chital_pid_verdict(c, regs->si);
	case __NR_ptrace:
		/* PTRACE_TRACEME names no task: the traceme hook checks the parent. */
		return regs->di == PTRACE_TRACEME ? 0 : chital_pid_verdict(c, regs->si);
	case __NR_getpriority:
	case __NR_setpriority:
		return (int)regs->di == PRIO_PROCESS ? chital_pid_verdict(c, regs->si) : 0;
	case __NR_ioprio_get:
	case __NR_ioprio_set:
		return (int)regs->di == IOPRIO_WHO_PROCESS ? chital_pid_verdict(c, regs->si) : 0;
	case __NR_fcntl:
		if ((unsigned int)regs->si == F_SETOWN)
			return chital_setown_verdict(c, (int)regs->dx);
		return 0;
	case __NR_socket:
	case __NR_socketpair:
		return chital_raw_socket_verdict(regs, c);
	}
	return CHITAL_UNCHECKED;
}

/* The system calls that either verdict above looks at. */
static DECLARE_BITMAP(chital_checked, CHITAL_NR_SYSCALLS) __read_mostly;

static void chital_checked_init(void)
{
	/*
	 * All-zero arguments take no verdict past its argument tests: no pid
	 * (0) is looked up, no socket is raw, no container is read.
	 */
	struct pt_regs regs = {};
	long nr;

	for (nr = 0; nr < CHITAL_NR_SYSCALLS; nr++)
		if (chital_containment_verdict(&regs, nr) != CHITAL_UNCHECKED ||
		    chital_argument_verdict(&regs, nr, NULL) != CHITAL_UNCHECKED)
			__set_bit(nr, chital_checked);
}

/*
 * The verdict on a member's call @nr (in range) of container @c: containment,
 * then the container's deny policy, then the arguments.
 */
static long chital_verdict(struct pt_regs *regs, long nr,
			   struct chital_container *c)
{
	long err = chital_containment_verdict(regs, nr);

	if (err != CHITAL_UNCHECKED && err)
		return err;
	if (test_bit(nr, c->deny))
		return -EPERM;
	err = chital_argument_verdict(regs, nr, c);
	return err == CHITAL_UNCHECKED ? 0 : err;
}

/* Self-test of the orig_ax = -1 denial, see chital_selftest(). */
enum { SELFTEST_IDLE, SELFTEST_ARMED, SELFTEST_DENIED, SELFTEST_RAN };
static struct task_struct *chital_selftest_task;
static int chital_selftest_state;
#define CHITAL_SELFTEST_ERR	(-EHWPOISON)

static void chital_probe_sys_enter(void *data, struct pt_regs *regs, long id)
{
	struct chital_container *c;
	struct chital_member *m;
	long err;
	u32 nr;

	if (unlikely(READ_ONCE(chital_selftest_task) == current)) {
		if (chital_selftest_state == SELFTEST_IDLE) {
			chital_deny(regs, CHITAL_SELFTEST_ERR);
			chital_selftest_state = SELFTEST_ARMED;
		}
		return;
	}
	m = chital_member_of(current);
	if (likely(!m))
		return;
	c = m->container;
	m->denial_counted = false;
	if (unlikely(in_ia32_syscall())) {
		atomic64_inc(&c->other_calls);
		nr = (u32)id | CHITAL_COMPAT_SYSCALL;
		err = -EPERM;
	} else if (unlikely(id < 0 || id >= CHITAL_NR_SYSCALLS)) {
		atomic64_inc(&c->other_calls);
		nr = (u32)id;
		err = -EPERM;
	} else {
		nr = id;
		/*
		 * The path of most calls: one counter and two bit tests. Every
		 * cycle here is paid by every system call of every member.
		 */
		atomic64_inc(&c->calls[nr]);
		if (likely(!test_bit(nr, chital_checked) && !test_bit(nr, c->deny)))
			return;
		err = chital_verdict(regs, id, c);
		if (err == -ENOSYS) {
			chital_deny(regs, err);
			return;
		}
		if (err)
			atomic64_inc(&c->denied[nr]);
	}
	if (!err)
		return;
	chital_deny(regs, err);
	atomic64_inc(&c->denied_total);
	chital_queue_denied(c->id, task_tgid_nr(current), nr);
}

static void chital_probe_sys_exit(void *data, struct pt_regs *regs, long ret)
{
	if (READ_ONCE(chital_selftest_task) != current ||
	    chital_selftest_state != SELFTEST_ARMED)
		return;
	chital_selftest_state = ret == CHITAL_SELFTEST_ERR ? SELFTEST_DENIED :
							     SELFTEST_RAN;
	send_sig(SIGKILL, current, 1);
}

static void chital_probe_fork(void *data, struct task_struct *parent,
			      struct task_struct *child)
{
	chital_member_forked(parent, child);
}

static void chital_probe_exit(void *data, struct task_struct *task)
{
	chital_member_exited(task);
}

struct chital_tracepoint {
	const char *name;
	void *probe;
	struct tracepoint *tp;
	bool registered;
};

static struct chital_tracepoint chital_tracepoints[] = {
	{ .name = "sched_process_fork", .probe = chital_probe_fork },
	{ .name = "sched_process_exit", .probe = chital_probe_exit },
	{ .name = "sys_enter", .probe = chital_probe_sys_enter },
	{ .name = "sys_exit", .probe = chital_probe_sys_exit },
};

#define CHITAL_TP_SYS_EXIT	3

static void chital_find_tracepoint(struct tracepoint *tp, void *priv)
{
	int i;

	for (i = 0; i < ARRAY_SIZE(chital_tracepoints); i++)
		if (!strcmp(tp->name, chital_tracepoints[i].name))
			chital_tracepoints[i].tp = tp;
}

static void chital_tracepoint_unregister(struct chital_tracepoint *t)
{
	if (!t->registered)
		return;
	tracepoint_probe_unregister(t->tp, t->probe, NULL);
	t->registered = false;
}

static void chital_tracepoints_unregister(void)
{
	int i;

	for (i = 0; i < ARRAY_SIZE(chital_tracepoints); i++)
		chital_tracepoint_unregister(&chital_tracepoints[i]);
	tracepoint_synchronize_unregister();
}

static int chital_tracepoints_register(void)
{
	struct chital_tracepoint *t;
	int i, err;

	for_each_kernel_tracepoint(chital_find_tracepoint, NULL);
	for (i = 0; i < ARRAY_SIZE(chital_tracepoints); i++) {
		t = &chital_tracepoints[i];
		if (!t->tp) {
			pr_err("chital: tracepoint %s not found\n", t->name);
			err = -ENOENT;
			goto out_unregister;
		}
		err = tracepoint_probe_register(t->tp, t->probe, NULL);
		if (err) {
			pr_err("chital: tracepoint %s: %d\n", t->name, err);
			goto out_unregister;
		}
		t->registered = true;
	}
	return 0;

out_unregister:
	chital_tracepoints_unregister();
	return err;
}

static int chital_selftest_init(struct subprocess_info *info, struct cred *new)
{
	WRITE_ONCE(chital_selftest_task, current);
	return 0;
}

/*
 * Denial by orig_ax = -1 needs a kernel that re-reads the system call number
 * after the sys_enter tracepoint (upstream fb13b11d5387). Check it: run a
 * user-mode helper, deny its first system call with a marker error and see
 * at sys_exit whether the marker survived (the call was skipped) or the call
 * ran. The helper is killed either way.
 */
static int chital_selftest(void)
{
	static const char * const paths[] = { "/bin/true", "/usr/bin/true", "/bin/sh" };
	static const char env_path[] = "PATH=/sbin:/bin:/usr/sbin:/usr/bin";
	struct subprocess_info *info;
	char *argv[2], *envp[2];
	int i;

	envp[0] = (char *)env_path;
	envp[1] = NULL;
	for (i = 0; i < ARRAY_SIZE(paths); i++) {
		argv[0] = (char *)paths[i];
		argv[1] = NULL;
		chital_selftest_state = SELFTEST_IDLE;
		info = call_usermodehelper_setup(argv[0], argv, envp, GFP_KERNEL,
						 chital_selftest_init, NULL, NULL);
		if (!info)
			return -ENOMEM;
		call_usermodehelper_exec(info, UMH_WAIT_PROC);
		WRITE_ONCE(chital_selftest_task, NULL);
		if (chital_selftest_state == SELFTEST_DENIED)
			return 0;
		if (chital_selftest_state == SELFTEST_RAN) {
			pr_err("chital: this kernel ignores orig_ax = -1 from sys_enter probes; refusing to load\n");
			return -EOPNOTSUPP;
		}
	}
	pr_err("chital: self-test could not run a helper (%s)\n", paths[0]);
	return -ENOEXEC;
}

/* Stubs the hooked functions are redirected to; they return int. */
static int chital_stub_eacces(void)
{
	return -EACCES;
}

static int chital_stub_eperm(void)
{
	return -EPERM;
}

static int chital_stub_esrch(void)
{
	return -ESRCH;
}

/* A check that rewrote the hooked function's arguments instead of failing it. */
#define CHITAL_ARGS_CHANGED	1

static bool chital_path_outside(struct chital_member *m, const struct path *path)
{
	return path && !path_is_under((struct path *)path, &m->container->root);
}

/*
 * Returns the error the hooked call must fail with, CHITAL_ARGS_CHANGED, or
 * 0 to let it run. @m is the member making the call.
 */
typedef int (*chital_check_t)(struct pt_regs *regs, struct chital_member *m);

static int chital_check_file_open(struct pt_regs *regs, struct chital_member *m)
{
	struct file *file = (struct file *)regs->di;

	return chital_path_outside(m, &file->f_path) ? -EACCES : 0;
}

/*
 * security_file_truncate(file) (since 6.2 ftruncate calls it, not
 * security_path_truncate): the file may have been opened before the task
 * became a member, or passed in; confined like an open.
 */
static int chital_check_file_truncate(struct pt_regs *regs, struct chital_member *m)
{
	return chital_check_file_open(regs, m);
}

/* security_path_{mknod,mkdir,rmdir,unlink,symlink,truncate,chmod,chown} */
static int chital_check_path_arg0(struct pt_regs *regs, struct chital_member *m)
{
	return chital_path_outside(m, (const struct path *)regs->di) ? -EACCES : 0;
}

/*
 * security_path_link(old_dentry, new_dir, new_dentry): both ends must be
 * inside, or a member could link an outside file into its root. A link never
 * crosses mounts, so the old dentry lives on new_dir's mount.
 */
static int chital_check_path_link(struct pt_regs *regs, struct chital_member *m)
{
	const struct path *new_dir = (const struct path *)regs->si;
	struct path old = {
		.mnt = new_dir->mnt,
		.dentry = (struct dentry *)regs->di,
	};

	if (chital_path_outside(m, new_dir) || chital_path_outside(m, &old))
		return -EACCES;
	return 0;
}

static int chital_check_path_rename(struct pt_regs *regs, struct chital_member *m)
{
	if (chital_path_outside(m, (const struct path *)regs->di) ||
	    chital_path_outside(m, (const struct path *)regs->dx))
		return -EACCES;
	return 0;
}

/*
 * security_ptrace_access_check(child, mode), security_ptrace_traceme(parent):
 * a member may only trace tasks of its own container.
 */
static int chital_check_ptrace(struct pt_regs *regs, struct chital_member *m)
{
	struct task_struct *other = (struct task_struct *)regs->di;

	return chital_member_container(other) == m->container ? 0 : -EPERM;
}

static bool chital_target_inside(struct pt_regs *regs, struct chital_member *m)
{
	struct task_struct *p = (struct task_struct *)regs->di;
	bool inside;

	rcu_read_lock();
	inside = chital_task_inside(m->container, p);
	rcu_read_unlock();
	return inside;
}

/*
 * security_task_{setnice,setioprio,setscheduler,getscheduler,getioprio,
 * getsid,getpgid,movememory}(p, ...): a member may only reach tasks of its
 * own container (its own exited children included, see
 * chital_task_inside()). Anything else answers -ESRCH, as if the task did
 * not exist: with -EPERM a member could tell which pids exist on the host.
 */
static int chital_check_task(struct pt_regs *regs, struct chital_member *m)
{
	return chital_target_inside(regs, m) ? 0 : -ESRCH;
}

/*
 * security_task_kill(p, info, sig, cred): the same rule, but -EPERM: see
 * chital_argument_verdict() for why, and for where -ESRCH comes from.
 */
static int chital_check_kill(struct pt_regs *regs, struct chital_member *m)
{
	return chital_target_inside(regs, m) ? 0 : -EPERM;
}

/*
 * __f_setown(filp, pid, type, force): every way of choosing who receives a
 * file's SIGIO and SIGURG ends here (F_SETOWN, F_SETOWN_EX, the FIOSETOWN
 * and SIOCSPGRP ioctls, tty fasync), in the caller's context and with the
 * target already resolved to a struct pid, so the check races neither with
 * user memory nor with pid reuse. The signal itself is sent later by the
 * kernel, from whatever task causes the I/O, and
 * security_file_send_sigiotask cannot tell whether a member chose the
 * owner (fown_struct records only uids, and it is embedded in struct file
 * on 6.1 but allocated apart since 6.12), so the owner is checked when it is
 * set. __f_setown() returns void: a refused owner becomes no owner (pid
 * NULL), and the file signals nobody.
 */
static int chital_check_f_setown(struct pt_regs *regs, struct chital_member *m)
{
	struct pid *pid = (struct pid *)regs->si;

	if (!pid || chital_pid_inside(m->container, pid, (enum pid_type)regs->dx))
		return 0;
	regs->si = 0;
	return CHITAL_ARGS_CHANGED;
}

/*
 * Count a denial made by a hook, once per system call: for the container,
 * for the system call in progress, and as a DENIED event, like the denials
 * of the sys_enter probe.
 */
static void chital_count_hook_denial(struct chital_member *m)
{
	struct chital_container *c = m->container;
	long nr;
	u32 reported;

	if (m->denial_counted)
		return;
	m->denial_counted = true;
	nr = syscall_get_nr(current, task_pt_regs(current));
	atomic64_inc(&c->denied_total);
	if (in_ia32_syscall()) {
		reported = (u32)nr | CHITAL_COMPAT_SYSCALL;
	} else {
		reported = (u32)nr;
		if (nr >= 0 && nr < CHITAL_NR_SYSCALLS)
			atomic64_inc(&c->denied[nr]);
	}
	chital_queue_denied(c->id, task_tgid_nr(current), reported);
}

/*
 * @optional: the function does not exist on every supported kernel
 * (security_file_truncate is new in 6.2); a kernel without it does not need
 * the hook.
 */
struct chital_hook {
	const char *name;
	chital_check_t check;
	bool optional;
	struct ftrace_ops ops;
	bool registered;
};

static void notrace chital_ftrace_cb(unsigned long ip, unsigned long parent_ip,
				     struct ftrace_ops *ops,
				     struct ftrace_regs *fregs)
{
	struct chital_hook *hook = container_of(ops, struct chital_hook, ops);
	struct pt_regs *regs = ftrace_get_regs(fregs);
	struct chital_member *m;
	int err;

	if (likely(!atomic_read(&chital_nr_members)) || !regs || !in_task())
		return;
	m = chital_member_of(current);
	if (!m)
		return;
	err = hook->check(regs, m);
	if (!err)
		return;
	chital_count_hook_denial(m);
	if (err == -EACCES)
		regs->ip = (unsigned long)chital_stub_eacces;
	else if (err == -ESRCH)
		regs->ip = (unsigned long)chital_stub_esrch;
	else if (err < 0)
		regs->ip = (unsigned long)chital_stub_eperm;
}

#define CHITAL_HOOK(fn, chk) { .name = fn, .check = chk }
#define CHITAL_OPTIONAL_HOOK(fn, chk) { .name = fn, .check = chk, .optional = true }

static struct chital_hook chital_hooks[] = {
	CHITAL_HOOK("security_file_open", chital_check_file_open),
	CHITAL_HOOK("security_path_mknod", chital_check_path_arg0),
	CHITAL_HOOK("security_path_mkdir", chital_check_path_arg0),
	CHITAL_HOOK("security_path_rmdir", chital_check_path_arg0),
	CHITAL_HOOK("security_path_unlink", chital_check_path_arg0),
	CHITAL_HOOK("security_path_symlink", chital_check_path_arg0),
	CHITAL_HOOK("security_path_truncate", chital_check_path_arg0),
	CHITAL_HOOK("security_path_chmod", chital_check_path_arg0),
	CHITAL_HOOK("security_path_chown", chital_check_path_arg0),
	CHITAL_HOOK("security_path_link", chital_check_path_link),
	CHITAL_HOOK("security_path_rename", chital_check_path_rename),
	CHITAL_OPTIONAL_HOOK("security_file_truncate", chital_check_file_truncate),
	CHITAL_HOOK("security_ptrace_access_check", chital_check_ptrace),
	CHITAL_HOOK("security_ptrace_traceme", chital_check_ptrace),
	CHITAL_HOOK("security_task_kill", chital_check_kill),
	CHITAL_HOOK("security_task_setnice", chital_check_task),
	CHITAL_HOOK("security_task_setioprio", chital_check_task),
	CHITAL_HOOK("security_task_getioprio", chital_check_task),
	/* sched_setaffinity, sched_setscheduler, sched_setparam, sched_setattr */
	CHITAL_HOOK("security_task_setscheduler", chital_check_task),
	/* sched_get{affinity,scheduler,param,attr}, sched_rr_get_interval */
	CHITAL_HOOK("security_task_getscheduler", chital_check_task),
	CHITAL_HOOK("security_task_getsid", chital_check_task),
	CHITAL_HOOK("security_task_getpgid", chital_check_task),
	/* migrate_pages, move_pages */
	CHITAL_HOOK("security_task_movememory", chital_check_task),
	CHITAL_HOOK("__f_setown", chital_check_f_setown),
};

static void chital_hooks_unregister(void)
{
	struct chital_hook *h;
	int i;

	for (i = 0; i < ARRAY_SIZE(chital_hooks); i++) {
		h = &chital_hooks[i];
		if (h->registered)
			unregister_ftrace_function(&h->ops);
		ftrace_free_filter(&h->ops);
		h->registered = false;
	}
}

static int chital_hooks_register(void)
{
	struct chital_hook *h;
	int i, err;

	for (i = 0; i < ARRAY_SIZE(chital_hooks); i++) {
		h = &chital_hooks[i];
		h->ops.func = chital_ftrace_cb;
		h->ops.flags = FTRACE_OPS_FL_SAVE_REGS | FTRACE_OPS_FL_IPMODIFY |
			       FTRACE_OPS_FL_RECURSION;
		err = ftrace_set_filter(&h->ops, (unsigned char *)h->name,
					strlen(h->name), 0);
		if (err && h->optional) {
			pr_info("chital: no %s in this kernel, not hooked\n", h->name);
			ftrace_free_filter(&h->ops);
			continue;
		}
		if (err) {
			pr_err("chital: cannot hook %s: %d\n", h->name, err);
			goto out_unregister;
		}
		err = register_ftrace_function(&h->ops);
		if (err) {
			pr_err("chital: cannot hook %s: %d\n", h->name, err);
			goto out_unregister;
		}
		h->registered = true;
	}
	return 0;

out_unregister:
	chital_hooks_unregister();
	return err;
}

/*
 * Only members need the sys_enter probe, but registering it puts every task
 * of the host on the slow system call path: the kernel sets
 * SYSCALL_WORK_SYSCALL_TRACEPOINT on all tasks (syscall_regfunc()), and
 * children copy it at fork. Non-members would pay its cost for nothing
 * (docs/benchmarks.md). So once the probe is in place (and before
 * any container exists), the flag is taken off every task, and put back on
 * each task that becomes a member (chital_add_task(); a member's children
 * copy it at fork). Nothing else clears it while the probe is registered:
 * the kernel clears it everywhere only when the last sys_enter probe goes.
 *
 * If the flag was already on the loading task, another tracer (perf trace,
 * ftrace syscall events) follows every task's system calls: then nothing is
 * trimmed. A tracer that starts after the module loaded sees members only;
 * load with trim_syscall_work=0 to keep every task on the traced path.
 */
static bool trim_syscall_work = true;
module_param(trim_syscall_work, bool, 0444);
MODULE_PARM_DESC(trim_syscall_work,
		 "Keep non-members off the traced system call path (default: yes)");

void chital_syscall_work_enter(struct task_struct *task)
{
	set_task_syscall_work(task, SYSCALL_TRACEPOINT);
}

static void chital_syscall_work_trim(void)
{
	struct task_struct *p, *t;

	rcu_read_lock();
	for_each_process_thread(p, t)
		clear_task_syscall_work(t, SYSCALL_TRACEPOINT);
	rcu_read_unlock();
}

int chital_intercept_init(void)
{
	bool traced = test_task_syscall_work(current, SYSCALL_TRACEPOINT);
	int err;

	chital_checked_init();
	err = chital_tracepoints_register();
	if (err)
		return err;
	err = chital_selftest();
	/* The sys_exit probe only serves the self-test. */
	chital_tracepoint_unregister(&chital_tracepoints[CHITAL_TP_SYS_EXIT]);
	if (err)
		goto out_tracepoints;
	err = chital_hooks_register();
	if (err)
		goto out_tracepoints;
	if (trim_syscall_work && !traced)
		chital_syscall_work_trim();
	else
		pr_info("chital: every task stays on the traced system call path\n");
	return 0;

out_tracepoints:
	chital_tracepoints_unregister();
	return err;
}

/* Teardown order that held under load: tracepoints, then ftrace, then RCU. */
void chital_intercept_exit(void)
{
	chital_tracepoints_unregister();
	chital_hooks_unregister();
	synchronize_rcu();
}
