/* Unit tests for core/alias.h: a daemon's second mappings of trailer pages. */
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "alias.h"
#include "tap.h"

#define PAGES 600		/* more than one region of 512 */

static uint8_t *shared(size_t len)
{
	int fd = memfd_create("mmapfs-test-alias", MFD_CLOEXEC);
	uint8_t *p;

	if (!CHECK_INT(fd, >=, 0) || !CHECK_INT(ftruncate(fd, (off_t)len), ==, 0))
		return NULL;
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	return CHECK(p != MAP_FAILED) ? p : NULL;
}

/* Before a daemon enables them there are none (a library never has). */
static void test_disabled(void)
{
	uint8_t *p = shared(4096);

	if (p)
		CHECK(mm_alias(p + 100, 28) == NULL);
}

/* An alias is the same memory both ways; 600 of them come from two
 * regions side by side, 512 to a region; dropped slots are used again. */
static void test_same_memory_and_slots(void)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	uint8_t *p = shared(PAGES * page), *a[PAGES];
	int near = 0;

	mm_alias_enable();
	if (!p)
		return;
	for (int i = 0; i < PAGES; i++) {
		a[i] = mm_alias(p + i * page + page - 128, 128);
		if (!CHECK(a[i] != NULL))
			return;
		a[i][0] = (uint8_t)i;
		CHECK_INT(p[i * page + page - 128], ==, (uint8_t)i);
		p[i * page + page - 1] = (uint8_t)(i + 1);
		CHECK_INT(a[i][127], ==, (uint8_t)(i + 1));
		if (i && (uintptr_t)a[i] - (uintptr_t)a[i - 1] == page)
			near++;
	}
	CHECK_INT(near, >=, PAGES - 2);	/* packed, one region after the other */
	/* across two pages: none */
	CHECK(mm_alias(p + page - 64, 128) == NULL);
	for (int i = 0; i < PAGES; i++)
		mm_alias_drop(a[i]);
	for (int i = 0; i < PAGES; i++) {
		a[i] = mm_alias(p + i * page, 64);
		CHECK(a[i] != NULL);
	}
	for (int i = 0; i < PAGES; i++)
		mm_alias_drop(a[i]);
	mm_alias_drop(NULL);
	munmap(p, PAGES * page);
}

int main(void)
{
	static const struct tap_test tests[] = {
		TAP_TEST(test_disabled),
		TAP_TEST(test_same_memory_and_slots),
	};

	return tap_main(tests, TAP_COUNT(tests));
}
