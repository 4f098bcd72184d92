/* ABI contract: node-wide configuration (mb_config) and the loader's bookkeeping (mb_meta). */
#pragma once

#include <membrane/common.h>

#define MB_CONFIG_MAP "mb_config"
#define MB_META_MAP "mb_meta"

enum mb_config_flags {
	/* bpf_redirect_peer() works here: deliver straight into the pod's namespace. */
	MB_CFG_F_REDIRECT_PEER = 1 << 0,
	/* Visibility: trace events (connection milestones) and policy verdict events. Drop events
	 * are always on. */
	MB_CFG_F_TRACE_EVENTS = 1 << 1,
	MB_CFG_F_POLICY_EVENTS = 1 << 2,
};

struct mb_node_config {
	__u32 flags;		/* enum mb_config_flags */
	__u32 drop_notify_ms;	/* at most one drop event per flow per this interval; 0: every drop */
	__u32 maglev_size;	/* M of every Maglev table (mb_lb4_maglev), a prime */
	/* Wake the events reader only once this many bytes wait in mb_events (it drains on a timer
	 * meanwhile); 0: the ring's own policy, a wake-up whenever the reader has caught up. */
	__u32 wakeup_bytes;
};

/* Never read by the programs: the loader records which object the pinned programs came from,
 * in a map because bpffs holds only BPF objects. */
struct mb_meta {
	__u8 obj_sha256[32];
};
