/* SPDX-License-Identifier: GPL-2.0 */
#ifndef _CHITAL_INTERNAL_H
#define _CHITAL_INTERNAL_H

#include <linux/atomic.h>
#include <linux/bitmap.h>
#include <linux/fs.h>
#include <linux/list.h>
#include <linux/path.h>
#include <linux/poll.h>
#include <linux/rcupdate.h>
#include <linux/sched.h>
#include <linux/spinlock.h>
#include <linux/types.h>
#include <linux/wait.h>
#include <uapi/linux/chital.h>

#define CHITAL_VERSION		"0.1.0"
#define CHITAL_EVENT_QUEUE_LEN	4096

/*
 * Locking
 *
 * chital_lock (a spinlock, taken with plain spin_lock: every user runs in
 * process context, the fork probe with preemption disabled) protects:
 *  - chital_containers and the list membership of every container,
 *  - the member hash table chital_members and every container's
 *    member list, nr_tasks and nr_procs,
 *  - the thread group table chital_groups and every group's nr_tasks,
 *  - the policy bitmap, the policy flags and the limits of every container
 *    (writers).
 * Readers on the hot paths (the sys_enter probe, the ftrace hooks) do not
 * take it: they look members up under RCU (tracepoint probes and ftrace
 * callbacks run with preemption disabled, which is an RCU read-side
 * section), and read the policy with test_bit(), which tolerates a
 * concurrent SET_POLICY (a member sees the old or the new bit).
 * Containers and members are freed only after an RCU grace period.
 *
 * Lock order: chital_lock -> chital_events.lock.
 * The event queue has its own lock, taken with irqsave.
 */

/**
 * struct chital_container - one container
 * @node: in chital_containers, under chital_lock
 * @members: list of struct chital_member.cnode, under chital_lock
 * @nr_tasks: member tasks (threads included), under chital_lock
 * @nr_procs: member processes (struct chital_group), under chital_lock
 * @id: never reused while the module is loaded; immutable
 * @name: immutable
 * @root: the resolved root; immutable, reference dropped at free
 * @root_str: the root as given at CREATE; immutable
 * @deny: the policy; written under chital_lock, read locklessly
 * @policy_flags: CHITAL_POLICY_*; written under chital_lock (WRITE_ONCE),
 *	read locklessly (READ_ONCE)
 * @limits: under chital_lock
 * @killing: set under chital_lock by DESTROY with CHITAL_DESTROY_KILL: the
 *	members were sent SIGKILL, new children get it too; DESTROY waits on
 *	chital_empty_wait until the members are gone
 * @other_calls: the system calls not counted in @calls (compat and out of
 *	range), atomic counter; the container's total is this plus the sum of
 *	@calls (one counter less on every member's system call)
 * @denied_total: atomic counter
 * @calls: per-syscall calls, atomic counters
 * @denied: per-syscall denials, atomic counters
 * @rcu: for freeing after a grace period
 */
struct chital_container {
	struct list_head node;
	struct list_head members;
	unsigned int nr_tasks;
	unsigned int nr_procs;
	u32 id;
	char name[CHITAL_NAME_MAX + 1];
	struct path root;
	char *root_str;
	DECLARE_BITMAP(deny, CHITAL_NR_SYSCALLS);
	u64 policy_flags;
	struct chital_limits limits;
	bool killing;
	atomic64_t other_calls;
	atomic64_t denied_total;
	atomic64_t calls[CHITAL_NR_SYSCALLS];
	atomic64_t denied[CHITAL_NR_SYSCALLS];
	struct rcu_head rcu;
};

/**
 * struct chital_group - the member tasks of one thread group (a process)
 * @hnode: in the chital_groups hash, keyed by @signal, under chital_lock
 * @signal: the group's signal_struct, shared by all its threads: the key.
 *	Never dereferenced; the record goes away with the group's last member
 *	task, before the signal_struct can be freed and its address reused.
 * @nr_tasks: member tasks of the group, under chital_lock
 *
 * "The process exited" is decided here, under chital_lock, when nr_tasks
 * drops to zero: signal->live is decremented by do_exit() long before the
 * sched_process_exit tracepoint, so two threads leaving by exit_group() can
 * both see it at zero and report the exit twice.
 */
struct chital_group {
	struct hlist_node hnode;
	const struct signal_struct *signal;
	unsigned int nr_tasks;
};

/**
 * struct chital_member - one member task
 * @hnode: in the chital_members hash, keyed by @task, under chital_lock
 * @cnode: in container->members, under chital_lock
 * @task: the member; no reference is held: the entry is removed by the
 *	sched_process_exit probe before the task can be freed
 * @container: immutable while the entry is hashed
 * @group: the task's thread group record, under chital_lock
 * @denial_counted: a hook already counted a denial in the system call in
 *	progress; written only by @task itself (reset by the sys_enter probe)
 * @rcu: for freeing after a grace period
 */
struct chital_member {
	struct hlist_node hnode;
	struct list_head cnode;
	struct task_struct *task;
	struct chital_container *container;
	struct chital_group *group;
	bool denial_counted;
	struct rcu_head rcu;
};

extern spinlock_t chital_lock;
extern atomic_t chital_nr_members;
extern wait_queue_head_t chital_empty_wait;

/* core.c */
struct chital_member *chital_member_of(struct task_struct *task);
struct chital_container *chital_member_container(struct task_struct *task);
bool chital_is_member(struct task_struct *task);
void chital_syscall_work_enter(struct task_struct *task);
struct chital_container *chital_find_container(u32 id);
struct chital_container *chital_find_container_by_name(const char *name);
int chital_add_task(struct chital_container *c, struct task_struct *t);
bool chital_unlink_member(struct chital_member *m);
struct chital_member *chital_lookup_member(struct task_struct *task);
void chital_member_forked(struct task_struct *parent,
			  struct task_struct *child);
void chital_member_exited(struct task_struct *task);
extern struct list_head chital_containers;

void chital_queue_event(u32 kind, u32 container_id, u32 pid, u32 ppid,
			u32 status);
void chital_queue_denied(u32 container_id, u32 pid, u32 nr);
u64 chital_events_dropped(void);
int chital_events_init(void);
void chital_events_exit(void);
ssize_t chital_events_read(struct file *file, char __user *buf, size_t len);
__poll_t chital_events_poll(struct file *file, poll_table *wait);

/* intercept.c */
int chital_intercept_init(void);
void chital_intercept_exit(void);

#endif /* _CHITAL_INTERNAL_H */
