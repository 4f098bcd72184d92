/* Datapath events into the mb_events ring buffer (membrane/events.h): drops, rate-limited per
 * flow so that a flood cannot drown the ring; policy verdicts on new connections; and traces of
 * connection milestones (first packet, first reply, close), never one per packet. When the ring
 * is full the event is counted in mb_events_lost, so a loss is always visible. The reader is
 * woken per event or, with mb_config.wakeup_bytes, only when that much is waiting. */
#pragma once

#include "ipcache.h"
#include "maps.h"
#include "parse.h"

static __always_inline __u32 mb_config_flags(void)
{
	__u32 zero = 0;
	struct mb_node_config *cfg = bpf_map_lookup_elem(&mb_config, &zero);

	return cfg ? cfg->flags : 0;
}

/* A global function: verified once, whatever its many callers know. */
__attribute__((noinline)) int mb_event_send(struct mb_event *e)
{
	struct mb_node_config *cfg;
	__u64 *lost, wake = 0;
	__u32 zero = 0;

	if (!e)
		return 0;
	e->ktime = bpf_ktime_get_boot_ns();
	if (e->saddr || e->daddr) {
		e->src_identity = mb_peer_identity(e->saddr);
		e->dst_identity = mb_peer_identity(e->daddr);
	}
	/* A wake-up per event costs the reader a context switch per connection; with
	 * wakeup_bytes set it is woken only when that much is waiting. */
	cfg = bpf_map_lookup_elem(&mb_config, &zero);
	if (cfg && cfg->wakeup_bytes)
		wake = bpf_ringbuf_query(&mb_events, BPF_RB_AVAIL_DATA) >= cfg->wakeup_bytes ?
		       BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_output(&mb_events, e, sizeof(*e), wake) == 0)
		return 1;
	lost = bpf_map_lookup_elem(&mb_events_lost, &zero);
	if (lost)
		*lost += 1;	/* per-CPU slot */
	return 0;
}

static __always_inline void mb_event_fill(struct mb_event *e, struct __sk_buff *skb,
					  const struct mb_pkt *p, __u8 type, __u32 ep_id, __u8 dir)
{
	e->type = type;
	e->direction = dir;
	e->ep_id = ep_id;
	e->ifindex = skb->ifindex;
	e->len = skb->len;
	e->drops = 1;
	if (!p)
		return;
	e->saddr = p->saddr;
	e->daddr = p->daddr;
	e->sport = p->sport;
	e->dport = p->dport;
	e->proto = p->proto;
	e->tcp_flags = p->tcp_flags;
	e->icmp_type = p->icmp_type;
	e->cookie = p->cookie;
	e->match = p->match;
	if (p->reply)
		e->flags |= MB_EVENT_F_REPLY;
}

/* A connection milestone seen by endpoint ep_id; trace is enum mb_trace_point or 0. */
static __always_inline void mb_event_trace(struct __sk_buff *skb, const struct mb_pkt *p,
					   __u32 ep_id, __u8 dir, __u8 trace)
{
	struct mb_event e = {};

	if (!trace || !(mb_config_flags() & MB_CFG_F_TRACE_EVENTS))
		return;
	mb_event_fill(&e, skb, p, MB_EVENT_TRACE, ep_id, dir);
	e.subtype = trace;
	mb_event_send(&e);
}

/* The policy verdict on a new connection of an enforced endpoint; reason 0 when allowed. */
static __always_inline void mb_event_policy(struct __sk_buff *skb, const struct mb_pkt *p,
					    __u32 ep_id, __u8 dir, __u8 reason)
{
	struct mb_event e = {};

	if (!(mb_config_flags() & MB_CFG_F_POLICY_EVENTS))
		return;
	mb_event_fill(&e, skb, p, MB_EVENT_POLICY, ep_id, dir);
	e.subtype = reason ? MB_VERDICT_DROPPED : MB_VERDICT_FORWARDED;
	e.reason = reason;
	mb_event_send(&e);
}

/* A drop; p is NULL when the packet could not be parsed. One event per flow and interval
 * (mb_config.drop_notify_ms), carrying how many drops it stands for. */
static __always_inline void mb_event_drop(struct __sk_buff *skb, const struct mb_pkt *p,
					  __u32 ep_id, __u8 dir, __u8 reason)
{
	struct mb_drop_notify_key key = { .direction = dir, .reason = reason, .ep_id = ep_id };
	struct mb_drop_notify_value *v, init = {};
	struct mb_event e = {};
	struct mb_node_config *cfg;
	__u64 now, interval = 0;
	__u32 zero = 0, count = 1;

	cfg = bpf_map_lookup_elem(&mb_config, &zero);
	if (cfg)
		interval = (__u64)cfg->drop_notify_ms * 1000000ULL;
	if (p) {
		key.saddr = p->saddr;
		key.daddr = p->daddr;
		key.sport = p->sport;
		key.dport = p->dport;
		key.proto = p->proto;
	}
	if (interval) {
		now = bpf_ktime_get_boot_ns();
		v = bpf_map_lookup_elem(&mb_drop_notify, &key);
		if (v) {
			if (now - v->last_ns < interval) {
				__sync_fetch_and_add(&v->suppressed, 1);
				return;
			}
			/* Racing CPUs may both notify once: harmless, the counters are exact. */
			count += v->suppressed;
			v->suppressed = 0;
			v->last_ns = now;
		} else {
			init.last_ns = now;
			bpf_map_update_elem(&mb_drop_notify, &key, &init, BPF_ANY);
		}
	}
	mb_event_fill(&e, skb, p, MB_EVENT_DROP, ep_id, dir);
	if (reason != MB_DROP_POLICY && reason != MB_DROP_POLICY_DENY) {
		/* Not policy's doing: the packet may carry an earlier verdict's cookie. */
		e.cookie = 0;
		e.match = 0;
	}
	e.reason = reason;
	e.drops = count;
	mb_event_send(&e);
}
