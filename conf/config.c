#include <errno.h>
#include <grp.h>
#include <libconfig.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "area.h"
#include "caps.h"
#include "config.h"

static void free_strv(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

static void free_channels(struct mm_chan_decl *ch, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(ch[i].name);
		free(ch[i].read_file);
		free(ch[i].write_file);
	}
	free(ch);
}

void mm_config_free(struct mm_config *c)
{
	free(c->file);
	free(c->mmap_dir);
	free_strv(c->allow_dirs, c->n_allow_dirs);
	free(c->allow_uids);
	free_channels(c->channels, c->n_channels);
	free(c->ivshmem_server);
	free(c->ivshmem_memory);
	free(c->ivshmem_device);
	free(c->ivshmem_client);
	memset(c, 0, sizeof(*c));
}

int mm_config_set_str(char **slot, const char *value)
{
	char *s = strdup(value);

	if (!s)
		return -ENOMEM;
	free(*slot);
	*slot = s;
	return 0;
}

int mm_config_defaults(struct mm_config *c)
{
	char dir[64];

	memset(c, 0, sizeof(*c));
	snprintf(dir, sizeof(dir), "/dev/shm/mmapfs-%u", (unsigned)geteuid());
	c->size = MM_DEFAULT_SIZE;
	c->user_max = (struct mm_limits){ MM_DEFAULT_MAX_CHANNELS, MM_LIMIT_AUTO };
	if (mm_config_set_str(&c->mmap_dir, dir) < 0)
		return -ENOMEM;
	c->mmap_dir_default = true;
	c->ivshmem_group = (gid_t)-1;
	/* allow_dirs stays empty: it then means "the mmap_dir" */
	return 0;
}

/* A byte count: a number with an optional K, M or G suffix (powers of
 * 1024), below 2^48. 0 or -EINVAL. */
static int parse_bytes(const char *s, uint64_t *out, struct mm_err *err)
{
	char num[32];
	size_t n = strlen(s);
	uint64_t v, mult = 1;

	if (n > 0 && n < sizeof(num)) {
		switch (s[n - 1]) {
		case 'k': case 'K': mult = UINT64_C(1) << 10; n--; break;
		case 'm': case 'M': mult = UINT64_C(1) << 20; n--; break;
		case 'g': case 'G': mult = UINT64_C(1) << 30; n--; break;
		}
	}
	if (n == 0 || n >= sizeof(num))
		return mm_fail(err, -EINVAL, "'%.40s' is not a number with K, M or G", s);
	memcpy(num, s, n);
	num[n] = '\0';
	if (mm_parse_u64(num, (UINT64_C(1) << 48) / mult, &v) < 0)
		return mm_fail(err, -EINVAL, "'%.40s' is not a number with K, M or G below 2^48", s);
	*out = v * mult;
	return 0;
}

int mm_config_parse_size(const char *s, uint64_t *out, struct mm_err *err)
{
	uint64_t v = 0;

	if (parse_bytes(s, &v, err) < 0)
		return mm_fail(err, -EINVAL, "size '%.40s' is not a number with K, M or G", s);
	if (v > MM_AREA_MAX || v < MM_AREA_MIN)
		return mm_fail(err, -EINVAL, "size '%.40s' is outside 64K..4G", s);
	if (mm_area_size_for(v) == 0)
		return mm_fail(err, -EINVAL,
			       "size '%.40s': its area (the ring, an 8-byte header, rounded up "
			       "to a page) would reach 4G", s);
	*out = v;
	return 0;
}

int mm_config_set_limit(struct mm_config *c, const char *key, const char *value,
			struct mm_err *err)
{
	bool owner = strncmp(key, "owner_", 6) == 0;
	struct mm_limits *l = owner ? &c->owner_max : &c->user_max;
	const char *what = key + (owner ? 6 : 0);

	if (strcmp(what, "max_channels") == 0) {
		if (mm_parse_u64(value, UINT32_MAX, &l->channels) < 0)
			return mm_fail(err, -EINVAL, "'%.40s' is not a number of channels", value);
		return 0;
	}
	if (strcmp(what, "max_bytes") == 0)
		return parse_bytes(value, &l->bytes, err);
	return -ENOENT;
}

static int check_dir_path(const char *d, struct mm_err *err)
{
	if (d[0] != '/')
		return mm_fail(err, -EINVAL, "directory '%.200s' is not an absolute path", d);
	return 0;
}

int mm_config_set_allow_dirs(struct mm_config *c, const char *s, struct mm_err *err)
{
	char *copy = strdup(s), *save = NULL, **v = NULL;
	size_t n = 0;
	int r = 0;

	if (!copy)
		return -ENOMEM;
	for (char *d = strtok_r(copy, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
		char **nv;

		r = check_dir_path(d, err);
		if (r < 0)
			break;
		nv = realloc(v, (n + 1) * sizeof(*v));
		if (!nv || !(nv[n] = strdup(d))) {
			v = nv ? nv : v;
			r = -ENOMEM;
			break;
		}
		v = nv;
		n++;
	}
	free(copy);
	if (r == 0 && n == 0)
		r = mm_fail(err, -EINVAL, "allow_dirs '%.200s' names no directory", s);
	if (r < 0) {
		free_strv(v, n);
		return r;
	}
	free_strv(c->allow_dirs, c->n_allow_dirs);
	c->allow_dirs = v;
	c->n_allow_dirs = n;
	return 0;
}

/* Every reason about a setting names its file, line and key. */
static int bad(struct mm_err *err, const char *path, const config_setting_t *s,
	       const char *key, const char *why)
{
	return mm_fail(err, -EINVAL, "%s:%d: %s: %s", path,
		       config_setting_source_line(s), key, why);
}

static int get_string(const config_setting_t *s, const char *path,
		      const char *key, const char **out, struct mm_err *err)
{
	if (config_setting_type(s) != CONFIG_TYPE_STRING)
		return bad(err, path, s, key, "expected a string");
	*out = config_setting_get_string(s);
	return 0;
}

static int get_abs_path(const config_setting_t *s, const char *path,
			const char *key, const char **out, struct mm_err *err)
{
	int r = get_string(s, path, key, out, err);

	if (r == 0 && (*out)[0] != '/')
		return bad(err, path, s, key, "not an absolute path");
	return r;
}

/* A byte count given as an integer or as a string with a suffix: its text. */
static int get_bytes_text(const config_setting_t *s, const char *path, const char *key,
			  char num[32], const char **text, struct mm_err *err)
{
	switch (config_setting_type(s)) {
	case CONFIG_TYPE_INT:
	case CONFIG_TYPE_INT64:
		snprintf(num, 32, "%lld", config_setting_get_int64(s));
		if (num[0] == '-')
			return bad(err, path, s, key, "negative");
		*text = num;
		return 0;
	case CONFIG_TYPE_STRING:
		*text = config_setting_get_string(s);
		return 0;
	default:
		return bad(err, path, s, key, "expected a string such as \"64M\" or an integer");
	}
}

static int load_size(struct mm_config *c, const config_setting_t *s,
		     const char *path, struct mm_err *err)
{
	char num[32];
	const char *text;
	struct mm_err why;
	int r = get_bytes_text(s, path, "size", num, &text, err);

	if (r == 0 && mm_config_parse_size(text, &c->size, &why) < 0)
		r = bad(err, path, s, "size", why.msg);
	return r;
}

static int load_limit(struct mm_config *c, const config_setting_t *s, const char *path,
		      const char *key, struct mm_err *err)
{
	char num[32];
	const char *text;
	struct mm_err why;
	int r = get_bytes_text(s, path, key, num, &text, err);

	if (r < 0)
		return r;
	r = mm_config_set_limit(c, key, text, &why);
	if (r == -ENOENT)
		return bad(err, path, s, key, "unknown key");
	return r ? bad(err, path, s, key, why.msg) : 0;
}

/* A window's offset (page-aligned) or size (an area's: 64K..4G). */
static int load_window(const config_setting_t *s, const char *path, const char *key,
		       uint64_t *out, struct mm_err *err)
{
	uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
	bool size = strstr(key, "_size") != NULL;
	char num[32];
	const char *text = NULL;
	struct mm_err why;
	int r = get_bytes_text(s, path, key, num, &text, err);

	if (r == 0 && parse_bytes(text, out, &why) < 0)
		r = bad(err, path, s, key, why.msg);
	else if (r == 0 && !size && *out % page)
		r = bad(err, path, s, key, "not a multiple of the page size");
	else if (r == 0 && size && (*out < MM_AREA_MIN || *out > MM_AREA_MAX))
		r = bad(err, path, s, key, "outside 64K..4G");
	return r;
}

static int load_allow_dirs(struct mm_config *c, const config_setting_t *s,
			   const char *path, struct mm_err *err)
{
	int n = config_setting_length(s);
	char **v;

	if (config_setting_type(s) != CONFIG_TYPE_ARRAY &&
	    config_setting_type(s) != CONFIG_TYPE_LIST)
		return bad(err, path, s, "allow_dirs", "expected a list of directories");
	if (n == 0)
		return bad(err, path, s, "allow_dirs", "names no directory");
	v = calloc((size_t)n, sizeof(*v));
	if (!v)
		return -ENOMEM;
	for (int i = 0; i < n; i++) {
		const char *d = NULL;
		int r = get_abs_path(config_setting_get_elem(s, (unsigned)i), path,
				     "allow_dirs", &d, err);

		if (r == 0 && !(v[i] = strdup(d)))
			r = -ENOMEM;
		if (r < 0) {
			free_strv(v, (size_t)n);
			return r;
		}
	}
	free_strv(c->allow_dirs, c->n_allow_dirs);
	c->allow_dirs = v;
	c->n_allow_dirs = (size_t)n;
	return 0;
}

static int load_allow_uids(struct mm_config *c, const config_setting_t *s,
			   const char *path, struct mm_err *err)
{
	int n = config_setting_length(s);
	uid_t *v;

	if (config_setting_type(s) != CONFIG_TYPE_ARRAY &&
	    config_setting_type(s) != CONFIG_TYPE_LIST)
		return bad(err, path, s, "allow_uids", "expected a list of user ids");
	v = calloc((size_t)n + 1, sizeof(*v));
	if (!v)
		return -ENOMEM;
	for (int i = 0; i < n; i++) {
		const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
		long long id;

		if (config_setting_type(e) != CONFIG_TYPE_INT &&
		    config_setting_type(e) != CONFIG_TYPE_INT64) {
			free(v);
			return bad(err, path, e, "allow_uids", "expected a numeric user id");
		}
		id = config_setting_get_int64(e);
		if (id < 0 || id >= (long long)UINT32_MAX) {
			free(v);
			return bad(err, path, e, "allow_uids", "not a user id");
		}
		v[i] = (uid_t)id;
	}
	free(c->allow_uids);
	c->allow_uids = v;
	c->n_allow_uids = (size_t)n;
	return 0;
}

/* A user or group id: a name, or a number (an integer, or a string of
 * digits) that need not be in the database. A user's primary group, if the
 * database has it, goes to *primary. */
static int load_id(const config_setting_t *s, const char *path, const char *key,
		   unsigned *id, gid_t *primary, struct mm_err *err)
{
	bool group = primary == NULL;
	const char *str = NULL;
	struct passwd *pw = NULL;
	struct group *gr = NULL;
	uint64_t n = 0;

	if (config_setting_type(s) == CONFIG_TYPE_INT ||
	    config_setting_type(s) == CONFIG_TYPE_INT64)
		n = (uint64_t)config_setting_get_int64(s);
	else if (config_setting_type(s) == CONFIG_TYPE_STRING)
		str = config_setting_get_string(s);
	else
		return bad(err, path, s, key, group ? "expected a group name or number" :
			   "expected a user name or number");
	if (str && mm_parse_u64(str, UINT32_MAX - 1, &n) < 0) {
		if (group ? !(gr = getgrnam(str)) : !(pw = getpwnam(str)))
			return bad(err, path, s, key, group ? "no such group" : "no such user");
		n = group ? gr->gr_gid : pw->pw_uid;
	} else if (n >= UINT32_MAX) {
		return bad(err, path, s, key, group ? "not a group id" : "not a user id");
	} else if (!group) {
		pw = getpwuid((uid_t)n);
	}
	*id = (unsigned)n;
	if (!group)
		*primary = pw ? pw->pw_gid : (gid_t)-1;
	return 0;
}

/* A channel's mode: a string of octal digits such as "0770", of which only
 * the group's write bit counts. (libconfig reads 0770 as decimal 770.) */
static int load_mode(const config_setting_t *s, const char *path, bool *group_w,
		     struct mm_err *err)
{
	const char *str;
	char *end;
	unsigned long m;

	if (config_setting_type(s) != CONFIG_TYPE_STRING)
		return bad(err, path, s, "mode",
			   "expected an octal mode as a string, such as \"0770\"");
	str = config_setting_get_string(s);
	errno = 0;
	m = strtoul(str, &end, 8);
	if (!str[0] || *end || errno || m > 0777 || str[0] == '-' || str[0] == '+')
		return bad(err, path, s, "mode", "expected an octal mode up to \"0777\"");
	*group_w = (m & S_IWGRP) != 0;
	return 0;
}

/* A channel name is one path component a user can type. */
static int load_channel(struct mm_chan_decl *d, const config_setting_t *g,
			const struct mm_chan_decl *prev, size_t nprev,
			const char *path, struct mm_err *err)
{
	gid_t primary = (gid_t)-1;	/* the user key's primary group */
	bool have_group = false;
	const char *str = NULL;
	int r;

	d->line = config_setting_source_line(g);
	d->uid = (uid_t)-1;
	d->gid = (gid_t)-1;
	if (config_setting_type(g) != CONFIG_TYPE_GROUP)
		return bad(err, path, g, "channels", "expected a group { name = ...; }");
	for (int i = 0; i < config_setting_length(g); i++) {
		const config_setting_t *s = config_setting_get_elem(g, (unsigned)i);
		const char *key = config_setting_name(s);
		char **slot = NULL;

		if (strcmp(key, "name") == 0) {
			if ((r = get_string(s, path, key, &str, err)) < 0)
				return r;
			if (!mm_name_valid(str))
				return bad(err, path, s, key, "not a valid channel name");
			for (size_t j = 0; j < nprev; j++)
				if (strcmp(prev[j].name, str) == 0)
					return bad(err, path, s, key, "duplicate channel name");
			slot = &d->name;
		} else if (strcmp(key, "role") == 0) {
			if ((r = get_string(s, path, key, &str, err)) < 0)
				return r;
			if (mm_role_parse(str, &d->role) < 0)
				return bad(err, path, s, key, "expected \"creator\" or \"attacher\"");
		} else if (strcmp(key, "read_file") == 0 || strcmp(key, "write_file") == 0) {
			if ((r = get_abs_path(s, path, key, &str, err)) < 0)
				return r;
			slot = key[0] == 'r' ? &d->read_file : &d->write_file;
		} else if (strcmp(key, "read_offset") == 0 || strcmp(key, "read_size") == 0 ||
			   strcmp(key, "write_offset") == 0 || strcmp(key, "write_size") == 0) {
			struct mm_window *w = key[0] == 'r' ? &d->read_window : &d->write_window;

			r = load_window(s, path, key, strstr(key, "_size") ? &w->size : &w->offset,
					err);
			if (r < 0)
				return r;
		} else if (strcmp(key, "user") == 0) {
			unsigned id;

			if ((r = load_id(s, path, key, &id, &primary, err)) < 0)
				return r;
			d->uid = (uid_t)id;
		} else if (strcmp(key, "group") == 0) {
			unsigned id;

			if ((r = load_id(s, path, key, &id, NULL, err)) < 0)
				return r;
			d->gid = (gid_t)id;
			have_group = true;
		} else if (strcmp(key, "mode") == 0) {
			if ((r = load_mode(s, path, &d->group_w, err)) < 0)
				return r;
		} else {
			return bad(err, path, s, key, "unknown key");
		}
		if (slot && mm_config_set_str(slot, str) < 0)
			return -ENOMEM;
	}
	if (!d->name)
		return bad(err, path, g, "name", "missing in this channel");
	if (d->uid != (uid_t)-1 && !have_group) {
		if (primary == (gid_t)-1)
			return bad(err, path, g, "user",
				   "not in the user database: give the channel's group too");
		d->gid = primary;
	}
	if ((d->read_window.offset && !d->read_window.size) ||
	    (d->write_window.offset && !d->write_window.size))
		return bad(err, path, g, d->read_window.offset && !d->read_window.size ?
			   "read_size" : "write_size", "a window needs its size");
	if ((d->read_window.size && !d->read_file) || (d->write_window.size && !d->write_file))
		return bad(err, path, g, d->read_window.size && !d->read_file ?
			   "read_file" : "write_file", "a window needs its file");
	return 0;
}

/* Do two declared areas share bytes of one file? */
static bool windows_overlap(const char *fa, const struct mm_window *a, const char *fb,
			    const struct mm_window *b)
{
	if (!fa || !fb || strcmp(fa, fb) != 0)
		return false;
	if (!a->size || !b->size)
		return true;	/* one of them is the whole file */
	return a->offset < b->offset + b->size && b->offset < a->offset + a->size;
}

/* Each declared area's bytes belong to it alone: refuse any two that
 * overlap, naming the later one's line. */
static int check_windows(const struct mm_chan_decl *ch, size_t n, const char *path,
			 struct mm_err *err)
{
	for (size_t i = 0; i < n; i++) {
		const char *fi[2] = { ch[i].read_file, ch[i].write_file };
		const struct mm_window *wi[2] = { &ch[i].read_window, &ch[i].write_window };

		for (size_t j = 0; j <= i; j++) {
			const char *fj[2] = { ch[j].read_file, ch[j].write_file };
			const struct mm_window *wj[2] = { &ch[j].read_window, &ch[j].write_window };

			for (int x = 0; x < 2; x++)
				for (int y = 0; y < 2; y++)
					if ((j < i || x < y) &&
					    windows_overlap(fi[x], wi[x], fj[y], wj[y]))
						return mm_fail(err, -EINVAL,
							       "%s:%d: channel %s: %s_file %s overlaps "
							       "channel %s's %s_file (line %d)", path,
							       ch[i].line, ch[i].name,
							       x ? "write" : "read", fi[x], ch[j].name,
							       y ? "write" : "read", ch[j].line);
		}
	}
	return 0;
}

static int load_channels(struct mm_config *c, const config_setting_t *s,
			 const char *path, struct mm_err *err)
{
	int n = config_setting_length(s);
	struct mm_chan_decl *ch;

	if (config_setting_type(s) != CONFIG_TYPE_LIST)
		return bad(err, path, s, "channels", "expected a list ( { ... }, ... )");
	ch = calloc((size_t)n + 1, sizeof(*ch));
	if (!ch)
		return -ENOMEM;
	for (int i = 0; i < n; i++) {
		int r = load_channel(&ch[i], config_setting_get_elem(s, (unsigned)i),
				     ch, (size_t)i, path, err);

		if (r < 0) {
			free_channels(ch, (size_t)i + 1);
			return r;
		}
	}
	if (check_windows(ch, (size_t)n, path, err) < 0) {
		free_channels(ch, (size_t)n);
		return -EINVAL;
	}
	free_channels(c->channels, c->n_channels);
	c->channels = ch;
	c->n_channels = (size_t)n;
	return 0;
}

int mm_config_parse_peer(const char *s, unsigned *out, struct mm_err *err)
{
	uint64_t v;

	if (mm_parse_u64(s, 65535, &v) < 0)
		return mm_fail(err, -EINVAL, "%s: expected a peer id, 0..65535", s);
	*out = (unsigned)v;
	return 0;
}

int mm_config_parse_vectors(const char *s, unsigned *out, struct mm_err *err)
{
	uint64_t v;

	if (mm_parse_u64(s, MM_IVSHMEM_VECTORS_MAX, &v) < 0 || v == 0)
		return mm_fail(err, -EINVAL, "%s: expected a number of vectors, 1..%d", s,
			       MM_IVSHMEM_VECTORS_MAX);
	*out = (unsigned)v;
	return 0;
}

int mm_config_check_ivshmem(const struct mm_config *c, const char *origin,
			    struct mm_err *err)
{
	if (!c->ivshmem_server != !c->ivshmem_memory)
		return mm_fail(err, -EINVAL, "%s: ivshmem_server and ivshmem_memory go together "
			       "(the socket QEMU connects to, the memory it gets)", origin);
	if ((c->ivshmem_server || c->ivshmem_client) && c->ivshmem_device)
		return mm_fail(err, -EINVAL, "%s: ivshmem_server or ivshmem_client (a host's) and "
			       "ivshmem_device (a guest's) exclude each other", origin);
	if (c->ivshmem_server && c->ivshmem_client)
		return mm_fail(err, -EINVAL, "%s: ivshmem_server and ivshmem_client exclude each "
			       "other: be the server, or join one", origin);
	if (c->ivshmem_vectors && !c->ivshmem_server)
		return mm_fail(err, -EINVAL, "%s: ivshmem_vectors is the server's (ivshmem_server): "
			       "a client or a guest takes the vectors it is given", origin);
	return 0;
}

/* An ivshmem_* key of the file. */
static int load_ivshmem(struct mm_config *c, const config_setting_t *s, const char *path,
			const char *key, struct mm_err *err)
{
	char **slot = strcmp(key, "ivshmem_server") == 0 ? &c->ivshmem_server :
		      strcmp(key, "ivshmem_memory") == 0 ? &c->ivshmem_memory :
		      strcmp(key, "ivshmem_device") == 0 ? &c->ivshmem_device :
		      strcmp(key, "ivshmem_client") == 0 ? &c->ivshmem_client : NULL;
	const char *str = NULL;
	struct mm_err why;
	char num[32];
	int r;

	if (slot) {
		r = get_abs_path(s, path, key, &str, err);
		return r < 0 ? r : mm_config_set_str(slot, str);
	}
	if (strcmp(key, "ivshmem_group") == 0) {
		unsigned gid;

		r = load_id(s, path, key, &gid, NULL, err);
		if (r == 0)
			c->ivshmem_group = (gid_t)gid;
		return r;
	}
	if (strcmp(key, "ivshmem_poll") == 0) {
		if (config_setting_type(s) != CONFIG_TYPE_BOOL)
			return bad(err, path, s, key, "expected true or false");
		c->ivshmem_nopoll = !config_setting_get_bool(s);
		return 0;
	}
	if (strcmp(key, "ivshmem_peer") == 0) {
		if (config_setting_type(s) != CONFIG_TYPE_INT)
			return bad(err, path, s, key, "expected a peer id, 0..65535");
		snprintf(num, sizeof(num), "%d", config_setting_get_int(s));
		return mm_config_parse_peer(num, &c->ivshmem_peer, &why) < 0 ?
		       bad(err, path, s, key, why.msg) : 0;
	}
	if (strcmp(key, "ivshmem_vectors") == 0) {
		if (config_setting_type(s) != CONFIG_TYPE_INT)
			return bad(err, path, s, key, "expected a number of vectors, 1..32");
		snprintf(num, sizeof(num), "%d", config_setting_get_int(s));
		return mm_config_parse_vectors(num, &c->ivshmem_vectors, &why) < 0 ?
		       bad(err, path, s, key, why.msg) : 0;
	}
	return bad(err, path, s, key, "unknown key");
}

int mm_config_load(struct mm_config *c, const char *path, struct mm_err *err)
{
	config_t cf;
	config_setting_t *root;
	struct stat st;
	FILE *f;
	int r = 0;

	f = fopen(path, "re");
	if (!f)
		return mm_fail(err, -errno, "%s: %s", path, strerror(errno));
	if (mm_config_set_str(&c->file, path) < 0) {
		fclose(f);
		return -ENOMEM;
	}
	/* libconfig's scanner exit()s on a read error such as a directory's */
	if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
		fclose(f);
		return mm_fail(err, -EISDIR, "%s: %s", path, strerror(EISDIR));
	}
	config_init(&cf);
	if (!config_read(&cf, f)) {
		r = mm_fail(err, -EINVAL, "%s:%d: %s", path, config_error_line(&cf),
			    config_error_text(&cf));
		goto out;
	}
	root = config_root_setting(&cf);
	for (int i = 0; r == 0 && i < config_setting_length(root); i++) {
		config_setting_t *s = config_setting_get_elem(root, (unsigned)i);
		const char *key = config_setting_name(s), *str = NULL;

		if (strcmp(key, "mmap_dir") == 0) {
			r = get_abs_path(s, path, key, &str, err);
			if (r == 0)
				r = mm_config_set_str(&c->mmap_dir, str);
			c->mmap_dir_default = false;
		} else if (strcmp(key, "size") == 0) {
			r = load_size(c, s, path, err);
		} else if (strcmp(key, "allow_dirs") == 0) {
			r = load_allow_dirs(c, s, path, err);
		} else if (strcmp(key, "allow_uids") == 0) {
			r = load_allow_uids(c, s, path, err);
		} else if (strcmp(key, "reserve") == 0) {
			if (config_setting_type(s) != CONFIG_TYPE_BOOL)
				r = bad(err, path, s, key, "expected true or false");
			else
				c->reserve = config_setting_get_bool(s);
		} else if (strcmp(key, "channels") == 0) {
			r = load_channels(c, s, path, err);
		} else if (strncmp(key, "ivshmem_", 8) == 0) {
			r = load_ivshmem(c, s, path, key, err);
		} else if (strstr(key, "max_")) {
			r = load_limit(c, s, path, key, err);
		} else {
			r = bad(err, path, s, key, "unknown key");
		}
	}
out:
	config_destroy(&cf);
	fclose(f);
	return r;
}
