/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * chital: kernel-held containers reached through /dev/chital.
 *
 * This header is the single definition of the ABI between chital.ko and
 * user space (the agent, and its ctypes mirror chital.agent.device.abi).
 *
 * Rules of the ABI:
 *  - only __u32 and __u64 (and __u8 arrays for strings); user pointers are
 *    passed as __u64;
 *  - every "reserved" field and every padding field must be zero, or the
 *    ioctl fails with -EINVAL; unknown flags fail with -EINVAL;
 *  - unknown commands fail with -ENOTTY;
 *  - a compatible change bumps CHITAL_ABI_MINOR, an incompatible one
 *    CHITAL_ABI_MAJOR; user space checks CHITAL_IOC_VERSION first.
 *
 * Containment: a process that is a member of a container may not make the
 * following system calls (they fail with -EPERM, are counted as denied and
 * reported as DENIED events), whatever the container's policy says:
 *   chroot, pivot_root, mount, umount2, fsopen, fsconfig, fsmount, fspick,
 *   open_tree, move_mount, mount_setattr, setns, unshare and clone with any
 *   CLONE_NEW* flag, clone3 (fails with -ENOSYS so that libc falls back to
 *   clone, whose flags the module can check without a race),
 *   init_module, finit_module, delete_module, kexec_load, kexec_file_load,
 *   reboot, io_uring_setup, open_by_handle_at, bpf, perf_event_open,
 *   and every compat (int $0x80, 32-bit) system call.
 * In addition, for a member:
 *  - tasks outside its container do not exist: kill (kill(pid, 0)
 *    included), tkill, tgkill, rt_sigqueueinfo, rt_tgsigqueueinfo, ptrace,
 *    process_vm_readv, process_vm_writev, kcmp, setpriority, getpriority,
 *    prlimit64,
 *    sched_{set,get}{affinity,scheduler,param,attr}, sched_rr_get_interval,
 *    ioprio_set, ioprio_get, getsid, getpgid, migrate_pages and move_pages
 *    aimed at one fail with -ESRCH, as if the pid were free, so that a
 *    member cannot tell which pids exist. Signals that name no single task
 *    by number (pidfd_send_signal, kill of a process group or of -1) never
 *    reach a task outside either: pidfd_send_signal fails with -EPERM, a
 *    group signal skips the tasks outside. One exception, as on Linux: a
 *    member may signal its own exited but unreaped children (and a process
 *    whose leader thread exited first);
 *  - ptrace access to a task outside that names it otherwise than by a pid
 *    number fails too (PTRACE_TRACEME under an outside parent: -EPERM;
 *    /proc/<pid>/mem and the like: -EACCES);
 *  - SIGIO/SIGURG by proxy: fcntl(F_SETOWN) naming a process outside fails
 *    with -ESRCH, naming a process group with a task outside with -EPERM.
 *    F_SETOWN_EX and the FIOSETOWN/SIOCSPGRP ioctls pass the owner through
 *    user memory; for them the module checks the owner the kernel resolved
 *    (in __f_setown()) and, if it is outside, sets no owner at all: the
 *    call succeeds, F_GETOWN reads 0 and the file signals nobody;
 *  - files outside the container root cannot be opened, created, linked,
 *    renamed, truncated (ftruncate of an inherited descriptor too), chmod-ed
 *    or chown-ed (-EACCES from the file and path hooks);
 *  - /dev/chital cannot be opened or used (-EPERM).
 * Each of these refusals is counted as a denial of the system call in
 * progress (denied_total, STATS) and queued as a DENIED event, like the
 * policy's.
 *
 * The policy (struct chital_policy) adds, per container, the system calls
 * of its deny bitmap (-EPERM) and, with CHITAL_POLICY_DENY_RAW_SOCKETS,
 * socket() and socketpair() of family AF_PACKET or of type SOCK_RAW (in any
 * family, netlink included: use SOCK_DGRAM there) or SOCK_PACKET (-EPERM).
 *
 * The device has one owner: open needs CAP_SYS_ADMIN in the initial user
 * namespace (-EPERM), and while it is open every other open fails with
 * -EBUSY until the owner's file is released. Events (read) and commands
 * (ioctl) are the owner's alone.
 *
 * Process ids: ADD_PROC, REMOVE_PROC and INFO use the caller's pid
 * namespace; event records carry ids of the initial pid namespace (run the
 * agent there).
 */
#ifndef _UAPI_LINUX_CHITAL_H
#define _UAPI_LINUX_CHITAL_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define CHITAL_ABI_MAJOR	2
#define CHITAL_ABI_MINOR	0

#define CHITAL_DEVICE_NAME	"chital"

/* Longest name and root path, in bytes, without the terminating NUL. */
#define CHITAL_NAME_MAX		63
#define CHITAL_ROOT_MAX		4095
/* System call numbers (x86_64) covered by policies and counters. */
#define CHITAL_NR_SYSCALLS	512
#define CHITAL_POLICY_WORDS	(CHITAL_NR_SYSCALLS / 64)

/* Flags of struct chital_policy. */
/*
 * socket()/socketpair() of AF_PACKET, or of type SOCK_RAW or SOCK_PACKET in
 * any family: -EPERM (decided from the registers at system call entry)
 */
#define CHITAL_POLICY_DENY_RAW_SOCKETS	(1ULL << 0)
#define CHITAL_POLICY_FLAGS		CHITAL_POLICY_DENY_RAW_SOCKETS

/**
 * struct chital_policy - what members of a container may not do
 * @deny: bit n of deny[n / 64] set: system call n fails with -EPERM
 * @flags: CHITAL_POLICY_*; unknown flags are rejected with -EINVAL
 * @reserved: must be zero
 */
struct chital_policy {
	__u64 deny[CHITAL_POLICY_WORDS];
	__u64 flags;
	__u64 reserved;
};

/**
 * struct chital_limits - limits the module enforces
 * @max_members: most member processes (threads are not counted); 0 means
 *	unlimited.  ADD_PROC beyond it fails with -ENOSPC; a fork beyond it
 *	kills the new child.
 * @reserved: must be zero
 */
struct chital_limits {
	__u32 max_members;
	__u32 reserved[3];
};

/**
 * struct chital_version - answer of CHITAL_IOC_VERSION (all fields out)
 * @abi_major: CHITAL_ABI_MAJOR of the module
 * @abi_minor: CHITAL_ABI_MINOR of the module
 * @sizeof_create: sizeof(struct chital_create) in the module
 * @sizeof_info: sizeof(struct chital_info)
 * @sizeof_event: sizeof(struct chital_event), the size of one read() record
 * @sizeof_stats_entry: sizeof(struct chital_syscall_stat)
 * @nr_syscalls: CHITAL_NR_SYSCALLS
 * @event_queue_len: capacity of the event queue, in records
 * @events_dropped: events dropped by the full queue since the module loaded
 * @module_version: NUL-terminated module version
 * @kernel_release: NUL-terminated release of the running kernel
 */
struct chital_version {
	__u32 abi_major;
	__u32 abi_minor;
	__u32 sizeof_create;
	__u32 sizeof_info;
	__u32 sizeof_event;
	__u32 sizeof_stats_entry;
	__u32 nr_syscalls;
	__u32 event_queue_len;
	__u64 events_dropped;
	__u8 module_version[32];
	__u8 kernel_release[64];
};

/**
 * struct chital_create - argument of CHITAL_IOC_CREATE
 * @flags: in, must be zero
 * @id: out, the new container's id (never reused while the module is loaded)
 * @name: in, NUL-terminated, 1..CHITAL_NAME_MAX bytes of [A-Za-z0-9_.-],
 *	unique among containers (-EEXIST)
 * @root_ptr: in, user pointer to the root path (absolute, need not be
 *	NUL-terminated); resolved once, in the caller's context, at CREATE
 * @root_len: in, length of the root path, 1..CHITAL_ROOT_MAX
 * @reserved: must be zero
 * @policy: in, the container's deny policy
 * @limits: in
 */
struct chital_create {
	__u32 flags;
	__u32 id;
	__u8 name[CHITAL_NAME_MAX + 1];
	__u64 root_ptr;
	__u32 root_len;
	__u32 reserved;
	struct chital_policy policy;
	struct chital_limits limits;
};

/* Flags of struct chital_destroy. */
#define CHITAL_DESTROY_KILL	(1U << 0)	/* SIGKILL the members first */
#define CHITAL_DESTROY_FLAGS	CHITAL_DESTROY_KILL

/**
 * struct chital_destroy - argument of CHITAL_IOC_DESTROY
 * @id: the container
 * @flags: CHITAL_DESTROY_*; without CHITAL_DESTROY_KILL a container that
 *	still has members is not destroyed (-EBUSY)
 *
 * With CHITAL_DESTROY_KILL every member gets SIGKILL (children forked
 * meanwhile too) and the ioctl waits until they have exited: they stay
 * members, confined, until then, and their EXIT events and the EMPTY event
 * are queued as usual. Members still alive after 10 s (uninterruptible
 * sleepers) are detached. While that runs, DESTROY and ADD_PROC of the
 * container fail with -EBUSY.
 */
struct chital_destroy {
	__u32 id;
	__u32 flags;
};

/* Flags of struct chital_proc. */
#define CHITAL_PROC_DESCENDANTS	(1U << 0)	/* ADD_PROC: and all descendants */
#define CHITAL_ADD_PROC_FLAGS	CHITAL_PROC_DESCENDANTS

/**
 * struct chital_proc - argument of CHITAL_IOC_ADD_PROC and REMOVE_PROC
 * @id: the container
 * @pid: a process id (thread group id) in the caller's pid namespace; all
 *	its threads are added or removed
 * @flags: CHITAL_PROC_* (ADD_PROC), must be zero for REMOVE_PROC
 * @reserved: must be zero
 */
struct chital_proc {
	__u32 id;
	__u32 pid;
	__u32 flags;
	__u32 reserved;
};

/**
 * struct chital_list - argument of CHITAL_IOC_LIST
 * @ids_ptr: in, user pointer to an array of __u32 container ids
 * @capacity: in, number of entries in that array (may be zero)
 * @count: out, number of containers; at most @capacity ids are written,
 *	in ascending order
 */
struct chital_list {
	__u64 ids_ptr;
	__u32 capacity;
	__u32 count;
};

/**
 * struct chital_info - argument of CHITAL_IOC_INFO
 * @id: in, the container
 * @flags: in, must be zero
 * @name: out, NUL-terminated
 * @root_ptr: in, user pointer to a buffer for the NUL-terminated root path
 *	(may be zero when @root_cap is zero)
 * @root_cap: in, size of that buffer
 * @root_len: out, length of the root path without NUL; the path is copied
 *	only when root_len < root_cap
 * @members_ptr: in, user pointer to an array of __u32 member pids
 * @members_cap: in, entries in that array
 * @member_count: out, number of member processes; at most @members_cap
 *	pids are written
 * @syscalls_total: out, system calls made by members
 * @denied_total: out, system calls of members that were denied
 * @policy: out
 * @limits: out
 */
struct chital_info {
	__u32 id;
	__u32 flags;
	__u8 name[CHITAL_NAME_MAX + 1];
	__u64 root_ptr;
	__u32 root_cap;
	__u32 root_len;
	__u64 members_ptr;
	__u32 members_cap;
	__u32 member_count;
	__u64 syscalls_total;
	__u64 denied_total;
	struct chital_policy policy;
	struct chital_limits limits;
};

/**
 * struct chital_syscall_stat - counters of one system call number
 * @calls: calls made by members (denied ones included)
 * @denied: calls that were denied
 */
struct chital_syscall_stat {
	__u64 calls;
	__u64 denied;
};

/**
 * struct chital_stats - argument of CHITAL_IOC_STATS
 * @id: in, the container
 * @flags: in, must be zero
 * @stats_ptr: in, user pointer to an array of struct chital_syscall_stat,
 *	indexed by system call number
 * @capacity: in, entries in that array
 * @count: out, entries written: min(@capacity, CHITAL_NR_SYSCALLS)
 */
struct chital_stats {
	__u32 id;
	__u32 flags;
	__u64 stats_ptr;
	__u32 capacity;
	__u32 count;
};

/**
 * struct chital_set_policy - argument of CHITAL_IOC_SET_POLICY
 * @id: the container
 * @flags: must be zero
 * @policy: the new policy, effective for the members' next system calls
 */
struct chital_set_policy {
	__u32 id;
	__u32 flags;
	struct chital_policy policy;
};

/* Kinds of struct chital_event. */
enum chital_event_kind {
	CHITAL_EVENT_EXIT = 1,		/* pid exited, status = wait status */
	CHITAL_EVENT_FORK = 2,		/* pid forked by ppid, joined the container */
	CHITAL_EVENT_DENIED = 3,	/* syscall_nr denied count times to pid */
	CHITAL_EVENT_EMPTY = 4,		/* the container has no members left */
};

/**
 * struct chital_event - one record returned by read() on /dev/chital
 * @seq: sequence number, starts at 1, +1 per queued event; a gap means
 *	events were dropped
 * @kind: enum chital_event_kind
 * @container_id: the container
 * @pid: EXIT, FORK, DENIED: the process (thread group id)
 * @ppid: FORK: the parent process
 * @status: EXIT: wait status as waitpid() reports it
 * @syscall_nr: DENIED: the system call number (compat calls: nr | 0x80000000)
 * @count: DENIED: consecutive identical denials coalesced into this record
 * @dropped: events dropped by the full queue since the module loaded
 *
 * read() returns whole records only: a buffer smaller than one record
 * gets -EINVAL; it blocks unless O_NONBLOCK (then -EAGAIN).
 */
struct chital_event {
	__u64 seq;
	__u32 kind;
	__u32 container_id;
	__u32 pid;
	__u32 ppid;
	__u32 status;
	__u32 syscall_nr;
	__u64 count;
	__u64 dropped;
};

#define CHITAL_COMPAT_SYSCALL	0x80000000U

#define CHITAL_IOC_MAGIC	0xC7

#define CHITAL_IOC_VERSION	_IOR(CHITAL_IOC_MAGIC, 0x00, struct chital_version)
#define CHITAL_IOC_CREATE	_IOWR(CHITAL_IOC_MAGIC, 0x01, struct chital_create)
#define CHITAL_IOC_DESTROY	_IOW(CHITAL_IOC_MAGIC, 0x02, struct chital_destroy)
#define CHITAL_IOC_ADD_PROC	_IOW(CHITAL_IOC_MAGIC, 0x03, struct chital_proc)
#define CHITAL_IOC_REMOVE_PROC	_IOW(CHITAL_IOC_MAGIC, 0x04, struct chital_proc)
#define CHITAL_IOC_LIST		_IOWR(CHITAL_IOC_MAGIC, 0x05, struct chital_list)
#define CHITAL_IOC_INFO		_IOWR(CHITAL_IOC_MAGIC, 0x06, struct chital_info)
#define CHITAL_IOC_STATS	_IOWR(CHITAL_IOC_MAGIC, 0x07, struct chital_stats)
#define CHITAL_IOC_SET_POLICY	_IOW(CHITAL_IOC_MAGIC, 0x08, struct chital_set_policy)

#endif /* _UAPI_LINUX_CHITAL_H */
