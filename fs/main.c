/* mmapfs: shared-memory channels (xpra's mmap format) as files.
 *
 *   mmapfs [-f] [-d] [-c CONFIG] [-o OPTION[,OPTION...]] MOUNTPOINT
 *
 * Everything is checked before anything is mounted: a bad option or
 * configuration file is one message naming the culprit and exit status 1. */
#include <dlfcn.h>
#include <errno.h>
#include <grp.h>
#include <libgen.h>
#include <pwd.h>
#include <limits.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "config.h"
#include "guard.h"
#include "alias.h"
#include "fs.h"
#include "build-config.h"

static void mm_init(void *userdata, struct fuse_conn_info *conn)
{
	/* `echo x > peer` truncates: take O_TRUNC with the open */
	if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
		conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
	/* A stream: the chunks of one large read or write must reach us one
	 * after the other, in order, never at once. */
	conn->want &= ~FUSE_CAP_ASYNC_DIO;
	conn->max_write = DATA_MAX_IO;
}

const struct fuse_lowlevel_ops mmfs_ops = {
	.init = mm_init,
	.lookup = mm_lookup,
	.getattr = mm_getattr,
	.readlink = mm_readlink,
	.setattr = mm_setattr,
	.readdir = mm_readdir,
	.mkdir = mm_mkdir,
	.rmdir = mm_rmdir,
	.mknod = mm_mknod,
	.unlink = mm_unlink,
	.rename = mm_rename,
	.create = mm_create,
	.open = mm_open,
	.read = mm_read,
	.write = mm_write,
	.flush = mm_flush,
	.release = mm_release,
	.poll = mm_poll,
	.ioctl = mm_ioctl,
};

/* The default configuration file, read only when it exists. */
#define DEFAULT_CONFIG MMAPFS_SYSCONFDIR "/mmapfs.conf"

struct cmdline {
	char *config;
	char *mmap_dir;
	char *size;
	char *allow_dirs;
	char *mkdir;
	char *limit[4];			/* LIMIT_KEYS' values */
	char *ivshmem_server;
	char *ivshmem_memory;
	char *ivshmem_device;
	char *ivshmem_client;
	char *ivshmem_peer;
	char *ivshmem_vectors;
	char *ivshmem_poll;
	char *ivshmem_group;
	int allow_other;
	int reserve;
	int debug;
	int fuse_debug;
	int help;
	int version;
	char *operand[2];		/* [SOURCE] MOUNTPOINT */
	int n_operands;
};

#define OPT(t, p) { t, offsetof(struct cmdline, p), 1 }
static const char *const LIMIT_KEYS[4] = {
	"max_channels", "max_bytes", "owner_max_channels", "owner_max_bytes"
};
#define KEY_ALLOW_OTHER 1

static const struct fuse_opt cmdline_opts[] = {
	OPT("-c %s", config),
	OPT("--config=%s", config),
	OPT("config=%s", config),
	OPT("mmap_dir=%s", mmap_dir),
	OPT("size=%s", size),
	OPT("allow_dirs=%s", allow_dirs),
	OPT("mkdir=%s", mkdir),
	OPT("reserve", reserve),
	OPT("max_channels=%s", limit[0]),
	OPT("max_bytes=%s", limit[1]),
	OPT("owner_max_channels=%s", limit[2]),
	OPT("owner_max_bytes=%s", limit[3]),
	OPT("ivshmem_server=%s", ivshmem_server),
	OPT("ivshmem_memory=%s", ivshmem_memory),
	OPT("ivshmem_device=%s", ivshmem_device),
	OPT("ivshmem_client=%s", ivshmem_client),
	OPT("ivshmem_peer=%s", ivshmem_peer),
	OPT("ivshmem_vectors=%s", ivshmem_vectors),
	OPT("ivshmem_group=%s", ivshmem_group),
	OPT("ivshmem_poll=%s", ivshmem_poll),
	FUSE_OPT_KEY("allow_other", KEY_ALLOW_OTHER),
	OPT("-d", debug),
	OPT("--debug", debug),
	OPT("fuse_debug", fuse_debug),
	OPT("-h", help),
	OPT("--help", help),
	OPT("-V", version),
	OPT("--version", version),
	FUSE_OPT_END
};

/* mount(8) runs us through mount.fuse3 as "mmapfs SOURCE MOUNTPOINT -o ...":
 * keep the operands aside; with two, the first is that source, ignored. */
static int operand_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	struct cmdline *cl = data;

	if (key == KEY_ALLOW_OTHER)
		cl->allow_other = 1;	/* and libfuse takes it too */
	if (key != FUSE_OPT_KEY_NONOPT)
		return 1;
	if (cl->n_operands == 2) {
		fprintf(stderr, "mmapfs: unexpected argument '%s' (see --help)\n", arg);
		return -1;
	}
	cl->operand[cl->n_operands] = strdup(arg);
	if (!cl->operand[cl->n_operands])
		return -1;
	cl->n_operands++;
	return 0;
}

static void usage(const char *prog)
{
	printf("usage: %s [options] [SOURCE] MOUNTPOINT\n\n"
	       "Shared-memory channels (xpra's mmap format) as files.\n\n"
	       "mmapfs options:\n"
	       "    -c CONFIG, --config=CONFIG, -o config=CONFIG\n"
	       "                           libconfig file (default %s, if present)\n"
	       "    -d, --debug            foreground, with a trace of handshakes and rings\n"
	       "    -o mmap_dir=DIR        where created areas live (default /dev/shm/mmapfs-UID)\n"
	       "    -o size=SIZE           ring size of a new area, 64K..4G (default 64M)\n"
	       "    -o reserve             allocate each new area whole when it is made, so a\n"
	       "                           full filesystem fails mkdir rather than a write\n"
	       "    -o allow_dirs=DIR[:DIR...]\n"
	       "                           where offered files may be opened (default: mmap_dir)\n"
	       "    -o mkdir=owner|all|GROUP\n"
	       "                           who may make channels with allow_other (default owner)\n"
	       "    -o max_channels=N, -o max_bytes=SIZE\n"
	       "                           what each other user's channels may hold (default 64,\n"
	       "                           and a quarter of the mmap_dir's filesystem; 0: none)\n"
	       "    -o owner_max_channels=N, -o owner_max_bytes=SIZE\n"
	       "                           the same for the mounting user (default: no limit)\n"
	       "    -o ivshmem_server=SOCKET,ivshmem_memory=FILE\n"
	       "                           host: be the ivshmem server of QEMU's ivshmem-doorbell\n"
	       "                           devices on SOCKET, handing out FILE as their memory\n"
	       "    -o ivshmem_group=GROUP the server socket's group (mode 0660), for QEMU's user\n"
	       "    -o ivshmem_vectors=N   the server's eventfds a peer (1..32; QEMU's vectors=N)\n"
	       "    -o ivshmem_client=SOCKET\n"
	       "                           host: join the ivshmem server there instead\n"
	       "    -o ivshmem_device=DIR  guest: ring the host through the Doorbell register of\n"
	       "                           this ivshmem-doorbell device (/sys/bus/pci/devices/...)\n"
	       "    -o ivshmem_peer=ID     guest: the peer it rings (default 0, the host daemon)\n"
	       "    -o ivshmem_poll=off    debug: only doorbells wake waits on a doorbell's areas\n"
	       "    -o fuse_debug          libfuse's own trace of every request\n"
	       "    -h, --help             this help\n"
	       "    -V, --version          the version\n\n"
	       "FUSE options:\n", prog, DEFAULT_CONFIG);
	fuse_cmdline_help();
	fuse_lowlevel_help();
}

/* -o mkdir=: who may make channels at the top, that is its mode: the
 * mounting user (0755), everyone (01777) or a group (01775); the sticky
 * bit lets only a channel's owner (or root) remove it. 0, or 1 after
 * printing why. */
static int top_mode(struct mmfs *fs, const char *who)
{
	struct group *gr;
	uint64_t gid;

	fs->top_mode = 0755;
	fs->top_gid = fs->gid;
	if (!who || strcmp(who, "owner") == 0)
		return 0;
	if (strcmp(who, "all") == 0) {
		fs->top_mode = 01777;
		return 0;
	}
	if (mm_parse_u64(who, UINT32_MAX - 1, &gid) < 0) {
		if (!(gr = getgrnam(who)))
			return fprintf(stderr, "mmapfs: -o mkdir=%s: expected owner, all, or a "
				       "group name or number: no such group\n", who), 1;
		gid = gr->gr_gid;
	}
	fs->top_mode = 01775;
	fs->top_gid = (gid_t)gid;
	return 0;
}

/* The default mmap_dir, /dev/shm/mmapfs-UID, which anyone may create
 * first: ours, or a directory of ours beside it (core/area.h). 0, or -1
 * after printing why. */
static int claim_default_dir(struct mm_config *c)
{
	struct mm_err err = { "" };
	char why[512], name[64] = "";
	struct passwd *pw;
	uid_t squatter;
	char *dir;
	int r = mm_area_dir_claim(c->mmap_dir, &dir, &squatter, why, sizeof(why), &err);

	if (r == -ENOENT)
		return 0;	/* no /dev/shm (a guest whose areas are all BARs):
				 * made when a channel first needs it, if ever */
	if (r < 0)
		return fprintf(stderr, "mmapfs: mmap_dir %s\n", err.msg), -1;
	if (squatter != (uid_t)-1) {
		if ((pw = getpwuid(squatter)))
			snprintf(name, sizeof(name), " (%s)", pw->pw_name);
		fuse_log(FUSE_LOG_WARNING, "mmapfs: %s is taken by uid %u%s: %s; areas go to %s "
			 "instead\n", c->mmap_dir, (unsigned)squatter, name, why, dir);
	}
	free(c->mmap_dir);
	c->mmap_dir = dir;
	return 0;
}

/* A user's area bytes by default: a quarter of the filesystem that holds
 * the mmap_dir (/dev/shm: half the memory), at least eight channels' two
 * areas at the ring size, but never more than half of it. */
static uint64_t auto_max_bytes(const char *dir, uint64_t ring)
{
	uint64_t fs_bytes, b, eight = 16 * mm_area_size_for(ring);
	char parent[PATH_MAX];
	struct statvfs sv;

	snprintf(parent, sizeof(parent), "%s", dir);
	if (statvfs(dir, &sv) < 0 && statvfs(dirname(parent), &sv) < 0)
		return eight;
	fs_bytes = (uint64_t)sv.f_blocks * sv.f_frsize;
	b = fs_bytes / 4 > eight ? fs_bytes / 4 : eight;
	return b > fs_bytes / 2 && fs_bytes / 2 ? fs_bytes / 2 : b;
}

/* The ivshmem settings of -o over the file's, checked together, and what
 * they name opened (before the declared channels, which may use it). 0, or
 * 1 after printing why. */
static int configure_ivshmem(struct mmfs *fs, struct cmdline *cl, const char *file)
{
	struct mm_config *c = &fs->cfg;
	struct mm_err err = { "" };
	char *const *val[4] = { &cl->ivshmem_server, &cl->ivshmem_memory, &cl->ivshmem_device,
				&cl->ivshmem_client };
	char **slot[4] = { &c->ivshmem_server, &c->ivshmem_memory, &c->ivshmem_device,
			   &c->ivshmem_client };
	static const char *const key[4] = { "ivshmem_server", "ivshmem_memory", "ivshmem_device",
					    "ivshmem_client" };

	for (int i = 0; i < 4; i++) {
		if (!*val[i])
			continue;
		if ((*val[i])[0] != '/')
			return fprintf(stderr, "mmapfs: -o %s=%s: not an absolute path\n", key[i],
				       *val[i]), 1;
		if (mm_config_set_str(slot[i], *val[i]) < 0)
			return fprintf(stderr, "mmapfs: out of memory\n"), 1;
	}
	if (cl->ivshmem_peer && mm_config_parse_peer(cl->ivshmem_peer, &c->ivshmem_peer, &err) < 0)
		return fprintf(stderr, "mmapfs: -o ivshmem_peer=%s\n", err.msg), 1;
	if (cl->ivshmem_vectors &&
	    mm_config_parse_vectors(cl->ivshmem_vectors, &c->ivshmem_vectors, &err) < 0)
		return fprintf(stderr, "mmapfs: -o ivshmem_vectors=%s\n", err.msg), 1;
	if (cl->ivshmem_group) {
		struct group *gr;
		uint64_t gid;

		if (mm_parse_u64(cl->ivshmem_group, UINT32_MAX - 1, &gid) < 0) {
			if (!(gr = getgrnam(cl->ivshmem_group)))
				return fprintf(stderr, "mmapfs: -o ivshmem_group=%s: no such group\n",
					       cl->ivshmem_group), 1;
			gid = gr->gr_gid;
		}
		c->ivshmem_group = (gid_t)gid;
	}
	if (cl->ivshmem_poll) {
		if (strcmp(cl->ivshmem_poll, "on") != 0 && strcmp(cl->ivshmem_poll, "off") != 0)
			return fprintf(stderr, "mmapfs: -o ivshmem_poll=%s: expected on or off\n",
				       cl->ivshmem_poll), 1;
		c->ivshmem_nopoll = strcmp(cl->ivshmem_poll, "off") == 0;
	}
	if (mm_config_check_ivshmem(c, file ? file : "options", &err) < 0 ||
	    mmfs_ivshmem_setup(fs, &err) < 0)
		return fprintf(stderr, "mmapfs: %s\n", err.msg), 1;
	return 0;
}

/* Defaults, then the file, then -o. 0, or 1 after printing why. */
static int configure(struct mmfs *fs, struct cmdline *cl)
{
	struct mm_config *c = &fs->cfg;
	struct mm_err err = { "" };
	const char *file = cl->config;
	int r;

	if (mm_config_defaults(c) < 0)
		return fprintf(stderr, "mmapfs: out of memory\n"), 1;
	if (!file && access(DEFAULT_CONFIG, F_OK) == 0)
		file = DEFAULT_CONFIG;
	if (file && mm_config_load(c, file, &err) < 0)
		return fprintf(stderr, "mmapfs: %s\n", err.msg), 1;
	r = 0;
	if (cl->mmap_dir) {
		if (cl->mmap_dir[0] != '/')
			return fprintf(stderr, "mmapfs: -o mmap_dir=%s: not an absolute path\n",
				       cl->mmap_dir), 1;
		r = mm_config_set_str(&c->mmap_dir, cl->mmap_dir);
		c->mmap_dir_default = false;
	}
	for (int i = 0; i < 4; i++)
		if (cl->limit[i] && mm_config_set_limit(c, LIMIT_KEYS[i], cl->limit[i], &err) < 0)
			return fprintf(stderr, "mmapfs: -o %s=%s: %s\n", LIMIT_KEYS[i],
				       cl->limit[i], err.msg), 1;
	if (r == 0 && cl->size && mm_config_parse_size(cl->size, &c->size, &err) < 0)
		return fprintf(stderr, "mmapfs: -o size=%s: %s\n", cl->size, err.msg), 1;
	if (r == 0 && cl->allow_dirs &&
	    mm_config_set_allow_dirs(c, cl->allow_dirs, &err) < 0)
		return fprintf(stderr, "mmapfs: -o allow_dirs=%s: %s\n", cl->allow_dirs,
			       err.msg), 1;
	if (r < 0)
		return fprintf(stderr, "mmapfs: out of memory\n"), 1;
	if (cl->reserve)
		c->reserve = true;
	if (configure_ivshmem(fs, cl, file))
		return 1;
	if (top_mode(fs, cl->mkdir))
		return 1;
	if (c->n_allow_dirs) {
		fs->allow_dirs = (const char **)c->allow_dirs;
		fs->n_allow_dirs = c->n_allow_dirs;
	} else {
		fs->allow_dirs = (const char **)&c->mmap_dir;
		fs->n_allow_dirs = 1;
	}
	/* the default is taken now, or one of ours beside it if another user
	 * holds its name; an existing mmap_dir is ours from the start
	 * (leftovers swept now); a missing one is made when a channel first
	 * needs it */
	if (c->mmap_dir_default && claim_default_dir(c) < 0)
		return 1;
	if (access(c->mmap_dir, F_OK) == 0 && mmfs_mmap_dir(fs, &err) < 0)
		return fprintf(stderr, "mmapfs: %s\n", err.msg), 1;
	if (c->user_max.bytes == MM_LIMIT_AUTO)
		c->user_max.bytes = auto_max_bytes(c->mmap_dir, c->size);
	for (size_t i = 0; i < c->n_channels; i++) {
		if (mmfs_add_declared(fs, &c->channels[i], &err) < 0)
			return fprintf(stderr, "mmapfs: %s:%d: channel %s: %s\n", file,
				       c->channels[i].line, c->channels[i].name, err.msg), 1;
	}
	return 0;
}

/* Take all the descriptors the system allows: an area keeps none once
 * mapped, but handshakes, streams and FUSE requests in flight open some. */
static void raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

/* Once, at start: what was mounted, and with what. */
static void log_mounted(struct mmfs *fs, const char *mountpoint, const char *file,
			bool allow_other)
{
	char names[512] = "", users[64] = "";
	size_t n = 0;

	for (size_t i = 0; i < fs->cfg.n_channels && n < sizeof(names); i++)
		n += (size_t)snprintf(names + n, sizeof(names) - n, "%s%s", i ? " " : "",
				      fs->cfg.channels[i].name);
	if (allow_other && fs->top_mode == 01775)
		snprintf(users, sizeof(users), "; allow_other, mkdir by group %u",
			 (unsigned)fs->top_gid);
	else if (allow_other)
		snprintf(users, sizeof(users), "; allow_other, mkdir by %s",
			 fs->top_mode == 01777 ? "all" : "the owner");
	fuse_log(FUSE_LOG_NOTICE, "mmapfs: mounted on %s (config %s, mmap_dir %s, ring %llu "
		 "bytes, id %s), declared channels: %s%s; another user's limits: %llu channels, "
		 "%llu bytes (0: none)\n", mountpoint, file ? file : "none",
		 fs->cfg.mmap_dir, (unsigned long long)fs->cfg.size, fs->area_tag,
		 names[0] ? names : "none", users, (unsigned long long)fs->cfg.user_max.channels,
		 (unsigned long long)fs->cfg.user_max.bytes);
}

/* fs->lock: error-checking where assert_unlocked() checks (fs.h). */
static void init_lock(pthread_mutex_t *m)
{
	pthread_mutexattr_t a;

	pthread_mutexattr_init(&a);
#ifndef NDEBUG
	pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ERRORCHECK);
#endif
	pthread_mutex_init(m, &a);
	pthread_mutexattr_destroy(&a);
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts opts = { 0 };
	struct fuse_loop_config *loop = NULL;
	struct cmdline cl = { 0 };
	struct mmfs fs;
	int ret = 1, r;

	memset(&fs, 0, sizeof(fs));
	init_lock(&fs.lock);
	pthread_cond_init(&fs.fired, NULL);
	pthread_mutex_init(&fs.wheel_lock, NULL);
	pthread_mutex_init(&fs.dir_lock, NULL);
	pthread_mutex_init(&fs.pool.lock, NULL);
	fs.dir_lockfd = -1;
	fs.next_id = 1;
	fs.uid = getuid();
	fs.gid = getgid();
	clock_gettime(CLOCK_REALTIME, &fs.mounted);
	if (getrandom(&fs.session, sizeof(fs.session), 0) != sizeof(fs.session) || !fs.session)
		fs.session = (uint32_t)getpid() ^ (uint32_t)fs.mounted.tv_nsec;
	snprintf(fs.area_tag, sizeof(fs.area_tag), "%08x", fs.session);

	if (fuse_opt_parse(&args, &cl, cmdline_opts, operand_proc) < 0)
		goto out_args;
	if (cl.n_operands > 0 &&
	    fuse_opt_add_arg(&args, cl.operand[cl.n_operands - 1]) < 0)
		goto out_args;
	if (cl.help) {
		usage(argv[0]);
		ret = 0;
		goto out_args;
	}
	if (cl.version) {
		printf("mmapfs version %s\nlibfuse version %s\n", MMAPFS_VERSION,
		       fuse_pkgversion());
		ret = 0;
		goto out_args;
	}
	/* with other users in, the kernel checks their access against the
	 * modes and owners the files show (docs/mmapfs.1, "USERS") */
	if ((cl.allow_other && fuse_opt_add_arg(&args, "-odefault_permissions") < 0) ||
	    (cl.debug && fuse_opt_add_arg(&args, "-f") < 0) ||
	    (cl.fuse_debug && fuse_opt_add_arg(&args, "-d") < 0) ||
	    fuse_parse_cmdline(&args, &opts) != 0)
		goto out_args;
	if (!opts.mountpoint) {
		fprintf(stderr, "usage: %s [options] MOUNTPOINT (see --help)\n", argv[0]);
		goto out_args;
	}
	fs.debug = cl.debug;
	raise_nofile();
	/* libfuse cancels its workers at the end, for which glibc loads
	 * libgcc_s: loaded now, while a descriptor is free, so that a daemon
	 * at its descriptor limit still ends cleanly */
	dlopen("libgcc_s.so.1", RTLD_NOW | RTLD_NODELETE);
	if (mm_guard_init() < 0) {
		perror("mmapfs: sigaction");
		goto out_args;
	}
	mm_alias_enable();	/* the ticker's trailers, side by side */
	if (configure(&fs, &cl))
		goto out_chans;

	fs.se = fuse_session_new(&args, &mmfs_ops, sizeof(mmfs_ops), &fs);
	if (!fs.se)
		goto out_chans;
	if (fuse_set_signal_handlers(fs.se) != 0)
		goto out_session;
	if (fuse_session_mount(fs.se, opts.mountpoint) != 0)
		goto out_signals;
	if (fuse_daemonize(opts.foreground) != 0)
		goto out_unmount;
	if (mmfs_ticker_start(&fs) < 0) {
		fprintf(stderr, "mmapfs: cannot start a thread\n");
		goto out_unmount;
	}
	if ((r = mmfs_pump_start(&fs)) < 0) {
		fprintf(stderr, "mmapfs: cannot start the pump: %s\n", strerror(-r));
		goto out_ticker;
	}
	if ((r = mmfs_ivshmem_start(&fs)) < 0) {
		fprintf(stderr, "mmapfs: cannot start the ivshmem server: %s\n", strerror(-r));
		goto out_pump;
	}
	log_mounted(&fs, opts.mountpoint, cl.config ? cl.config : fs.cfg.file, cl.allow_other);

	if (opts.singlethread) {
		ret = fuse_session_loop(fs.se);
	} else {
		loop = fuse_loop_cfg_create();
		if (!loop)
			goto out_pump;
		fuse_loop_cfg_set_clone_fd(loop, opts.clone_fd);
		if (opts.max_idle_threads != UINT_MAX)
			fuse_loop_cfg_set_idle_threads(loop, opts.max_idle_threads);
		/* no request waits in a worker (data.c parks them): libfuse's
		 * own limit (10 in 3.14) serves any number of waiting callers */
		if (opts.max_threads != UINT_MAX)
			fuse_loop_cfg_set_max_threads(loop, opts.max_threads);
		ret = fuse_session_loop_mt(fs.se, loop);
		fuse_loop_cfg_destroy(loop);
	}
	/* libfuse's loop returns the signal that ended it: SIGTERM, SIGINT
	 * and SIGHUP are how a daemon is told to stop, not failures */
	if (ret < 0)
		ret = -ret;
	ret = !(ret == 0 || ret == SIGTERM || ret == SIGINT || ret == SIGHUP);
out_pump:
	mmfs_pump_stop(&fs);
out_ticker:
	mmfs_ticker_stop(&fs);
	data_cancel_all(&fs);	/* what waits gets ENOTCONN, before the unmount */
out_unmount:
	fuse_session_unmount(fs.se);
	fuse_log(FUSE_LOG_NOTICE, "mmapfs: unmounted %s\n", opts.mountpoint);
out_signals:
	fuse_remove_signal_handlers(fs.se);
out_session:
	fuse_session_destroy(fs.se);
out_chans:
	mmfs_close_all(&fs);
	mmfs_ivshmem_stop(&fs);	/* after the channels, which ring its bell */
	free(fs.usage);
	mmfs_tick_free(&fs);
	mm_area_dir_unlock(fs.cfg.mmap_dir, fs.area_tag, fs.dir_lockfd);
	mm_config_free(&fs.cfg);
	free(opts.mountpoint);
out_args:
	fuse_opt_free_args(&args);
	free(cl.config);
	free(cl.mmap_dir);
	free(cl.size);
	free(cl.allow_dirs);
	free(cl.mkdir);
	for (int i = 0; i < 4; i++)
		free(cl.limit[i]);
	free(cl.ivshmem_server);
	free(cl.ivshmem_memory);
	free(cl.ivshmem_device);
	free(cl.ivshmem_client);
	free(cl.ivshmem_peer);
	free(cl.ivshmem_vectors);
	free(cl.ivshmem_poll);
	free(cl.ivshmem_group);
	free(cl.operand[0]);
	free(cl.operand[1]);
	return ret;
}
