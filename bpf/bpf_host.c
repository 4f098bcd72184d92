// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The node's external interface: mb_from_netdev on its tc ingress translates packets from
 * outside the node to NodePort and external-IP frontends (Maglev picks the backend, so every
 * node would pick the same one) and hands them to the backend's ingress side. Everything
 * else passes to the node's stack untouched. */

#include "common.h"
#include "conntrack.h"
#include "endpoint.h"
#include "events.h"
#include "lb.h"
#include "maps.h"
#include "metrics.h"
#include "parse.h"
#include "policy.h"

/* Same as bpf_lxc.c's, for the backend of a NodePort connection. */
static __always_inline int mb_host_ingress(struct __sk_buff *skb,
					   const struct mb_endpoint_info *dst, struct mb_pkt *p,
					   const struct mb_lb_xlate *x)
{
	__u8 trace;
	int ct = mb_ct_process(p, MB_DIR_INGRESS, skb->len, &trace);
	int ret;

	if (ct < 0)
		return ct;
	ret = mb_policy_ingress(skb, dst, p, ct);
	if (ret == 0 && ct == MB_CT_NEW) {
		ret = mb_ct_create(p, MB_DIR_INGRESS, skb->len, x->rev_nat, x->lb_flags);
		trace = MB_TRACE_NEW;
	}
	if (ret == 0)
		mb_event_trace(skb, p, dst->ep_id, MB_DIR_INGRESS, trace);
	return ret;
}

SEC("tc")
int mb_from_netdev(struct __sk_buff *skb)
{
	struct mb_endpoint_info *dst;
	struct mb_lb_xlate x = {};
	struct mb_ethhdr eth;
	struct mb_pkt p = {};
	int ret;

	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0 || eth.proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (mb_parse_ipv4(skb, &p) < 0)
		return TC_ACT_OK;	/* the node's stack judges what is not for a service */
	ret = mb_lb4_xlate(skb, &p, skb->len, 1, &x);
	if (!x.hit)
		return TC_ACT_OK;
	if (ret == -MB_DROP_NO_SERVICE) {
		mb_drop(skb, &p, 0, MB_DIR_INGRESS, MB_DROP_NO_SERVICE);
		return mb_lb4_no_backend_reply(skb);
	}
	if (ret < 0)
		return mb_drop(skb, &p, 0, MB_DIR_INGRESS, -ret);
	dst = mb_endpoint_lookup(p.daddr);
	if (!dst)
		return TC_ACT_OK;	/* a backend elsewhere: the node routes it */
	ret = mb_host_ingress(skb, dst, &p, &x);
	if (ret < 0)
		return mb_drop(skb, &p, dst->ep_id, MB_DIR_INGRESS, -ret);
	ret = mb_l3_rewrite(skb, dst);
	if (ret < 0)
		return mb_drop(skb, &p, dst->ep_id, MB_DIR_INGRESS, -ret);
	if (ret > 0)
		return TC_ACT_OK;
	mb_forwarded(skb, dst->ep_id, MB_DIR_INGRESS);
	if (mb_redirect_peer_usable())
		return bpf_redirect_peer(dst->ifindex, 0);
	return bpf_redirect(dst->ifindex, 0);
}

char _license[] SEC("license") = "Dual BSD/GPL";
