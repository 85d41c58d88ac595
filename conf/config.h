/* mmapfs configuration: every default in one place, then the libconfig file
 * (-c), then -o options, each overriding the one before. */
#ifndef MMAPFS_CONFIG_H
#define MMAPFS_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "channel.h"
#include "err.h"

#define MM_DEFAULT_SIZE (UINT64_C(64) * 1024 * 1024)

/* A channel declared in the configuration file. */
struct mm_chan_decl {
	char *name;
	enum mm_chan_role role;
	char *read_file;		/* administrator's paths, or NULL */
	char *write_file;
	struct mm_window read_window;	/* of the file, or the whole file */
	struct mm_window write_window;
	uid_t uid;			/* its owner (user, group keys), or -1: */
	gid_t gid;			/* the daemon's user and group */
	bool group_w;			/* mode: the group has the owner's access */
	int line;			/* where it was declared */
};

/* What one user may hold: channels made with mkdir, and the apparent size
 * of their areas (docs/mmapfs.1, LIMITS). 0: no limit. */
struct mm_limits {
	uint64_t channels;
	uint64_t bytes;			/* MM_LIMIT_AUTO: from the mmap_dir's
					 * filesystem, at start */
};
#define MM_LIMIT_AUTO UINT64_MAX
#define MM_DEFAULT_MAX_CHANNELS 64

struct mm_config {
	char *file;			/* the file read, or NULL */
	char *mmap_dir;			/* where created areas live */
	bool mmap_dir_default;		/* neither the file nor -o named it */
	uint64_t size;			/* ring bytes of a new area */
	bool reserve;			/* allocate new areas whole at once */
	char **allow_dirs;		/* where offered files may be opened */
	size_t n_allow_dirs;
	uid_t *allow_uids;		/* owners of offered files besides us */
	size_t n_allow_uids;
	struct mm_chan_decl *channels;
	size_t n_channels;
	struct mm_limits user_max;	/* each user but the mounting one */
	struct mm_limits owner_max;	/* the mounting user: none by default */
	/* ivshmem doorbells (docs/ivshmem.md, "Doorbells"), all optional */
	char *ivshmem_server;		/* host: serve QEMU's ivshmem server
					 * protocol on this unix socket, */
	char *ivshmem_memory;		/* handing out this file as the memory */
	char *ivshmem_client;		/* host: or join the server there */
	gid_t ivshmem_group;		/* the socket's group (mode 0660), or -1:
					 * the daemon's umask alone */
	char *ivshmem_device;		/* guest: the PCI device (sysfs) whose
					 * Doorbell register rings the host */
	unsigned ivshmem_peer;		/* guest: the peer id it rings (0: the
					 * host daemon, as its server) */
	unsigned ivshmem_vectors;	/* server: eventfds (MSI-X vectors) a
					 * peer, 1..MM_IVSHMEM_VECTORS_MAX; 0:
					 * not said, 1 */
	bool ivshmem_nopoll;		/* debug: waits on a doorbell's areas
					 * are not rechecked on a timer */
};

/* Fill c with the embedded defaults (mmap_dir /dev/shm/mmapfs-UID, 64M, the
 * mmap_dir as the only allowed directory, 64 channels a user and the
 * bytes of MM_LIMIT_AUTO, the mounting user unlimited). 0 or -ENOMEM. */
int mm_config_defaults(struct mm_config *c);

/* Read a libconfig file over c. On error c may hold some of the file's
 * values; err names the file, line and key. 0 or -errno. */
int mm_config_load(struct mm_config *c, const char *path, struct mm_err *err);

/* Parse a size: a number with an optional K, M or G suffix (powers of 1024),
 * from 64K to below 4G. 0 or -EINVAL, err names the value. */
int mm_config_parse_size(const char *s, uint64_t *out, struct mm_err *err);

/* Replace the allowed directories with the ':'-separated list in s. */
int mm_config_set_allow_dirs(struct mm_config *c, const char *s,
			     struct mm_err *err);

/* Set the limit named key (max_channels, max_bytes, owner_max_channels,
 * owner_max_bytes) from its text: a count, or for bytes a number with K, M
 * or G; 0 is no limit. 0, -ENOENT for another key, or -EINVAL (err names
 * the value). */
int mm_config_set_limit(struct mm_config *c, const char *key, const char *value,
			struct mm_err *err);

/* Check the ivshmem settings together (server and memory go in pairs; a
 * host's server and a guest's device exclude each other). origin names
 * where they came from in err. 0 or -EINVAL. */
int mm_config_check_ivshmem(const struct mm_config *c, const char *origin,
			    struct mm_err *err);

/* Parse a peer id: 0..65535. 0 or -EINVAL. */
int mm_config_parse_peer(const char *s, unsigned *out, struct mm_err *err);

/* Parse ivshmem_vectors: 1..MM_IVSHMEM_VECTORS_MAX. 0 or -EINVAL. */
#define MM_IVSHMEM_VECTORS_MAX 32
int mm_config_parse_vectors(const char *s, unsigned *out, struct mm_err *err);

/* Replace a string setting. 0 or -ENOMEM. */
int mm_config_set_str(char **slot, const char *value);

void mm_config_free(struct mm_config *c);

#endif
