// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Endpoint veth programs, shared by every endpoint of the node (per-endpoint facts are in maps):
 * mb_from_container on the host-side veth's tc ingress (packets leaving the pod) and
 * mb_to_container on its tc egress (packets entering the pod from the node's stack). */

#include "common.h"
#include "conntrack.h"
#include "endpoint.h"
#include "events.h"
#include "lb.h"
#include "maps.h"
#include "metrics.h"
#include "parse.h"
#include "policy.h"

/* Ingress side of an endpoint: conntrack in its ingress direction, then its ingress policy;
 * replies of the endpoint's load-balanced connections get their frontend back. Runs in
 * to_container, or in from_container right before bpf_redirect_peer(), which skips the host
 * veth's egress. x: the translation a NodePort connection had on its way in (its replies are
 * translated when they leave the backend), or NULL. Returns 0 to deliver or a negative drop
 * reason. */
static __always_inline int mb_ingress(struct __sk_buff *skb, const struct mb_endpoint_info *dst,
				      struct mb_pkt *p, const struct mb_lb_xlate *x)
{
	__u8 trace;
	int ct = mb_ct_process(p, MB_DIR_INGRESS, skb->len, &trace);
	int ret;

	if (ct < 0)
		return ct;
	ret = mb_lb4_rev_nat(skb, p);
	if (ret < 0)
		return ret;
	ret = mb_policy_ingress(skb, dst, p, ct);
	if (ret == 0 && ct == MB_CT_NEW) {
		ret = mb_ct_create(p, MB_DIR_INGRESS, skb->len, x ? x->rev_nat : 0,
				   x ? x->lb_flags : 0);
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
	struct mb_lb_xlate x = {};
	struct mb_pkt p = {};
	__u8 trace, dir;
	int ret, ct;

	ret = mb_parse_ipv4(skb, &p);
	if (ret < 0)
		return mb_drop(skb, NULL, 0, MB_DIR_EGRESS, -ret);
	src = mb_endpoint_lookup(p.saddr);
	if (!src || src->ifindex != skb->ifindex)
		return mb_drop(skb, &p, 0, MB_DIR_EGRESS, MB_DROP_INVALID_SIP);
	if (!mb_mac_eq(eth->src, src->mac))
		return mb_drop(skb, &p, src->ep_id, MB_DIR_EGRESS, MB_DROP_INVALID_SMAC);

	/* Service translation first: conntrack and egress policy see the backend, as
	 * Kubernetes requires (policy applies to the pod behind the service, at its port). */
	ret = mb_lb4_xlate(skb, &p, skb->len, 0, &x);
	if (ret == -MB_DROP_NO_SERVICE) {
		mb_drop(skb, &p, src->ep_id, MB_DIR_EGRESS, MB_DROP_NO_SERVICE);
		return mb_lb4_no_backend_reply(skb);
	}
	if (ret < 0)
		return mb_drop(skb, &p, src->ep_id, MB_DIR_EGRESS, -ret);

	/* A hairpin connection is one entry, in the direction the pod sees it arrive: its
	 * replies leave through here and find it as the reply of the pod's ingress. */
	dir = (x.lb_flags & MB_CT_LB_F_HAIRPIN) ? MB_DIR_INGRESS : MB_DIR_EGRESS;
	ct = mb_ct_process(&p, dir, skb->len, &trace);
	if (ct < 0)
		return mb_drop(skb, &p, src->ep_id, MB_DIR_EGRESS, -ct);
	/* Replies of connections translated on their way into this pod (NodePort, hairpin). */
	ret = mb_lb4_rev_nat(skb, &p);
	if (ret < 0)
		return mb_drop(skb, &p, src->ep_id, MB_DIR_EGRESS, -ret);
	/* A pod may always reach itself, also through a service. */
	if (!(x.lb_flags & MB_CT_LB_F_HAIRPIN))
		ret = mb_policy_egress(skb, src, &p, ct);
	if (ret == 0 && ct == MB_CT_NEW) {
		ret = mb_ct_create(&p, dir, skb->len, x.hit ? x.rev_nat : 0, x.lb_flags);
		trace = MB_TRACE_NEW;
	}
	if (ret < 0)
		return mb_drop(skb, &p, src->ep_id, MB_DIR_EGRESS, -ret);
	mb_event_trace(skb, &p, src->ep_id, MB_DIR_EGRESS, trace);

	dst = mb_endpoint_lookup(p.daddr);
	if (!dst) {
		mb_forwarded(skb, src->ep_id, MB_DIR_EGRESS);
		if (p.reply && (p.lb_flags & MB_CT_LB_F_NODEPORT))
			return mb_fib_redirect(skb, &p);
		return TC_ACT_OK;
	}

	/* Hairpin packets did the pod's ingress conntrack above, and skip its policy. */
	if (mb_redirect_peer_usable() && !((x.lb_flags | p.lb_flags) & MB_CT_LB_F_HAIRPIN)) {
		ret = mb_ingress(skb, dst, &p, NULL);
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
	ret = mb_ingress(skb, dst, &p, NULL);
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
