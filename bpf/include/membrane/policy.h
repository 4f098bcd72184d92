/* ABI contract: the node's policy entries, in two maps.
 *
 * An entry says what `subject` (the local endpoint's identity) does with `peer` in `direction`
 * for a protocol and destination port. peer 0 is "any identity"; the datapath looks up the
 * peer's identity, then 0, then the peer address's ipBlock identity (Kubernetes ipBlock matches
 * pods too). For ICMP the port is the ICMP type.
 *
 * mb_policy (hash) holds exact ports, "any port of a protocol" (dport 0) and "any protocol"
 * (proto 0, dport 0): three exact-match lookups per peer identity, whose cost does not grow
 * with the number of entries. mb_policy_ranges (LPM trie) holds only port ranges (endPort) as
 * prefixes of the port: prefixlen counts subject, peer, direction and protocol
 * (MB_POLICY_RANGE_PREFIX_BASE) and then 1-15 bits of the port in network order. */
#pragma once

#include <membrane/common.h>

#define MB_POLICY_MAP "mb_policy"
#define MB_POLICY_MAX 65536
#define MB_POLICY_RANGES_MAP "mb_policy_ranges"
#define MB_POLICY_RANGES_MAX 16384

struct mb_policy_key {
	__u32 subject;
	__u32 peer;
	__u8 direction;		/* enum mb_direction */
	__u8 proto;		/* 0: any protocol */
	__be16 dport;		/* 0: any port */
};

struct mb_policy_range_key {
	__u32 prefixlen;
	__u32 subject;
	__u32 peer;
	__u8 direction;
	__u8 proto;
	__be16 dport;
};

#define MB_POLICY_RANGE_PREFIX_BASE 80	/* subject, peer, direction, proto */
#define MB_POLICY_RANGE_FULL_PREFIX 96

enum mb_policy_flags {
	MB_POLICY_F_DENY = 1 << 0,		/* an explicit deny rule: wins over every allow */
	MB_POLICY_F_DEFAULT_DENY = 1 << 1,	/* the subject is enforced in this direction:
						 * drops when nothing allows */
};

struct mb_policy_value {
	__u32 cookie;		/* the deciding policy, for flows */
	__u16 flags;		/* enum mb_policy_flags */
	__u16 pad;
};
