// A live libpcap consumer in C: what a C capture tool costs, for a like-for-like comparison with
// the tracepoint backend's C ring-buffer consumer (ringbuf_consumer.c). Run inside the capturing
// host's namespace (nsenter); built by harness/backends/pcap.py with gcc and -lpcap (libpcap-dev).
//
//   pcap_consumer IFACE EXPRESSION SNAPLEN BUFFER_BYTES TIMEOUT_MS CLIENT_ADDR SERVER_ADDR
//
// The capture is libpcap's default on Linux, as the Python agent opens it: an AF_PACKET socket
// with a TPACKET_V3 ring of BUFFER_BYTES, blocks retired after TIMEOUT_MS, the filter compiled to
// cBPF and attached in the kernel, SNAPLEN bytes kept, non-blocking, poll()ed with stdin.
// Every packet is decoded as it is read (Ethernet, IPv4, TCP) and counted by direction and by
// what its flags say about connection state: SYN, SYN-ACK, FIN, RST, other.
//
// Switched protocol (JSON lines; the same as harness/agents/observers/pcap_capture.py --switched):
//   {"ready": true, "pid": N, "libpcap": "..."}   nothing open yet
//   "on"  -> opens the capture      -> {"on": true}
//   "off" -> freezes the socket (a reject-all kernel filter: nothing more enters the ring), reads
//            the ring until every packet the kernel counted was read or dropped, closes the handle
//            (no packet socket left) -> {"off": true, "captured": n, "received": n, "dropped": n,
//            "before_filter": n, "not_tcp": n, "counts": {"client": {"syn": n, ...}, "server": {...}}}
//   stdin closed -> exit 0.
#include <arpa/inet.h>
#include <errno.h>
#include <pcap/pcap.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/filter.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { SYN, SYNACK, FIN, RST, OTHER, NKINDS };
static const char *kind_names[NKINDS] = {"syn", "synack", "fin", "rst", "other"};

struct state {
	uint32_t client, server; // network byte order
	uint64_t captured, not_tcp, counts[3][NKINDS]; // [0] from client, [1] from server, [2] other
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void on_packet(u_char *user, const struct pcap_pkthdr *h, const u_char *p)
{
	struct state *s = (struct state *)user;
	s->captured++;
	if (h->caplen < 14 + 20 || p[12] != 0x08 || p[13] != 0x00 || (p[14] >> 4) != 4 || p[23] != 6) {
		s->not_tcp++;
		return;
	}
	unsigned ihl = (p[14] & 0x0f) * 4;
	if (h->caplen < 14 + ihl + 14) {
		s->not_tcp++;
		return;
	}
	uint32_t src;
	memcpy(&src, p + 14 + 12, 4);
	uint8_t flags = p[14 + ihl + 13];
	int side = src == s->client ? 0 : src == s->server ? 1 : 2;
	int kind = flags & 0x04 ? RST : (flags & 0x02) ? ((flags & 0x10) ? SYNACK : SYN) : (flags & 0x01) ? FIN : OTHER;
	s->counts[side][kind]++;
}

// "ret #0": a kernel filter that keeps no packet and counts none.
static struct sock_filter reject_insn = BPF_STMT(BPF_RET | BPF_K, 0);
static const struct sock_fprog reject_all = {1, &reject_insn};

// Let no more packets into the ring. Set on the socket directly, not with pcap_setfilter(): libpcap
// then re-filters in user space every block already in the ring, and a packet the new filter
// rejects there was counted by the kernel (ps_recv) yet never reaches the callback.
static int freeze(pcap_t *p)
{
	return setsockopt(pcap_fileno(p), SOL_SOCKET, SO_ATTACH_FILTER, &reject_all, sizeof reject_all);
}

struct capture {
	pcap_t *p;
	int timeout_ms;
	unsigned base_recv, base_drop; // pcap_stats() at the moment the real filter went on
	uint64_t delivered;	       // packets handed to the callback since then
};

static void stats(struct capture *c, unsigned *received, unsigned *dropped)
{
	struct pcap_stat st = {0};
	pcap_stats(c->p, &st);
	*received = st.ps_recv - c->base_recv;
	*dropped = st.ps_drop - c->base_drop;
}

// A bounded batch: with a consumer slower than the traffic, an unbounded dispatch never returns.
static int dispatch(struct capture *c, pcap_handler handler, u_char *user)
{
	int n = pcap_dispatch(c->p, 4096, handler, user);
	if (n > 0)
		c->delivered += (uint64_t)n;
	return n;
}

// Freeze, then read everything the kernel counted. Exact: nothing more is counted after the freeze
// (a packet already past the old filter on another CPU may be, so the count is read every round
// and the one decided on is returned), and each counted packet sits in a block the kernel retires
// within timeout_ms. A ring quiet for two retire timeouts, or 60 s, end it with the difference
// left for the record.
static void drain(struct capture *c, pcap_handler handler, u_char *user, unsigned *received, unsigned *dropped)
{
	freeze(c->p);
	double began = now_s(), last = began;
	for (;;) {
		stats(c, received, dropped);
		if (c->delivered + *dropped >= *received)
			return;
		struct pollfd fd = {.fd = pcap_get_selectable_fd(c->p), .events = POLLIN};
		poll(&fd, 1, c->timeout_ms);
		double t = now_s();
		if (dispatch(c, handler, user) > 0)
			last = t;
		else if (t - last > 2 * c->timeout_ms / 1e3 + 0.1 || t - began > 60)
			return;
	}
}

static void ignore(u_char *user, const struct pcap_pkthdr *h, const u_char *p)
{
	(void)user, (void)h, (void)p;
}

// libpcap opens the socket unfiltered (pcap_activate) and filters it later (pcap_setfilter): what
// arrives in between is frozen out, read and counted apart (*before_filter), and the counters
// start when the real filter is on.
static int open_capture(struct capture *c, const char *iface, const char *expression, int snaplen, int buffer,
			int timeout_ms, unsigned *before_filter, char *error)
{
	pcap_t *p = pcap_create(iface, error);
	if (!p)
		return -1;
	*c = (struct capture){.p = p, .timeout_ms = timeout_ms};
	struct bpf_program filter;
	unsigned received, dropped;
	if (pcap_set_snaplen(p, snaplen) || pcap_set_promisc(p, 0) || pcap_set_timeout(p, timeout_ms) ||
	    pcap_set_buffer_size(p, buffer) || pcap_activate(p) < 0 || pcap_setnonblock(p, 1, error) ||
	    freeze(p) || pcap_compile(p, &filter, expression, 1, PCAP_NETMASK_UNKNOWN))
		goto fail;
	drain(c, ignore, NULL, &received, &dropped);
	*before_filter = (unsigned)c->delivered;
	stats(c, &c->base_recv, &c->base_drop);
	c->delivered = 0;
	if (pcap_setfilter(p, &filter)) {
		pcap_freecode(&filter);
		goto fail;
	}
	pcap_freecode(&filter);
	return 0;
fail:
	snprintf(error, PCAP_ERRBUF_SIZE, "%s", errno && !*pcap_geterr(p) ? strerror(errno) : pcap_geterr(p));
	pcap_close(p);
	c->p = NULL;
	return -1;
}

int main(int argc, char **argv)
{
	if (argc != 8) {
		fprintf(stderr, "usage: %s IFACE EXPRESSION SNAPLEN BUFFER_BYTES TIMEOUT_MS CLIENT SERVER\n", argv[0]);
		return 2;
	}
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) // dies with its runner
		return 1;
	signal(SIGINT, SIG_IGN); // the harness stops us by closing stdin
	const char *iface = argv[1], *expression = argv[2];
	int snaplen = atoi(argv[3]), buffer = atoi(argv[4]), timeout_ms = atoi(argv[5]);
	struct state s = {0};
	if (inet_pton(AF_INET, argv[6], &s.client) != 1 || inet_pton(AF_INET, argv[7], &s.server) != 1) {
		fprintf(stderr, "bad address\n");
		return 2;
	}
	printf("{\"ready\": true, \"pid\": %d, \"libpcap\": \"%s\"}\n", getpid(), pcap_lib_version());
	fflush(stdout);
	struct capture c = {0};
	char error[PCAP_ERRBUF_SIZE], line[64];
	unsigned before_filter = 0;
	size_t have = 0;
	for (;;) {
		struct pollfd fds[2] = {{.fd = 0, .events = POLLIN}, {.fd = c.p ? pcap_get_selectable_fd(c.p) : -1, .events = POLLIN}};
		poll(fds, c.p ? 2 : 1, c.p ? c.timeout_ms : -1);
		if (c.p)
			dispatch(&c, on_packet, (u_char *)&s);
		if (!(fds[0].revents & (POLLIN | POLLHUP)))
			continue;
		ssize_t n = read(0, line + have, sizeof line - have - 1);
		if (n <= 0)
			break;
		have += (size_t)n;
		char *nl;
		while ((nl = memchr(line, '\n', have))) {
			*nl = 0;
			if (!strcmp(line, "on") && !c.p) {
				memset(s.counts, 0, sizeof s.counts);
				s.captured = s.not_tcp = 0;
				if (open_capture(&c, iface, expression, snaplen, buffer, timeout_ms, &before_filter, error)) {
					printf("{\"error\": \"cannot capture on %s: %s\"}\n", iface, error);
					fflush(stdout);
					return 2;
				}
				printf("{\"on\": true}\n");
			} else if (!strcmp(line, "off") && c.p) {
				// Traffic goes on while we drain; the frozen socket takes no more of it.
				unsigned received, dropped;
				drain(&c, on_packet, (u_char *)&s, &received, &dropped);
				pcap_close(c.p);
				c.p = NULL;
				printf("{\"off\": true, \"captured\": %llu, \"received\": %u, \"dropped\": %u, "
				       "\"before_filter\": %u, \"not_tcp\": %llu, \"counts\": {",
				       (unsigned long long)s.captured, received, dropped, before_filter,
				       (unsigned long long)s.not_tcp);
				static const char *sides[3] = {"client", "server", "other"};
				for (int d = 0; d < 3; d++) {
					printf("%s\"%s\": {", d ? ", " : "", sides[d]);
					for (int k = 0; k < NKINDS; k++)
						printf("%s\"%s\": %llu", k ? ", " : "", kind_names[k],
						       (unsigned long long)s.counts[d][k]);
					printf("}");
				}
				printf("}}\n");
			}
			fflush(stdout);
			have -= (size_t)(nl + 1 - line);
			memmove(line, nl + 1, have);
		}
		if (have >= sizeof line - 1)
			have = 0; // a line too long to be a command
	}
	if (c.p)
		pcap_close(c.p);
	return 0;
}
