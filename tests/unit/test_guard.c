/* Unit tests for core/guard.h: a mapping truncated under us. */
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
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
	struct mm_ring_pos p = { 77, 88 };
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

int main(void)
{
	static const struct tap_test tests[] = {
		TAP_TEST(test_init),
		TAP_TEST(test_copy),
		TAP_TEST(test_copy_partial),
		TAP_TEST(test_ring_truncated),
		TAP_TEST(test_ring_data_truncated),
		TAP_TEST(test_token_truncated),
		TAP_TEST(test_many_faults),
		TAP_TEST(test_nested),
		TAP_TEST(test_thread),
		TAP_TEST(test_threads_interleaved),
		TAP_TEST(test_unguarded_dies),
	};

	return tap_main(tests, TAP_COUNT(tests));
}
