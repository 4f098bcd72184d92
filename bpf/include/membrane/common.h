/* ABI contract with Python (membrane/datapath/abi.py): constants shared by every map. No logic. */
#pragma once

#include <linux/types.h>

/* Address family of keys; values as AF_INET / AF_INET6 so they read naturally in dumps. */
enum mb_family {
	MB_FAMILY_IPV4 = 2,
	MB_FAMILY_IPV6 = 10,
};

/* Traffic direction as seen by the endpoint: ingress enters the pod, egress leaves it. */
enum mb_direction {
	MB_DIR_INGRESS = 1,
	MB_DIR_EGRESS = 2,
	MB_DIR_SERVICE = 3,	/* conntrack only: the service entry of a load-balanced connection */
};

/* Reserved security identities the datapath itself uses (Cilium's numbers). */
#define MB_IDENTITY_HOST 1
#define MB_IDENTITY_WORLD 2

enum mb_verdict {
	MB_VERDICT_FORWARDED = 1,
	MB_VERDICT_DROPPED = 2,
};

/* Drop reasons: Cilium's numbers (pkg/monitor/api/drop.go), so its docs and tools apply. */
enum mb_drop_reason {
	MB_REASON_NONE = 0,
	MB_DROP_INVALID_SMAC = 130,
	MB_DROP_INVALID_SIP = 132,
	MB_DROP_POLICY = 133,		/* policy denied (default deny): policy issue */
	MB_DROP_INVALID = 134,		/* invalid packet: truncated or malformed headers */
	MB_DROP_CT_UNKNOWN_PROTO = 137,
	MB_DROP_UNKNOWN_L3 = 139,
	MB_DROP_CT_CREATE_FAILED = 155, /* conntrack map full */
	MB_DROP_NO_SERVICE = 158,	/* no service backend: services issue */
	MB_DROP_POLICY_DENY = 181,	/* denied by an explicit deny rule: policy issue */
};
