/* ABI contract: mb_policy, the node's policy entries, longest-prefix match on the port. */
#pragma once

#include <membrane/common.h>

#define MB_POLICY_MAP "mb_policy"
#define MB_POLICY_MAX 65536

/* One entry: what `subject` (the local endpoint's identity) does with `peer` in `direction`.
 * peer 0 is "any identity"; the datapath looks up the peer's identity, then 0, then the peer
 * address's ipBlock identity (Kubernetes ipBlock matches pods too). Within one lookup the
 * longest prefix wins: prefixlen counts subject+peer+direction (MB_POLICY_PREFIX_BASE),
 * then 8 bits of protocol (0 = any protocol), then up to 16 bits of the destination port
 * (network order), so a port range is a few prefixes. For ICMP the port is the ICMP type. */
struct mb_policy_key {
	__u32 prefixlen;
	__u32 subject;
	__u32 peer;
	__u8 direction;		/* enum mb_direction */
	__u8 proto;		/* 0: any protocol */
	__be16 dport;
};

#define MB_POLICY_PREFIX_BASE 72	/* subject, peer, direction */
#define MB_POLICY_FULL_PREFIX 96	/* ... and protocol and port */

enum mb_policy_flags {
	MB_POLICY_F_DENY = 1 << 0,		/* an explicit deny rule: wins over every allow */
	MB_POLICY_F_DEFAULT_DENY = 1 << 1,	/* the subject is enforced in this direction:
						 * matches when nothing else does */
};

struct mb_policy_value {
	__u32 cookie;		/* the deciding policy, for flows */
	__u16 flags;		/* enum mb_policy_flags */
	__u16 pad;
};
