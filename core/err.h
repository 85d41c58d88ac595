/* mmapfs core: an error reason handed back to the caller.
 *
 * Core functions return 0 or a negative errno value and never print: when
 * they have something precise to say (the file, key or value at fault), they
 * write one line into a struct mm_err the caller passes in (or NULL), and the
 * caller, who knows the context, decides where it goes. */
#ifndef MMAPFS_ERR_H
#define MMAPFS_ERR_H

struct mm_err {
	char msg[512];
};

/* Write the reason into err (may be NULL); returns -errnum, so a caller can
 * write `return mm_fail(err, -EINVAL, "...")`. */
int mm_fail(struct mm_err *err, int errnum, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#endif
