#include <stdarg.h>
#include <stdio.h>

#include "err.h"

int mm_fail(struct mm_err *err, int errnum, const char *fmt, ...)
{
	if (err) {
		va_list ap;

		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
		va_end(ap);
	}
	return errnum;
}
