/* Identity of an address, from the ipcache (membrane/ipcache.h). */
#pragma once

#include "maps.h"

static __always_inline __u32 mb_ipcache_identity(void *map, __be32 addr)
{
	struct mb_ipcache_key key = {
		.prefixlen = MB_IPCACHE_PREFIX_BASE + 32, .family = MB_FAMILY_IPV4, .ip4 = addr,
	};
	struct mb_ipcache_value *v = bpf_map_lookup_elem(map, &key);

	return v ? v->identity : 0;
}

/* Peer identity by address: an endpoint's, the host's, a CIDR's; world when none is known. */
static __always_inline __u32 mb_peer_identity(__be32 addr)
{
	__u32 id = mb_ipcache_identity(&mb_ipcache, addr);

	return id ? id : MB_IDENTITY_WORLD;
}
