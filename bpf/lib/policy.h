/* Policy enforcement points. Both hooks allow everything until the policy issue lands: they
 * will look up (endpoint, peer identity from mb_ipcache, direction, proto, dport) in the policy
 * map on MB_CT_NEW, pass replies and established traffic, and return -MB_DROP_POLICY (133) or
 * -MB_DROP_POLICY_DENY (181). Return 0 to allow or a negative drop reason. */
#pragma once

#include "conntrack.h"
#include "maps.h"

static __always_inline int mb_policy_egress(const struct mb_endpoint_info *src,
					    const struct mb_pkt *p, int ct_status)
{
	(void)src;
	(void)p;
	(void)ct_status;
	return 0;
}

static __always_inline int mb_policy_ingress(const struct mb_endpoint_info *dst,
					     const struct mb_pkt *p, int ct_status)
{
	(void)dst;
	(void)p;
	(void)ct_status;
	return 0;
}
