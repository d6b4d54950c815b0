/*
 * probe: a small, ordinary libusb-1.0 program used by the libusbfake tests
 * to show that any libusb host tool works against the simulator, through
 * both the synchronous and the asynchronous API.
 *
 *   probe list
 *   probe PORT OP...       (PORT is a path like 1-1.3; ops run in order)
 *
 * Ops (numbers in hex):
 *   claim:IF                libusb_claim_interface
 *   release:IF              libusb_release_interface
 *   config                  libusb_get_configuration
 *   serial                  libusb_get_string_descriptor_ascii(iSerialNumber)
 *   in:RT:RQ:VAL:IDX:LEN:MS libusb_control_transfer, device-to-host
 *   out:RT:RQ:VAL:IDX:LEN:MS  same, host-to-device (LEN bytes 0xa5)
 *   bulk:EP:LEN:MS          libusb_bulk_transfer (LEN bytes 0x5a)
 *   async:EP:LEN:MS[:CANCELMS]  libusb_submit_transfer + handle_events, cancel
 *                           after CANCELMS milliseconds when given
 *   sleep:MS
 * Each op prints one line: "<op> <result> [<bytes>|<details>] <elapsed ms>".
 */
#include <libusb.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static long long ms_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void path_of(libusb_device *d, char *buf, size_t n)
{
	uint8_t ports[8];
	int k = libusb_get_port_numbers(d, ports, 8);
	int off = snprintf(buf, n, "%u", libusb_get_bus_number(d));
	for (int i = 0; i < k && off < (int)n; i++)
		off += snprintf(buf + off, n - (size_t)off, "%c%u", i ? '.' : '-', ports[i]);
}

static int list(void)
{
	libusb_device **l;
	ssize_t n = libusb_get_device_list(NULL, &l);
	if (n < 0) {
		printf("list %s\n", libusb_error_name((int)n));
		return 1;
	}
	for (ssize_t i = 0; i < n; i++) {
		struct libusb_device_descriptor dd;
		struct libusb_config_descriptor *c;
		char p[64];
		libusb_get_device_descriptor(l[i], &dd);
		path_of(l[i], p, sizeof(p));
		printf("%s addr=%u port=%u id=%04x:%04x speed=%d iSerial=%u", p, libusb_get_device_address(l[i]),
		       libusb_get_port_number(l[i]), dd.idVendor, dd.idProduct, libusb_get_device_speed(l[i]),
		       dd.iSerialNumber);
		if (libusb_get_active_config_descriptor(l[i], &c) == 0) {
			printf(" config=%u total=%u ifaces=%u", c->bConfigurationValue, c->wTotalLength, c->bNumInterfaces);
			for (int j = 0; j < c->bNumInterfaces; j++)
				for (int e = 0; e < c->interface[j].altsetting[0].bNumEndpoints; e++)
					printf(" if%d.ep%02x/%u", j, c->interface[j].altsetting[0].endpoint[e].bEndpointAddress,
					       c->interface[j].altsetting[0].endpoint[e].wMaxPacketSize);
			libusb_free_config_descriptor(c);
		}
		printf("\n");
	}
	libusb_free_device_list(l, 1);
	return 0;
}

static void cb(struct libusb_transfer *t) { *(int *)t->user_data = 1; }

static int run_op(libusb_device_handle *h, const char *op)
{
	unsigned a[8] = {0};
	unsigned char buf[65536];
	long long t0 = ms_now();
	int r;
	char name[16] = {0};
	const char *colon = strchr(op, ':');
	size_t nl = colon ? (size_t)(colon - op) : strlen(op);
	if (nl >= sizeof(name))
		nl = sizeof(name) - 1;
	memcpy(name, op, nl);
	int na = colon ? sscanf(colon + 1, "%x:%x:%x:%x:%x:%x:%x", &a[0], &a[1], &a[2], &a[3], &a[4], &a[5], &a[6]) : 0;
	if (!strcmp(name, "claim") && na == 1) {
		r = libusb_claim_interface(h, (int)a[0]);
		printf("%s %s", op, libusb_error_name(r));
	} else if (!strcmp(name, "release") && na == 1) {
		r = libusb_release_interface(h, (int)a[0]);
		printf("%s %s", op, libusb_error_name(r));
	} else if (!strcmp(name, "config")) {
		int c = -1;
		r = libusb_get_configuration(h, &c);
		printf("%s %s %d", op, libusb_error_name(r), c);
	} else if (!strcmp(name, "serial")) {
		struct libusb_device_descriptor dd;
		libusb_get_device_descriptor(libusb_get_device(h), &dd);
		r = dd.iSerialNumber ? libusb_get_string_descriptor_ascii(h, dd.iSerialNumber, buf, sizeof(buf)) : 0;
		printf("%s %s %s", op, r < 0 ? libusb_error_name(r) : "ok", r > 0 ? (char *)buf : "");
	} else if ((!strcmp(name, "in") || !strcmp(name, "out")) && na == 6) {
		if (name[0] == 'o')
			memset(buf, 0xa5, a[4]);
		r = libusb_control_transfer(h, (uint8_t)a[0], (uint8_t)a[1], (uint16_t)a[2], (uint16_t)a[3], buf,
					    (uint16_t)a[4], a[5]);
		printf("%s %s", op, r < 0 ? libusb_error_name(r) : "ok");
		if (r >= 0) {
			printf(" %d:", r);
			for (int i = 0; i < r && i < 32; i++)
				printf("%02x", buf[i]);
		}
	} else if (!strcmp(name, "bulk") && na == 3) {
		int got = -1;
		memset(buf, 0x5a, a[1]);
		r = libusb_bulk_transfer(h, (unsigned char)a[0], buf, (int)a[1], &got, a[2]);
		printf("%s %s %d", op, libusb_error_name(r), got);
	} else if (!strcmp(name, "async") && na >= 3) {
		int done = 0;
		struct libusb_transfer *t = libusb_alloc_transfer(0);
		memset(buf, 0x5a, a[1]);
		libusb_fill_bulk_transfer(t, h, (unsigned char)a[0], buf, (int)a[1], cb, &done, a[2]);
		r = libusb_submit_transfer(t);
		if (r) {
			printf("%s submit %s", op, libusb_error_name(r));
		} else {
			int cancelled = na < 4;
			while (!done) {
				struct timeval tv = {0, 20000};
				libusb_handle_events_timeout_completed(NULL, &tv, &done);
				if (!cancelled && ms_now() - t0 >= a[3]) {
					printf("(cancel %s) ", libusb_error_name(libusb_cancel_transfer(t)));
					cancelled = 1;
				}
			}
			printf("%s status=%d %d", op, t->status, t->actual_length);
		}
		libusb_free_transfer(t);
	} else if (!strcmp(name, "sleep") && na == 1) {
		usleep(a[0] * 1000);
		printf("%s ok", op);
	} else {
		printf("%s bad-op\n", op);
		return 1;
	}
	printf(" %lldms\n", ms_now() - t0);
	fflush(stdout);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: probe list | probe PORT OP...\n");
		return 2;
	}
	int r = libusb_init(NULL);
	if (r) {
		printf("init %s\n", libusb_error_name(r));
		return 1;
	}
	if (!strcmp(argv[1], "list")) {
		r = list();
		libusb_exit(NULL);
		return r;
	}
	libusb_device **l;
	ssize_t n = libusb_get_device_list(NULL, &l);
	libusb_device_handle *h = NULL;
	for (ssize_t i = 0; i < n; i++) {
		char p[64];
		path_of(l[i], p, sizeof(p));
		if (!strcmp(p, argv[1])) {
			r = libusb_open(l[i], &h);
			printf("open %s\n", libusb_error_name(r));
			break;
		}
	}
	libusb_free_device_list(l, 1);
	if (!h) {
		printf("no device at %s\n", argv[1]);
		libusb_exit(NULL);
		return 1;
	}
	int rc = 0;
	for (int i = 2; i < argc && !rc; i++)
		rc = run_op(h, argv[i]);
	libusb_close(h);
	libusb_exit(NULL);
	return rc;
}
