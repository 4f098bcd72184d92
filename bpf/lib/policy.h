/* Policy enforcement on the first packet of a connection (conntrack says MB_CT_NEW); replies
 * and established traffic follow their connection. Entries are looked up (membrane/policy.h)
 * for the peer's identity, for "any identity" (0) and for the peer address's ipBlock identity,
 * each at its exact port, any port of the protocol, any protocol, and the longest port range:
 * an explicit deny found by any lookup wins (181); else an allow found by any allows; else a
 * default-deny marker (the subject is selected by a policy in this direction) drops (133);
 * with no entry at all the subject is not enforced in this direction and the packet passes.
 * The agent drops range allows that a range deny of the same peer covers, so the longest
 * range match is a deny whenever any range deny matches. membrane.policy.entries.decide is
 * the same decision in Python. */
#pragma once

#include "conntrack.h"
#include "events.h"
#include "ipcache.h"
#include "maps.h"

/* Lookups are folded into one integer (the verifier refuses arithmetic on map value pointers):
 * bits 0-2 what was found (MB_FOUND_*), and the entry that decides so far: its rank (deny 3 >
 * allow 2 > default-deny marker 1) in bits 8-9, its enum mb_policy_match in bits 12-15 and its
 * cookie in bits 32-63, for the flow that names the deciding policy. */
#define MB_FOUND_ANY (1 << 0)
#define MB_FOUND_ALLOW (1 << 1)
#define MB_FOUND_DENY (1 << 2)
#define MB_FOUND_BITS 0xffULL
#define MB_ANS_RANK(a) (((a) >> 8) & 3)
#define MB_ANS_MATCH(a) ((__u8)(((a) >> 12) & 0xf))
#define MB_ANS_COOKIE(a) ((__u32)((a) >> 32))

static __always_inline __u64 mb_policy_fold(__u64 acc, const struct mb_policy_value *v,
					    __u64 match)
{
	__u64 bits, rank;
	__u16 flags;

	if (!v)
		return acc;
	flags = v->flags;
	if (flags & MB_POLICY_F_DENY) {
		bits = MB_FOUND_ANY | MB_FOUND_DENY;
		rank = 3;
	} else if (flags & MB_POLICY_F_DEFAULT_DENY) {
		bits = MB_FOUND_ANY;
		rank = 1;
	} else {
		bits = MB_FOUND_ANY | MB_FOUND_ALLOW;
		rank = 2;
	}
	acc |= bits;
	if (rank > MB_ANS_RANK(acc))
		acc = (acc & MB_FOUND_BITS) | (rank << 8) | (match << 12) |
		      ((__u64)v->cookie << 32);
	return acc;
}

static __always_inline __u64 mb_policy_merge(__u64 a, __u64 b)
{
	__u64 bits = (a | b) & MB_FOUND_BITS;

	if (MB_ANS_RANK(b) > MB_ANS_RANK(a))
		a = b;
	return (a & ~MB_FOUND_BITS) | bits;
}

/* Every entry of one peer identity that matches: exact port, any port of the protocol, any
 * protocol, and the longest port range. A global (not inlined) function: the verifier checks
 * it once with unknown arguments, instead of once per combination of its callers' answers. */
__attribute__((noinline)) __u64 mb_policy_found(__u32 subject, __u32 peer, __u8 dir, __u8 proto,
					     __be16 dport)
{
	struct mb_policy_key key = {
		.subject = subject, .peer = peer, .direction = dir, .proto = proto, .dport = dport,
	};
	struct mb_policy_range_key range = {
		.prefixlen = MB_POLICY_RANGE_FULL_PREFIX, .subject = subject, .peer = peer,
		.direction = dir, .proto = proto, .dport = dport,
	};
	__u64 port = peer ? MB_MATCH_L3_L4 : MB_MATCH_L4_ONLY;
	__u64 any = peer ? MB_MATCH_L3_ONLY : MB_MATCH_ALL;
	__u64 found;

	/* In membrane.policy.entries._found's order, so both name the same deciding entry. */
	found = mb_policy_fold(0, bpf_map_lookup_elem(&mb_policy, &key), port);
	key.dport = 0;
	found = mb_policy_fold(found, bpf_map_lookup_elem(&mb_policy, &key), port);
	key.proto = 0;
	found = mb_policy_fold(found, bpf_map_lookup_elem(&mb_policy, &key), any);
	found = mb_policy_fold(found, bpf_map_lookup_elem(&mb_policy_ranges, &range), port);
	return found;
}

/* 0 to allow or a negative drop reason; p->cookie and p->match say what decided. Returns 1
 * in *enforced when the subject has policy in this direction. */
static __always_inline int mb_policy_decide(__u32 subject, __u32 peer, __be32 peer_addr,
					    __u8 dir, struct mb_pkt *p, int *enforced)
{
	__be16 dport = p->dport;
	__u32 block;
	__u64 found;

	if (p->proto == IPPROTO_ICMP)
		dport = bpf_htons(p->icmp_type);
	found = mb_policy_found(subject, peer, dir, p->proto, dport);
	found = mb_policy_merge(found, mb_policy_found(subject, 0, dir, p->proto, dport));
	block = mb_ipcache_identity(&mb_ipblock, peer_addr);
	if (block)
		found = mb_policy_merge(found,
					mb_policy_found(subject, block, dir, p->proto, dport));

	*enforced = !!(found & MB_FOUND_ANY);
	p->cookie = MB_ANS_COOKIE(found);
	p->match = MB_ANS_RANK(found) == 1 ? MB_MATCH_NONE : MB_ANS_MATCH(found);
	if (found & MB_FOUND_DENY)
		return -MB_DROP_POLICY_DENY;
	if ((found & MB_FOUND_ALLOW) || !(found & MB_FOUND_ANY))
		return 0;
	return -MB_DROP_POLICY;
}

/* ICMP errors quote the flow they belong to and pass as related traffic. */
static __always_inline int mb_policy_applies(const struct mb_pkt *p, int ct_status)
{
	if (ct_status == MB_CT_NEW)
		return 1;
	if (ct_status != MB_CT_UNTRACKED)
		return 0;
	return !(p->proto == IPPROTO_ICMP &&
		 (p->icmp_type == ICMP_DEST_UNREACH || p->icmp_type == ICMP_TIME_EXCEEDED ||
		  p->icmp_type == ICMP_PARAMETERPROB));
}

/* The verdict of a connection's first packet, notified when the endpoint is enforced. */
static __always_inline int mb_policy_check(struct __sk_buff *skb, __u32 ep_id, __u32 subject,
					   __be32 peer_addr, __u8 dir, struct mb_pkt *p)
{
	int enforced = 0;
	int ret = mb_policy_decide(subject, mb_peer_identity(peer_addr), peer_addr, dir, p,
				   &enforced);

	if (enforced)
		mb_event_policy(skb, p, ep_id, dir, ret < 0 ? -ret : 0);
	return ret;
}

static __always_inline int mb_policy_egress(struct __sk_buff *skb,
					    const struct mb_endpoint_info *src, struct mb_pkt *p,
					    int ct_status)
{
	p->cookie = 0;
	p->match = 0;
	if (!mb_policy_applies(p, ct_status))
		return 0;
	return mb_policy_check(skb, src->ep_id, src->identity, p->daddr, MB_DIR_EGRESS, p);
}

static __always_inline int mb_policy_ingress(struct __sk_buff *skb,
					     const struct mb_endpoint_info *dst, struct mb_pkt *p,
					     int ct_status)
{
	p->cookie = 0;
	p->match = 0;
	if (!dst || !mb_policy_applies(p, ct_status))
		return 0;
	return mb_policy_check(skb, dst->ep_id, dst->identity, p->saddr, MB_DIR_INGRESS, p);
}
