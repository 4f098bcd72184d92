/* Local endpoints: lookup by address and delivery into an endpoint's veth. */
#pragma once

#include "maps.h"

static __always_inline struct mb_endpoint_info *mb_endpoint_lookup(__be32 ip4)
{
	struct mb_endpoint_key key = { .ip4 = ip4, .family = MB_FAMILY_IPV4 };

	return bpf_map_lookup_elem(&mb_endpoints, &key);
}

static __always_inline int mb_redirect_peer_usable(void)
{
	__u32 zero = 0;
	struct mb_node_config *cfg = bpf_map_lookup_elem(&mb_config, &zero);

	return cfg && (cfg->flags & MB_CFG_F_REDIRECT_PEER);
}

/* Route the packet as the node would: MACs of the hop into the pod, TTL - 1. Returns 0, or 1
 * when the TTL is exhausted (the stack then answers with ICMP time exceeded), or a negative
 * drop reason. */
static __always_inline int mb_l3_rewrite(struct __sk_buff *skb, const struct mb_endpoint_info *ep)
{
	struct mb_ethhdr eth;
	__be16 old_word, new_word;
	__u8 ttl_proto[2];

	if (bpf_skb_load_bytes(skb, MB_IP_TTL_OFF, ttl_proto, 2) < 0)
		return -MB_DROP_INVALID;
	if (ttl_proto[0] <= 1)
		return 1;
	__builtin_memcpy(eth.dst, ep->mac, ETH_ALEN);
	__builtin_memcpy(eth.src, ep->node_mac, ETH_ALEN);
	if (bpf_skb_store_bytes(skb, 0, &eth, 2 * ETH_ALEN, 0) < 0)
		return -MB_DROP_INVALID;
	__builtin_memcpy(&old_word, ttl_proto, 2);
	ttl_proto[0]--;
	__builtin_memcpy(&new_word, ttl_proto, 2);
	if (bpf_skb_store_bytes(skb, MB_IP_TTL_OFF, ttl_proto, 1, 0) < 0)
		return -MB_DROP_INVALID;
	if (bpf_l3_csum_replace(skb, MB_IP_CSUM_OFF, old_word, new_word, 2) < 0)
		return -MB_DROP_INVALID;
	return 0;
}
