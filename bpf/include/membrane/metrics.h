/* ABI contract: mb_metrics, per-CPU packet/byte counters; userspace sums the CPUs. */
#pragma once

#include <membrane/common.h>

#define MB_METRICS_MAP "mb_metrics"
#define MB_METRICS_MAX 65536

/* ep_id 0: the packet could not be tied to a local endpoint (e.g. a spoofed source). */
struct mb_metrics_key {
	__u32 ep_id;
	__u8 direction;		/* enum mb_direction */
	__u8 verdict;		/* enum mb_verdict */
	__u8 reason;		/* enum mb_drop_reason, 0 when forwarded */
	__u8 pad;
};

struct mb_metrics_value {
	__u64 packets;
	__u64 bytes;
};
