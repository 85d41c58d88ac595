/* How fast memcpy moves blocks into a 1 MiB ring, by the skew of the
 * destination against a page-aligned source (modulo 64), as a stream's
 * writer into an mmapfs ring does: whole, and (where the skew is 1 to 31)
 * in the 2 KiB pieces core/guard.c copies it in.
 *
 *   copyskew [BLOCK [GIB]]      default 4096 bytes, 4 GiB a figure
 *
 * On AMD's Zen the `rep movsb` that glibc's memcpy takes above 2 KiB runs
 * at a tenth of its speed where the destination lies 1 to 31 bytes past the
 * source: a ring whose data started at offset 8 met every page-aligned
 * buffer so (docs/PROTOCOL.md, "The working window"). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define RING (1024 * 1024)
#define PIECE 2048

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* GB/s of `total` bytes copied in blocks of `block` into the ring at
 * offsets skew, skew + block, ... (in pieces of `piece`, 0: whole). */
static double rate(uint8_t *ring, const uint8_t *src, size_t block, size_t skew,
		   size_t piece, uint64_t total)
{
	size_t at = skew;
	double t0 = now();

	for (uint64_t done = 0; done < total; done += block) {
		size_t n = block;
		uint8_t *d = ring + at;
		const uint8_t *s = src;

		for (; piece && n > piece; n -= piece, d += piece, s += piece)
			memcpy(d, s, piece);
		memcpy(d, s, n);
		at += block;
		if (at + block > RING)
			at = skew;
	}
	/* keep the copies: a compiler may not drop them */
	__asm__ volatile("" : : "r"(ring) : "memory");
	return (double)total / (now() - t0) / 1e9;
}

int main(int argc, char **argv)
{
	size_t block = argc > 1 ? strtoul(argv[1], NULL, 0) : 4096;
	uint64_t total = (argc > 2 ? strtoull(argv[2], NULL, 0) : 4) << 30;
	static const size_t skews[] = { 0, 8, 16, 24, 32, 40, 48, 56 };
	uint8_t *ring, *src;

	if (block == 0 || block > RING / 2) {
		fprintf(stderr, "usage: %s [BLOCK (1 to %d)] [GIB]\n", argv[0], RING / 2);
		return 2;
	}
	ring = mmap(NULL, RING + 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	src = aligned_alloc(4096, (block + 4095) / 4096 * 4096);
	if (ring == MAP_FAILED || !src) {
		perror("copyskew");
		return 1;
	}
	memset(ring, 0, RING + 4096);
	memset(src, 1, block);
	printf("memcpy of %zu-byte blocks from a page-aligned buffer into a 1 MiB ring, GB/s\n",
	       block);
	printf("%-6s %-8s %s\n", "skew", "whole", "in 2 KiB pieces");
	for (size_t i = 0; i < sizeof(skews) / sizeof(skews[0]); i++)
		printf("%-6zu %-8.2f %.2f\n", skews[i], rate(ring, src, block, skews[i], 0, total),
		       rate(ring, src, block, skews[i], PIECE, total));
	free(src);
	munmap(ring, RING + 4096);
	return 0;
}
