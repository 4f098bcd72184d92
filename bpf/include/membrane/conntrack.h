/* ABI contract: mb_ct, the IPv4 connection tracking table (an IPv6 table will be a sibling). */
#pragma once

#include <membrane/common.h>

#define MB_CT_MAP "mb_ct"
#define MB_CT_MAX 65536

/* Timeouts (seconds) as Cilium's defaults. */
#define MB_CT_SYN_TIMEOUT 60
#define MB_CT_ESTABLISHED_TIMEOUT 21600
#define MB_CT_CLOSE_TIMEOUT 10
#define MB_CT_DATAGRAM_TIMEOUT 60	/* UDP and ICMP echo */

/* The 5-tuple of the connection's first packet, in network order, plus the direction in which
 * that endpoint saw it. A connection between two local endpoints has two entries: the client's
 * egress one and the server's ingress one; each end evaluates its own policy. A reply is found
 * by swapping addresses and ports and flipping the direction. For ICMP echo sport is the echo id
 * of a request and dport the id of a reply, so a reply reverses onto its request. */
struct mb_ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;		/* IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP */
	__u8 direction;		/* enum mb_direction; MB_DIR_SERVICE: a service connection, keyed
				 * by the frontend the client addressed, before translation */
	__u8 family;		/* enum mb_family */
	__u8 pad;
};

enum mb_ct_flags {
	MB_CT_F_TX_FIN = 1 << 0,	/* FIN seen in the forward direction */
	MB_CT_F_TX_RST = 1 << 1,
	MB_CT_F_RX_FIN = 1 << 2,	/* FIN seen in the reply direction */
	MB_CT_F_RX_RST = 1 << 3,
	MB_CT_F_SEEN_NON_SYN = 1 << 4,	/* TCP: the handshake completed (established timeout) */
	MB_CT_F_SEEN_REPLY = 1 << 5,
};

#define MB_CT_F_CLOSING (MB_CT_F_TX_FIN | MB_CT_F_TX_RST | MB_CT_F_RX_FIN | MB_CT_F_RX_RST)

/* tx counts the forward direction (as the key), rx the replies. */
struct mb_ct_entry {
	__u64 tx_packets;
	__u64 tx_bytes;
	__u64 rx_packets;
	__u64 rx_bytes;
	__u32 lifetime;		/* CLOCK_BOOTTIME seconds after which the entry is expired */
	__u16 flags;		/* enum mb_ct_flags */
	/* Load-balancing: the frontend replies are translated back to (mb_lb4_reverse_nat), on
	 * the entry of the end that sees the replies to translate: the client's egress entry for
	 * a pod client, the backend's ingress entry for NodePort and hairpin. */
	__u16 rev_nat;
	__u32 backend_id;	/* MB_DIR_SERVICE entries: the backend chosen for the connection */
	__u8 lb_flags;		/* enum mb_ct_lb_flags */
	__u8 pad[3];
};

enum mb_ct_lb_flags {
	/* A pod reaching itself through a service: its source is MB_LB_HAIRPIN_IP. */
	MB_CT_LB_F_HAIRPIN = 1 << 0,
	/* A NodePort/external connection: replies leave through the node's FIB. */
	MB_CT_LB_F_NODEPORT = 1 << 1,
};
