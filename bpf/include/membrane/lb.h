/* ABI contract: the IPv4 service load-balancer maps (lib/lb.h reads them, the agent writes them).
 *
 * A frontend (address, port, protocol) has a master entry (slot 0) that says how many active
 * backends it has, and one entry per active backend (slots 1..count) naming a backend id.
 * Backends are shared by every frontend that points at the same address and port, so 50,000
 * services on the same two pods are 150,000 service entries and 2 backend entries. Adding a
 * backend is one slot write plus a master rewrite; the datapath picks a slot per connection and
 * remembers the backend in conntrack, so existing connections keep theirs. */
#pragma once

#include <membrane/common.h>

#define MB_LB4_SERVICES_MAP "mb_lb4_services"
#define MB_LB4_SERVICES_MAX 262144
#define MB_LB4_BACKENDS_MAP "mb_lb4_backends"
#define MB_LB4_BACKENDS_MAX 65536
#define MB_LB4_REVNAT_MAP "mb_lb4_reverse_nat"
#define MB_LB4_REVNAT_MAX 65536
#define MB_LB4_AFFINITY_MAP "mb_lb4_affinity"
#define MB_LB4_AFFINITY_MAX 65536
#define MB_LB4_MAGLEV_MAP "mb_lb4_maglev"
#define MB_LB4_MAGLEV_MAX 1048576
#define MB_LB4_REVERSE_SK_MAP "mb_lb4_reverse_sk"
#define MB_LB4_REVERSE_SK_MAX 65536

/* The source address the datapath gives a pod that reaches itself through a service (hairpin):
 * a packet from its own address would be refused as a martian. Cilium's IPV4_LOOPBACK. */
#define MB_LB_HAIRPIN_IP 0xa9fe2a01	/* 169.254.42.1, host order */

struct mb_lb4_key {
	__be32 address;		/* ClusterIP, external IP, or a node address for NodePort */
	__be16 dport;
	__u16 slot;		/* 0: the master entry; 1..count: a backend */
	__u8 proto;		/* IPPROTO_TCP, IPPROTO_UDP */
	__u8 scope;		/* 0 for now; room for Cilium's internal/external traffic policy */
	__u8 pad[2];
};

enum mb_lb_flags {
	MB_LB_F_AFFINITY = 1 << 0,	/* sessionAffinity: ClientIP */
	MB_LB_F_MAGLEV = 1 << 1,	/* pick backends from the Maglev table (NodePort, external) */
	MB_LB_F_NODEPORT = 1 << 2,	/* the frontend is a node address: reachable from outside */
	MB_LB_F_EXTERNAL = 1 << 3,	/* an externalIP frontend */
};

/* Master entry: count, rev_nat, flags and affinity_timeout; slot entry: backend_id only. */
struct mb_lb4_service {
	__u32 backend_id;	/* slot entries */
	__u16 count;		/* master: number of active backends (slots 1..count) */
	__u16 rev_nat;		/* master: index into mb_lb4_reverse_nat, also the Maglev table id */
	__u32 affinity_timeout;	/* master: seconds, with MB_LB_F_AFFINITY */
	__u8 flags;		/* master: enum mb_lb_flags */
	__u8 pad[3];
};

enum mb_lb_backend_state {
	MB_LB_BACKEND_ACTIVE = 0,
	/* No new connections (it has no slot), existing ones finish. */
	MB_LB_BACKEND_TERMINATING = 1,
};

struct mb_lb4_backend {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 state;		/* enum mb_lb_backend_state */
};

/* rev_nat -> the frontend replies must appear to come from. */
struct mb_lb4_reverse_nat {
	__be32 address;
	__be16 port;
	__u16 pad;
};

/* sessionAffinity: ClientIP, one entry per (client, frontend). */
struct mb_lb4_affinity_key {
	__be32 client;
	__u16 rev_nat;
	__u16 pad;
};

struct mb_lb4_affinity_value {
	__u32 backend_id;
	__u32 last_used;	/* CLOCK_BOOTTIME seconds */
};

/* Maglev lookup table of a frontend: (rev_nat, index 0..M-1) -> backend id. M is the agent's
 * --maglev-table-size (a prime); the master's count slot is not used by Maglev frontends. */
struct mb_lb4_maglev_key {
	__u32 rev_nat;
	__u32 index;
};

struct mb_lb4_maglev_value {
	__u32 backend_id;
};

/* Socket-LB (bpf_sock.c): a socket connected to a frontend is connected to a backend instead;
 * recvmsg/getpeername show the frontend again. One entry per (socket, backend). */
struct mb_lb4_sock_key {
	__u64 cookie;		/* bpf_get_socket_cookie() */
	__be32 address;		/* the backend */
	__be16 port;
	__u16 pad;
};

struct mb_lb4_sock_value {
	__be32 address;		/* the frontend */
	__be16 port;
	__u16 rev_nat;
};
