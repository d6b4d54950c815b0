/*
 * libusbfake: a stand-in for libusb-1.0.so.0 that forwards every USB
 * operation over a Unix socket to a simulator process (cmd/cm4usbsim).
 *
 * It exists so that the real cm4bench binary, with the real gousb cgo glue,
 * can drive simulated Compute Module 4 boards on machines without a USB
 * subsystem. It is a test tool: it is never linked into a release binary.
 *
 * Build:  gcc -shared -fPIC -O2 -Wall -Wextra -Werror $(pkg-config --cflags libusb-1.0) \
 *             -Wl,-soname,libusb-1.0.so.0 -o libusb-1.0.so.0 libusbfake.c -lpthread
 * Use:    CM4USBSIM_SOCKET=/path/to/sim.sock LD_LIBRARY_PATH=<dir> program
 *         LIBUSBFAKE_DEBUG=1 traces every call on stderr.
 *
 * Wire protocol (little endian; one connection per request so that a host
 * side timeout can abandon a request without desynchronising a stream; the
 * simulator sees the connection close and aborts the device operation):
 *   request:  u32 length-of-rest, u8 op, payload
 *   response: u32 length-of-rest, i32 status, payload
 * The Go side (usbboot/libusbfake/wire.go) documents each op's payload; the
 * op numbers below must match it.
 *
 * Timeouts are enforced here, by the host, exactly as libusb does: the
 * simulator never answers for a device that is silent (NAKs), and the call
 * returns LIBUSB_ERROR_TIMEOUT (or LIBUSB_TRANSFER_TIMED_OUT) once the
 * caller's timeout has passed. A timeout of 0 waits forever, as in libusb.
 */
#define _GNU_SOURCE
#include <libusb.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define API __attribute__((visibility("default")))

enum {
	OP_LIST = 1,
	OP_OPEN = 2,
	OP_CLOSE = 3,
	OP_CONTROL = 4,
	OP_TRANSFER = 5, /* bulk or interrupt */
	OP_CLAIM = 6,
	OP_RELEASE = 7,
	OP_SET_ALT = 8,
	OP_SET_CONFIG = 9,
	OP_GET_CONFIG = 10,
	OP_RESET = 11,
	OP_CLEAR_HALT = 12,
};

#define MAX_PORTS 7
#define MAX_FRAME (64u << 20)

/* ------------------------------------------------------------------ */
/* objects                                                              */

struct libusb_context {
	char sock[sizeof(((struct sockaddr_un *)0)->sun_path)];
	int debug;
	pthread_mutex_t mu;
	pthread_cond_t cond;
	struct xpriv *done_head, *done_tail; /* completed, callbacks pending */
	int inflight;
	int interrupted;
	int refs; /* only for the default context */
};

struct libusb_device {
	libusb_context *ctx;
	int refs; /* atomic */
	uint32_t id;
	uint8_t bus, addr, speed, nports;
	uint8_t ports[MAX_PORTS];
	uint8_t desc[18];
	uint8_t *cfg;
	int cfglen;
};

struct libusb_device_handle {
	libusb_device *dev;
	uint32_t id;
	uint32_t claimed; /* bitmask of claimed interfaces 0..31 */
};

/* private part of a transfer, allocated in front of the public struct */
struct xpriv {
	struct xpriv *next;
	libusb_context *ctx;
	int state; /* 0 idle, 1 in flight, 2 completed and queued */
	int cancel_fd;
	int cancelled;
	int status;
	int actual;
};

#define XPRIV_SIZE ((sizeof(struct xpriv) + 15u) & ~(size_t)15u)
#define XPUB(p) ((struct libusb_transfer *)((char *)(p) + XPRIV_SIZE))
#define XPRIV(t) ((struct xpriv *)((char *)(t) - XPRIV_SIZE))

static pthread_mutex_t default_mu = PTHREAD_MUTEX_INITIALIZER;
static libusb_context *default_ctx;

static libusb_context *ctx_or_default(libusb_context *ctx) { return ctx ? ctx : default_ctx; }

static void dbg(libusb_context *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void dbg(libusb_context *ctx, const char *fmt, ...)
{
	ctx = ctx_or_default(ctx);
	if (!ctx || !ctx->debug)
		return;
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "libusbfake: ");
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

/* ------------------------------------------------------------------ */
/* byte buffers                                                         */

struct buf {
	uint8_t *p;
	size_t len, cap;
	int oom;
};

static void buf_grow(struct buf *b, size_t n)
{
	if (b->oom || b->len + n <= b->cap)
		return;
	size_t c = b->cap ? b->cap * 2 : 64;
	while (c < b->len + n)
		c *= 2;
	uint8_t *np = realloc(b->p, c);
	if (!np) {
		b->oom = 1;
		return;
	}
	b->p = np;
	b->cap = c;
}
static void put(struct buf *b, const void *src, size_t n)
{
	buf_grow(b, n);
	if (b->oom)
		return;
	if (n)
		memcpy(b->p + b->len, src, n);
	b->len += n;
}
static void put8(struct buf *b, uint8_t v) { put(b, &v, 1); }
static void put16(struct buf *b, uint16_t v)
{
	uint8_t x[2] = {v & 0xff, v >> 8};
	put(b, x, 2);
}
static void put32(struct buf *b, uint32_t v)
{
	uint8_t x[4] = {v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, v >> 24};
	put(b, x, 4);
}
static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t le32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

/* request under construction: reserves the length word and the op */
static void req_begin(struct buf *b, uint8_t op)
{
	memset(b, 0, sizeof(*b));
	put32(b, 0);
	put8(b, op);
}

/* ------------------------------------------------------------------ */
/* socket round trip                                                    */

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* wait for fd to become ready for ev; returns 1 ready, 0 deadline passed,
 * -2 cancelled through cancel_fd, -1 error. deadline < 0 = forever. */
static int wait_fd(int fd, short ev, int64_t deadline, int cancel_fd)
{
	for (;;) {
		struct pollfd p[2] = {{.fd = fd, .events = ev}, {.fd = cancel_fd, .events = POLLIN}};
		int n = cancel_fd >= 0 ? 2 : 1;
		int to = -1;
		if (deadline >= 0) {
			int64_t left = deadline - now_ms();
			if (left <= 0)
				return 0;
			to = left > 1000000 ? 1000000 : (int)left;
		}
		int r = poll(p, n, to);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (r == 0)
			continue; /* re-check the deadline */
		if (n == 2 && p[1].revents)
			return -2;
		if (p[0].revents)
			return 1;
	}
}

/*
 * sim_call sends req (whose length word it fills in) and reads the reply.
 * timeout_ms 0 = forever. On success returns 0 and sets *status and *resp
 * (caller frees resp->p). Returns LIBUSB_ERROR_TIMEOUT when the deadline
 * passed, LIBUSB_ERROR_INTERRUPTED when cancel_fd fired, LIBUSB_ERROR_IO when
 * the simulator is unreachable or broke the protocol.
 */
static int sim_call(libusb_context *ctx, struct buf *req, unsigned timeout_ms, int cancel_fd,
		    int32_t *status, struct buf *resp)
{
	memset(resp, 0, sizeof(*resp));
	if (req->oom) {
		free(req->p);
		return LIBUSB_ERROR_NO_MEM;
	}
	uint32_t n = (uint32_t)(req->len - 4);
	req->p[0] = n & 0xff;
	req->p[1] = (n >> 8) & 0xff;
	req->p[2] = (n >> 16) & 0xff;
	req->p[3] = n >> 24;

	int64_t deadline = timeout_ms ? now_ms() + timeout_ms : -1;
	int ret = LIBUSB_ERROR_IO;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		free(req->p);
		return LIBUSB_ERROR_IO;
	}
	/* A Unix-socket connect completes at once (or waits for a free backlog
	 * slot); connect blocking, then switch to non-blocking I/O so that the
	 * caller's timeout and cancellation govern the transfer itself. */
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	memcpy(sa.sun_path, ctx->sock, sizeof(sa.sun_path));
	int cr;
	do
		cr = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
	while (cr < 0 && errno == EINTR);
	if (cr < 0) {
		fprintf(stderr, "libusbfake: connect %s: %s\n", ctx->sock, strerror(errno));
		goto out;
	}
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		goto out;
	size_t off = 0;
	while (off < req->len) {
		ssize_t k = send(fd, req->p + off, req->len - off, MSG_NOSIGNAL);
		if (k > 0) {
			off += (size_t)k;
			continue;
		}
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			int w = wait_fd(fd, POLLOUT, deadline, cancel_fd);
			if (w == 1)
				continue;
			ret = w == 0 ? LIBUSB_ERROR_TIMEOUT : w == -2 ? LIBUSB_ERROR_INTERRUPTED : LIBUSB_ERROR_IO;
			goto out;
		}
		goto out;
	}
	uint8_t hdr[8];
	size_t want = sizeof(hdr), got = 0;
	uint8_t *dst = hdr;
	int have_hdr = 0;
	for (;;) {
		if (got == want) {
			if (have_hdr)
				break;
			uint32_t rest = le32(hdr);
			if (rest < 4 || rest > MAX_FRAME) {
				fprintf(stderr, "libusbfake: bad reply length %u\n", rest);
				goto out;
			}
			*status = (int32_t)le32(hdr + 4);
			have_hdr = 1;
			want = rest - 4;
			got = 0;
			resp->p = malloc(want ? want : 1);
			if (!resp->p) {
				ret = LIBUSB_ERROR_NO_MEM;
				goto out;
			}
			resp->len = resp->cap = want;
			dst = resp->p;
			continue;
		}
		ssize_t k = recv(fd, dst + got, want - got, 0);
		if (k > 0) {
			got += (size_t)k;
			continue;
		}
		if (k == 0) { /* simulator closed without (complete) answer */
			fprintf(stderr, "libusbfake: simulator closed the connection mid-reply\n");
			goto out;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			int w = wait_fd(fd, POLLIN, deadline, cancel_fd);
			if (w == 1)
				continue;
			ret = w == 0 ? LIBUSB_ERROR_TIMEOUT : w == -2 ? LIBUSB_ERROR_INTERRUPTED : LIBUSB_ERROR_IO;
			goto out;
		}
		goto out;
	}
	ret = 0;
out:
	close(fd);
	free(req->p);
	if (ret) {
		free(resp->p);
		memset(resp, 0, sizeof(*resp));
	}
	return ret;
}

/* simple call: status only, no payload expected */
static int sim_simple(libusb_context *ctx, struct buf *req)
{
	int32_t st = 0;
	struct buf resp;
	int r = sim_call(ctx, req, 10000, -1, &st, &resp);
	free(resp.p);
	if (r)
		return r == LIBUSB_ERROR_TIMEOUT ? LIBUSB_ERROR_IO : r;
	return st;
}

/* ------------------------------------------------------------------ */
/* library                                                              */

static const struct libusb_version fake_version = {1, 0, 26, 0, "", "libusbfake (cm4bench simulator shim)"};

API const struct libusb_version *libusb_get_version(void) { return &fake_version; }

API int libusb_has_capability(uint32_t cap)
{
	return cap == LIBUSB_CAP_HAS_CAPABILITY;
}

API int libusb_init(libusb_context **out)
{
	const char *path = getenv("CM4USBSIM_SOCKET");
	if (!path || !*path) {
		fprintf(stderr, "libusbfake: CM4USBSIM_SOCKET is not set: no simulator to talk to\n");
		return LIBUSB_ERROR_OTHER;
	}
	if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
		fprintf(stderr, "libusbfake: CM4USBSIM_SOCKET path too long: %s\n", path);
		return LIBUSB_ERROR_INVALID_PARAM;
	}
	if (!out) {
		pthread_mutex_lock(&default_mu);
		if (default_ctx) {
			default_ctx->refs++;
			pthread_mutex_unlock(&default_mu);
			return 0;
		}
		pthread_mutex_unlock(&default_mu);
	}
	libusb_context *c = calloc(1, sizeof(*c));
	if (!c)
		return LIBUSB_ERROR_NO_MEM;
	snprintf(c->sock, sizeof(c->sock), "%s", path);
	const char *d = getenv("LIBUSBFAKE_DEBUG");
	c->debug = d && *d && strcmp(d, "0") != 0;
	pthread_mutex_init(&c->mu, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&c->cond, &ca);
	pthread_condattr_destroy(&ca);
	c->refs = 1;
	if (out) {
		*out = c;
	} else {
		pthread_mutex_lock(&default_mu);
		default_ctx = c;
		pthread_mutex_unlock(&default_mu);
	}
	dbg(c, "init socket=%s", c->sock);
	return 0;
}

API void libusb_exit(libusb_context *ctx)
{
	if (!ctx) {
		pthread_mutex_lock(&default_mu);
		ctx = default_ctx;
		if (!ctx || --ctx->refs > 0) {
			pthread_mutex_unlock(&default_mu);
			return;
		}
		default_ctx = NULL;
		pthread_mutex_unlock(&default_mu);
	}
	dbg(ctx, "exit");
	pthread_mutex_lock(&ctx->mu);
	int busy = ctx->inflight > 0 || ctx->done_head;
	pthread_mutex_unlock(&ctx->mu);
	if (busy) {
		/* transfers still reference the context: keep it alive (leak) rather than crash */
		fprintf(stderr, "libusbfake: libusb_exit with transfers still in flight\n");
		return;
	}
	pthread_cond_destroy(&ctx->cond);
	pthread_mutex_destroy(&ctx->mu);
	free(ctx);
}

API void libusb_set_debug(libusb_context *ctx, int level)
{
	ctx = ctx_or_default(ctx);
	if (ctx && level >= LIBUSB_LOG_LEVEL_DEBUG)
		ctx->debug = 1;
}

API int libusb_set_option(libusb_context *ctx, enum libusb_option option, ...)
{
	ctx = ctx_or_default(ctx);
	if (option == LIBUSB_OPTION_LOG_LEVEL) {
		va_list ap;
		va_start(ap, option);
		int lvl = va_arg(ap, int);
		va_end(ap);
		if (lvl < LIBUSB_LOG_LEVEL_NONE || lvl > LIBUSB_LOG_LEVEL_DEBUG)
			return LIBUSB_ERROR_INVALID_PARAM;
		if (ctx && lvl >= LIBUSB_LOG_LEVEL_DEBUG)
			ctx->debug = 1;
		return 0;
	}
	if (option == LIBUSB_OPTION_USE_USBDK)
		return LIBUSB_ERROR_NOT_SUPPORTED;
	if (option == LIBUSB_OPTION_NO_DEVICE_DISCOVERY)
		return 0;
	return LIBUSB_ERROR_INVALID_PARAM;
}

API void libusb_set_log_cb(libusb_context *ctx, libusb_log_cb cb, int mode)
{
	(void)ctx;
	(void)cb;
	(void)mode;
}

API int libusb_setlocale(const char *locale)
{
	(void)locale;
	return 0;
}

API const char *libusb_error_name(int code)
{
	switch (code) {
	case LIBUSB_SUCCESS: /* == LIBUSB_TRANSFER_COMPLETED */
		return "LIBUSB_SUCCESS / LIBUSB_TRANSFER_COMPLETED";
	case LIBUSB_ERROR_IO: return "LIBUSB_ERROR_IO";
	case LIBUSB_ERROR_INVALID_PARAM: return "LIBUSB_ERROR_INVALID_PARAM";
	case LIBUSB_ERROR_ACCESS: return "LIBUSB_ERROR_ACCESS";
	case LIBUSB_ERROR_NO_DEVICE: return "LIBUSB_ERROR_NO_DEVICE";
	case LIBUSB_ERROR_NOT_FOUND: return "LIBUSB_ERROR_NOT_FOUND";
	case LIBUSB_ERROR_BUSY: return "LIBUSB_ERROR_BUSY";
	case LIBUSB_ERROR_TIMEOUT: return "LIBUSB_ERROR_TIMEOUT";
	case LIBUSB_ERROR_OVERFLOW: return "LIBUSB_ERROR_OVERFLOW";
	case LIBUSB_ERROR_PIPE: return "LIBUSB_ERROR_PIPE";
	case LIBUSB_ERROR_INTERRUPTED: return "LIBUSB_ERROR_INTERRUPTED";
	case LIBUSB_ERROR_NO_MEM: return "LIBUSB_ERROR_NO_MEM";
	case LIBUSB_ERROR_NOT_SUPPORTED: return "LIBUSB_ERROR_NOT_SUPPORTED";
	case LIBUSB_ERROR_OTHER: return "LIBUSB_ERROR_OTHER";
	case LIBUSB_TRANSFER_ERROR: return "LIBUSB_TRANSFER_ERROR";
	case LIBUSB_TRANSFER_TIMED_OUT: return "LIBUSB_TRANSFER_TIMED_OUT";
	case LIBUSB_TRANSFER_CANCELLED: return "LIBUSB_TRANSFER_CANCELLED";
	case LIBUSB_TRANSFER_STALL: return "LIBUSB_TRANSFER_STALL";
	case LIBUSB_TRANSFER_NO_DEVICE: return "LIBUSB_TRANSFER_NO_DEVICE";
	case LIBUSB_TRANSFER_OVERFLOW: return "LIBUSB_TRANSFER_OVERFLOW";
	}
	return "**UNKNOWN**";
}

API const char *libusb_strerror(int code)
{
	switch (code) {
	case LIBUSB_SUCCESS: return "Success";
	case LIBUSB_ERROR_IO: return "Input/Output Error";
	case LIBUSB_ERROR_INVALID_PARAM: return "Invalid parameter";
	case LIBUSB_ERROR_ACCESS: return "Access denied (insufficient permissions)";
	case LIBUSB_ERROR_NO_DEVICE: return "No such device (it may have been disconnected)";
	case LIBUSB_ERROR_NOT_FOUND: return "Entity not found";
	case LIBUSB_ERROR_BUSY: return "Resource busy";
	case LIBUSB_ERROR_TIMEOUT: return "Operation timed out";
	case LIBUSB_ERROR_OVERFLOW: return "Overflow";
	case LIBUSB_ERROR_PIPE: return "Pipe error";
	case LIBUSB_ERROR_INTERRUPTED: return "System call interrupted (perhaps due to signal)";
	case LIBUSB_ERROR_NO_MEM: return "Insufficient memory";
	case LIBUSB_ERROR_NOT_SUPPORTED: return "Operation not supported or unimplemented on this platform";
	case LIBUSB_ERROR_OTHER: return "Other error";
	}
	return "Unknown error";
}

/* ------------------------------------------------------------------ */
/* devices                                                              */

static void dev_free(libusb_device *d)
{
	free(d->cfg);
	free(d);
}

API libusb_device *libusb_ref_device(libusb_device *d)
{
	__atomic_add_fetch(&d->refs, 1, __ATOMIC_SEQ_CST);
	return d;
}

API void libusb_unref_device(libusb_device *d)
{
	if (d && __atomic_sub_fetch(&d->refs, 1, __ATOMIC_SEQ_CST) == 0)
		dev_free(d);
}

API ssize_t libusb_get_device_list(libusb_context *ctx, libusb_device ***list)
{
	ctx = ctx_or_default(ctx);
	if (!ctx || !list)
		return LIBUSB_ERROR_INVALID_PARAM;
	struct buf req, resp;
	int32_t st = 0;
	req_begin(&req, OP_LIST);
	int r = sim_call(ctx, &req, 10000, -1, &st, &resp);
	if (r)
		return r == LIBUSB_ERROR_TIMEOUT ? LIBUSB_ERROR_IO : r;
	if (st < 0) {
		free(resp.p);
		return st;
	}
	const uint8_t *p = resp.p, *end = resp.p + resp.len;
	if (end - p < 2)
		goto bad;
	unsigned n = le16(p);
	p += 2;
	libusb_device **l = calloc(n + 1, sizeof(*l));
	if (!l) {
		free(resp.p);
		return LIBUSB_ERROR_NO_MEM;
	}
	unsigned i;
	for (i = 0; i < n; i++) {
		/* u32 id, u8 bus, u8 addr, u8 speed, u8 nports, u8 ports[7], desc[18], u16 cfglen, cfg */
		if (end - p < 4 + 4 + MAX_PORTS + 18 + 2)
			break;
		libusb_device *d = calloc(1, sizeof(*d));
		if (!d)
			break;
		d->ctx = ctx;
		d->refs = 1;
		d->id = le32(p);
		d->bus = p[4];
		d->addr = p[5];
		d->speed = p[6];
		d->nports = p[7] > MAX_PORTS ? MAX_PORTS : p[7];
		memcpy(d->ports, p + 8, MAX_PORTS);
		memcpy(d->desc, p + 8 + MAX_PORTS, 18);
		p += 8 + MAX_PORTS + 18;
		unsigned cl = le16(p);
		p += 2;
		if ((size_t)(end - p) < cl) {
			free(d);
			break;
		}
		d->cfg = malloc(cl ? cl : 1);
		if (!d->cfg) {
			free(d);
			break;
		}
		memcpy(d->cfg, p, cl);
		d->cfglen = (int)cl;
		p += cl;
		l[i] = d;
	}
	free(resp.p);
	if (i != n) {
		for (unsigned j = 0; j < i; j++)
			dev_free(l[j]);
		free(l);
		fprintf(stderr, "libusbfake: malformed device list from simulator\n");
		return LIBUSB_ERROR_IO;
	}
	*list = l;
	dbg(ctx, "get_device_list: %u devices", n);
	return (ssize_t)n;
bad:
	free(resp.p);
	return LIBUSB_ERROR_IO;
}

API void libusb_free_device_list(libusb_device **list, int unref)
{
	if (!list)
		return;
	if (unref)
		for (libusb_device **d = list; *d; d++)
			libusb_unref_device(*d);
	free(list);
}

API uint8_t libusb_get_bus_number(libusb_device *d) { return d->bus; }
API uint8_t libusb_get_device_address(libusb_device *d) { return d->addr; }
API int libusb_get_device_speed(libusb_device *d) { return d->speed; }
API uint8_t libusb_get_port_number(libusb_device *d) { return d->nports ? d->ports[d->nports - 1] : 0; }

API int libusb_get_port_numbers(libusb_device *d, uint8_t *ports, int len)
{
	if (len <= 0)
		return LIBUSB_ERROR_INVALID_PARAM;
	if (d->nports > len)
		return LIBUSB_ERROR_OVERFLOW;
	memcpy(ports, d->ports, d->nports);
	return d->nports;
}

API int libusb_get_port_path(libusb_context *ctx, libusb_device *d, uint8_t *path, uint8_t len)
{
	(void)ctx;
	return libusb_get_port_numbers(d, path, len);
}

/* Hubs are not modelled: every simulated device hangs off a root port. */
API libusb_device *libusb_get_parent(libusb_device *d)
{
	(void)d;
	return NULL;
}

API int libusb_get_device_descriptor(libusb_device *d, struct libusb_device_descriptor *o)
{
	const uint8_t *s = d->desc;
	o->bLength = s[0];
	o->bDescriptorType = s[1];
	o->bcdUSB = le16(s + 2);
	o->bDeviceClass = s[4];
	o->bDeviceSubClass = s[5];
	o->bDeviceProtocol = s[6];
	o->bMaxPacketSize0 = s[7];
	o->idVendor = le16(s + 8);
	o->idProduct = le16(s + 10);
	o->bcdDevice = le16(s + 12);
	o->iManufacturer = s[14];
	o->iProduct = s[15];
	o->iSerialNumber = s[16];
	o->bNumConfigurations = s[17];
	return 0;
}

/* ------------------------------------------------------------------ */
/* configuration descriptor parsing (the kernel-cached copy)            */

static int add_extra(const unsigned char **extra, int *extra_len, const uint8_t *p, int n)
{
	unsigned char *e = realloc((void *)*extra, (size_t)(*extra_len + n));
	if (!e)
		return LIBUSB_ERROR_NO_MEM;
	memcpy(e + *extra_len, p, (size_t)n);
	*extra = e;
	*extra_len += n;
	return 0;
}

API void libusb_free_config_descriptor(struct libusb_config_descriptor *c)
{
	if (!c)
		return;
	for (int i = 0; i < c->bNumInterfaces; i++) {
		const struct libusb_interface *it = &c->interface[i];
		for (int a = 0; a < it->num_altsetting; a++) {
			const struct libusb_interface_descriptor *alt = &it->altsetting[a];
			for (int e = 0; e < alt->bNumEndpoints; e++)
				free((void *)alt->endpoint[e].extra);
			free((void *)alt->endpoint);
			free((void *)alt->extra);
		}
		free((void *)it->altsetting);
	}
	free((void *)c->interface);
	free((void *)c->extra);
	free(c);
}

static int parse_config(const uint8_t *raw, int len, struct libusb_config_descriptor **out)
{
	if (len < LIBUSB_DT_CONFIG_SIZE || raw[1] != LIBUSB_DT_CONFIG || raw[0] < LIBUSB_DT_CONFIG_SIZE)
		return LIBUSB_ERROR_IO;
	int total = le16(raw + 2);
	if (total > len)
		total = len;
	struct libusb_config_descriptor *c = calloc(1, sizeof(*c));
	if (!c)
		return LIBUSB_ERROR_NO_MEM;
	c->bLength = raw[0];
	c->bDescriptorType = raw[1];
	c->wTotalLength = (uint16_t)total;
	c->bNumInterfaces = raw[4];
	c->bConfigurationValue = raw[5];
	c->iConfiguration = raw[6];
	c->bmAttributes = raw[7];
	c->MaxPower = raw[8];
	struct libusb_interface *ifs = calloc(c->bNumInterfaces ? c->bNumInterfaces : 1, sizeof(*ifs));
	if (!ifs) {
		free(c);
		return LIBUSB_ERROR_NO_MEM;
	}
	c->interface = ifs;
	int ifnums[256], nifs = 0, r = 0;
	struct libusb_interface_descriptor *alt = NULL;
	struct libusb_endpoint_descriptor *ep = NULL;
	int pos = raw[0];
	while (pos + 2 <= total) {
		int bl = raw[pos], ty = raw[pos + 1];
		if (bl < 2 || pos + bl > total)
			break; /* truncated: keep what parsed, as libusb does */
		const uint8_t *d = raw + pos;
		if (ty == LIBUSB_DT_INTERFACE && bl >= LIBUSB_DT_INTERFACE_SIZE) {
			int slot;
			for (slot = 0; slot < nifs && ifnums[slot] != d[2]; slot++)
				;
			if (slot == nifs) {
				if (nifs >= c->bNumInterfaces) { /* more than declared: ignore */
					alt = NULL;
					ep = NULL;
					pos += bl;
					continue;
				}
				ifnums[nifs++] = d[2];
			}
			struct libusb_interface *it = &ifs[slot];
			struct libusb_interface_descriptor *alts =
				realloc((void *)it->altsetting, sizeof(*alts) * (size_t)(it->num_altsetting + 1));
			if (!alts) {
				r = LIBUSB_ERROR_NO_MEM;
				break;
			}
			it->altsetting = alts;
			alt = &alts[it->num_altsetting++];
			memset(alt, 0, sizeof(*alt));
			alt->bLength = d[0];
			alt->bDescriptorType = d[1];
			alt->bInterfaceNumber = d[2];
			alt->bAlternateSetting = d[3];
			alt->bInterfaceClass = d[5];
			alt->bInterfaceSubClass = d[6];
			alt->bInterfaceProtocol = d[7];
			alt->iInterface = d[8];
			ep = NULL;
		} else if (ty == LIBUSB_DT_ENDPOINT && bl >= LIBUSB_DT_ENDPOINT_SIZE && alt) {
			struct libusb_endpoint_descriptor *eps =
				realloc((void *)alt->endpoint, sizeof(*eps) * (size_t)(alt->bNumEndpoints + 1));
			if (!eps) {
				r = LIBUSB_ERROR_NO_MEM;
				break;
			}
			alt->endpoint = eps;
			ep = &eps[alt->bNumEndpoints++];
			memset(ep, 0, sizeof(*ep));
			ep->bLength = d[0];
			ep->bDescriptorType = d[1];
			ep->bEndpointAddress = d[2];
			ep->bmAttributes = d[3];
			ep->wMaxPacketSize = le16(d + 4);
			ep->bInterval = d[6];
			if (bl >= LIBUSB_DT_ENDPOINT_AUDIO_SIZE) {
				ep->bRefresh = d[7];
				ep->bSynchAddress = d[8];
			}
		} else if (ep) {
			r = add_extra(&ep->extra, &ep->extra_length, d, bl);
		} else if (alt) {
			r = add_extra(&alt->extra, &alt->extra_length, d, bl);
		} else {
			r = add_extra(&c->extra, &c->extra_length, d, bl);
		}
		if (r)
			break;
		pos += bl;
	}
	/* interfaces declared but never described count as absent */
	c->bNumInterfaces = (uint8_t)nifs;
	if (r) {
		libusb_free_config_descriptor(c);
		return r;
	}
	*out = c;
	return 0;
}

API int libusb_get_config_descriptor(libusb_device *d, uint8_t idx, struct libusb_config_descriptor **cfg)
{
	/* the simulator keeps one configuration per device (all RPIBOOT devices have one) */
	if (idx >= d->desc[17] || idx > 0 || d->cfglen == 0)
		return LIBUSB_ERROR_NOT_FOUND;
	return parse_config(d->cfg, d->cfglen, cfg);
}

API int libusb_get_active_config_descriptor(libusb_device *d, struct libusb_config_descriptor **cfg)
{
	return libusb_get_config_descriptor(d, 0, cfg);
}

API int libusb_get_config_descriptor_by_value(libusb_device *d, uint8_t value, struct libusb_config_descriptor **cfg)
{
	if (d->cfglen >= LIBUSB_DT_CONFIG_SIZE && d->cfg[5] == value)
		return libusb_get_config_descriptor(d, 0, cfg);
	return LIBUSB_ERROR_NOT_FOUND;
}

API int libusb_get_max_packet_size(libusb_device *d, unsigned char endpoint)
{
	struct libusb_config_descriptor *c;
	int r = libusb_get_active_config_descriptor(d, &c);
	if (r)
		return r;
	r = LIBUSB_ERROR_NOT_FOUND;
	for (int i = 0; i < c->bNumInterfaces && r < 0; i++)
		for (int a = 0; a < c->interface[i].num_altsetting && r < 0; a++)
			for (int e = 0; e < c->interface[i].altsetting[a].bNumEndpoints; e++)
				if (c->interface[i].altsetting[a].endpoint[e].bEndpointAddress == endpoint) {
					r = c->interface[i].altsetting[a].endpoint[e].wMaxPacketSize & 0x7ff;
					break;
				}
	libusb_free_config_descriptor(c);
	return r;
}

API int libusb_get_max_iso_packet_size(libusb_device *d, unsigned char endpoint)
{
	return libusb_get_max_packet_size(d, endpoint);
}

/* ------------------------------------------------------------------ */
/* handles                                                              */

API int libusb_open(libusb_device *d, libusb_device_handle **out)
{
	struct buf req, resp;
	int32_t st = 0;
	req_begin(&req, OP_OPEN);
	put32(&req, d->id);
	int r = sim_call(d->ctx, &req, 10000, -1, &st, &resp);
	if (r) {
		dbg(d->ctx, "open dev %u: %s", d->id, libusb_error_name(r));
		return r == LIBUSB_ERROR_TIMEOUT ? LIBUSB_ERROR_IO : r;
	}
	if (st < 0 || resp.len < 4) {
		free(resp.p);
		dbg(d->ctx, "open dev %u: %s", d->id, libusb_error_name(st < 0 ? st : LIBUSB_ERROR_IO));
		return st < 0 ? st : LIBUSB_ERROR_IO;
	}
	libusb_device_handle *h = calloc(1, sizeof(*h));
	if (!h) {
		free(resp.p);
		return LIBUSB_ERROR_NO_MEM;
	}
	h->id = le32(resp.p);
	free(resp.p);
	h->dev = libusb_ref_device(d);
	*out = h;
	dbg(d->ctx, "open dev %u bus %u addr %u: handle %u", d->id, d->bus, d->addr, h->id);
	return 0;
}

API libusb_device_handle *libusb_open_device_with_vid_pid(libusb_context *ctx, uint16_t vid, uint16_t pid)
{
	libusb_device **list;
	libusb_device_handle *h = NULL;
	ssize_t n = libusb_get_device_list(ctx, &list);
	if (n < 0)
		return NULL;
	for (ssize_t i = 0; i < n; i++) {
		struct libusb_device_descriptor dd;
		libusb_get_device_descriptor(list[i], &dd);
		if (dd.idVendor == vid && dd.idProduct == pid) {
			if (libusb_open(list[i], &h) < 0)
				h = NULL;
			break;
		}
	}
	libusb_free_device_list(list, 1);
	return h;
}

API int libusb_wrap_sys_device(libusb_context *ctx, intptr_t sys_dev, libusb_device_handle **h)
{
	(void)ctx;
	(void)sys_dev;
	(void)h;
	return LIBUSB_ERROR_NOT_SUPPORTED;
}

API libusb_device *libusb_get_device(libusb_device_handle *h) { return h->dev; }

static int handle_op(libusb_device_handle *h, uint8_t op, int a, int b, int nargs)
{
	struct buf req;
	req_begin(&req, op);
	put32(&req, h->id);
	if (nargs >= 1)
		put32(&req, (uint32_t)a);
	if (nargs >= 2)
		put32(&req, (uint32_t)b);
	return sim_simple(h->dev->ctx, &req);
}

API void libusb_close(libusb_device_handle *h)
{
	if (!h)
		return;
	dbg(h->dev->ctx, "close handle %u", h->id);
	handle_op(h, OP_CLOSE, 0, 0, 0);
	libusb_unref_device(h->dev);
	free(h);
}

API int libusb_get_configuration(libusb_device_handle *h, int *config)
{
	struct buf req, resp;
	int32_t st = 0;
	req_begin(&req, OP_GET_CONFIG);
	put32(&req, h->id);
	int r = sim_call(h->dev->ctx, &req, 10000, -1, &st, &resp);
	if (r)
		return r == LIBUSB_ERROR_TIMEOUT ? LIBUSB_ERROR_IO : r;
	if (st < 0) {
		free(resp.p);
		return st;
	}
	*config = st;
	free(resp.p);
	dbg(h->dev->ctx, "get_configuration handle %u: %d", h->id, *config);
	return 0;
}

API int libusb_set_configuration(libusb_device_handle *h, int config)
{
	int r = handle_op(h, OP_SET_CONFIG, config, 0, 1);
	dbg(h->dev->ctx, "set_configuration handle %u %d: %s", h->id, config, libusb_error_name(r));
	return r;
}

API int libusb_claim_interface(libusb_device_handle *h, int iface)
{
	if (iface < 0 || iface > 31)
		return LIBUSB_ERROR_INVALID_PARAM;
	int r = handle_op(h, OP_CLAIM, iface, 0, 1);
	if (r == 0)
		h->claimed |= 1u << iface;
	dbg(h->dev->ctx, "claim_interface handle %u %d: %s", h->id, iface, libusb_error_name(r));
	return r;
}

API int libusb_release_interface(libusb_device_handle *h, int iface)
{
	if (iface < 0 || iface > 31)
		return LIBUSB_ERROR_INVALID_PARAM;
	if (!(h->claimed & (1u << iface)))
		return LIBUSB_ERROR_NOT_FOUND;
	int r = handle_op(h, OP_RELEASE, iface, 0, 1);
	h->claimed &= ~(1u << iface);
	dbg(h->dev->ctx, "release_interface handle %u %d: %s", h->id, iface, libusb_error_name(r));
	return r;
}

API int libusb_set_interface_alt_setting(libusb_device_handle *h, int iface, int alt)
{
	if (iface < 0 || iface > 31)
		return LIBUSB_ERROR_INVALID_PARAM;
	if (!(h->claimed & (1u << iface)))
		return LIBUSB_ERROR_NOT_FOUND;
	return handle_op(h, OP_SET_ALT, iface, alt, 2);
}

API int libusb_clear_halt(libusb_device_handle *h, unsigned char endpoint)
{
	return handle_op(h, OP_CLEAR_HALT, endpoint, 0, 1);
}

API int libusb_reset_device(libusb_device_handle *h)
{
	int r = handle_op(h, OP_RESET, 0, 0, 0);
	dbg(h->dev->ctx, "reset_device handle %u: %s", h->id, libusb_error_name(r));
	return r;
}

/* No kernel drivers exist in the simulation: behave as Linux does for an
 * interface nobody has bound. */
API int libusb_kernel_driver_active(libusb_device_handle *h, int iface)
{
	(void)h;
	return iface < 0 ? LIBUSB_ERROR_INVALID_PARAM : 0;
}
API int libusb_detach_kernel_driver(libusb_device_handle *h, int iface)
{
	(void)h;
	return iface < 0 ? LIBUSB_ERROR_INVALID_PARAM : LIBUSB_ERROR_NOT_FOUND;
}
API int libusb_attach_kernel_driver(libusb_device_handle *h, int iface)
{
	(void)h;
	return iface < 0 ? LIBUSB_ERROR_INVALID_PARAM : LIBUSB_ERROR_NOT_FOUND;
}
API int libusb_set_auto_detach_kernel_driver(libusb_device_handle *h, int enable)
{
	(void)h;
	(void)enable;
	return 0;
}

/* ------------------------------------------------------------------ */
/* transfers                                                            */

/*
 * do_control performs one control transfer: setup fields + data (OUT: the
 * data to send; IN: the buffer to fill). Returns bytes transferred or a
 * LIBUSB_ERROR_* code.
 */
static int do_control(libusb_device_handle *h, uint8_t rt, uint8_t rq, uint16_t val, uint16_t idx,
		      unsigned char *data, uint16_t wlen, unsigned timeout, int cancel_fd)
{
	struct buf req, resp;
	int32_t st = 0;
	req_begin(&req, OP_CONTROL);
	put32(&req, h->id);
	put8(&req, rt);
	put8(&req, rq);
	put16(&req, val);
	put16(&req, idx);
	put16(&req, wlen);
	put32(&req, timeout);
	if (!(rt & LIBUSB_ENDPOINT_IN))
		put(&req, data, wlen);
	int r = sim_call(h->dev->ctx, &req, timeout, cancel_fd, &st, &resp);
	if (r) {
		dbg(h->dev->ctx, "control %02x %02x %04x %04x %u (timeout %u ms): %s", rt, rq, val, idx, wlen,
		    timeout, libusb_error_name(r));
		return r;
	}
	if (st >= 0 && (rt & LIBUSB_ENDPOINT_IN)) {
		if ((size_t)st > resp.len || st > wlen) {
			free(resp.p);
			return LIBUSB_ERROR_IO;
		}
		memcpy(data, resp.p, (size_t)st);
	}
	free(resp.p);
	dbg(h->dev->ctx, "control %02x %02x %04x %04x %u (timeout %u ms): %d", rt, rq, val, idx, wlen, timeout, st);
	return st;
}

API int libusb_control_transfer(libusb_device_handle *h, uint8_t rt, uint8_t rq, uint16_t val, uint16_t idx,
				unsigned char *data, uint16_t wlen, unsigned int timeout)
{
	if (!h)
		return LIBUSB_ERROR_INVALID_PARAM;
	return do_control(h, rt, rq, val, idx, data, wlen, timeout, -1);
}

/*
 * do_transfer performs one bulk or interrupt transfer. Returns 0 or a
 * LIBUSB_ERROR_* code; *actual gets the bytes moved (also on error).
 */
static int do_transfer(libusb_device_handle *h, unsigned char ep, unsigned char *data, int len, int *actual,
		       unsigned timeout, int cancel_fd)
{
	struct buf req, resp;
	int32_t st = 0;
	*actual = 0;
	if (len < 0)
		return LIBUSB_ERROR_INVALID_PARAM;
	req_begin(&req, OP_TRANSFER);
	put32(&req, h->id);
	put8(&req, ep);
	put32(&req, timeout);
	put32(&req, (uint32_t)len);
	if (!(ep & LIBUSB_ENDPOINT_IN))
		put(&req, data, (size_t)len);
	int r = sim_call(h->dev->ctx, &req, timeout, cancel_fd, &st, &resp);
	if (r) {
		dbg(h->dev->ctx, "transfer ep %02x len %d (timeout %u ms): %s", ep, len, timeout, libusb_error_name(r));
		return r;
	}
	if (resp.len < 4) {
		free(resp.p);
		return LIBUSB_ERROR_IO;
	}
	int n = (int)le32(resp.p);
	if (n < 0 || n > len || ((ep & LIBUSB_ENDPOINT_IN) && resp.len < 4 + (size_t)n)) {
		free(resp.p);
		return LIBUSB_ERROR_IO;
	}
	if (ep & LIBUSB_ENDPOINT_IN)
		memcpy(data, resp.p + 4, (size_t)n);
	*actual = n;
	free(resp.p);
	dbg(h->dev->ctx, "transfer ep %02x len %d (timeout %u ms): %d bytes, %s", ep, len, timeout, n,
	    libusb_error_name(st));
	return st;
}

API int libusb_bulk_transfer(libusb_device_handle *h, unsigned char ep, unsigned char *data, int len,
			     int *transferred, unsigned int timeout)
{
	int dummy;
	if (!h)
		return LIBUSB_ERROR_INVALID_PARAM;
	return do_transfer(h, ep, data, len, transferred ? transferred : &dummy, timeout, -1);
}

API int libusb_interrupt_transfer(libusb_device_handle *h, unsigned char ep, unsigned char *data, int len,
				  int *transferred, unsigned int timeout)
{
	return libusb_bulk_transfer(h, ep, data, len, transferred, timeout);
}

API int libusb_get_string_descriptor_ascii(libusb_device_handle *h, uint8_t index, unsigned char *data, int length)
{
	unsigned char tbuf[255];
	if (index == 0)
		return LIBUSB_ERROR_INVALID_PARAM;
	if (length <= 0)
		return LIBUSB_ERROR_INVALID_PARAM;
	/* language table first, as libusb does */
	int r = do_control(h, LIBUSB_ENDPOINT_IN, LIBUSB_REQUEST_GET_DESCRIPTOR, LIBUSB_DT_STRING << 8, 0, tbuf,
			   sizeof(tbuf), 1000, -1);
	if (r < 0)
		return r;
	if (r < 4)
		return LIBUSB_ERROR_IO;
	uint16_t lang = le16(tbuf + 2);
	r = do_control(h, LIBUSB_ENDPOINT_IN, LIBUSB_REQUEST_GET_DESCRIPTOR, (uint16_t)(LIBUSB_DT_STRING << 8 | index),
		       lang, tbuf, sizeof(tbuf), 1000, -1);
	if (r < 0)
		return r;
	if (tbuf[1] != LIBUSB_DT_STRING)
		return LIBUSB_ERROR_IO;
	if (tbuf[0] > r)
		return LIBUSB_ERROR_IO;
	int di = 0;
	for (int si = 2; si + 1 < tbuf[0]; si += 2) {
		if (di >= length - 1)
			break;
		data[di++] = (tbuf[si + 1] || tbuf[si] & 0x80) ? '?' : tbuf[si];
	}
	data[di] = 0;
	return di;
}

/* --- asynchronous API --- */

API struct libusb_transfer *libusb_alloc_transfer(int iso_packets)
{
	if (iso_packets < 0)
		return NULL;
	size_t sz = XPRIV_SIZE + sizeof(struct libusb_transfer) +
		    sizeof(struct libusb_iso_packet_descriptor) * (size_t)iso_packets;
	void *p = calloc(1, sz);
	if (!p)
		return NULL;
	struct xpriv *x = p;
	x->cancel_fd = -1;
	struct libusb_transfer *t = XPUB(p);
	t->num_iso_packets = iso_packets;
	return t;
}

API void libusb_free_transfer(struct libusb_transfer *t)
{
	if (!t)
		return;
	struct xpriv *x = XPRIV(t);
	if (x->state == 1)
		fprintf(stderr, "libusbfake: libusb_free_transfer on a transfer still in flight\n");
	if ((t->flags & LIBUSB_TRANSFER_FREE_BUFFER) && t->buffer)
		free(t->buffer);
	free(x);
}

static void *xfer_worker(void *arg)
{
	struct libusb_transfer *t = arg;
	struct xpriv *x = XPRIV(t);
	libusb_context *ctx = x->ctx;
	int r, actual = 0, status;
	switch (t->type) {
	case LIBUSB_TRANSFER_TYPE_CONTROL: {
		struct libusb_control_setup *s = (struct libusb_control_setup *)t->buffer;
		uint16_t wlen = libusb_le16_to_cpu(s->wLength);
		r = do_control(t->dev_handle, s->bmRequestType, s->bRequest, libusb_le16_to_cpu(s->wValue),
			       libusb_le16_to_cpu(s->wIndex), t->buffer + LIBUSB_CONTROL_SETUP_SIZE, wlen, t->timeout,
			       x->cancel_fd);
		if (r >= 0) {
			actual = r;
			r = 0;
		}
		break;
	}
	case LIBUSB_TRANSFER_TYPE_BULK:
	case LIBUSB_TRANSFER_TYPE_INTERRUPT:
		r = do_transfer(t->dev_handle, t->endpoint, t->buffer, t->length, &actual, t->timeout, x->cancel_fd);
		break;
	default:
		r = LIBUSB_ERROR_NOT_SUPPORTED;
	}
	switch (r) {
	case 0: status = LIBUSB_TRANSFER_COMPLETED; break;
	case LIBUSB_ERROR_TIMEOUT: status = LIBUSB_TRANSFER_TIMED_OUT; break;
	case LIBUSB_ERROR_INTERRUPTED: status = LIBUSB_TRANSFER_CANCELLED; break;
	case LIBUSB_ERROR_PIPE: status = LIBUSB_TRANSFER_STALL; break;
	case LIBUSB_ERROR_NO_DEVICE: status = LIBUSB_TRANSFER_NO_DEVICE; break;
	case LIBUSB_ERROR_OVERFLOW: status = LIBUSB_TRANSFER_OVERFLOW; break;
	default: status = LIBUSB_TRANSFER_ERROR;
	}
	if (t->type == LIBUSB_TRANSFER_TYPE_BULK && status == LIBUSB_TRANSFER_COMPLETED &&
	    (t->flags & LIBUSB_TRANSFER_SHORT_NOT_OK) && actual < t->length)
		status = LIBUSB_TRANSFER_ERROR;

	pthread_mutex_lock(&ctx->mu);
	if (x->cancelled && status != LIBUSB_TRANSFER_COMPLETED)
		status = LIBUSB_TRANSFER_CANCELLED;
	x->status = status;
	x->actual = actual;
	x->state = 2;
	close(x->cancel_fd);
	x->cancel_fd = -1;
	x->next = NULL;
	if (ctx->done_tail)
		ctx->done_tail->next = x;
	else
		ctx->done_head = x;
	ctx->done_tail = x;
	ctx->inflight--;
	pthread_cond_broadcast(&ctx->cond);
	pthread_mutex_unlock(&ctx->mu);
	return NULL;
}

API int libusb_submit_transfer(struct libusb_transfer *t)
{
	if (!t || !t->dev_handle)
		return LIBUSB_ERROR_INVALID_PARAM;
	struct xpriv *x = XPRIV(t);
	libusb_context *ctx = t->dev_handle->dev->ctx;
	if (t->type == LIBUSB_TRANSFER_TYPE_ISOCHRONOUS || t->type == LIBUSB_TRANSFER_TYPE_BULK_STREAM)
		return LIBUSB_ERROR_NOT_SUPPORTED;
	if (t->type == LIBUSB_TRANSFER_TYPE_CONTROL && t->length < (int)LIBUSB_CONTROL_SETUP_SIZE)
		return LIBUSB_ERROR_INVALID_PARAM;
	pthread_mutex_lock(&ctx->mu);
	if (x->state != 0) {
		pthread_mutex_unlock(&ctx->mu);
		return LIBUSB_ERROR_BUSY;
	}
	x->cancel_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (x->cancel_fd < 0) {
		pthread_mutex_unlock(&ctx->mu);
		return LIBUSB_ERROR_NO_MEM;
	}
	x->ctx = ctx;
	x->cancelled = 0;
	x->state = 1;
	ctx->inflight++;
	t->actual_length = 0;
	pthread_attr_t pa;
	pthread_attr_init(&pa);
	pthread_attr_setdetachstate(&pa, PTHREAD_CREATE_DETACHED);
	pthread_t tid;
	int e = pthread_create(&tid, &pa, xfer_worker, t);
	pthread_attr_destroy(&pa);
	if (e) {
		close(x->cancel_fd);
		x->cancel_fd = -1;
		x->state = 0;
		ctx->inflight--;
		pthread_mutex_unlock(&ctx->mu);
		return LIBUSB_ERROR_NO_MEM;
	}
	pthread_mutex_unlock(&ctx->mu);
	dbg(ctx, "submit_transfer type %u ep %02x len %d timeout %u", t->type, t->endpoint, t->length, t->timeout);
	return 0;
}

API int libusb_cancel_transfer(struct libusb_transfer *t)
{
	struct xpriv *x = XPRIV(t);
	libusb_context *ctx = t->dev_handle->dev->ctx;
	int r = LIBUSB_ERROR_NOT_FOUND;
	pthread_mutex_lock(&ctx->mu);
	if (x->state == 1 && !x->cancelled) {
		uint64_t one = 1;
		x->cancelled = 1;
		if (write(x->cancel_fd, &one, sizeof(one)) == sizeof(one))
			r = 0;
		else
			r = LIBUSB_ERROR_OTHER;
	}
	pthread_mutex_unlock(&ctx->mu);
	dbg(ctx, "cancel_transfer ep %02x: %s", t->endpoint, libusb_error_name(r));
	return r;
}

/* run the callbacks of every completed transfer; returns how many ran */
static int run_completions(libusb_context *ctx, int64_t deadline, int *completed)
{
	pthread_mutex_lock(&ctx->mu);
	while (!ctx->done_head && !(completed && *completed) && !ctx->interrupted) {
		if (deadline < 0) {
			pthread_cond_wait(&ctx->cond, &ctx->mu);
			continue;
		}
		int64_t left = deadline - now_ms();
		if (left <= 0)
			break;
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += left / 1000;
		ts.tv_nsec += (left % 1000) * 1000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&ctx->cond, &ctx->mu, &ts);
	}
	ctx->interrupted = 0;
	struct xpriv *q = ctx->done_head;
	ctx->done_head = ctx->done_tail = NULL;
	pthread_mutex_unlock(&ctx->mu);
	int n = 0;
	while (q) {
		struct xpriv *next = q->next;
		struct libusb_transfer *t = XPUB(q);
		uint8_t flags = t->flags;
		t->status = (enum libusb_transfer_status)q->status;
		t->actual_length = q->actual;
		pthread_mutex_lock(&ctx->mu);
		q->state = 0;
		pthread_mutex_unlock(&ctx->mu);
		if (t->callback)
			t->callback(t);
		if (flags & LIBUSB_TRANSFER_FREE_TRANSFER)
			libusb_free_transfer(t);
		q = next;
		n++;
	}
	if (n) { /* wake waiters whose completed flag a callback may have set */
		pthread_mutex_lock(&ctx->mu);
		pthread_cond_broadcast(&ctx->cond);
		pthread_mutex_unlock(&ctx->mu);
	}
	return n;
}

static int64_t tv_deadline(struct timeval *tv)
{
	if (!tv)
		return -1;
	return now_ms() + (int64_t)tv->tv_sec * 1000 + tv->tv_usec / 1000;
}

API int libusb_handle_events_timeout_completed(libusb_context *ctx, struct timeval *tv, int *completed)
{
	ctx = ctx_or_default(ctx);
	if (!ctx)
		return LIBUSB_ERROR_INVALID_PARAM;
	run_completions(ctx, tv ? tv_deadline(tv) : now_ms(), completed);
	return 0;
}

API int libusb_handle_events_timeout(libusb_context *ctx, struct timeval *tv)
{
	return libusb_handle_events_timeout_completed(ctx, tv, NULL);
}

API int libusb_handle_events_completed(libusb_context *ctx, int *completed)
{
	struct timeval tv = {60, 0};
	return libusb_handle_events_timeout_completed(ctx, &tv, completed);
}

API int libusb_handle_events(libusb_context *ctx)
{
	return libusb_handle_events_completed(ctx, NULL);
}

API int libusb_handle_events_locked(libusb_context *ctx, struct timeval *tv)
{
	return libusb_handle_events_timeout_completed(ctx, tv, NULL);
}

API void libusb_interrupt_event_handler(libusb_context *ctx)
{
	ctx = ctx_or_default(ctx);
	if (!ctx)
		return;
	pthread_mutex_lock(&ctx->mu);
	ctx->interrupted = 1;
	pthread_cond_broadcast(&ctx->cond);
	pthread_mutex_unlock(&ctx->mu);
}

/* Event-lock API: one in-process event source, so the locks are trivial. */
API int libusb_try_lock_events(libusb_context *ctx)
{
	(void)ctx;
	return 0;
}
API void libusb_lock_events(libusb_context *ctx) { (void)ctx; }
API void libusb_unlock_events(libusb_context *ctx) { (void)ctx; }
API int libusb_event_handling_ok(libusb_context *ctx)
{
	(void)ctx;
	return 1;
}
API int libusb_event_handler_active(libusb_context *ctx)
{
	(void)ctx;
	return 0;
}
API void libusb_lock_event_waiters(libusb_context *ctx) { (void)ctx; }
API void libusb_unlock_event_waiters(libusb_context *ctx) { (void)ctx; }
API int libusb_wait_for_event(libusb_context *ctx, struct timeval *tv)
{
	ctx = ctx_or_default(ctx);
	if (!ctx)
		return 1;
	pthread_mutex_lock(&ctx->mu);
	int64_t deadline = tv_deadline(tv);
	int r = 1;
	if (ctx->done_head) {
		r = 0;
	} else if (deadline < 0) {
		pthread_cond_wait(&ctx->cond, &ctx->mu);
		r = 0;
	} else {
		struct timespec ts;
		int64_t left = deadline - now_ms();
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += left / 1000;
		ts.tv_nsec += (left % 1000) * 1000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		r = pthread_cond_timedwait(&ctx->cond, &ctx->mu, &ts) == 0 ? 0 : 1;
	}
	pthread_mutex_unlock(&ctx->mu);
	return r;
}

API int libusb_get_next_timeout(libusb_context *ctx, struct timeval *tv)
{
	(void)ctx;
	(void)tv;
	return 0; /* timeouts are enforced by the worker threads */
}

API int libusb_pollfds_handle_timeouts(libusb_context *ctx)
{
	(void)ctx;
	return 1;
}

API int libusb_hotplug_register_callback(libusb_context *ctx, int events, int flags, int vendor_id,
					 int product_id, int dev_class, libusb_hotplug_callback_fn cb_fn,
					 void *user_data, libusb_hotplug_callback_handle *handle)
{
	(void)ctx;
	(void)events;
	(void)flags;
	(void)vendor_id;
	(void)product_id;
	(void)dev_class;
	(void)cb_fn;
	(void)user_data;
	(void)handle;
	return LIBUSB_ERROR_NOT_SUPPORTED;
}

API void libusb_hotplug_deregister_callback(libusb_context *ctx, libusb_hotplug_callback_handle handle)
{
	(void)ctx;
	(void)handle;
}
