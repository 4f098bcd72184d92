// Request/response latency probe for bench/services.py: a lean client and echo server, so the
// measured time is the network path (and the service translation on it), not an interpreter.
//
//   rr server PORT
//       Iterative TCP echo server in the current network namespace: accept, read one request,
//       write it back, wait for the client to close, close. One connection at a time (the
//       client is sequential).
//   rr client WARMUP ROUNDS LABEL=NETNS_PATH,IP,PORT ...
//       For each round, for each target in turn: enter the target's network namespace, make a
//       socket there, then time connect + send one request + receive its echo (TCP_NODELAY),
//       then close with a reset.
//       Rounds interleave the targets, so drift hits them alike. WARMUP rounds are not
//       recorded. Prints one JSON object: {"LABEL": [µs, ...], ...}.
//
// Exit status 1 with a message naming the target on any failure.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char REQUEST[] = "membrane-bench\n";
#define REQLEN (sizeof(REQUEST) - 1)

struct target {
	char label[64];
	int nsfd;
	struct sockaddr_in addr;
	double *us;
};

static int serve(int port)
{
	int one = 1;
	int ls = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	if (ls < 0 || setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    bind(ls, (struct sockaddr *)&a, sizeof(a)) || listen(ls, 128)) {
		fprintf(stderr, "rr server: port %d: %s\n", port, strerror(errno));
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	printf("ready\n");
	fflush(stdout);
	for (;;) {
		char buf[256];
		int c = accept(ls, NULL, NULL);
		if (c < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			fprintf(stderr, "rr server: accept: %s\n", strerror(errno));
			return 1;
		}
		setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		ssize_t n = read(c, buf, sizeof(buf));
		if (n > 0 && write(c, buf, n) == n) {
			// the client closes first (a reset: neither side keeps TIME_WAIT)
			while (read(c, buf, sizeof(buf)) > 0)
				;
		}
		close(c);
	}
}

static int parse_target(const char *arg, struct target *t, int rounds)
{
	char buf[512], *eq, *ip, *port;
	if (strlen(arg) >= sizeof(buf))
		return -1;
	strcpy(buf, arg);
	eq = strchr(buf, '=');
	if (!eq || eq == buf || (size_t)(eq - buf) >= sizeof(t->label))
		return -1;
	*eq = 0;
	strcpy(t->label, buf);
	ip = strchr(eq + 1, ',');
	if (!ip)
		return -1;
	*ip++ = 0;
	port = strchr(ip, ',');
	if (!port)
		return -1;
	*port++ = 0;
	t->nsfd = open(eq + 1, O_RDONLY | O_CLOEXEC);
	if (t->nsfd < 0) {
		fprintf(stderr, "rr client: %s: namespace %s: %s\n", t->label, eq + 1, strerror(errno));
		return -2;
	}
	memset(&t->addr, 0, sizeof(t->addr));
	t->addr.sin_family = AF_INET;
	t->addr.sin_port = htons(atoi(port));
	if (inet_pton(AF_INET, ip, &t->addr.sin_addr) != 1 || atoi(port) < 1 || atoi(port) > 65535)
		return -1;
	t->us = calloc(rounds > 0 ? rounds : 1, sizeof(double));
	return t->us ? 0 : -2;
}

static double now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

// One sample; < 0 on failure (errno set).
static double one(struct target *t)
{
	int one = 1;
	struct timeval tv = {.tv_sec = 3};
	char got[64];
	size_t have = 0;
	double t0, t1;
	if (setns(t->nsfd, CLONE_NEWNET))
		return -1;
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -1;
	setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	t0 = now_us();
	if (connect(s, (struct sockaddr *)&t->addr, sizeof(t->addr)) ||
	    send(s, REQUEST, REQLEN, 0) != (ssize_t)REQLEN)
		goto fail;
	while (have < REQLEN) {
		ssize_t n = recv(s, got + have, sizeof(got) - have, 0);
		if (n <= 0) {
			if (n == 0)
				errno = ECONNRESET;
			goto fail;
		}
		have += n;
	}
	t1 = now_us();
	// Reset, not FIN: no TIME_WAIT socket is left behind, so the thousands of samples a run
	// takes do not slow connect()'s search for a free port as the run goes on.
	setsockopt(s, SOL_SOCKET, SO_LINGER, &(struct linger){.l_onoff = 1, .l_linger = 0},
		   sizeof(struct linger));
	close(s);
	return t1 - t0;
fail:
	close(s);
	return -1;
}

static int client(int warmup, int rounds, int n, char **args)
{
	struct target *ts = calloc(n, sizeof(*ts));
	if (!ts)
		return 1;
	for (int i = 0; i < n; i++) {
		int r = parse_target(args[i], &ts[i], rounds);
		if (r == -1)
			fprintf(stderr, "rr client: target %d %s: want LABEL=NETNS_PATH,IP,PORT\n", i + 1,
				args[i]);
		if (r)
			return 1;
	}
	for (int r = -warmup; r < rounds; r++) {
		for (int i = 0; i < n; i++) {
			double us = one(&ts[i]);
			if (us < 0) {
				fprintf(stderr, "rr client: %s (%s:%d) round %d: %s\n", ts[i].label,
					inet_ntoa(ts[i].addr.sin_addr), ntohs(ts[i].addr.sin_port), r,
					strerror(errno));
				return 1;
			}
			if (r >= 0)
				ts[i].us[r] = us;
		}
	}
	printf("{");
	for (int i = 0; i < n; i++) {
		printf("%s\"%s\": [", i ? ", " : "", ts[i].label);
		for (int r = 0; r < rounds; r++)
			printf("%s%.2f", r ? "," : "", ts[i].us[r]);
		printf("]");
	}
	printf("}\n");
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "server"))
		return serve(atoi(argv[2]));
	if (argc >= 5 && !strcmp(argv[1], "client"))
		return client(atoi(argv[2]), atoi(argv[3]), argc - 4, argv + 4);
	fprintf(stderr, "usage: rr server PORT | rr client WARMUP ROUNDS LABEL=NETNS_PATH,IP,PORT...\n");
	return 2;
}
