// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Socket-level load-balancing (Cilium's socket-LB, "host-reachable services"): cgroup programs
 * that translate a service frontend to a backend when a TCP or UDP socket of the cgroup connects
 * or sends, so the packets carry the backend's address from the start and need no per-packet
 * DNAT; recvmsg and getpeername show the frontend again, so the application only ever sees the
 * address it asked for.
 *
 * The logic lives here rather than in lib/: only these four attach points use it, and it works
 * on struct bpf_sock_addr, not on packets. It shares the frontend lookup and backend selection
 * of lib/lb.h with the tc path, so both pick from the same slots with the same affinity. */

#include "common.h"
#include "conntrack.h"
#include "lb.h"
#include "maps.h"
#include "metrics.h"

/* Return values of cgroup sock_addr programs: 0 refuses the call with EPERM. */
#define MB_SYS_REJECT 0
#define MB_SYS_PROCEED 1

/* The frontend a socket addressed, translated to a backend in place. 0 when the destination is
 * not a frontend (left alone), 1 when translated, -MB_DROP_NO_SERVICE when the frontend has no
 * active backend.
 *
 * Backend choice is mb_lb4_select(), the tc path's: a random slot per socket (a socket is a
 * connection here), the Maglev table for Maglev frontends (hashed by the socket cookie, which
 * is as good as a 5-tuple hash for one node; Maglev only matters across nodes, for traffic that
 * enters from outside, which never passes these hooks), and sessionAffinity: ClientIP. The
 * affinity client is the socket's bound source address, or 0 for an unbound socket (the
 * address is chosen by routing only after connect): every unbound socket of the node then
 * shares one affinity entry per frontend. Cilium keys socket-LB affinity by the network
 * namespace cookie instead, which needs a 64-bit client in struct mb_lb4_affinity_key. */
static __always_inline int mb_sock4_xlate_fwd(struct bpf_sock_addr *ctx)
{
	struct mb_lb4_sock_key rkey = {};
	struct mb_lb4_sock_value rval = {};
	struct mb_lb4_service *svc;
	struct mb_lb4_backend *b;
	struct bpf_sock *sk = ctx->sk;
	__be32 addr = ctx->user_ip4;
	__be16 port = (__be16)ctx->user_port;	/* network order in the low 16 bits */
	__u8 proto = ctx->protocol;
	__u64 cookie;
	__u32 id;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 0;
	svc = mb_lb4_lookup(addr, port, proto);
	if (!svc)
		return 0;
	cookie = bpf_get_socket_cookie(ctx);
	id = mb_lb4_select(addr, port, proto, svc, sk ? sk->src_ip4 : 0,
			   mb_mix32((__u32)cookie ^ mb_mix32(cookie >> 32)), mb_ct_now());
	b = id ? mb_lb4_backend_of(id) : NULL;
	if (!b)
		return -MB_DROP_NO_SERVICE;

	/* Before the rewrite: a failed update leaves the socket untranslated, not unreadable. */
	rkey.cookie = cookie;
	rkey.address = b->address;
	rkey.port = b->port;
	rval.address = addr;
	rval.port = port;
	rval.rev_nat = svc->rev_nat;
	if (bpf_map_update_elem(&mb_lb4_reverse_sk, &rkey, &rval, BPF_ANY) < 0)
		return 0;

	ctx->user_ip4 = b->address;
	ctx->user_port = (__u32)b->port;
	return 1;
}

/* A backend's address back to the frontend the socket addressed. The entry is the socket's own
 * (socket cookies are never reused), so it stays true for the socket's life even when the
 * service changes; the LRU map forgets entries of closed sockets. */
static __always_inline void mb_sock4_xlate_rev(struct bpf_sock_addr *ctx)
{
	struct mb_lb4_sock_key rkey = {
		.cookie = bpf_get_socket_cookie(ctx),
		.address = ctx->user_ip4,
		.port = (__be16)ctx->user_port,
	};
	struct mb_lb4_sock_value *r;

	r = bpf_map_lookup_elem(&mb_lb4_reverse_sk, &rkey);
	if (!r)
		return;
	ctx->user_ip4 = r->address;
	ctx->user_port = (__u32)r->port;
}

/* A frontend without backends refuses the connect or send (EPERM) instead of letting SYNs or
 * datagrams go to an address nobody has: the client fails at once. Cilium refuses here too
 * (SYS_REJECT; it also sets EHOSTUNREACH with bpf_set_retval() where the kernel allows it). The
 * refusal is counted like the tc path's drop, with no endpoint (the socket is not tied to one)
 * and no bytes. */
static __always_inline int mb_sock4_fwd(struct bpf_sock_addr *ctx)
{
	if (mb_sock4_xlate_fwd(ctx) == -MB_DROP_NO_SERVICE) {
		mb_count(0, MB_DIR_EGRESS, MB_VERDICT_DROPPED, MB_DROP_NO_SERVICE, 0);
		return MB_SYS_REJECT;
	}
	return MB_SYS_PROCEED;
}

SEC("cgroup/connect4")
int mb_sock_connect4(struct bpf_sock_addr *ctx)
{
	return mb_sock4_fwd(ctx);
}

/* Unconnected UDP: every sendto() to a frontend picks again (as the tc path's conntrack would
 * for a new 5-tuple only); affinity keeps a client on one backend where it matters. */
SEC("cgroup/sendmsg4")
int mb_sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	return mb_sock4_fwd(ctx);
}

/* UDP only (the kernel runs it for recvfrom/recvmsg with a source address asked for). */
SEC("cgroup/recvmsg4")
int mb_sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	mb_sock4_xlate_rev(ctx);
	return MB_SYS_PROCEED;
}

SEC("cgroup/getpeername4")
int mb_sock_getpeername4(struct bpf_sock_addr *ctx)
{
	mb_sock4_xlate_rev(ctx);
	return MB_SYS_PROCEED;
}

char _license[] SEC("license") = "Dual BSD/GPL";
