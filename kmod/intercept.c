// SPDX-License-Identifier: GPL-2.0
/*
 * chital: interception of member tasks.
 *
 *  - tracepoints (not exported, found with for_each_kernel_tracepoint()):
 *    sched_process_fork extends membership, sched_process_exit ends it,
 *    raw_syscalls:sys_enter counts and denies members' system calls (a
 *    denied call gets orig_ax = -1, so the kernel skips it, and ax = -EPERM);
 *  - ftrace hooks on security_* functions confine members' file opens and
 *    path operations to the container root and forbid ptrace of
 *    non-members: the hook sends the call to a stub that returns the error.
 *
 * Non-members pay one atomic read in each probe while no container has
 * members, and a hash lookup otherwise.
 */
#include <linux/ftrace.h>
#include <linux/namei.h>
#include <linux/ptrace.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
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
	return 0;
}

static void chital_deny(struct pt_regs *regs, long err)
{
	regs->orig_ax = -1;
	regs->ax = err;
}

/* Self-test of the orig_ax = -1 denial, see chital_selftest(). */
enum { SELFTEST_IDLE, SELFTEST_ARMED, SELFTEST_DENIED, SELFTEST_RAN };
static struct task_struct *chital_selftest_task;
static int chital_selftest_state;
#define CHITAL_SELFTEST_ERR	(-EHWPOISON)

static void chital_probe_sys_enter(void *data, struct pt_regs *regs, long id)
{
	struct chital_container *c;
	long err;
	u32 nr;

	if (unlikely(READ_ONCE(chital_selftest_task) == current)) {
		if (chital_selftest_state == SELFTEST_IDLE) {
			chital_deny(regs, CHITAL_SELFTEST_ERR);
			chital_selftest_state = SELFTEST_ARMED;
		}
		return;
	}
	c = chital_member_container(current);
	if (likely(!c))
		return;
	atomic64_inc(&c->syscalls_total);
	if (unlikely(in_ia32_syscall())) {
		nr = (u32)id | CHITAL_COMPAT_SYSCALL;
		err = -EPERM;
	} else if (unlikely(id < 0 || id >= CHITAL_NR_SYSCALLS)) {
		nr = (u32)id;
		err = -EPERM;
	} else {
		nr = id;
		atomic64_inc(&c->calls[nr]);
		err = chital_containment_verdict(regs, id);
		if (!err && test_bit(nr, c->deny))
			err = -EPERM;
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

static bool chital_path_outside(const struct path *path)
{
	struct chital_container *c = chital_member_container(current);

	return c && path && !path_is_under((struct path *)path, &c->root);
}

/* Returns the error the hooked call must fail with, or 0 to let it run. */
typedef int (*chital_check_t)(struct pt_regs *regs);

static int chital_check_file_open(struct pt_regs *regs)
{
	struct file *file = (struct file *)regs->di;

	return chital_path_outside(&file->f_path) ? -EACCES : 0;
}

/* security_path_{mknod,mkdir,rmdir,unlink,symlink,truncate,chmod,chown} */
static int chital_check_path_arg0(struct pt_regs *regs)
{
	return chital_path_outside((const struct path *)regs->di) ? -EACCES : 0;
}

/*
 * security_path_link(old_dentry, new_dir, new_dentry): both ends must be
 * inside, or a member could link an outside file into its root. A link never
 * crosses mounts, so the old dentry lives on new_dir's mount.
 */
static int chital_check_path_link(struct pt_regs *regs)
{
	const struct path *new_dir = (const struct path *)regs->si;
	struct path old = {
		.mnt = new_dir->mnt,
		.dentry = (struct dentry *)regs->di,
	};

	if (chital_path_outside(new_dir) || chital_path_outside(&old))
		return -EACCES;
	return 0;
}

static int chital_check_path_rename(struct pt_regs *regs)
{
	if (chital_path_outside((const struct path *)regs->di) ||
	    chital_path_outside((const struct path *)regs->dx))
		return -EACCES;
	return 0;
}

/*
 * security_ptrace_access_check(child, mode), security_ptrace_traceme(parent),
 * security_task_kill(target, info, sig, cred): a member may only reach tasks
 * of its own container.
 */
static int chital_check_other_task(struct pt_regs *regs)
{
	struct chital_container *c = chital_member_container(current);
	struct task_struct *other = (struct task_struct *)regs->di;

	if (!c)
		return 0;
	return chital_member_container(other) == c ? 0 : -EPERM;
}

struct chital_hook {
	const char *name;
	chital_check_t check;
	struct ftrace_ops ops;
	bool registered;
};

static void notrace chital_ftrace_cb(unsigned long ip, unsigned long parent_ip,
				     struct ftrace_ops *ops,
				     struct ftrace_regs *fregs)
{
	struct chital_hook *hook = container_of(ops, struct chital_hook, ops);
	struct pt_regs *regs = ftrace_get_regs(fregs);
	int err;

	if (likely(!atomic_read(&chital_nr_members)) || !regs)
		return;
	err = hook->check(regs);
	if (err == -EACCES)
		regs->ip = (unsigned long)chital_stub_eacces;
	else if (err)
		regs->ip = (unsigned long)chital_stub_eperm;
}

#define CHITAL_HOOK(fn, chk) { .name = fn, .check = chk }

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
	CHITAL_HOOK("security_ptrace_access_check", chital_check_other_task),
	CHITAL_HOOK("security_ptrace_traceme", chital_check_other_task),
	CHITAL_HOOK("security_task_kill", chital_check_other_task),
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

int chital_intercept_init(void)
{
	int err;

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
