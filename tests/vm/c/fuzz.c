/*
 * fuzz: random ioctls on /dev/chital while other processes fork, join containers and exit.
 *
 *   fuzz ITERATIONS SEED
 *
 * Runs in a new pid namespace (so a random pid in a struct can only name one of the fuzzer's own
 * processes, never the test runner or init). Two threads share ITERATIONS calls: a third of them
 * fully random command numbers, a third random direction/size/number under the chital magic, a
 * third well-formed commands carrying random field values; arguments point at nothing, at kernel
 * addresses, at garbage, or across into an unmapped guard page. Meanwhile a forker process keeps
 * forking children that join random containers (some with descendants) and exit, and reads
 * events. At the end every container left is destroyed (killing members) and one JSON line is
 * printed: {"calls": N, "ok": K, "errnos": {...}, "containers_left": C, "version_ok": 1}.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "chital_user.h"

#define NTHREADS 2
#define MAX_ERRNO 200

static int dev;
static long iterations;
static unsigned long seed;
static unsigned char *guard_page_end;	/* last byte before a PROT_NONE page */
static unsigned char *big;		/* 64 KiB of garbage */
static volatile pid_t recent_pids[16];
static long errno_count[MAX_ERRNO];
static long ok_count;
static pthread_mutex_t count_lock = PTHREAD_MUTEX_INITIALIZER;

static const unsigned long chital_cmds[] = {
	CHITAL_IOC_VERSION, CHITAL_IOC_CREATE, CHITAL_IOC_DESTROY, CHITAL_IOC_ADD_PROC,
	CHITAL_IOC_REMOVE_PROC, CHITAL_IOC_LIST, CHITAL_IOC_INFO, CHITAL_IOC_STATS,
	CHITAL_IOC_SET_POLICY,
};

static inline unsigned long rnd(unsigned long *s)
{
	/* xorshift64*: deterministic per seed, no libc state shared between threads */
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 2685821657736338717ULL;
}

static void *random_pointer(unsigned long *s, size_t need)
{
	switch (rnd(s) % 9) {
	case 0: return NULL;
	case 1: return (void *)1;
	case 2: return (void *)-1L;
	case 3: return (void *)0xffffffff81000000UL;		/* kernel text */
	case 4: return (void *)0xffff888000000000UL;		/* direct map */
	case 5: return (void *)0x1000UL;			/* unmapped low page */
	case 6:	/* runs into the PROT_NONE page above; never below the writable page */
		return guard_page_end - (rnd(s) % ((need < 4096 ? need : 4096) + 1));
	case 7: return (void *)(rnd(s) & 0x00007fffffffffffUL);	/* random user address */
	default: return big + rnd(s) % 4096;
	}
}

static void fill_random(unsigned long *s, void *p, size_t n)
{
	unsigned char *b = p;

	for (size_t i = 0; i < n; i++)
		b[i] = (unsigned char)rnd(s);
}

static uint32_t small_id(unsigned long *s)
{
	return (uint32_t)(rnd(s) % 4 ? rnd(s) % 16 : rnd(s));
}

/* A well-formed command whose fields are random but plausible. */
static long structured_call(unsigned long *s, void *arg_buf)
{
	static const char *roots[] = { "/", "/tmp", "/nonexistent", "relative", "/tmp/../tmp/." };
	unsigned long cmd = chital_cmds[rnd(s) % (sizeof(chital_cmds) / sizeof(chital_cmds[0]))];
	size_t size = _IOC_SIZE(cmd);
	int garbage = rnd(s) % 4 == 0;

	memset(arg_buf, 0, size);
	if (garbage)
		fill_random(s, arg_buf, size);
	if (cmd == CHITAL_IOC_CREATE) {
		struct chital_create *c = arg_buf;
		const char *root = roots[rnd(s) % 5];

		snprintf((char *)c->name, sizeof(c->name), "fz%lu", rnd(s) % 64);
		c->root_ptr = rnd(s) % 8 ? (uintptr_t)root : (uintptr_t)random_pointer(s, 64);
		c->root_len = rnd(s) % 8 ? strlen(root) : (uint32_t)rnd(s);
		if (!garbage) {
			fill_random(s, &c->policy, sizeof(c->policy));
			/* keep exit usable so members can die normally */
			c->policy.deny[60 / 64] &= ~(1ULL << 60);
			c->policy.deny[231 / 64] &= ~(1ULL << (231 % 64));
		}
	} else if (cmd == CHITAL_IOC_ADD_PROC || cmd == CHITAL_IOC_REMOVE_PROC) {
		struct chital_proc *p = arg_buf;

		p->id = small_id(s);
		p->pid = (uint32_t)recent_pids[rnd(s) % 16];
		if (!garbage)
			p->flags = (uint32_t)(rnd(s) % 3);
	} else if (cmd == CHITAL_IOC_DESTROY) {
		struct chital_destroy *d = arg_buf;

		d->id = small_id(s);
		d->flags = (uint32_t)(rnd(s) % 3);
	} else if (cmd == CHITAL_IOC_LIST) {
		struct chital_list *l = arg_buf;

		l->ids_ptr = (uintptr_t)random_pointer(s, 64);
		l->capacity = (uint32_t)(rnd(s) % 2 ? rnd(s) % 64 : rnd(s));
	} else if (cmd == CHITAL_IOC_INFO) {
		struct chital_info *in = arg_buf;

		in->id = small_id(s);
		in->root_ptr = (uintptr_t)random_pointer(s, 4096);
		in->root_cap = (uint32_t)(rnd(s) % 2 ? rnd(s) % 4097 : rnd(s));
		in->members_ptr = (uintptr_t)random_pointer(s, 256);
		in->members_cap = (uint32_t)(rnd(s) % 2 ? rnd(s) % 64 : rnd(s));
	} else if (cmd == CHITAL_IOC_STATS) {
		struct chital_stats *st = arg_buf;

		st->id = small_id(s);
		st->stats_ptr = (uintptr_t)random_pointer(s, 8192);
		st->capacity = (uint32_t)(rnd(s) % 2 ? rnd(s) % 600 : rnd(s));
	} else if (cmd == CHITAL_IOC_SET_POLICY) {
		struct chital_set_policy *sp = arg_buf;

		sp->id = small_id(s);
		sp->policy.deny[60 / 64] &= ~(1ULL << 60);
		sp->policy.deny[231 / 64] &= ~(1ULL << (231 % 64));
	}
	return ioctl(dev, cmd, rnd(s) % 16 ? arg_buf : random_pointer(s, size));
}

static void *fuzz_thread(void *arg)
{
	unsigned long s = seed ^ (0x9e3779b97f4a7c15UL * (1 + (uintptr_t)arg));
	void *buf = malloc(1 << 16);

	for (long i = 0; i < iterations / NTHREADS; i++) {
		long r;
		unsigned long cmd;

		switch (rnd(&s) % 3) {
		case 0:
			cmd = rnd(&s) & 0xffffffffUL;
			r = ioctl(dev, cmd, random_pointer(&s, 4096));
			break;
		case 1:
			cmd = _IOC(rnd(&s) % 4, CHITAL_IOC_MAGIC, rnd(&s) % 16, rnd(&s) % 4096);
			fill_random(&s, buf, 4096);
			r = ioctl(dev, cmd, rnd(&s) % 2 ? buf : random_pointer(&s, 4096));
			break;
		default:
			r = structured_call(&s, buf);
		}
		if (i % 512 == 0) {	/* read and poll the event queue with odd sizes */
			int fl = fcntl(dev, F_GETFL);

			fcntl(dev, F_SETFL, fl | O_NONBLOCK);
			(void)!read(dev, rnd(&s) % 2 ? buf : random_pointer(&s, 256), rnd(&s) % 300);
		}
		pthread_mutex_lock(&count_lock);
		if (r >= 0)
			ok_count++;
		else if (errno < MAX_ERRNO)
			errno_count[errno]++;
		pthread_mutex_unlock(&count_lock);
	}
	free(buf);
	return NULL;
}

/* Fork children that join random containers, fork once more, and exit, until killed. */
static void forker(void)
{
	unsigned long s = seed * 31 + 7;
	unsigned int n = 0;

	for (;;) {
		pid_t pid = fork();

		if (pid == 0) {
			if (rnd(&s) % 2)
				chital_add_proc(dev, small_id(&s), getpid(), (uint32_t)(rnd(&s) % 2));
			if (rnd(&s) % 2 && fork() == 0)
				_exit(0);
			_exit(0);
		}
		if (pid > 0)
			recent_pids[n++ % 16] = pid;
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
		usleep(200);
	}
}

static int fuzz_main(void)
{
	pthread_t th[NTHREADS];
	struct chital_version v;
	uint32_t ids[4096];
	struct chital_list l = { .ids_ptr = (uintptr_t)ids, .capacity = 4096 };
	pid_t fk;
	long calls = 0;
	int version_ok;
	/* [PROT_NONE][writable][PROT_NONE]: a kernel write through a pointer near the writable page
	 * can only fault, never land in a neighbouring mapping such as a thread's stack. */
	unsigned char *pages = mmap(NULL, 3 * 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (pages == MAP_FAILED)
		return 1;
	mprotect(pages + 4096, 4096, PROT_READ | PROT_WRITE);
	guard_page_end = pages + 2 * 4096;
	big = malloc(1 << 16);
	memset(big, 0xa5, 1 << 16);
	dev = chital_open();
	fk = fork();
	if (fk == 0)
		forker();
	for (long t = 0; t < NTHREADS; t++)
		pthread_create(&th[t], NULL, fuzz_thread, (void *)t);
	for (int t = 0; t < NTHREADS; t++)
		pthread_join(th[t], NULL);
	kill(fk, SIGKILL);
	while (waitpid(-1, NULL, 0) > 0 || errno == EINTR)
		;
	/* Clean up every container the fuzz created, then count what is left. */
	if (ioctl(dev, CHITAL_IOC_LIST, &l) == 0)
		for (uint32_t i = 0; i < l.count && i < 4096; i++)
			chital_destroy(dev, ids[i], 1);
	l.count = 0;
	ioctl(dev, CHITAL_IOC_LIST, &l);
	memset(&v, 0, sizeof(v));
	version_ok = ioctl(dev, CHITAL_IOC_VERSION, &v) == 0 && v.abi_major == CHITAL_ABI_MAJOR;
	printf("{\"calls\": %ld, \"ok\": %ld, \"errnos\": {", (calls = (iterations / NTHREADS) * NTHREADS), ok_count);
	for (int e = 0, first = 1; e < MAX_ERRNO; e++)
		if (errno_count[e]) {
			printf("%s\"%d\": %ld", first ? "" : ", ", e, errno_count[e]);
			first = 0;
		}
	printf("}, \"containers_left\": %u, \"version_ok\": %d}\n", l.count, version_ok);
	fflush(stdout);
	return 0;
}

int main(int argc, char **argv)
{
	pid_t pid;
	int status;

	if (argc != 3) {
		fprintf(stderr, "usage: fuzz ITERATIONS SEED\n");
		return 2;
	}
	iterations = atol(argv[1]);
	seed = strtoul(argv[2], NULL, 0) | 1;
	if (unshare(CLONE_NEWPID) < 0) {
		perror("unshare(CLONE_NEWPID)");
		return 1;
	}
	pid = fork();
	if (pid == 0)
		_exit(fuzz_main());
	if (waitpid(pid, &status, 0) < 0)
		return 1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
