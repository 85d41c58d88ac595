/* mmapfs core: the trailers' pages mapped a second time, side by side.
 *
 * A daemon's ticker writes one trailer a channel every beat (live.c). Each
 * area is a mapping of its own, megabytes from the next, so each trailer
 * costs a page walk of its own (on a VM, through two levels of page
 * tables): with 10,000 channels those walks were most of an idle daemon's
 * time. A second mapping of the same page (mremap with old_size 0 shares a
 * shared mapping's pages), placed in a region reserved for such pages, puts
 * 512 trailers under one page-table page. Only a daemon asks for them;
 * where the kernel refuses (a device's BAR, say), the ticker uses the area
 * itself. */
#ifndef MMAPFS_ALIAS_H
#define MMAPFS_ALIAS_H

#include <stddef.h>
#include <stdint.h>

/* Make aliases from now on (a daemon, once, at start). */
void mm_alias_enable(void);

/* The address of addr in a second mapping of its page, for len bytes, or
 * NULL (not enabled, across a page boundary, refused, out of memory). */
uint8_t *mm_alias(const uint8_t *addr, size_t len);

/* Unmap an alias (NULL: nothing) and keep its slot for the next. */
void mm_alias_drop(uint8_t *alias);

#endif
