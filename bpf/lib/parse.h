/* Ethernet/IPv4/L4 parsing into a flat description of the packet. Headers are copied with
 * bpf_skb_load_bytes so non-linear skbs (GRO on veth) parse the same as linear ones. */
#pragma once

#include "common.h"

struct mb_pkt {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;		/* ICMP echo: the echo id of a request */
	__be16 dport;		/* ICMP echo: the echo id of a reply */
	__u8 proto;
	__u8 tcp_flags;
	__u8 tracked;		/* conntrack applies (TCP, UDP, ICMP echo) */
	__u8 known_l4;		/* TCP, UDP or ICMP */
	__u8 smac[ETH_ALEN];
	__u8 icmp_type;		/* ICMP: policy matches the type where TCP/UDP match the port */
	__u8 reply;		/* conntrack: the packet is in its connection's reply direction */
	/* What decided policy on this packet, for its events (enum mb_policy_match). */
	__u32 cookie;
	__u8 match;
	__u8 l4_off;		/* offset of the L4 header in the frame */
	/* Load-balancing: set by service translation on a new connection (stored in its
	 * conntrack entry) and by conntrack from the entry of a reply. */
	__u16 rev_nat;
	__u32 backend_id;
	__u8 lb_flags;		/* enum mb_ct_lb_flags */
	__u8 pad[3];
};

/* Returns 0 or a negative drop reason. */
static __always_inline int mb_parse_ipv4(struct __sk_buff *skb, struct mb_pkt *p)
{
	struct mb_iphdr ip;
	__u32 l4;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return -MB_DROP_INVALID;
	if ((ip.ver_ihl >> 4) != 4 || (ip.ver_ihl & 0xf) < 5)
		return -MB_DROP_INVALID;
	/* A non-first fragment carries no ports to track or to check policy on; until a fragments
	 * map ties it to its first fragment it is dropped rather than passed unchecked. */
	if (ip.frag_off & bpf_htons(MB_IP_FRAG_OFFSET_MASK))
		return -MB_DROP_INVALID;
	p->saddr = ip.saddr;
	p->daddr = ip.daddr;
	p->proto = ip.protocol;
	l4 = ETH_HLEN + (ip.ver_ihl & 0xf) * 4;
	p->l4_off = l4;

	switch (ip.protocol) {
	case IPPROTO_TCP: {
		struct mb_tcp_head tcp;

		if (bpf_skb_load_bytes(skb, l4, &tcp, sizeof(tcp)) < 0)
			return -MB_DROP_INVALID;
		p->sport = tcp.source;
		p->dport = tcp.dest;
		p->tcp_flags = tcp.flags;
		p->tracked = 1;
		p->known_l4 = 1;
		break;
	}
	case IPPROTO_UDP: {
		__be16 ports[2];

		if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)) < 0)
			return -MB_DROP_INVALID;
		p->sport = ports[0];
		p->dport = ports[1];
		p->tracked = 1;
		p->known_l4 = 1;
		break;
	}
	case IPPROTO_ICMP: {
		struct mb_icmp_head icmp;

		if (bpf_skb_load_bytes(skb, l4, &icmp, sizeof(icmp)) < 0)
			return -MB_DROP_INVALID;
		p->known_l4 = 1;
		p->icmp_type = icmp.type;
		/* Echo is a request/reply exchange and tracked; errors (unreachable, time exceeded,
		 * ...) and other types pass untracked: they belong to the flow they quote. */
		if (icmp.type == ICMP_ECHO) {
			p->sport = icmp.id;
			p->tracked = 1;
		} else if (icmp.type == ICMP_ECHOREPLY) {
			p->dport = icmp.id;
			p->tracked = 1;
		}
		break;
	}
	default:
		break;
	}
	return 0;
}
