// SPDX-License-Identifier: GPL-2.0
/*
 * chital: membership table and event queue.
 */
#include <linux/hashtable.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/wait.h>

#include "chital_internal.h"

DEFINE_SPINLOCK(chital_lock);
LIST_HEAD(chital_containers);
/* Member tasks in all containers: lets non-members skip the hash lookup. */
atomic_t chital_nr_members = ATOMIC_INIT(0);
/* Woken when a container loses its last member. */
DECLARE_WAIT_QUEUE_HEAD(chital_empty_wait);

/* Member tasks keyed by task pointer; written under chital_lock, read under RCU. */
static DEFINE_HASHTABLE(chital_members, 10);
/* Thread groups with member tasks, keyed by signal_struct; under chital_lock only. */
static DEFINE_HASHTABLE(chital_groups, 10);

struct chital_member *chital_lookup_member(struct task_struct *task)
{
	struct chital_member *m;

	hash_for_each_possible_rcu(chital_members, m, hnode, (unsigned long)task,
				   lockdep_is_held(&chital_lock))
		if (m->task == task)
			return m;
	return NULL;
}

/* Caller holds rcu_read_lock() (or runs with preemption disabled). */
struct chital_member *chital_member_of(struct task_struct *task)
{
	if (likely(!atomic_read(&chital_nr_members)))
		return NULL;
	return chital_lookup_member(task);
}

/* Caller holds rcu_read_lock() (or runs with preemption disabled). */
struct chital_container *chital_member_container(struct task_struct *task)
{
	struct chital_member *m = chital_member_of(task);

	return m ? m->container : NULL;
}

static struct chital_group *chital_lookup_group(const struct signal_struct *sig)
{
	struct chital_group *g;

	lockdep_assert_held(&chital_lock);
	hash_for_each_possible(chital_groups, g, hnode, (unsigned long)sig)
		if (g->signal == sig)
			return g;
	return NULL;
}

bool chital_is_member(struct task_struct *task)
{
	bool ret;

	rcu_read_lock();
	ret = chital_member_container(task);
	rcu_read_unlock();
	return ret;
}

struct chital_container *chital_find_container(u32 id)
{
	struct chital_container *c;

	lockdep_assert_held(&chital_lock);
	list_for_each_entry(c, &chital_containers, node)
		if (c->id == id)
			return c;
	return NULL;
}

struct chital_container *chital_find_container_by_name(const char *name)
{
	struct chital_container *c;

	lockdep_assert_held(&chital_lock);
	list_for_each_entry(c, &chital_containers, node)
		if (!strcmp(c->name, name))
			return c;
	return NULL;
}

/*
 * Add one task. Returns 0 if it was added or already is a member of @c,
 * -EBUSY if it is a member of another container, -ESRCH if it is exiting
 * (its exit probe may already have run), -ENOSPC over the limit.
 */
int chital_add_task(struct chital_container *c, struct task_struct *t)
{
	struct chital_member *m;
	struct chital_group *g;

	lockdep_assert_held(&chital_lock);
	m = chital_lookup_member(t);
	if (m)
		return m->container == c ? 0 : -EBUSY;
	/* Ordered against the exit probe by chital_lock, see chital_member_exited(). */
	if (t->flags & PF_EXITING)
		return -ESRCH;
	g = chital_lookup_group(t->signal);
	if (!g && c->limits.max_members &&
	    c->nr_procs >= c->limits.max_members)
		return -ENOSPC;
	m = kzalloc(sizeof(*m), GFP_ATOMIC);
	if (!m)
		return -ENOMEM;
	if (!g) {
		g = kzalloc(sizeof(*g), GFP_ATOMIC);
		if (!g)
			goto out_free_member;
		g->signal = t->signal;
		hash_add(chital_groups, &g->hnode, (unsigned long)g->signal);
		c->nr_procs++;
	}
	g->nr_tasks++;
	m->task = t;
	m->container = c;
	m->group = g;
	hash_add_rcu(chital_members, &m->hnode, (unsigned long)t);
	list_add_tail(&m->cnode, &c->members);
	c->nr_tasks++;
	atomic_inc(&chital_nr_members);
	/* After the hash insert: the next system call enters the probe as a member. */
	chital_syscall_work_enter(t);
	return 0;

out_free_member:
	kfree(m);
	return -ENOMEM;
}

/*
 * Unhash a member; the caller frees it with kfree_rcu(). Returns true if it
 * was the last member task of its thread group (the process is gone from
 * the container).
 */
bool chital_unlink_member(struct chital_member *m)
{
	struct chital_container *c = m->container;
	struct chital_group *g = m->group;

	lockdep_assert_held(&chital_lock);
	hash_del_rcu(&m->hnode);
	list_del(&m->cnode);
	c->nr_tasks--;
	atomic_dec(&chital_nr_members);
	m->group = NULL;
	if (--g->nr_tasks)
		return false;
	hash_del(&g->hnode);
	kfree(g);
	c->nr_procs--;
	return true;
}

/*
 * sched_process_fork: runs in the parent, before the child first runs, with
 * preemption disabled. A member's child joins the parent's container; if
 * that fails the child is killed before it reaches user space (fail closed).
 */
void chital_member_forked(struct task_struct *parent, struct task_struct *child)
{
	struct chital_member *m;
	struct chital_container *c;
	int err;

	if (likely(!atomic_read(&chital_nr_members)))
		return;
	spin_lock(&chital_lock);
	m = chital_lookup_member(parent);
	if (!m)
		goto out_unlock;
	c = m->container;
	err = chital_add_task(c, child);
	if (!err && c->killing)
		err = -EINTR;	/* a member of a container being destroyed */
	if (err) {
		pr_warn_ratelimited("chital: killing child %d of member %d: %d\n",
				    task_pid_nr(child), task_pid_nr(parent), err);
		send_sig(SIGKILL, child, 1);
		goto out_unlock;
	}
	if (thread_group_leader(child))
		chital_queue_event(CHITAL_EVENT_FORK, c->id, task_tgid_nr(child),
				   task_tgid_nr(parent), 0);
out_unlock:
	spin_unlock(&chital_lock);
}

static u32 chital_wait_status(struct task_struct *task)
{
	struct signal_struct *sig = task->signal;

	if (READ_ONCE(sig->flags) & SIGNAL_GROUP_EXIT)
		return (u32)sig->group_exit_code;
	return (u32)task->exit_code;
}

/*
 * sched_process_exit: runs in the exiting task, after PF_EXITING was set.
 * Queues EXIT when the last member task of the thread group left (decided
 * under chital_lock, see struct chital_group), and EMPTY when the
 * container's last member task left.
 */
void chital_member_exited(struct task_struct *task)
{
	struct chital_member *m;
	struct chital_container *c;
	bool last;

	if (likely(!atomic_read(&chital_nr_members)))
		return;
	spin_lock(&chital_lock);
	m = chital_lookup_member(task);
	if (!m) {
		spin_unlock(&chital_lock);
		return;
	}
	c = m->container;
	last = chital_unlink_member(m);
	if (last)
		chital_queue_event(CHITAL_EVENT_EXIT, c->id, task_tgid_nr(task),
				   0, chital_wait_status(task));
	if (!c->nr_tasks) {
		chital_queue_event(CHITAL_EVENT_EMPTY, c->id, 0, 0, 0);
		wake_up(&chital_empty_wait);
	}
	spin_unlock(&chital_lock);
	kfree_rcu(m, rcu);
}

/*
 * The event queue: a ring of fixed-size records. When it is full, new events
 * are dropped and counted; sequence numbers still advance so that readers see
 * the gap.
 */
static struct {
	spinlock_t lock;	/* protects everything below */
	struct chital_event *ring;
	unsigned int head;
	unsigned int count;
	u64 seq;
	u64 dropped;
	wait_queue_head_t wait;
} chital_events = {
	.lock = __SPIN_LOCK_UNLOCKED(chital_events.lock),
	.wait = __WAIT_QUEUE_HEAD_INITIALIZER(chital_events.wait),
};

static struct chital_event *chital_event_slot(unsigned int i)
{
	lockdep_assert_held(&chital_events.lock);
	return &chital_events.ring[(chital_events.head + i) % CHITAL_EVENT_QUEUE_LEN];
}

static struct chital_event *chital_event_new(void)
{
	struct chital_event *ev;

	lockdep_assert_held(&chital_events.lock);
	chital_events.seq++;
	if (chital_events.count == CHITAL_EVENT_QUEUE_LEN) {
		chital_events.dropped++;
		return NULL;
	}
	ev = chital_event_slot(chital_events.count++);
	memset(ev, 0, sizeof(*ev));
	ev->seq = chital_events.seq;
	return ev;
}

void chital_queue_event(u32 kind, u32 container_id, u32 pid, u32 ppid,
			u32 status)
{
	struct chital_event *ev;
	unsigned long flags;

	spin_lock_irqsave(&chital_events.lock, flags);
	ev = chital_event_new();
	if (ev) {
		ev->kind = kind;
		ev->container_id = container_id;
		ev->pid = pid;
		ev->ppid = ppid;
		ev->status = status;
	}
	spin_unlock_irqrestore(&chital_events.lock, flags);
	wake_up_interruptible(&chital_events.wait);
}

/* DENIED records coalesce with the newest queued record if it is identical. */
void chital_queue_denied(u32 container_id, u32 pid, u32 nr)
{
	struct chital_event *ev;
	unsigned long flags;

	spin_lock_irqsave(&chital_events.lock, flags);
	if (chital_events.count) {
		ev = chital_event_slot(chital_events.count - 1);
		if (ev->kind == CHITAL_EVENT_DENIED &&
		    ev->container_id == container_id && ev->pid == pid &&
		    ev->syscall_nr == nr) {
			ev->count++;
			spin_unlock_irqrestore(&chital_events.lock, flags);
			return;
		}
	}
	ev = chital_event_new();
	if (ev) {
		ev->kind = CHITAL_EVENT_DENIED;
		ev->container_id = container_id;
		ev->pid = pid;
		ev->syscall_nr = nr;
		ev->count = 1;
	}
	spin_unlock_irqrestore(&chital_events.lock, flags);
	wake_up_interruptible(&chital_events.wait);
}

u64 chital_events_dropped(void)
{
	unsigned long flags;
	u64 dropped;

	spin_lock_irqsave(&chital_events.lock, flags);
	dropped = chital_events.dropped;
	spin_unlock_irqrestore(&chital_events.lock, flags);
	return dropped;
}

#define CHITAL_READ_BATCH	64

/* Pop up to @max records into @out; returns how many. */
static unsigned int chital_events_pop(struct chital_event *out, unsigned int max)
{
	unsigned long flags;
	unsigned int i, n;

	spin_lock_irqsave(&chital_events.lock, flags);
	n = min(max, chital_events.count);
	for (i = 0; i < n; i++) {
		out[i] = *chital_event_slot(i);
		out[i].dropped = chital_events.dropped;
	}
	chital_events.head = (chital_events.head + n) % CHITAL_EVENT_QUEUE_LEN;
	chital_events.count -= n;
	spin_unlock_irqrestore(&chital_events.lock, flags);
	return n;
}

static bool chital_events_pending(void)
{
	return READ_ONCE(chital_events.count) != 0;
}

ssize_t chital_events_read(struct file *file, char __user *buf, size_t len)
{
	struct chital_event *batch;
	unsigned int max, n;
	ssize_t ret;

	if (len < sizeof(*batch))
		return -EINVAL;
	max = min_t(size_t, len / sizeof(*batch), CHITAL_READ_BATCH);
	if (!chital_events_pending()) {
		if (file->f_flags & O_NONBLOCK)
			return -EAGAIN;
		ret = wait_event_interruptible(chital_events.wait,
					       chital_events_pending());
		if (ret)
			return ret;
	}
	batch = kmalloc_array(max, sizeof(*batch), GFP_KERNEL);
	if (!batch)
		return -ENOMEM;
	n = chital_events_pop(batch, max);
	ret = n * sizeof(*batch);
	if (copy_to_user(buf, batch, ret))
		ret = -EFAULT;
	kfree(batch);
	return ret;
}

__poll_t chital_events_poll(struct file *file, poll_table *wait)
{
	poll_wait(file, &chital_events.wait, wait);
	return chital_events_pending() ? EPOLLIN | EPOLLRDNORM : 0;
}

int chital_events_init(void)
{
	chital_events.ring = kvcalloc(CHITAL_EVENT_QUEUE_LEN,
				      sizeof(*chital_events.ring), GFP_KERNEL);
	return chital_events.ring ? 0 : -ENOMEM;
}

void chital_events_exit(void)
{
	kvfree(chital_events.ring);
}
