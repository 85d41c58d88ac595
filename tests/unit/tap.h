/* A tiny TAP harness for the unit tests.
 *
 * Each test is a function; the CHECK macros record a failure (printing both
 * operands as a '#' diagnostic) and evaluate to whether the check held, so a
 * test can stop early with `if (!CHECK(...)) return;`. tap_main() prints the
 * plan and one "ok"/"not ok" line per test. */
#ifndef MMAPFS_TAP_H
#define MMAPFS_TAP_H

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static bool tap_ok;

static inline bool tap_fail(const char *file, int line, const char *expr)
{
	printf("#   %s:%d: check failed: %s\n", file, line, expr);
	tap_ok = false;
	return false;
}

#define CHECK(c) ((c) ? true : tap_fail(__FILE__, __LINE__, #c))

#define CHECK_INT(a, op, b) ({						\
	long long a_ = (long long)(a), b_ = (long long)(b);		\
	bool ok_ = a_ op b_;						\
	if (!ok_) {							\
		tap_fail(__FILE__, __LINE__, #a " " #op " " #b);	\
		printf("#     left:  %lld\n#     right: %lld\n", a_, b_);	\
	}								\
	ok_; })

#define CHECK_U64(a, op, b) ({						\
	uint64_t a_ = (uint64_t)(a), b_ = (uint64_t)(b);		\
	bool ok_ = a_ op b_;						\
	if (!ok_) {							\
		tap_fail(__FILE__, __LINE__, #a " " #op " " #b);	\
		printf("#     left:  %" PRIu64 " (0x%" PRIx64 ")\n"	\
		       "#     right: %" PRIu64 " (0x%" PRIx64 ")\n",	\
		       a_, a_, b_, b_);					\
	}								\
	ok_; })

#define CHECK_STR(a, b) ({						\
	const char *a_ = (a), *b_ = (b);				\
	bool ok_ = strcmp(a_, b_) == 0;					\
	if (!ok_) {							\
		tap_fail(__FILE__, __LINE__, #a " == " #b);		\
		printf("#     left:  \"%.300s\"\n#     right: \"%.300s\"\n", a_, b_); \
	}								\
	ok_; })

/* hay contains needle */
#define CHECK_HAS(hay, needle) ({					\
	const char *a_ = (hay), *b_ = (needle);				\
	bool ok_ = strstr(a_, b_) != NULL;				\
	if (!ok_) {							\
		tap_fail(__FILE__, __LINE__, #hay " contains " #needle); \
		printf("#     text:   \"%.300s\"\n#     wanted: \"%.300s\"\n", a_, b_); \
	}								\
	ok_; })

#define CHECK_MEM(a, b, n) ({						\
	const unsigned char *a_ = (const void *)(a), *b_ = (const void *)(b); \
	size_t n_ = (n), i_ = 0;					\
	while (i_ < n_ && a_[i_] == b_[i_])				\
		i_++;							\
	if (i_ < n_) {							\
		tap_fail(__FILE__, __LINE__, #a " == " #b " over " #n);	\
		printf("#     first difference at byte %zu: 0x%02x != 0x%02x\n", \
		       i_, a_[i_], b_[i_]);				\
	}								\
	i_ == n_; })

/* A seeded PRNG (splitmix64), so that a failing run can be replayed with
 * TAP_SEED=N. */
static uint64_t tap_seed_state;

static inline uint64_t tap_rand(void)
{
	uint64_t z = (tap_seed_state += UINT64_C(0x9e3779b97f4a7c15));

	z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
	return z ^ (z >> 31);
}

/* uniform enough in [lo, hi] */
static inline uint64_t tap_range(uint64_t lo, uint64_t hi)
{
	return lo + tap_rand() % (hi - lo + 1);
}

struct tap_test {
	const char *name;
	void (*fn)(void);
};

#define TAP_TEST(f) { #f, f }
#define TAP_COUNT(a) (sizeof(a) / sizeof((a)[0]))

static inline int tap_main(const struct tap_test *t, size_t n)
{
	const char *env = getenv("TAP_SEED");
	uint64_t seed = env ? strtoull(env, NULL, 0) : (uint64_t)time(NULL);
	size_t failed = 0;

	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("1..%zu\n# seed %" PRIu64 " (replay with TAP_SEED=%" PRIu64 ")\n",
	       n, seed, seed);
	for (size_t i = 0; i < n; i++) {
		tap_ok = true;
		tap_seed_state = seed + i;
		t[i].fn();
		printf("%sok %zu - %s\n", tap_ok ? "" : "not ", i + 1, t[i].name);
		failed += !tap_ok;
	}
	return failed ? 1 : 0;
}

#endif
