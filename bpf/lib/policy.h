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
#include "maps.h"

static __always_inline __u32 mb_ipcache_identity(void *map, __be32 addr)
{
	struct mb_ipcache_key key = {
		.prefixlen = MB_IPCACHE_PREFIX_BASE + 32, .family = MB_FAMILY_IPV4, .ip4 = addr,
	};
	struct mb_ipcache_value *v = bpf_map_lookup_elem(map, &key);

	return v ? v->identity : 0;
}

/* Peer identity by address: an endpoint's, the host's, a CIDR's; world when none is known. */
static __always_inline __u32 mb_peer_identity(__be32 addr)
{
	__u32 id = mb_ipcache_identity(&mb_ipcache, addr);

	return id ? id : MB_IDENTITY_WORLD;
}

/* What a lookup found, as bits: the verifier refuses arithmetic on map value pointers, so the
 * answers are folded into integers before they are combined. */
#define MB_FOUND_ANY (1 << 0)
#define MB_FOUND_ALLOW (1 << 1)
#define MB_FOUND_DENY (1 << 2)

static __always_inline int mb_policy_bits(const struct mb_policy_value *v)
{
	__u16 flags;

	if (!v)
		return 0;
	flags = v->flags;
	if (flags & MB_POLICY_F_DENY)
		return MB_FOUND_ANY | MB_FOUND_DENY;
	if (flags & MB_POLICY_F_DEFAULT_DENY)
		return MB_FOUND_ANY;
	return MB_FOUND_ANY | MB_FOUND_ALLOW;
}

/* Every entry of one peer identity that matches: exact port, any port of the protocol, any
 * protocol, and the longest port range. A global (not inlined) function: the verifier checks
 * it once with unknown arguments, instead of once per combination of its callers' answers. */
__attribute__((noinline)) int mb_policy_found(__u32 subject, __u32 peer, __u8 dir, __u8 proto,
					   __be16 dport)
{
	struct mb_policy_key key = {
		.subject = subject, .peer = peer, .direction = dir, .proto = proto, .dport = dport,
	};
	struct mb_policy_range_key range = {
		.prefixlen = MB_POLICY_RANGE_FULL_PREFIX, .subject = subject, .peer = peer,
		.direction = dir, .proto = proto, .dport = dport,
	};
	int found;

	found = mb_policy_bits(bpf_map_lookup_elem(&mb_policy, &key));
	key.dport = 0;
	found |= mb_policy_bits(bpf_map_lookup_elem(&mb_policy, &key));
	key.proto = 0;
	found |= mb_policy_bits(bpf_map_lookup_elem(&mb_policy, &key));
	found |= mb_policy_bits(bpf_map_lookup_elem(&mb_policy_ranges, &range));
	return found;
}

/* 0 to allow or a negative drop reason. */
static __always_inline int mb_policy_decide(__u32 subject, __u32 peer, __be32 peer_addr,
					    __u8 dir, const struct mb_pkt *p)
{
	__be16 dport = p->dport;
	__u32 block;
	int found;

	if (p->proto == IPPROTO_ICMP)
		dport = bpf_htons(p->icmp_type);
	found = mb_policy_found(subject, peer, dir, p->proto, dport);
	found |= mb_policy_found(subject, 0, dir, p->proto, dport);
	block = mb_ipcache_identity(&mb_ipblock, peer_addr);
	if (block)
		found |= mb_policy_found(subject, block, dir, p->proto, dport);

	if (found & MB_FOUND_DENY)
		return -MB_DROP_POLICY_DENY;
	if ((found & MB_FOUND_ALLOW) || !found)
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

static __always_inline int mb_policy_egress(const struct mb_endpoint_info *src,
					    const struct mb_pkt *p, int ct_status)
{
	if (!mb_policy_applies(p, ct_status))
		return 0;
	return mb_policy_decide(src->identity, mb_peer_identity(p->daddr), p->daddr,
				MB_DIR_EGRESS, p);
}

static __always_inline int mb_policy_ingress(const struct mb_endpoint_info *dst,
					     const struct mb_pkt *p, int ct_status)
{
	if (!dst || !mb_policy_applies(p, ct_status))
		return 0;
	return mb_policy_decide(dst->identity, mb_peer_identity(p->saddr), p->saddr,
				MB_DIR_INGRESS, p);
}
