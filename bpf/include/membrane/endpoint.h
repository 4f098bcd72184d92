/* ABI contract: mb_endpoints, the endpoints local to this node, keyed by address. */
#pragma once

#include <membrane/common.h>

#define MB_ENDPOINTS_MAP "mb_endpoints"
#define MB_ENDPOINTS_MAX 16384

/* Room for an IPv6 address: ip4 is the first word, pad1 the other three (zero for IPv4). */
struct mb_endpoint_key {
	__be32 ip4;
	__u32 pad1[3];
	__u8 family;		/* enum mb_family */
	__u8 pad2[3];
};

struct mb_endpoint_info {
	__u32 ifindex;		/* host-side veth, in the node's namespace */
	__u16 ep_id;
	__u16 flags;		/* reserved for per-endpoint datapath flags, 0 today */
	__u32 identity;
	__u8 mac[6];		/* the pod's eth0 */
	__u8 node_mac[6];	/* the host-side veth: the pod's gateway MAC */
};
