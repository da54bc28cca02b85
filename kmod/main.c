// SPDX-License-Identifier: GPL-2.0
/*
 * chital: kernel-held containers, reached through /dev/chital.
 *
 * The ABI is defined in include/uapi/linux/chital.h. Each ioctl has one
 * handler: copy the argument into a zeroed struct, validate, lock, act,
 * unlock, copy the answer back.
 */
#include <linux/ctype.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/namei.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/utsname.h>

#include "chital_internal.h"

#define CHITAL_MAX_CONTAINERS	65536
#define CHITAL_MAX_PIDS		65536

static u32 chital_next_id = 1;		/* under chital_lock */
static unsigned int chital_nr_containers;	/* under chital_lock */

static void chital_check_abi(void)
{
	BUILD_BUG_ON(sizeof(struct chital_policy) != 80);
	BUILD_BUG_ON(sizeof(struct chital_limits) != 16);
	BUILD_BUG_ON(sizeof(struct chital_version) != 136);
	BUILD_BUG_ON(sizeof(struct chital_create) != 184);
	BUILD_BUG_ON(sizeof(struct chital_destroy) != 8);
	BUILD_BUG_ON(sizeof(struct chital_proc) != 16);
	BUILD_BUG_ON(sizeof(struct chital_list) != 16);
	BUILD_BUG_ON(sizeof(struct chital_info) != 216);
	BUILD_BUG_ON(sizeof(struct chital_syscall_stat) != 16);
	BUILD_BUG_ON(sizeof(struct chital_stats) != 24);
	BUILD_BUG_ON(sizeof(struct chital_set_policy) != 88);
	BUILD_BUG_ON(sizeof(struct chital_event) != 48);
}

static bool chital_name_valid(const char *name)
{
	size_t i, len = strnlen(name, CHITAL_NAME_MAX + 1);

	if (!len || len > CHITAL_NAME_MAX)
		return false;
	for (i = 0; i < len; i++)
		if (!isalnum(name[i]) && !strchr("_.-", name[i]))
			return false;
	/* Bytes after the NUL are padding: they must be zero too. */
	for (; i <= CHITAL_NAME_MAX; i++)
		if (name[i])
			return false;
	return true;
}

static bool chital_limits_valid(const struct chital_limits *l)
{
	return !memchr_inv(l->reserved, 0, sizeof(l->reserved));
}

static bool chital_policy_valid(const struct chital_policy *p)
{
	return !(p->flags & ~CHITAL_POLICY_FLAGS) && !p->reserved;
}

static long chital_ioc_version(void __user *arg)
{
	struct chital_version v;

	memset(&v, 0, sizeof(v));
	v.abi_major = CHITAL_ABI_MAJOR;
	v.abi_minor = CHITAL_ABI_MINOR;
	v.sizeof_create = sizeof(struct chital_create);
	v.sizeof_info = sizeof(struct chital_info);
	v.sizeof_event = sizeof(struct chital_event);
	v.sizeof_stats_entry = sizeof(struct chital_syscall_stat);
	v.nr_syscalls = CHITAL_NR_SYSCALLS;
	v.event_queue_len = CHITAL_EVENT_QUEUE_LEN;
	v.events_dropped = chital_events_dropped();
	strscpy(v.module_version, CHITAL_VERSION, sizeof(v.module_version));
	strscpy(v.kernel_release, utsname()->release, sizeof(v.kernel_release));
	if (copy_to_user(arg, &v, sizeof(v)))
		return -EFAULT;
	return 0;
}

static struct chital_container *chital_container_alloc(const struct chital_create *cr)
{
	struct chital_container *c;

	c = kvzalloc(sizeof(*c), GFP_KERNEL);
	if (!c)
		return NULL;
	INIT_LIST_HEAD(&c->members);
	memcpy(c->name, cr->name, sizeof(c->name));
	bitmap_from_arr64(c->deny, cr->policy.deny, CHITAL_NR_SYSCALLS);
	c->policy_flags = cr->policy.flags;
	c->limits = cr->limits;
	return c;
}

static void chital_container_free(struct chital_container *c)
{
	path_put(&c->root);
	kfree(c->root_str);
	kvfree(c);
	module_put(THIS_MODULE);
}

/* Resolve the root path in the caller's context; it must be an absolute directory. */
static int chital_resolve_root(struct chital_container *c,
			       const struct chital_create *cr)
{
	int err;

	c->root_str = memdup_user_nul(u64_to_user_ptr(cr->root_ptr), cr->root_len);
	if (IS_ERR(c->root_str)) {
		err = PTR_ERR(c->root_str);
		c->root_str = NULL;
		return err;
	}
	if (c->root_str[0] != '/' || strlen(c->root_str) != cr->root_len)
		return -EINVAL;
	return kern_path(c->root_str, LOOKUP_FOLLOW | LOOKUP_DIRECTORY, &c->root);
}

static long chital_ioc_create(void __user *arg)
{
	struct chital_container *c;
	struct chital_create cr;
	int err;

	if (copy_from_user(&cr, arg, sizeof(cr)))
		return -EFAULT;
	if (cr.flags || cr.id || cr.reserved || !chital_name_valid(cr.name) ||
	    !cr.root_len || cr.root_len > CHITAL_ROOT_MAX ||
	    !chital_policy_valid(&cr.policy) || !chital_limits_valid(&cr.limits))
		return -EINVAL;
	if (!try_module_get(THIS_MODULE))
		return -ENODEV;
	c = chital_container_alloc(&cr);
	if (!c) {
		err = -ENOMEM;
		goto out_module_put;
	}
	err = chital_resolve_root(c, &cr);
	if (err)
		goto out_free;

	spin_lock(&chital_lock);
	if (chital_find_container_by_name(c->name)) {
		err = -EEXIST;
		goto out_unlock;
	}
	if (chital_nr_containers >= CHITAL_MAX_CONTAINERS) {
		err = -ENOSPC;
		goto out_unlock;
	}
	c->id = chital_next_id++;
	chital_nr_containers++;
	list_add_tail_rcu(&c->node, &chital_containers);
	spin_unlock(&chital_lock);

	cr.id = c->id;
	if (copy_to_user(arg, &cr, sizeof(cr)))
		return -EFAULT;	/* the container exists; LIST finds it */
	return 0;

out_unlock:
	spin_unlock(&chital_lock);
out_free:
	chital_container_free(c);	/* drops the module reference */
	return err;
out_module_put:
	module_put(THIS_MODULE);
	return err;
}

/* Unhash the members of @c that are left. */
static void chital_container_evict(struct chital_container *c)
{
	struct chital_member *m, *tmp;

	lockdep_assert_held(&chital_lock);
	list_for_each_entry_safe(m, tmp, &c->members, cnode) {
		chital_unlink_member(m);
		kfree_rcu(m, rcu);
	}
}

#define CHITAL_KILL_TIMEOUT	(10 * HZ)

/*
 * SIGKILL every member and wait until all have exited: they stay members,
 * confined, until their exit probe runs (and report EXIT and EMPTY as usual).
 * Tasks stuck longer than CHITAL_KILL_TIMEOUT are detached anyway.
 * Called and returns with chital_lock held; drops it while waiting.
 */
static void chital_container_kill(struct chital_container *c)
	__must_hold(&chital_lock)
{
	struct chital_member *m;

	lockdep_assert_held(&chital_lock);
	c->killing = true;
	list_for_each_entry(m, &c->members, cnode)
		send_sig(SIGKILL, m->task, 1);
	spin_unlock(&chital_lock);
	if (!wait_event_timeout(chital_empty_wait, !READ_ONCE(c->nr_tasks),
				CHITAL_KILL_TIMEOUT))
		pr_warn("chital: container %u: members still alive after SIGKILL, detaching them\n",
			c->id);
	spin_lock(&chital_lock);
	chital_container_evict(c);
}

static long chital_ioc_destroy(void __user *arg)
{
	struct chital_container *c;
	struct chital_destroy d;

	if (copy_from_user(&d, arg, sizeof(d)))
		return -EFAULT;
	if (d.flags & ~CHITAL_DESTROY_FLAGS)
		return -EINVAL;

	spin_lock(&chital_lock);
	c = chital_find_container(d.id);
	if (!c) {
		spin_unlock(&chital_lock);
		return -ENOENT;
	}
	/* Only the destroyer that set killing may free the container. */
	if (c->killing || (c->nr_tasks && !(d.flags & CHITAL_DESTROY_KILL))) {
		spin_unlock(&chital_lock);
		return -EBUSY;
	}
	if (c->nr_tasks)
		chital_container_kill(c);
	list_del_rcu(&c->node);
	chital_nr_containers--;
	spin_unlock(&chital_lock);

	/* Probes and hooks may still be looking at it. */
	synchronize_rcu();
	chital_container_free(c);
	return 0;
}

/* Add every thread of @p. */
static int chital_add_threads(struct chital_container *c, struct task_struct *p)
{
	struct task_struct *t;
	int err;

	lockdep_assert_held(&chital_lock);
	for_each_thread(p, t) {
		err = chital_add_task(c, t);
		if (err && err != -ESRCH)
			return err;
	}
	return 0;
}

/* Caller holds rcu_read_lock(). */
static bool chital_descends_from(struct task_struct *q, struct task_struct *p)
{
	struct task_struct *t = q;

	while (t->pid) {
		if (same_thread_group(t, p))
			return true;
		t = rcu_dereference(t->real_parent);
	}
	return false;
}

/* Add @p, and if @descendants every process below it. */
static int chital_add_process(struct chital_container *c, struct task_struct *p,
			      bool descendants)
{
	struct task_struct *q;
	int err;

	lockdep_assert_held(&chital_lock);
	err = chital_add_threads(c, p);
	if (err || !descendants)
		return err;
	for_each_process(q) {
		if (q == p || !chital_descends_from(q, p))
			continue;
		/* A descendant in another container stays there. */
		err = chital_add_threads(c, q);
		if (err && err != -EBUSY)
			return err;
	}
	return 0;
}

/* Caller holds rcu_read_lock(). */
static struct task_struct *chital_find_process(u32 pid)
{
	return pid_task(find_vpid(pid), PIDTYPE_PID);
}

static long chital_ioc_add_proc(void __user *arg)
{
	struct chital_container *c;
	struct task_struct *p;
	struct chital_proc pr;
	int err;

	if (copy_from_user(&pr, arg, sizeof(pr)))
		return -EFAULT;
	if (pr.flags & ~CHITAL_ADD_PROC_FLAGS || pr.reserved || !pr.pid ||
	    pr.pid > PID_MAX_LIMIT)
		return -EINVAL;

	/*
	 * Under RCU the thread and process lists are safe to walk. A fork that
	 * is in flight while the parent is added may miss membership: add a
	 * stopped process, or one that waits to be added before it execs.
	 */
	rcu_read_lock();
	p = chital_find_process(pr.pid);
	if (!p || p->flags & PF_EXITING || p->flags & PF_KTHREAD ||
	    !thread_group_leader(p)) {
		err = -ESRCH;
		goto out_rcu;
	}
	if (is_global_init(p)) {
		err = -EPERM;
		goto out_rcu;
	}
	spin_lock(&chital_lock);
	c = chital_find_container(pr.id);
	if (!c) {
		err = -ENOENT;
		goto out_unlock;
	}
	if (c->killing) {
		err = -EBUSY;	/* being destroyed */
		goto out_unlock;
	}
	/*
	 * On failure the tasks added so far stay members: that is never less
	 * confined, and REMOVE_PROC or DESTROY undo it.
	 */
	err = chital_add_process(c, p, pr.flags & CHITAL_PROC_DESCENDANTS);
out_unlock:
	spin_unlock(&chital_lock);
out_rcu:
	rcu_read_unlock();
	return err;
}

static long chital_ioc_remove_proc(void __user *arg)
{
	struct chital_member *m;
	struct task_struct *p, *t;
	struct chital_container *c;
	struct chital_proc pr;
	bool emptied = false;
	int err = -ESRCH;

	if (copy_from_user(&pr, arg, sizeof(pr)))
		return -EFAULT;
	if (pr.flags || pr.reserved || !pr.pid || pr.pid > PID_MAX_LIMIT)
		return -EINVAL;

	rcu_read_lock();
	spin_lock(&chital_lock);
	c = chital_find_container(pr.id);
	if (!c) {
		err = -ENOENT;
		goto out_unlock;
	}
	p = chital_find_process(pr.pid);
	if (!p)
		goto out_unlock;
	for_each_thread(p, t) {
		m = chital_lookup_member(t);
		if (!m || m->container != c)
			continue;
		chital_unlink_member(m);
		kfree_rcu(m, rcu);
		err = 0;
		emptied = !c->nr_tasks;
	}
	if (emptied) {
		chital_queue_event(CHITAL_EVENT_EMPTY, c->id, 0, 0, 0);
		wake_up(&chital_empty_wait);
	}
out_unlock:
	spin_unlock(&chital_lock);
	rcu_read_unlock();
	return err;
}

static long chital_ioc_list(void __user *arg)
{
	struct chital_container *c;
	struct chital_list l;
	u32 *ids, n = 0, cap;
	long err = 0;

	if (copy_from_user(&l, arg, sizeof(l)))
		return -EFAULT;
	if (l.count)
		return -EINVAL;
	cap = min_t(u32, l.capacity, CHITAL_MAX_CONTAINERS);
	ids = kvcalloc(max_t(u32, cap, 1), sizeof(*ids), GFP_KERNEL);
	if (!ids)
		return -ENOMEM;

	spin_lock(&chital_lock);
	list_for_each_entry(c, &chital_containers, node) {
		if (n < cap)
			ids[n] = c->id;
		n++;
	}
	spin_unlock(&chital_lock);

	l.count = n;
	if (copy_to_user(u64_to_user_ptr(l.ids_ptr), ids,
			 min(n, cap) * sizeof(*ids)) ||
	    copy_to_user(arg, &l, sizeof(l)))
		err = -EFAULT;
	kvfree(ids);
	return err;
}

/* Fill the fixed part of @info and up to @cap member pids from @c. */
static u32 chital_info_fill(struct chital_container *c, struct chital_info *info,
			    u32 *pids, u32 cap)
{
	struct chital_member *m;
	u32 n = 0;
	int i;

	lockdep_assert_held(&chital_lock);
	memcpy(info->name, c->name, sizeof(info->name));
	info->root_len = strlen(c->root_str);
	info->syscalls_total = atomic64_read(&c->other_calls);
	for (i = 0; i < CHITAL_NR_SYSCALLS; i++)
		info->syscalls_total += atomic64_read(&c->calls[i]);
	info->denied_total = atomic64_read(&c->denied_total);
	bitmap_to_arr64(info->policy.deny, c->deny, CHITAL_NR_SYSCALLS);
	info->policy.flags = c->policy_flags;
	info->limits = c->limits;
	list_for_each_entry(m, &c->members, cnode) {
		if (!thread_group_leader(m->task))
			continue;
		if (n < cap)
			pids[n] = task_tgid_vnr(m->task);
		n++;
	}
	info->member_count = n;
	return min(n, cap);
}

static long chital_ioc_info(void __user *arg)
{
	struct chital_container *c;
	struct chital_info info;
	char *root = NULL;
	u32 *pids, cap, n;
	long err = 0;

	if (copy_from_user(&info, arg, sizeof(info)))
		return -EFAULT;
	if (info.flags || info.root_len || info.member_count ||
	    memchr_inv(info.name, 0, sizeof(info.name)))
		return -EINVAL;
	cap = min_t(u32, info.members_cap, CHITAL_MAX_PIDS);
	pids = kvcalloc(max_t(u32, cap, 1), sizeof(*pids), GFP_KERNEL);
	if (!pids)
		return -ENOMEM;

	spin_lock(&chital_lock);
	c = chital_find_container(info.id);
	if (!c) {
		spin_unlock(&chital_lock);
		err = -ENOENT;
		goto out_free;
	}
	n = chital_info_fill(c, &info, pids, cap);
	/* root_str is immutable; copy it while the container cannot go away. */
	if (info.root_len < info.root_cap)
		root = kstrdup(c->root_str, GFP_ATOMIC);
	spin_unlock(&chital_lock);

	if (info.root_len < info.root_cap && !root) {
		err = -ENOMEM;
		goto out_free;
	}
	if ((root && copy_to_user(u64_to_user_ptr(info.root_ptr), root,
				  info.root_len + 1)) ||
	    copy_to_user(u64_to_user_ptr(info.members_ptr), pids,
			 n * sizeof(*pids)) ||
	    copy_to_user(arg, &info, sizeof(info)))
		err = -EFAULT;
out_free:
	kfree(root);
	kvfree(pids);
	return err;
}

static long chital_ioc_stats(void __user *arg)
{
	struct chital_syscall_stat *st;
	struct chital_container *c;
	struct chital_stats s;
	long err = 0;
	u32 i;

	if (copy_from_user(&s, arg, sizeof(s)))
		return -EFAULT;
	if (s.flags || s.count)
		return -EINVAL;
	s.count = min_t(u32, s.capacity, CHITAL_NR_SYSCALLS);
	st = kvcalloc(CHITAL_NR_SYSCALLS, sizeof(*st), GFP_KERNEL);
	if (!st)
		return -ENOMEM;

	spin_lock(&chital_lock);
	c = chital_find_container(s.id);
	if (!c) {
		spin_unlock(&chital_lock);
		err = -ENOENT;
		goto out_free;
	}
	for (i = 0; i < s.count; i++) {
		st[i].calls = atomic64_read(&c->calls[i]);
		st[i].denied = atomic64_read(&c->denied[i]);
	}
	spin_unlock(&chital_lock);

	if (copy_to_user(u64_to_user_ptr(s.stats_ptr), st,
			 s.count * sizeof(*st)) ||
	    copy_to_user(arg, &s, sizeof(s)))
		err = -EFAULT;
out_free:
	kvfree(st);
	return err;
}

static long chital_ioc_set_policy(void __user *arg)
{
	struct chital_set_policy sp;
	struct chital_container *c;
	DECLARE_BITMAP(deny, CHITAL_NR_SYSCALLS);

	if (copy_from_user(&sp, arg, sizeof(sp)))
		return -EFAULT;
	if (sp.flags || !chital_policy_valid(&sp.policy))
		return -EINVAL;
	bitmap_from_arr64(deny, sp.policy.deny, CHITAL_NR_SYSCALLS);

	spin_lock(&chital_lock);
	c = chital_find_container(sp.id);
	if (!c) {
		spin_unlock(&chital_lock);
		return -ENOENT;
	}
	/* Word by word: lockless readers see each bit either old or new. */
	bitmap_copy(c->deny, deny, CHITAL_NR_SYSCALLS);
	WRITE_ONCE(c->policy_flags, sp.policy.flags);
	spin_unlock(&chital_lock);
	return 0;
}

static long chital_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	void __user *uarg = (void __user *)arg;

	if (chital_is_member(current))
		return -EPERM;
	switch (cmd) {
	case CHITAL_IOC_VERSION:
		return chital_ioc_version(uarg);
	case CHITAL_IOC_CREATE:
		return chital_ioc_create(uarg);
	case CHITAL_IOC_DESTROY:
		return chital_ioc_destroy(uarg);
	case CHITAL_IOC_ADD_PROC:
		return chital_ioc_add_proc(uarg);
	case CHITAL_IOC_REMOVE_PROC:
		return chital_ioc_remove_proc(uarg);
	case CHITAL_IOC_LIST:
		return chital_ioc_list(uarg);
	case CHITAL_IOC_INFO:
		return chital_ioc_info(uarg);
	case CHITAL_IOC_STATS:
		return chital_ioc_stats(uarg);
	case CHITAL_IOC_SET_POLICY:
		return chital_ioc_set_policy(uarg);
	}
	return -ENOTTY;
}

/*
 * The device has one owner, the agent: the event queue is a single stream
 * that a second reader would steal records from, and every ioctl acts on
 * all containers. So open needs CAP_SYS_ADMIN in the initial user
 * namespace (not only the 0600 mode of the node: a root process without
 * capabilities must not get in), members are refused whatever their
 * capabilities, and while one open file exists every other open fails with
 * -EBUSY. The slot is freed when that file is released (its last
 * descriptor closed).
 */
static atomic_t chital_device_taken = ATOMIC_INIT(0);

static int chital_open(struct inode *inode, struct file *file)
{
	int err;

	if (chital_is_member(current) || !capable(CAP_SYS_ADMIN))
		return -EPERM;
	if (atomic_cmpxchg(&chital_device_taken, 0, 1))
		return -EBUSY;
	err = nonseekable_open(inode, file);
	if (err)
		goto out_release_slot;
	return 0;

out_release_slot:
	atomic_set(&chital_device_taken, 0);
	return err;
}

static int chital_release(struct inode *inode, struct file *file)
{
	atomic_set(&chital_device_taken, 0);
	return 0;
}

static ssize_t chital_read(struct file *file, char __user *buf, size_t len,
			   loff_t *ppos)
{
	if (chital_is_member(current))
		return -EPERM;
	return chital_events_read(file, buf, len);
}

static __poll_t chital_poll(struct file *file, poll_table *wait)
{
	if (chital_is_member(current))
		return EPOLLERR;
	return chital_events_poll(file, wait);
}

static const struct file_operations chital_fops = {
	.owner = THIS_MODULE,
	.open = chital_open,
	.release = chital_release,
	.read = chital_read,
	.poll = chital_poll,
	.unlocked_ioctl = chital_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
};

static struct miscdevice chital_miscdev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = CHITAL_DEVICE_NAME,
	.fops = &chital_fops,
	.mode = 0600,
};

static int __init chital_init(void)
{
	int err;

	chital_check_abi();
	err = chital_events_init();
	if (err)
		return err;
	err = chital_intercept_init();
	if (err)
		goto out_events;
	err = misc_register(&chital_miscdev);
	if (err)
		goto out_intercept;
	pr_info("chital: loaded, ABI %d.%d\n", CHITAL_ABI_MAJOR, CHITAL_ABI_MINOR);
	return 0;

out_intercept:
	chital_intercept_exit();
out_events:
	chital_events_exit();
	return err;
}

/* Every container holds a module reference: none exists here. */
static void __exit chital_exit(void)
{
	misc_deregister(&chital_miscdev);
	chital_intercept_exit();
	chital_events_exit();
}

module_init(chital_init);
module_exit(chital_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("chital: kernel-held containers");
MODULE_VERSION(CHITAL_VERSION);
