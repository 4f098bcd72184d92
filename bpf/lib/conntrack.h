/* Connection tracking: new vs. established vs. reply, with Cilium's timeouts. */
#pragma once

#include "maps.h"
#include "parse.h"

enum mb_ct_status {
	MB_CT_NEW = 1,
	MB_CT_ESTABLISHED = 2,
	MB_CT_REPLY = 3,
	MB_CT_UNTRACKED = 4,
};

static __always_inline __u32 mb_ct_now(void)
{
	return bpf_ktime_get_boot_ns() / 1000000000ULL;
}

static __always_inline __u32 mb_ct_timeout(__u8 proto, __u16 flags)
{
	if (flags & MB_CT_F_CLOSING)
		return MB_CT_CLOSE_TIMEOUT;
	if (proto == IPPROTO_TCP)
		return (flags & MB_CT_F_SEEN_NON_SYN) ? MB_CT_ESTABLISHED_TIMEOUT : MB_CT_SYN_TIMEOUT;
	return MB_CT_DATAGRAM_TIMEOUT;
}

static __always_inline __u16 mb_ct_tcp_flags(const struct mb_pkt *p, int reply)
{
	__u16 f = 0;

	if (p->proto != IPPROTO_TCP)
		return 0;
	if (p->tcp_flags & TCP_FLAG_FIN)
		f |= reply ? MB_CT_F_RX_FIN : MB_CT_F_TX_FIN;
	if (p->tcp_flags & TCP_FLAG_RST)
		f |= reply ? MB_CT_F_RX_RST : MB_CT_F_TX_RST;
	if (!(p->tcp_flags & TCP_FLAG_SYN))
		f |= MB_CT_F_SEEN_NON_SYN;
	return f;
}

/* An entry whose lifetime has passed is treated as absent (the agent's GC removes it later). */
static __always_inline struct mb_ct_entry *mb_ct_find(const struct mb_ct_key *key, __u32 now)
{
	struct mb_ct_entry *e = bpf_map_lookup_elem(&mb_ct, key);

	if (e && e->lifetime < now)
		return NULL;
	return e;
}

/* Returns the milestone this packet is for the connection (enum mb_trace_point) or 0. */
static __always_inline __u8 mb_ct_touch(struct mb_ct_entry *e, const struct mb_pkt *p,
					int reply, __u32 len, __u32 now)
{
	__u16 old = e->flags;
	__u16 flags = old | mb_ct_tcp_flags(p, reply);
	__u8 trace = 0;

	if (reply) {
		flags |= MB_CT_F_SEEN_REPLY;
		__sync_fetch_and_add(&e->rx_packets, 1);
		__sync_fetch_and_add(&e->rx_bytes, len);
	} else {
		__sync_fetch_and_add(&e->tx_packets, 1);
		__sync_fetch_and_add(&e->tx_bytes, len);
	}
	if (flags != old)
		e->flags = flags;
	e->lifetime = now + mb_ct_timeout(p->proto, flags);
	if ((flags & MB_CT_F_CLOSING) && !(old & MB_CT_F_CLOSING))
		trace = MB_TRACE_CLOSE;
	else if (reply && !(old & MB_CT_F_SEEN_REPLY))
		trace = MB_TRACE_REPLY;
	return trace;
}

static __always_inline void mb_ct_key_of(struct mb_ct_key *key, const struct mb_pkt *p, __u8 dir)
{
	key->saddr = p->saddr;
	key->daddr = p->daddr;
	key->sport = p->sport;
	key->dport = p->dport;
	key->proto = p->proto;
	key->direction = dir;
	key->family = MB_FAMILY_IPV4;
}

/* dir is the direction at the endpoint doing the lookup. Returns enum mb_ct_status or a
 * negative drop reason, and in *trace the connection milestone the packet is (first reply,
 * close; MB_TRACE_NEW is the caller's once it created the entry) or 0. MB_CT_NEW creates
 * nothing: the caller decides policy first and then calls mb_ct_create, so a refused first
 * packet leaves no entry that later packets would pass as established. Sets p->reply, and for
 * a reply p->rev_nat and p->lb_flags from its entry (0 otherwise). */
static __always_inline int mb_ct_process(struct mb_pkt *p, __u8 dir, __u32 len, __u8 *trace)
{
	struct mb_ct_key key = {};
	struct mb_ct_entry *e;
	__u32 now;

	*trace = 0;
	p->reply = 0;
	p->rev_nat = 0;
	p->lb_flags = 0;
	if (!p->known_l4)
		return -MB_DROP_CT_UNKNOWN_PROTO;
	if (!p->tracked)
		return MB_CT_UNTRACKED;

	now = mb_ct_now();
	mb_ct_key_of(&key, p, dir);
	e = mb_ct_find(&key, now);
	if (e && (e->flags & MB_CT_F_CLOSING) && p->proto == IPPROTO_TCP &&
	    (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN) {
		/* A new connection on the 5-tuple of one that is closing (Cilium's "reopened"):
		 * a new connection for policy and flows, not the tail of the old one. */
		bpf_map_delete_elem(&mb_ct, &key);
		return MB_CT_NEW;
	}
	if (e) {
		*trace = mb_ct_touch(e, p, 0, len, now);
		return MB_CT_ESTABLISHED;
	}

	key.saddr = p->daddr;
	key.daddr = p->saddr;
	key.sport = p->dport;
	key.dport = p->sport;
	key.direction = dir == MB_DIR_EGRESS ? MB_DIR_INGRESS : MB_DIR_EGRESS;
	e = mb_ct_find(&key, now);
	if (e) {
		p->reply = 1;
		p->rev_nat = e->rev_nat;
		p->lb_flags = e->lb_flags;
		*trace = mb_ct_touch(e, p, 1, len, now);
		return MB_CT_REPLY;
	}
	return MB_CT_NEW;
}

/* After policy allowed a MB_CT_NEW packet: 0 or a negative drop reason. rev_nat/lb_flags: the
 * translation the replies this entry sees need (0: none). */
static __always_inline int mb_ct_create(const struct mb_pkt *p, __u8 dir, __u32 len,
					__u16 rev_nat, __u8 lb_flags)
{
	struct mb_ct_key key = {};
	struct mb_ct_entry entry = {};

	mb_ct_key_of(&key, p, dir);
	entry.rev_nat = rev_nat;
	entry.lb_flags = lb_flags;
	entry.tx_packets = 1;
	entry.tx_bytes = len;
	entry.flags = mb_ct_tcp_flags(p, 0);
	entry.lifetime = mb_ct_now() + mb_ct_timeout(p->proto, entry.flags);
	/* An LRU map evicts rather than fails when full; a failure here is a kernel refusal. */
	if (bpf_map_update_elem(&mb_ct, &key, &entry, BPF_ANY) < 0)
		return -MB_DROP_CT_CREATE_FAILED;
	return 0;
}
