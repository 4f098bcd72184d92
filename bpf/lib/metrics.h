/* Per-endpoint packet/byte counters by direction, verdict and drop reason; drops also notify. */
#pragma once

#include "events.h"
#include "maps.h"

static __always_inline void mb_count(__u32 ep_id, __u8 dir, __u8 verdict, __u8 reason, __u32 len)
{
	struct mb_metrics_key key = {
		.ep_id = ep_id, .direction = dir, .verdict = verdict, .reason = reason,
	};
	struct mb_metrics_value *v, init = { .packets = 1, .bytes = len };

	v = bpf_map_lookup_elem(&mb_metrics, &key);
	if (v) {
		/* Per-CPU values: no other CPU writes this slot. */
		v->packets++;
		v->bytes += len;
		return;
	}
	bpf_map_update_elem(&mb_metrics, &key, &init, BPF_NOEXIST);
}

/* Every drop is counted exactly and notified (rate-limited per flow); p is NULL when the packet
 * could not be parsed. */
static __always_inline int mb_drop(struct __sk_buff *skb, const struct mb_pkt *p, __u32 ep_id,
				   __u8 dir, __u8 reason)
{
	mb_count(ep_id, dir, MB_VERDICT_DROPPED, reason, skb->len);
	mb_event_drop(skb, p, ep_id, dir, reason);
	return TC_ACT_SHOT;
}

static __always_inline void mb_forwarded(struct __sk_buff *skb, __u32 ep_id, __u8 dir)
{
	mb_count(ep_id, dir, MB_VERDICT_FORWARDED, MB_REASON_NONE, skb->len);
}
