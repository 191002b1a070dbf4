/* Vendored from shared/bench/delayq.c (built by scripts/wan/wan.sh) for scripts/bench-wan.sh; unmodified below this line. */
/*
 * delayq.c — NFQUEUE delay line with an optional per-flow token-bucket policer.
 *
 * Every packet that an iptables rule sends to NFQUEUE queue Q is held for a
 * fixed time D and then released (NF_ACCEPT) in arrival order. Packets never
 * reach user space in full: the queue runs in copy-range mode with only the
 * first 64 bytes (IP + ports) copied, and accepts are issued as *batch*
 * verdicts ("accept every queued packet with id <= X"), one per timer tick.
 * Because the delay is the same for every packet, release order == arrival
 * order, so the line never reorders (FIFO per direction and overall).
 *
 * Arrival time = the kernel's receive timestamp of the packet (NFQA_TIMESTAMP,
 * taken in netif_rx on the router's ingress veth; we switch the global
 * timestamp key on by holding a socket with SO_TIMESTAMPNS), falling back to
 * the time we read the message. So the hold is measured from the moment the
 * packet entered the router, even if this process was scheduled late.
 *
 * Policer (-r RATE_MBIT): each directional 5-tuple (proto, src, sport, dst,
 * dport) of a policed protocol (TCP; UDP too with -U) has a token bucket of
 * depth -b BURST_KB (1 KB = 1000 bytes) refilled at RATE. A packet whose IP
 * length exceeds the tokens is DROPPED at once (NF_DROP), like an ISP
 * policer; all other packets go into the delay line. Every packet of a policed
 * protocol counts, pure ACKs included (their own reverse 5-tuple bucket).
 * SIGHUP re-reads "RATE_MBIT BURST_KB" from the -C file (live rate change).
 *
 * Queue: maxlen -m (default 8192), fail-open OFF (queue full => kernel drops),
 * no GSO flag (the kernel segments GSO packets before queueing, so the policer
 * and the line see wire-size packets). Netlink receive buffer 32 MiB,
 * NETLINK_NO_ENOBUFS. Messages are read with recvmmsg() in batches.
 *
 * Stats: SIGUSR1 writes one "key=value ..." line to the -S file (and stderr);
 * the same line is written at exit. -t TTL makes the process exit after TTL
 * seconds (a safety net so a forgotten emulator cannot run forever).
 *
 * Build: gcc -O2 -Wall -o delayq delayq.c -lnetfilter_queue -lnfnetlink -lm
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/netfilter.h>
#include <linux/netlink.h>
#include <math.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <libnetfilter_queue/libnetfilter_queue.h>
#include <libnetfilter_queue/linux_nfnetlink_queue.h>

#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif

/* ---------- options ---------- */
static int opt_queue = 0;
static double opt_delay_ms = 20.0;
static uint32_t opt_maxlen = 8192;
static int64_t opt_gran_ns = 50000;        /* timer fires 50 us after the head is due */
static double opt_rate_mbit = 0;           /* 0 = no policer */
static double opt_burst_kb = 64;
static int opt_police_udp = 0;
static const char *opt_ctl = NULL, *opt_stats = NULL;
static int opt_rtprio = 0;
static double opt_ttl = 0;
static int opt_kts = 1;

/* ---------- time ---------- */
static inline int64_t ts_ns(clockid_t c)
{
	struct timespec ts;
	clock_gettime(c, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ---------- delay line: ring of (id, due) ---------- */
struct pend { uint32_t id; int64_t due; int64_t arr; };
static struct pend *ring;
static uint32_t rmask, rhead, rtail;       /* count = rtail - rhead */

/* ---------- policer ---------- */
struct flow {
	uint32_t saddr, daddr;
	uint16_t sport, dport;
	uint8_t proto, used;
	int64_t last;                      /* ns, monotonic */
	double tokens;                     /* bytes */
	uint64_t pkts, bytes, drops;
};
#define FT_BITS 16
#define FT_SIZE (1u << FT_BITS)
static struct flow *ft;
static uint32_t ft_used;
static double rate_Bps, burst_B;           /* bytes/s, bytes */

/* ---------- stats ---------- */
static uint64_t st_rx, st_acc, st_pdrop, st_pdrop_bytes, st_pbytes_ok, st_batches, st_kts, st_trunc;
static uint64_t st_maxocc, st_ft_reset, st_verdict_err;
static int64_t st_vmax;                    /* longest batch-verdict syscall (it runs the forwarding) */
static uint32_t st_bmax;                   /* largest batch */
static int64_t st_late_max = INT64_MIN, st_early_max = 0, st_lag_max;
static double st_late_sum, st_lag_sum;
/* histograms of hold-beyond-D ("late") and kernel-rx -> read lag, bucket upper bounds in us */
static const int64_t hist_us[] = { 100, 250, 500, 1000, 2000, 5000, INT64_MAX };
#define NH (sizeof(hist_us) / sizeof(hist_us[0]))
static uint64_t h_late[NH], h_lag[NH];
static inline void hist_add(uint64_t *hst, int64_t ns)
{
	int64_t us = ns / 1000;
	unsigned i = 0;
	while (us >= hist_us[i])
		i++;
	hst[i]++;
}
static int64_t t_start;

static struct nfq_handle *h;
static struct nfq_q_handle *qh;
static int64_t g_now, g_real2mono, delay_ns;

static void set_rate(double mbit, double burst_kb)
{
	opt_rate_mbit = mbit;
	opt_burst_kb = burst_kb;
	rate_Bps = mbit * 1e6 / 8.0;
	burst_B = burst_kb * 1000.0;
	if (ft)
		for (uint32_t i = 0; i < FT_SIZE; i++)
			if (ft[i].used && ft[i].tokens > burst_B)
				ft[i].tokens = burst_B;
}

static inline uint32_t flow_hash(uint32_t s, uint32_t d, uint32_t ports, uint8_t proto)
{
	uint64_t x = ((uint64_t)s << 32 | d) ^ ((uint64_t)ports << 8 | proto) * 0x9E3779B97F4A7C15ULL;
	x ^= x >> 31; x *= 0xBF58476D1CE4E5B9ULL; x ^= x >> 29;
	return (uint32_t)(x >> (64 - FT_BITS));
}

/* returns 1 to pass, 0 to drop */
static int police(const unsigned char *p, int len, int64_t t)
{
	if (len < 20 || (p[0] >> 4) != 4)
		return 1;
	unsigned ihl = (p[0] & 0x0f) * 4u;
	uint8_t proto = p[9];
	if (!(proto == IPPROTO_TCP || (opt_police_udp && proto == IPPROTO_UDP)))
		return 1;
	if (rate_Bps <= 0)
		return 1;
	uint16_t frag = ntohs(*(const uint16_t *)(p + 6));
	uint16_t sport = 0, dport = 0;
	if ((frag & 0x1fff) == 0 && (int)(ihl + 4) <= len) {
		sport = ntohs(*(const uint16_t *)(p + ihl));
		dport = ntohs(*(const uint16_t *)(p + ihl + 2));
	}
	uint32_t s, d;
	memcpy(&s, p + 12, 4);
	memcpy(&d, p + 16, 4);
	unsigned iplen = ntohs(*(const uint16_t *)(p + 2));

	if (ft_used > FT_SIZE / 2) {       /* crude: forget every flow (buckets refill) */
		memset(ft, 0, sizeof(*ft) * FT_SIZE);
		ft_used = 0;
		st_ft_reset++;
	}
	uint32_t i = flow_hash(s, d, (uint32_t)sport << 16 | dport, proto);
	struct flow *f;
	for (;;) {
		f = &ft[i];
		if (!f->used) {
			f->used = 1; f->saddr = s; f->daddr = d; f->sport = sport; f->dport = dport;
			f->proto = proto; f->last = t; f->tokens = burst_B;
			ft_used++;
			break;
		}
		if (f->saddr == s && f->daddr == d && f->sport == sport && f->dport == dport && f->proto == proto)
			break;
		i = (i + 1) & (FT_SIZE - 1);
	}
	int64_t dt = t - f->last;
	if (dt > 0) {
		f->tokens += (double)dt * 1e-9 * rate_Bps;
		if (f->tokens > burst_B)
			f->tokens = burst_B;
		f->last = t;
	}
	f->pkts++;
	if (f->tokens >= iplen) {
		f->tokens -= iplen;
		f->bytes += iplen;
		st_pbytes_ok += iplen;
		return 1;
	}
	f->drops++;
	st_pdrop_bytes += iplen;
	return 0;
}

static int cb(struct nfq_q_handle *q, struct nfgenmsg *nfmsg, struct nfq_data *nfa, void *data)
{
	(void)nfmsg; (void)data;
	struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
	if (!ph)
		return 0;
	uint32_t id = ntohl(ph->packet_id);
	int64_t t = g_now;
	st_rx++;
	if (opt_kts) {
		struct timeval tv;
		if (nfq_get_timestamp(nfa, &tv) == 0) {
			int64_t kt = (int64_t)tv.tv_sec * 1000000000LL + (int64_t)tv.tv_usec * 1000 + g_real2mono;
			/* sanity: not in the future (1 us real/mono skew allowed), not older than 1 s */
			if (kt <= t + 1000 && kt > t - 1000000000LL) {
				if (kt > t)
					kt = t;
				st_kts++;
				int64_t lag = t - kt;
				st_lag_sum += (double)lag;
				hist_add(h_lag, lag);
				if (lag > st_lag_max)
					st_lag_max = lag;
				t = kt;
			}
		}
	}
	if (opt_rate_mbit > 0) {
		unsigned char *p;
		int len = nfq_get_payload(nfa, &p);
		if (len > 0 && !police(p, len, t)) {
			st_pdrop++;
			if (nfq_set_verdict(q, id, NF_DROP, 0, NULL) < 0)
				st_verdict_err++;
			return 0;
		}
	}
	if (rtail - rhead > rmask) {       /* cannot happen: ring > kernel maxlen */
		if (nfq_set_verdict(q, id, NF_DROP, 0, NULL) < 0)
			st_verdict_err++;
		return 0;
	}
	struct pend *e = &ring[rtail & rmask];
	e->id = id;
	e->arr = t;
	e->due = t + delay_ns;
	rtail++;
	if (rtail - rhead > st_maxocc)
		st_maxocc = rtail - rhead;
	return 0;
}

static void release_due(void)
{
	if (rtail == rhead)
		return;
	int64_t now = ts_ns(CLOCK_MONOTONIC);
	uint32_t last = 0, n = 0;
	while (rtail != rhead) {
		struct pend *e = &ring[rhead & rmask];
		if (e->due > now)
			break;
		int64_t late = now - e->due;
		if (late > st_late_max)
			st_late_max = late;
		if (-late > st_early_max)
			st_early_max = -late;
		st_late_sum += (double)late;
		hist_add(h_late, late);
		last = e->id;
		rhead++;
		n++;
	}
	if (n) {
		int64_t v0 = ts_ns(CLOCK_MONOTONIC);
		if (nfq_set_verdict_batch(qh, last, NF_ACCEPT) < 0)
			st_verdict_err++;
		int64_t vd = ts_ns(CLOCK_MONOTONIC) - v0;
		if (vd > st_vmax)
			st_vmax = vd;
		if (n > st_bmax)
			st_bmax = n;
		st_acc += n;
		st_batches++;
	}
}

static void arm_timer(int tfd)
{
	static int64_t armed = -1;
	/* fire GRAN after the head is due: packets due within that window are
	 * released together, each held between D and D+GRAN (never early) */
	int64_t due = rtail != rhead ? ring[rhead & rmask].due + opt_gran_ns : 0;
	if (due == armed)
		return;
	struct itimerspec its = { 0 };
	if (due) {
		its.it_value.tv_sec = due / 1000000000LL;
		its.it_value.tv_nsec = due % 1000000000LL;
	}
	timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
	armed = due;
}

static void write_stats(const char *why)
{
	char buf[2400];
	double up = (ts_ns(CLOCK_MONOTONIC) - t_start) * 1e-9;
	uint32_t active = 0;
	if (ft)
		for (uint32_t i = 0; i < FT_SIZE; i++)
			active += ft[i].used;
	snprintf(buf, sizeof buf,
		"delayq %s up_s=%.1f delay_ms=%.3f rate_mbit=%g burst_kb=%g rx=%" PRIu64 " accepted=%" PRIu64
		" queued_now=%u police_drop=%" PRIu64 " police_drop_bytes=%" PRIu64 " police_pass_bytes=%" PRIu64
		" batches=%" PRIu64 " max_queued=%" PRIu64 " kernel_ts=%" PRIu64
		" late_mean_us=%.1f late_max_us=%.1f early_max_us=%.1f rx_lag_mean_us=%.1f rx_lag_max_us=%.1f"
		" flows=%u flow_resets=%" PRIu64 " verdict_err=%" PRIu64 " trunc=%" PRIu64
		" verdict_syscall_max_us=%.1f batch_max=%u\n",
		why, up, delay_ns / 1e6, opt_rate_mbit, opt_burst_kb, st_rx, st_acc, rtail - rhead, st_pdrop,
		st_pdrop_bytes, st_pbytes_ok, st_batches, st_maxocc, st_kts,
		st_acc ? st_late_sum / st_acc / 1e3 : 0.0, st_late_max == INT64_MIN ? 0.0 : st_late_max / 1e3,
		st_early_max / 1e3, st_kts ? st_lag_sum / st_kts / 1e3 : 0.0, st_lag_max / 1e3,
		active, st_ft_reset, st_verdict_err, st_trunc, st_vmax / 1e3, st_bmax);
	/* histograms: counts per bucket <100us <250 <500 <1ms <2ms <5ms >=5ms */
	size_t L = strlen(buf) - 1;       /* overwrite the newline */
	L += snprintf(buf + L, sizeof buf - L, " late_hist=");
	for (unsigned i = 0; i < NH; i++)
		L += snprintf(buf + L, sizeof buf - L, "%s%" PRIu64, i ? "," : "", h_late[i]);
	L += snprintf(buf + L, sizeof buf - L, " lag_hist=");
	for (unsigned i = 0; i < NH; i++)
		L += snprintf(buf + L, sizeof buf - L, "%s%" PRIu64, i ? "," : "", h_lag[i]);
	snprintf(buf + L, sizeof buf - L, " hist_bounds_us=100,250,500,1000,2000,5000,inf\n");
	fputs(buf, stderr);
	if (opt_stats) {
		char tmp[4096];
		snprintf(tmp, sizeof tmp, "%s.tmp", opt_stats);
		FILE *f = fopen(tmp, "w");
		if (f) {
			fputs(buf, f);
			/* per-flow lines for the policer */
			if (ft)
				for (uint32_t i = 0; i < FT_SIZE; i++) {
					struct flow *x = &ft[i];
					if (!x->used)
						continue;
					char a[INET_ADDRSTRLEN], b[INET_ADDRSTRLEN];
					inet_ntop(AF_INET, &x->saddr, a, sizeof a);
					inet_ntop(AF_INET, &x->daddr, b, sizeof b);
					fprintf(f, "flow proto=%u src=%s:%u dst=%s:%u pkts=%" PRIu64 " pass_bytes=%" PRIu64
						" drops=%" PRIu64 "\n", x->proto, a, x->sport, b, x->dport, x->pkts, x->bytes, x->drops);
				}
			fclose(f);
			rename(tmp, opt_stats);
		}
	}
}

static void read_ctl(void)
{
	if (!opt_ctl)
		return;
	FILE *f = fopen(opt_ctl, "r");
	if (!f) {
		fprintf(stderr, "delayq: cannot read %s: %s\n", opt_ctl, strerror(errno));
		return;
	}
	double r, b;
	if (fscanf(f, "%lf %lf", &r, &b) == 2 && r >= 0 && b > 0) {
		if (r > 0 && !ft) {
			ft = calloc(FT_SIZE, sizeof(*ft));
			if (!ft) { perror("calloc"); exit(1); }
		}
		set_rate(r, b);
		fprintf(stderr, "delayq: policer now rate_mbit=%g burst_kb=%g\n", r, b);
	} else {
		fprintf(stderr, "delayq: %s: expected \"RATE_MBIT BURST_KB\"\n", opt_ctl);
	}
	fclose(f);
}

static void usage(void)
{
	fprintf(stderr,
		"usage: delayq [-q QNUM] [-d DELAY_MS] [-m MAXLEN] [-g GRAN_US] [-r RATE_MBIT] [-b BURST_KB] [-U]\n"
		"              [-C CTLFILE] [-S STATSFILE] [-p RTPRIO] [-t TTL_S] [-K]\n"
		"  -d  one-way hold time in ms (float), default 20\n"
		"  -m  kernel queue maxlen (packets), default 8192\n"
		"  -g  timer slack: fire GRAN_US after the oldest packet is due and release\n"
		"      everything due by then (holds are D..D+GRAN, never early; default 50)\n"
		"  -r  per-5-tuple policer rate in Mbit/s (IP bytes), 0 = off (default)\n"
		"  -b  policer bucket depth in KB (1000 bytes), default 64\n"
		"  -U  police UDP too (default: TCP only)\n"
		"  -C  file with \"RATE_MBIT BURST_KB\", re-read on SIGHUP\n"
		"  -S  stats file, written on SIGUSR1 and at exit\n"
		"  -p  SCHED_FIFO priority (0 = normal scheduling)\n"
		"  -t  exit after TTL_S seconds (0 = never)\n"
		"  -K  do not use kernel rx timestamps (use the time the message is read)\n");
	exit(2);
}

int main(int argc, char **argv)
{
	int c;
	while ((c = getopt(argc, argv, "q:d:m:g:r:b:UC:S:p:t:Kh")) != -1) {
		switch (c) {
		case 'q': opt_queue = atoi(optarg); break;
		case 'd': opt_delay_ms = atof(optarg); break;
		case 'm': opt_maxlen = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'g': opt_gran_ns = (int64_t)(atof(optarg) * 1000); break;
		case 'r': opt_rate_mbit = atof(optarg); break;
		case 'b': opt_burst_kb = atof(optarg); break;
		case 'U': opt_police_udp = 1; break;
		case 'C': opt_ctl = optarg; break;
		case 'S': opt_stats = optarg; break;
		case 'p': opt_rtprio = atoi(optarg); break;
		case 't': opt_ttl = atof(optarg); break;
		case 'K': opt_kts = 0; break;
		default: usage();
		}
	}
	if (opt_delay_ms < 0 || opt_maxlen < 16 || opt_burst_kb <= 0 || opt_rate_mbit < 0)
		usage();
	delay_ns = (int64_t)llround(opt_delay_ms * 1e6);
	uint32_t cap = 1;
	while (cap < opt_maxlen * 2)
		cap <<= 1;
	ring = calloc(cap, sizeof(*ring));
	rmask = cap - 1;
	if (opt_rate_mbit > 0) {
		ft = calloc(FT_SIZE, sizeof(*ft));
		if (!ft) { perror("calloc"); return 1; }
	}
	set_rate(opt_rate_mbit, opt_burst_kb);
	if (opt_ctl) {                      /* the control file, if present, wins */
		if (access(opt_ctl, R_OK) == 0)
			read_ctl();
	}

	/* switch on kernel rx timestamps (global static key) while we run */
	int tsock = socket(AF_INET, SOCK_DGRAM, 0);
	if (tsock >= 0) {
		int one = 1;
		setsockopt(tsock, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
	}

	h = nfq_open();
	if (!h) { perror("nfq_open"); return 1; }
	qh = nfq_create_queue(h, (uint16_t)opt_queue, &cb, NULL);
	if (!qh) { perror("nfq_create_queue (is another program bound to this queue?)"); return 1; }
	if (nfq_set_mode(qh, NFQNL_COPY_PACKET, 64) < 0) { perror("nfq_set_mode"); return 1; }
	if (nfq_set_queue_maxlen(qh, opt_maxlen) < 0) { perror("nfq_set_queue_maxlen"); return 1; }
	/* fail-open off, no GSO, no conntrack info: clear all three explicitly */
	if (nfq_set_queue_flags(qh, NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO | NFQA_CFG_F_CONNTRACK, 0) < 0)
		perror("nfq_set_queue_flags (ignored)");
	int fd = nfq_fd(h);
	nfnl_rcvbufsiz(nfq_nfnlh(h), 32u << 20);
	{
		int one = 1;
		setsockopt(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof one);
	}
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);

	int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	sigset_t ss;
	sigemptyset(&ss);
	sigaddset(&ss, SIGTERM); sigaddset(&ss, SIGINT); sigaddset(&ss, SIGHUP); sigaddset(&ss, SIGUSR1);
	sigprocmask(SIG_BLOCK, &ss, NULL);
	int sfd = signalfd(-1, &ss, SFD_NONBLOCK | SFD_CLOEXEC);
	int ttlfd = -1;
	if (opt_ttl > 0) {
		ttlfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
		struct itimerspec its = { 0 };
		its.it_value.tv_sec = (time_t)opt_ttl;
		its.it_value.tv_nsec = (long)((opt_ttl - (double)(time_t)opt_ttl) * 1e9);
		timerfd_settime(ttlfd, 0, &its, NULL);
	}
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = { .events = EPOLLIN };
	ev.data.fd = fd; epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
	ev.data.fd = tfd; epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
	ev.data.fd = sfd; epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);
	if (ttlfd >= 0) { ev.data.fd = ttlfd; epoll_ctl(ep, EPOLL_CTL_ADD, ttlfd, &ev); }

	if (opt_rtprio > 0) {
		struct sched_param sp = { .sched_priority = opt_rtprio };
		if (sched_setscheduler(0, SCHED_FIFO, &sp) < 0)
			perror("sched_setscheduler (continuing with normal priority)");
	}
	mlockall(MCL_CURRENT | MCL_FUTURE);

	enum { VLEN = 64, BUFSZ = 2048 };
	static char bufs[VLEN][BUFSZ];
	struct mmsghdr msgs[VLEN];
	struct iovec iov[VLEN];

	t_start = ts_ns(CLOCK_MONOTONIC);
	fprintf(stderr, "delayq: ready queue=%d delay_ms=%g maxlen=%u gran_us=%g rate_mbit=%g burst_kb=%g police=%s rtprio=%d ttl_s=%g pid=%d\n",
		opt_queue, opt_delay_ms, opt_maxlen, opt_gran_ns / 1e3, opt_rate_mbit, opt_burst_kb,
		opt_police_udp ? "tcp+udp" : "tcp", opt_rtprio, opt_ttl, (int)getpid());

	int running = 1;
	while (running) {
		struct epoll_event evs[4];
		int n = epoll_wait(ep, evs, 4, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("epoll_wait");
			break;
		}
		for (int k = 0; k < n; k++) {
			int efd = evs[k].data.fd;
			if (efd == fd) {
				/* read up to 4 batches, then release what is due before reading on */
				for (int round = 0; round < 4; round++) {
					for (int i = 0; i < VLEN; i++) {
						iov[i].iov_base = bufs[i];
						iov[i].iov_len = BUFSZ;
						memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
						msgs[i].msg_hdr.msg_iov = &iov[i];
						msgs[i].msg_hdr.msg_iovlen = 1;
					}
					int m = recvmmsg(fd, msgs, VLEN, MSG_DONTWAIT, NULL);
					if (m <= 0) {
						if (m < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOBUFS)
							perror("recvmmsg");
						break;
					}
					g_now = ts_ns(CLOCK_MONOTONIC);
					g_real2mono = g_now - ts_ns(CLOCK_REALTIME);
					for (int i = 0; i < m; i++) {
						if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC)
							st_trunc++;
						nfq_handle_packet(h, bufs[i], (int)msgs[i].msg_len);
					}
					release_due();
					if (m < VLEN)
						break;
				}
			} else if (efd == tfd) {
				uint64_t x;
				while (read(tfd, &x, sizeof x) > 0)
					;
			} else if (efd == sfd) {
				struct signalfd_siginfo si;
				while (read(sfd, &si, sizeof si) == sizeof si) {
					if (si.ssi_signo == SIGHUP)
						read_ctl();
					else if (si.ssi_signo == SIGUSR1)
						write_stats("stats");
					else
						running = 0;
				}
			} else if (efd == ttlfd) {
				fprintf(stderr, "delayq: TTL of %g s reached, exiting\n", opt_ttl);
				running = 0;
			}
		}
		release_due();
		arm_timer(tfd);
	}
	/* Hand everything still held back to the kernel: unbinding the queue
	 * drops queued packets, so accept them now (early) instead. */
	if (rtail != rhead) {
		nfq_set_verdict_batch(qh, ring[(rtail - 1) & rmask].id, NF_ACCEPT);
		st_acc += rtail - rhead;
		rhead = rtail;
	}
	write_stats("exit");
	nfq_destroy_queue(qh);
	nfq_close(h);
	return 0;
}
