/* The trailers' pages mapped a second time, side by side: alias.h. */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "alias.h"

/* Regions of REGION_PAGES pages, each under one page-table page (2 MiB on
 * x86-64 with 4 KiB pages), reserved as they are needed; free slots on a
 * stack. */
#define REGION_PAGES 512

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static bool enabled;
static uintptr_t *free_slots;	/* lock: room for every slot ever made */
static size_t nfree, total;

void mm_alias_enable(void)
{
	pthread_mutex_lock(&lock);
	enabled = true;
	pthread_mutex_unlock(&lock);
}

/* Reserve one more region, aligned to its size, and stack its slots. */
static int grow(size_t page)
{
	size_t len = REGION_PAGES * page;
	uintptr_t *slots;
	uint8_t *p, *at;

	slots = realloc(free_slots, (total + REGION_PAGES) * sizeof(*slots));
	if (!slots)
		return -ENOMEM;
	free_slots = slots;
	p = mmap(NULL, 2 * len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return -errno;
	total += REGION_PAGES;
	at = (uint8_t *)(((uintptr_t)p + len - 1) & ~(uintptr_t)(len - 1));
	if (at > p)
		munmap(p, (size_t)(at - p));
	if (at + len < p + 2 * len)
		munmap(at + len, (size_t)(p + 2 * len - (at + len)));
	/* handed out from the region's start, so that they stay together */
	for (size_t i = REGION_PAGES; i-- > 0; )
		free_slots[nfree++] = (uintptr_t)(at + i * page);
	return 0;
}

uint8_t *mm_alias(const uint8_t *addr, size_t len)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	uintptr_t first = (uintptr_t)addr & ~(uintptr_t)(page - 1);
	uintptr_t slot = 0;
	void *r;

	if (((uintptr_t)addr + len - 1) / page != first / page)
		return NULL;	/* across two pages */
	pthread_mutex_lock(&lock);
	if (enabled && (nfree || grow(page) == 0))
		slot = free_slots[--nfree];
	pthread_mutex_unlock(&lock);
	if (!slot)
		return NULL;
	/* old_size 0: a second mapping of the same pages of a shared one */
	r = mremap((void *)first, 0, page, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)slot);
	if (r == MAP_FAILED) {
		mm_alias_drop((uint8_t *)slot);		/* a device's BAR, say */
		return NULL;
	}
	return (uint8_t *)r + ((uintptr_t)addr - first);
}

void mm_alias_drop(uint8_t *alias)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	uintptr_t slot = (uintptr_t)alias & ~(uintptr_t)(page - 1);

	if (!alias)
		return;
	/* the slot reserved again, as it was */
	if (mmap((void *)slot, page, PROT_NONE,
		 MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0) == MAP_FAILED)
		return;		/* leaked: better than a slot that may be in use */
	pthread_mutex_lock(&lock);
	free_slots[nfree++] = slot;
	pthread_mutex_unlock(&lock);
}
