/* ABI contract: mb_events, the ring buffer of datapath events read by membrane.flows; the
 * per-CPU count of events the ring had no room for; and the per-flow drop notification state. */
#pragma once

#include <membrane/common.h>

#define MB_EVENTS_MAP "mb_events"
#define MB_EVENTS_SIZE (1 << 22)	/* bytes; the loader may size it at load time */
#define MB_EVENTS_LOST_MAP "mb_events_lost"
#define MB_DROP_NOTIFY_MAP "mb_drop_notify"
#define MB_DROP_NOTIFY_MAX 16384

enum mb_event_type {
	MB_EVENT_DROP = 1,		/* a dropped packet (rate-limited per flow) */
	MB_EVENT_TRACE = 2,		/* a connection's first packet, first reply or close */
	MB_EVENT_POLICY = 3,		/* the policy verdict on a connection's first packet */
};

/* MB_EVENT_TRACE subtypes: one event per connection milestone, not per packet. */
enum mb_trace_point {
	MB_TRACE_NEW = 1,
	MB_TRACE_REPLY = 2,
	MB_TRACE_CLOSE = 3,
};

/* What the deciding entry matched, with Hubble's policy_match_type numbers. */
enum mb_policy_match {
	MB_MATCH_NONE = 0,		/* no entry: the endpoint is not enforced in this direction */
	MB_MATCH_L3_ONLY = 1,		/* the peer's identity, any port */
	MB_MATCH_L3_L4 = 2,		/* the peer's identity and the port */
	MB_MATCH_L4_ONLY = 3,		/* any identity, the port */
	MB_MATCH_ALL = 4,		/* any identity, any port */
};

enum mb_event_flags {
	MB_EVENT_F_REPLY = 1 << 0,	/* the packet travels in the connection's reply direction */
};

/* Every event has this one fixed layout, so a batch of records decodes in one pass. Addresses
 * and ports in network order; identities as the ipcache knew them at the time. */
struct mb_event {
	__u64 ktime;		/* CLOCK_BOOTTIME ns */
	__u8 type;		/* enum mb_event_type */
	__u8 subtype;		/* trace: enum mb_trace_point; policy: enum mb_verdict */
	__u8 direction;		/* enum mb_direction, at the endpoint */
	__u8 reason;		/* drop or policy: enum mb_drop_reason */
	__u32 ep_id;		/* 0: no local endpoint (a spoofed or unparsable packet) */
	__u32 ifindex;
	__u32 src_identity;
	__u32 dst_identity;
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 match;		/* policy: enum mb_policy_match */
	__u32 cookie;		/* policy and policy drops: the deciding entry's policy */
	__u32 len;		/* packet length */
	__u32 drops;		/* drops: packets of this flow dropped since its previous event */
	__u8 flags;		/* enum mb_event_flags */
	__u8 pad[7];
};

/* A dropped flow, for rate-limiting its notifications. */
struct mb_drop_notify_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 direction;
	__u8 reason;
	__u8 pad;
	__u32 ep_id;
};

struct mb_drop_notify_value {
	__u64 last_ns;		/* when the flow's last drop event was sent */
	__u32 suppressed;	/* drops since, not notified */
	__u32 pad;
};
