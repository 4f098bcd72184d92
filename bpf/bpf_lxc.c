// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Endpoint veth programs, shared by every endpoint of the node (per-endpoint facts are in maps):
 * mb_from_container on the host-side veth's tc ingress (packets leaving the pod) and
 * mb_to_container on its tc egress (packets entering the pod from the node's stack). */

#include "common.h"
#include "conntrack.h"
#include "endpoint.h"
#include "events.h"
#include "maps.h"
#include "metrics.h"
#include "parse.h"
#include "policy.h"

/* Ingress side of an endpoint: conntrack in its ingress direction, then its ingress policy.
 * Runs in to_container, or in from_container right before bpf_redirect_peer(), which skips
 * the host veth's egress. Returns 0 to deliver or a negative drop reason. */
static __always_inline int mb_ingress(struct __sk_buff *skb, const struct mb_endpoint_info *dst,
				      struct mb_pkt *p)
{
	__u8 trace;
	int ct = mb_ct_process(p, MB_DIR_INGRESS, skb->len, &trace);
	int ret;

	if (ct < 0)
		return ct;
	ret = mb_policy_ingress(skb, dst, p, ct);
	if (ret == 0 && ct == MB_CT_NEW) {
		ret = mb_ct_create(p, MB_DIR_INGRESS, skb->len);
		trace = MB_TRACE_NEW;
	}
	if (ret == 0 && dst)
		mb_event_trace(skb, p, dst->ep_id, MB_DIR_INGRESS, trace);
	return ret;
}

static __always_inline int mb_from_arp(struct __sk_buff *skb)
{
	struct mb_endpoint_info *ep;
	struct mb_arp4 arp;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, &arp, sizeof(arp)) < 0 ||
	    arp.htype != bpf_htons(ARPHRD_ETHER) || arp.ptype != bpf_htons(ETH_P_IP) ||
	    arp.hlen != ETH_ALEN || arp.plen != 4)
		return mb_drop(skb, NULL, 0, MB_DIR_EGRESS, MB_DROP_INVALID);
	ep = mb_endpoint_lookup(arp.sip);
	if (!ep || ep->ifindex != skb->ifindex)
		return mb_drop(skb, NULL, 0, MB_DIR_EGRESS, MB_DROP_INVALID_SIP);
	if (!mb_mac_eq(arp.sha, ep->mac))
		return mb_drop(skb, NULL, ep->ep_id, MB_DIR_EGRESS, MB_DROP_INVALID_SMAC);
	mb_forwarded(skb, ep->ep_id, MB_DIR_EGRESS);
	return TC_ACT_OK;
}

static __always_inline int mb_from_ipv4(struct __sk_buff *skb, const struct mb_ethhdr *eth)
{
	struct mb_endpoint_info *src, *dst;
	struct mb_pkt p = {};
	__u8 trace;
	int ret, ct;

	ret = mb_parse_ipv4(skb, &p);
	if (ret < 0)
		return mb_drop(skb, NULL, 0, MB_DIR_EGRESS, -ret);
	src = mb_endpoint_lookup(p.saddr);
	if (!src || src->ifindex != skb->ifindex)
		return mb_drop(skb, &p, 0, MB_DIR_EGRESS, MB_DROP_INVALID_SIP);
	if (!mb_mac_eq(eth->src, src->mac))
		return mb_drop(skb, &p, src->ep_id, MB_DIR_EGRESS, MB_DROP_INVALID_SMAC);

	ct = mb_ct_process(&p, MB_DIR_EGRESS, skb->len, &trace);
	if (ct < 0)
		return mb_drop(skb, &p, src->ep_id, MB_DIR_EGRESS, -ct);
	/* Service translation (load-balancing issue) goes here, before egress policy. */
	ret = mb_policy_egress(skb, src, &p, ct);
	if (ret == 0 && ct == MB_CT_NEW) {
		ret = mb_ct_create(&p, MB_DIR_EGRESS, skb->len);
		trace = MB_TRACE_NEW;
	}
	if (ret < 0)
		return mb_drop(skb, &p, src->ep_id, MB_DIR_EGRESS, -ret);
	mb_event_trace(skb, &p, src->ep_id, MB_DIR_EGRESS, trace);

	dst = mb_endpoint_lookup(p.daddr);
	if (!dst) {
		mb_forwarded(skb, src->ep_id, MB_DIR_EGRESS);
		return TC_ACT_OK;
	}

	if (mb_redirect_peer_usable()) {
		ret = mb_ingress(skb, dst, &p);
		if (ret < 0) {
			/* Refused by the receiver: counted as the receiver's ingress drop. */
			mb_forwarded(skb, src->ep_id, MB_DIR_EGRESS);
			return mb_drop(skb, &p, dst->ep_id, MB_DIR_INGRESS, -ret);
		}
	}
	ret = mb_l3_rewrite(skb, dst);
	if (ret < 0)
		return mb_drop(skb, &p, src->ep_id, MB_DIR_EGRESS, -ret);
	mb_forwarded(skb, src->ep_id, MB_DIR_EGRESS);
	if (ret > 0)
		return TC_ACT_OK;
	if (mb_redirect_peer_usable()) {
		mb_forwarded(skb, dst->ep_id, MB_DIR_INGRESS);
		return bpf_redirect_peer(dst->ifindex, 0);
	}
	/* to_container on the destination's veth does its ingress side. */
	return bpf_redirect(dst->ifindex, 0);
}

SEC("tc")
int mb_from_container(struct __sk_buff *skb)
{
	struct mb_ethhdr eth;

	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
		return mb_drop(skb, NULL, 0, MB_DIR_EGRESS, MB_DROP_INVALID);
	switch (eth.proto) {
	case bpf_htons(ETH_P_ARP):
		return mb_from_arp(skb);
	case bpf_htons(ETH_P_IP):
		return mb_from_ipv4(skb, &eth);
	default:
		/* IPv6 included, until dual-stack lands. */
		return mb_drop(skb, NULL, 0, MB_DIR_EGRESS, MB_DROP_UNKNOWN_L3);
	}
}

static __always_inline int mb_to_arp(struct __sk_buff *skb)
{
	struct mb_endpoint_info *ep;
	__be32 tip;
	__u32 ep_id = 0;

	if (bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct mb_arp4, tip), &tip, 4) == 0) {
		ep = mb_endpoint_lookup(tip);
		if (ep)
			ep_id = ep->ep_id;
	}
	mb_forwarded(skb, ep_id, MB_DIR_INGRESS);
	return TC_ACT_OK;
}

static __always_inline int mb_to_ipv4(struct __sk_buff *skb)
{
	struct mb_endpoint_info *dst;
	struct mb_pkt p = {};
	__u32 ep_id = 0;
	int ret;

	ret = mb_parse_ipv4(skb, &p);
	if (ret < 0)
		return mb_drop(skb, NULL, 0, MB_DIR_INGRESS, -ret);
	dst = mb_endpoint_lookup(p.daddr);
	if (dst)
		ep_id = dst->ep_id;
	ret = mb_ingress(skb, dst, &p);
	if (ret < 0)
		return mb_drop(skb, &p, ep_id, MB_DIR_INGRESS, -ret);
	mb_forwarded(skb, ep_id, MB_DIR_INGRESS);
	return TC_ACT_OK;
}

SEC("tc")
int mb_to_container(struct __sk_buff *skb)
{
	struct mb_ethhdr eth;

	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
		return mb_drop(skb, NULL, 0, MB_DIR_INGRESS, MB_DROP_INVALID);
	switch (eth.proto) {
	case bpf_htons(ETH_P_ARP):
		return mb_to_arp(skb);
	case bpf_htons(ETH_P_IP):
		return mb_to_ipv4(skb);
	default:
		return mb_drop(skb, NULL, 0, MB_DIR_INGRESS, MB_DROP_UNKNOWN_L3);
	}
}

char _license[] SEC("license") = "Dual BSD/GPL";
