/* ABI contract: mb_ipcache, longest-prefix match of IP -> security identity. */
#pragma once

#include <membrane/common.h>

#define MB_IPCACHE_MAP "mb_ipcache"
#define MB_IPCACHE_MAX 65536

/* prefixlen counts the 32 bits of family+pad1 too (as Cilium's ipcache key): an IPv4 /24 has
 * prefixlen 32 + 24, so families never match each other's prefixes. */
struct mb_ipcache_key {
	__u32 prefixlen;
	__u8 family;		/* enum mb_family */
	__u8 pad1[3];
	__be32 ip4;
	__u32 pad2[3];		/* the rest of an IPv6 address */
};

#define MB_IPCACHE_PREFIX_BASE 32

struct mb_ipcache_value {
	__u32 identity;
};

/* mb_ipblock: the same keys and values, for the prefixes of Kubernetes NetworkPolicy ipBlocks.
 * Its identities match by address whatever the address's own identity is (pods included),
 * as the NetworkPolicy API requires; mb_ipcache's CIDR identities only cover addresses that
 * no endpoint or node owns, as Cilium's toCIDR does. */
#define MB_IPBLOCK_MAP "mb_ipblock"
#define MB_IPBLOCK_MAX 16384
