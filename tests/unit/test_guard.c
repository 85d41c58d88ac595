/* Unit tests for core/guard.h: a mapping truncated under us. */
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "guard.h"
#include "ring.h"
#include "tap.h"
#include "token.h"

#define SIZE (64 * 1024)

static int fd = -1;
static uint8_t *map;

/* A 64 KiB shared mapping of a memfd, its pointers set, then the file
 * truncated to keep bytes: pages past them now raise SIGBUS. */
static bool map_then_truncate(off_t keep, uint32_t start, uint32_t end)
{
	fd = memfd_create("mmapfs-test-guard", MFD_CLOEXEC);
	if (!CHECK_INT(fd, >=, 0) || !CHECK_INT(ftruncate(fd, SIZE), ==, 0))
		return false;
	map = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (!CHECK(map != MAP_FAILED))
		return false;
	memset(map, 0x11, SIZE);
	memcpy(map, &start, 4);		/* the test runs little-endian */
	memcpy(map + 4, &end, 4);
	return CHECK_INT(ftruncate(fd, keep), ==, 0);
}

static void unmap(void)
{
	munmap(map, SIZE);
	close(fd);
}

static void test_init(void)
{
	CHECK_INT(mm_guard_init(), ==, 0);
}

static void test_copy(void)
{
	uint8_t buf[64], src[64];

	memset(src, 7, sizeof(src));
	CHECK_INT(mm_guard_copy(buf, src, sizeof(buf)), ==, 0);
	CHECK_MEM(buf, src, sizeof(buf));
	CHECK_INT(mm_guard_copy(buf, src, 0), ==, 0);
	if (!map_then_truncate(0, 0, 0))
		return;
	CHECK_INT(mm_guard_copy(buf, map, 16), ==, -EFAULT);
	CHECK_INT(mm_guard_copy(map + 100, src, 16), ==, -EFAULT);
	CHECK_INT(mm_guard_copy(buf, map + SIZE - 16, 16), ==, -EFAULT);
	/* still working afterwards */
	memset(buf, 0, sizeof(buf));
	CHECK_INT(mm_guard_copy(buf, src, sizeof(buf)), ==, 0);
	CHECK_MEM(buf, src, sizeof(buf));
	unmap();
}

/* Every skew of destination against source (some are copied in pieces),
 * at lengths about a piece's, to and from an iovec: each byte once, and
 * nothing beside. */
static void test_copy_skews(void)
{
	enum { MAX = 3 * 2048 + 100 };
	static const size_t lens[] = { 1, 63, 2047, 2048, 2049, 4096, MAX };
	static uint8_t src[MAX + 64], dst[MAX + 192], want[MAX + 192];

	for (size_t i = 0; i < sizeof(src); i++)
		src[i] = (uint8_t)(i * 131 + 7);
	for (size_t skew = 0; skew < 64; skew++) {
		for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++) {
			size_t n = lens[k];
			struct iovec iov[2] = { { dst + 64 + skew, n / 3 },
						{ dst + 64 + skew + n / 3, n - n / 3 } };

			memset(dst, 0xee, sizeof(dst));
			memset(want, 0xee, sizeof(want));
			memcpy(want + 64 + skew, src + 3, n);
			if (!CHECK_INT(mm_guard_copy(dst + 64 + skew, src + 3, n), ==, 0) ||
			    !CHECK_MEM(dst, want, sizeof(dst)))
				return;
			memset(dst, 0xee, sizeof(dst));
			if (!CHECK_INT(mm_guard_copy_iov(src + 3, iov, 2, true), ==, 0) ||
			    !CHECK_MEM(dst, want, sizeof(dst)))
				return;
			memset(want, 0, sizeof(want));
			if (!CHECK_INT(mm_guard_copy_iov(want, iov, 2, false), ==, 0) ||
			    !CHECK_MEM(want, src + 3, n))
				return;
		}
	}
}

/* Only the part past the new end faults. */
static void test_copy_partial(void)
{
	uint8_t buf[8192];

	if (!map_then_truncate(4096, 0, 0))
		return;
	CHECK_INT(mm_guard_copy(buf, map, 4096), ==, 0);
	CHECK_INT(mm_guard_copy(buf, map + 4000, 200), ==, -EFAULT);
	CHECK_INT(mm_guard_copy(buf, map + 4096, 1), ==, -EFAULT);
	unmap();
}

static void test_ring_truncated(void)
{
	struct mm_ring r;
	struct mm_ring_pos p = { 77, 88, SIZE, 0, MM_RING_HEADER };
	uint8_t buf[256] = { 0 };
	uint32_t s, e;

	if (!map_then_truncate(0, 8, 108))
		return;
	CHECK_INT(mm_ring_init(&r, map, SIZE, SIZE), ==, 0);
	CHECK_INT(mm_ring_load(&r, &p), ==, -EFAULT);
	CHECK(p.start == 77 && p.end == 88);
	CHECK_INT(mm_ring_read(&r, buf, sizeof(buf)), ==, -EFAULT);
	CHECK_INT(mm_ring_write(&r, buf, sizeof(buf)), ==, -EFAULT);
	CHECK_INT(mm_ring_raw(&r, &s, &e), ==, -EFAULT);
	p.start = p.end = 8;
	CHECK_INT(mm_ring_commit(&r, &p, 1), ==, -EFAULT);
	CHECK_INT(mm_ring_consume(&r, &p, 1), ==, -EFAULT);
	unmap();
}

/* The header page survives, the data does not: the read fails and start
 * is not moved past bytes nobody read. */
static void test_ring_data_truncated(void)
{
	struct mm_ring r;
	uint8_t buf[4096];
	uint32_t s, e;

	if (!map_then_truncate(4096, 5000, 6000))
		return;
	CHECK_INT(mm_ring_init(&r, map, SIZE, SIZE), ==, 0);
	CHECK_INT(mm_ring_read(&r, buf, sizeof(buf)), ==, -EFAULT);
	CHECK_INT(mm_ring_raw(&r, &s, &e), ==, 0);
	CHECK_U64(s, ==, 5000);
	CHECK_U64(e, ==, 6000);
	/* writing at 6000 faults too, and end stays */
	CHECK_INT(mm_ring_write(&r, buf, 100), ==, -EFAULT);
	CHECK_INT(mm_ring_raw(&r, &s, &e), ==, 0);
	CHECK_U64(e, ==, 6000);
	unmap();
}

static void test_token_truncated(void)
{
	struct mm_token t;

	if (!map_then_truncate(0, 0, 0))
		return;
	CHECK_INT(mm_token_random(&t, 128), ==, 0);
	CHECK_INT(mm_token_write(map, SIZE, 512, 128, &t), ==, -EFAULT);
	CHECK_INT(mm_token_read(map, SIZE, 512, 128, &t), ==, -EFAULT);
	CHECK_INT(mm_token_check(map, SIZE, 512, 128, &t), ==, -EFAULT);
	unmap();
}

/* Many faults in a row: no stack or signal mask is left behind. */
static void test_many_faults(void)
{
	uint8_t buf[16];
	sigset_t now;

	if (!map_then_truncate(0, 0, 0))
		return;
	for (int i = 0; i < 10000; i++)
		if (!CHECK_INT(mm_guard_copy(buf, map + (i % 16) * 4096, 16), ==, -EFAULT))
			break;
	CHECK_INT(sigprocmask(SIG_BLOCK, NULL, &now), ==, 0);
	CHECK(!sigismember(&now, SIGBUS));
	unmap();
}

static int inner_fault(void *arg)
{
	uint8_t buf[16];
	int *inner = arg;

	*inner = mm_guard_copy(buf, map, sizeof(buf));
	return 42;
}

static int inner_then_fault(void *arg)
{
	inner_fault(arg);
	return *(volatile uint8_t *)map;	/* faults under the outer guard */
}

static void test_nested(void)
{
	int inner = 0;

	if (!map_then_truncate(0, 0, 0))
		return;
	CHECK_INT(mm_guard_run(inner_fault, &inner), ==, 42);
	CHECK_INT(inner, ==, -EFAULT);
	/* after an inner fault, the outer guard still catches its own */
	inner = 0;
	CHECK_INT(mm_guard_run(inner_then_fault, &inner), ==, -EFAULT);
	CHECK_INT(inner, ==, -EFAULT);
	unmap();
}

static void *thread_fault(void *arg)
{
	uint8_t buf[16];
	int *ret = arg;

	*ret = mm_guard_copy(buf, map, sizeof(buf));
	return NULL;
}

static void test_thread(void)
{
	pthread_t th;
	int ret = 0;

	if (!map_then_truncate(0, 0, 0))
		return;
	CHECK_INT(pthread_create(&th, NULL, thread_fault, &ret), ==, 0);
	CHECK_INT(pthread_join(th, NULL), ==, 0);
	CHECK_INT(ret, ==, -EFAULT);
	unmap();
}

/* Each thread has its own guard: thread A enters a guard, B enters one,
 * A leaves, then B faults. With one guard shared by the process, A's leaving
 * would have dropped B's and the fault would kill us. */
static sem_t a_in, b_in, a_out;

static int a_guarded(void *arg)
{
	sem_post(&a_in);
	sem_wait(&b_in);
	return 0;
}

static void *thread_a(void *arg)
{
	*(int *)arg = mm_guard_run(a_guarded, NULL);
	sem_post(&a_out);
	return NULL;
}

static int b_guarded(void *arg)
{
	sem_post(&b_in);
	sem_wait(&a_out);
	return *(volatile uint8_t *)map;	/* faults */
}

static void *thread_b(void *arg)
{
	sem_wait(&a_in);
	*(int *)arg = mm_guard_run(b_guarded, NULL);
	return NULL;
}

static void test_threads_interleaved(void)
{
	pthread_t ta, tb;
	int ra = 1, rb = 1;

	if (!map_then_truncate(0, 0, 0))
		return;
	sem_init(&a_in, 0, 0);
	sem_init(&b_in, 0, 0);
	sem_init(&a_out, 0, 0);
	CHECK_INT(pthread_create(&ta, NULL, thread_a, &ra), ==, 0);
	CHECK_INT(pthread_create(&tb, NULL, thread_b, &rb), ==, 0);
	pthread_join(ta, NULL);
	pthread_join(tb, NULL);
	CHECK_INT(ra, ==, 0);
	CHECK_INT(rb, ==, -EFAULT);
	unmap();
}

/* A fault outside any guard is a real bug and still kills the process,
 * even after guarded calls have come and gone. */
static void test_unguarded_dies(void)
{
	int status = 0;
	pid_t pid;

	if (!map_then_truncate(0, 0, 0))
		return;
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		uint8_t buf[4];
		volatile uint8_t x;

		if (mm_guard_copy(buf, map, 4) != -EFAULT ||
		    mm_guard_copy(buf, "abcd", 4) != 0)
			_exit(3);
		x = *(volatile uint8_t *)map;

		(void)x;
		_exit(0);
	}
	CHECK_INT(pid, >, 0);
	CHECK_INT(waitpid(pid, &status, 0), ==, pid);
	if (CHECK(WIFSIGNALED(status)))
		CHECK_INT(WTERMSIG(status), ==, SIGBUS);
	else
		printf("#     child exited with %d\n", WEXITSTATUS(status));
	unmap();
}

/* --- a library's guard (mm_guard_init_chained) in a program with its own
 * SIGBUS handling. Each test runs in a child of its own, which sets the
 * program's disposition, then installs the library's handler over it, as a
 * program that calls mmapfs_open() does. --- */

/* A second truncated mapping: the program's own file, not an area. */
static uint8_t *other_truncated(void)
{
	int ofd = memfd_create("mmapfs-test-other", MFD_CLOEXEC);
	uint8_t *p;

	if (!CHECK_INT(ofd, >=, 0) || !CHECK_INT(ftruncate(ofd, SIZE), ==, 0))
		return NULL;
	p = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, ofd, 0);
	if (!CHECK(p != MAP_FAILED) || !CHECK_INT(ftruncate(ofd, 0), ==, 0))
		p = NULL;
	close(ofd);
	return p;
}

/* Run fn in a child; its checks print their diagnostics and its exit
 * status says whether they held. Returns the child's wait status. */
static int in_child(void (*fn)(void))
{
	int status = 0;
	pid_t pid;

	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		fn();
		fflush(stdout);
		_exit(tap_ok ? 0 : 1);
	}
	if (!CHECK_INT(pid, >, 0) || !CHECK_INT(waitpid(pid, &status, 0), ==, pid))
		return -1;
	return status;
}

static sigjmp_buf prog_jmp;
static volatile sig_atomic_t prog_calls;
static void *volatile prog_addr;
static volatile int prog_code;

/* The program's handler: notes what it got and leaves the faulting code,
 * as a program that recovers from SIGBUS in its own memory does. */
static void prog_siginfo(int sig, siginfo_t *si, void *uctx)
{
	prog_calls++;
	prog_addr = si->si_addr;
	prog_code = si->si_code;
	siglongjmp(prog_jmp, 1);
}

static void prog_plain(int sig)
{
	prog_calls++;
	siglongjmp(prog_jmp, 1);
}

static bool set_handler(bool siginfo)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	if (siginfo) {
		sa.sa_sigaction = prog_siginfo;
		sa.sa_flags = SA_SIGINFO;
	} else {
		sa.sa_handler = prog_plain;
	}
	return CHECK_INT(sigaction(SIGBUS, &sa, NULL), ==, 0) &&
	       CHECK_INT(mm_guard_init_chained(), ==, 0);
}

/* The faults of the program's own memory reach its handler: outside any
 * guarded call, inside a guarded copy between an area and the program's
 * buffer (the buffer faults), and a SIGBUS sent by kill(2) even while a
 * guarded run is on. An area's own fault is still the call's -EFAULT, and
 * stays so after the program's handler jumped out of a guarded copy. */
static int kill_in_run(void *arg)
{
	raise(SIGBUS);
	return 7;
}

static void chained_faults(bool siginfo)
{
	uint8_t buf[16], *mine;
	struct iovec area_iov;
	bool got;

	if (!map_then_truncate(0, 0, 0) || !(mine = other_truncated()) || !set_handler(siginfo))
		return;
	CHECK_INT(mm_guard_copy(buf, map, sizeof(buf)), ==, -EFAULT);

	/* outside any guarded call */
	prog_calls = 0;
	if (sigsetjmp(prog_jmp, 1) == 0) {
		(void)*(volatile uint8_t *)(mine + 5);
		got = false;
	} else {
		got = true;
	}
	CHECK(got);
	CHECK_INT(prog_calls, ==, 1);
	if (siginfo) {
		CHECK(prog_addr == mine + 5);
		CHECK_INT(prog_code, ==, BUS_ADRERR);
	}

	/* inside a guarded copy out of a sound area into the program's
	 * truncated buffer: the buffer's fault is the program's */
	{
		static uint8_t sound[4096];

		area_iov.iov_base = sound;
		area_iov.iov_len = sizeof(sound);
		prog_calls = 0;
		if (sigsetjmp(prog_jmp, 1) == 0) {
			mm_guard_copy_iov(mine + 100, &area_iov, 1, false);
			got = false;
		} else {
			got = true;
		}
		CHECK(got);
		CHECK_INT(prog_calls, ==, 1);
		if (siginfo)	/* memcpy may begin anywhere in it */
			CHECK((uint8_t *)prog_addr >= mine + 100 &&
			      (uint8_t *)prog_addr < mine + 100 + sizeof(sound));
		/* and into the area from it */
		prog_calls = 0;
		if (sigsetjmp(prog_jmp, 1) == 0) {
			mm_guard_copy_iov(mine + 200, &area_iov, 1, true);
			got = false;
		} else {
			got = true;
		}
		CHECK(got);
		CHECK_INT(prog_calls, ==, 1);
	}

	/* sent by kill(2) during a guarded run: not a fault of the run */
	prog_calls = 0;
	if (sigsetjmp(prog_jmp, 1) == 0) {
		mm_guard_run(kill_in_run, NULL);
		got = false;
	} else {
		got = true;
	}
	CHECK(got);
	CHECK_INT(prog_calls, ==, 1);
	if (siginfo)
		CHECK_INT(prog_code, ==, SI_TKILL);

	/* the guard still answers its own faults, and nothing is blocked */
	CHECK_INT(mm_guard_copy(buf, map, sizeof(buf)), ==, -EFAULT);
	area_iov.iov_base = map;
	area_iov.iov_len = 16;
	CHECK_INT(mm_guard_copy_iov(buf, &area_iov, 1, false), ==, -EFAULT);
	{
		sigset_t now;

		CHECK_INT(sigprocmask(SIG_BLOCK, NULL, &now), ==, 0);
		CHECK(!sigismember(&now, SIGBUS));
	}
	munmap(mine, SIZE);
	unmap();
}

static void chained_siginfo(void)
{
	chained_faults(true);
}

static void chained_plain(void)
{
	chained_faults(false);
}

static void test_chained_to_program_handler(void)
{
	int status = in_child(chained_siginfo);

	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	status = in_child(chained_plain);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* Without a handler of the program's (SIG_DFL, or SIG_IGN, which a fault
 * overrides), a fault outside the areas kills by SIGBUS, as it would have
 * without the library: in a guarded copy's buffer, or outside any call. */
static int dfl_how;

static void default_fault(void)
{
	uint8_t buf[16], *mine;
	struct iovec iov;
	static uint8_t sound[64];

	if (!map_then_truncate(0, 0, 0) || !(mine = other_truncated()))
		_exit(3);
	signal(SIGBUS, dfl_how == 2 ? SIG_IGN : SIG_DFL);
	if (mm_guard_init_chained() != 0 || mm_guard_copy(buf, map, sizeof(buf)) != -EFAULT)
		_exit(4);
	if (dfl_how == 2)
		raise(SIGBUS);		/* ignored, as the program asked */
	iov.iov_base = sound;
	iov.iov_len = sizeof(sound);
	if (dfl_how == 0 || dfl_how == 2)
		mm_guard_copy_iov(mine, &iov, 1, false);
	else
		(void)*(volatile uint8_t *)mine;
	_exit(5);		/* survived */
}

static void test_chained_default_action(void)
{
	static const char *const how[] = { "in a guarded copy's buffer", "outside any call",
					   "SIG_IGN, in a guarded copy's buffer" };

	for (dfl_how = 0; dfl_how < 3; dfl_how++) {
		int status = in_child(default_fault);

		if (!CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS))
			printf("#     %s: status 0x%x\n", how[dfl_how], status);
	}
}

int main(void)
{
	static const struct tap_test tests[] = {
		TAP_TEST(test_init),
		TAP_TEST(test_copy),
		TAP_TEST(test_copy_skews),
		TAP_TEST(test_copy_partial),
		TAP_TEST(test_ring_truncated),
		TAP_TEST(test_ring_data_truncated),
		TAP_TEST(test_token_truncated),
		TAP_TEST(test_many_faults),
		TAP_TEST(test_nested),
		TAP_TEST(test_thread),
		TAP_TEST(test_threads_interleaved),
		TAP_TEST(test_unguarded_dies),
		TAP_TEST(test_chained_to_program_handler),
		TAP_TEST(test_chained_default_action),
	};

	return tap_main(tests, TAP_COUNT(tests));
}
