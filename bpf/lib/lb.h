/* Service load-balancing (membrane/lb.h): frontend lookup, backend selection per connection,
 * DNAT of the client's packets and reverse translation of the replies, and the "no backend"
 * answer. The backend a connection uses lives in its MB_DIR_SERVICE conntrack entry, keyed by
 * the frontend the client addressed, so every later packet goes to the same backend whatever
 * happens to the service's slots; replies find the frontend through the rev_nat index of the
 * translated connection's conntrack entry (Cilium's CT_SERVICE + rev_nat_index design). */
#pragma once

#include "conntrack.h"
#include "maps.h"
#include "parse.h"

#define MB_AF_INET 2

struct mb_lb_xlate {
	__u32 backend_id;
	__u16 rev_nat;
	__u8 hit;		/* the destination was a frontend */
	__u8 lb_flags;		/* enum mb_ct_lb_flags */
	__u8 svc_flags;		/* enum mb_lb_flags of the frontend */
	__u8 pad[3];
};

static __always_inline __u32 mb_mix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* The connection's hash for Maglev: the same 5-tuple picks the same backend on every node. */
static __always_inline __u32 mb_lb4_hash(const struct mb_pkt *p)
{
	__u32 h = mb_mix32(p->saddr ^ 0x9e3779b9);

	h = mb_mix32(h ^ p->daddr);
	h = mb_mix32(h ^ (((__u32)p->sport << 16) | p->dport));
	return mb_mix32(h ^ p->proto);
}

static __always_inline struct mb_lb4_service *mb_lb4_lookup(__be32 addr, __be16 port, __u8 proto)
{
	struct mb_lb4_key key = { .address = addr, .dport = port, .proto = proto };

	return bpf_map_lookup_elem(&mb_lb4_services, &key);
}

static __always_inline struct mb_lb4_backend *mb_lb4_backend_of(__u32 id)
{
	return bpf_map_lookup_elem(&mb_lb4_backends, &id);
}

/* A new connection's backend id, 0 when the frontend has no active backend. client/hash are
 * the connection's (affinity is per client address). */
static __always_inline __u32 mb_lb4_select(__be32 addr, __be16 port, __u8 proto,
					   const struct mb_lb4_service *svc, __be32 client,
					   __u32 hash, __u32 now)
{
	struct mb_lb4_affinity_key akey = { .client = client, .rev_nat = svc->rev_nat };
	struct mb_lb4_affinity_value aval = {}, *a;
	struct mb_lb4_backend *b;
	__u32 id = 0, zero = 0;

	if (svc->count == 0)
		return 0;
	if (svc->flags & MB_LB_F_AFFINITY) {
		a = bpf_map_lookup_elem(&mb_lb4_affinity, &akey);
		if (a && now - a->last_used <= svc->affinity_timeout) {
			b = mb_lb4_backend_of(a->backend_id);
			if (b && b->state == MB_LB_BACKEND_ACTIVE)
				id = a->backend_id;
		}
	}
	if (!id && (svc->flags & MB_LB_F_MAGLEV)) {
		struct mb_node_config *cfg = bpf_map_lookup_elem(&mb_config, &zero);
		struct mb_lb4_maglev_key mkey = { .rev_nat = svc->rev_nat };
		struct mb_lb4_maglev_value *m;

		if (cfg && cfg->maglev_size) {
			mkey.index = hash % cfg->maglev_size;
			m = bpf_map_lookup_elem(&mb_lb4_maglev, &mkey);
			if (m)
				id = m->backend_id;
		}
	} else if (!id) {
		struct mb_lb4_key key = { .address = addr, .dport = port, .proto = proto };
		struct mb_lb4_service *slot;

		key.slot = (bpf_get_prandom_u32() % svc->count) + 1;
		slot = bpf_map_lookup_elem(&mb_lb4_services, &key);
		if (slot)
			id = slot->backend_id;
	}
	if (id && (svc->flags & MB_LB_F_AFFINITY)) {
		aval.backend_id = id;
		aval.last_used = now;
		bpf_map_update_elem(&mb_lb4_affinity, &akey, &aval, BPF_ANY);
	}
	return id;
}

/* Rewrite the source (src != 0) or destination address and port, fixing both checksums (the
 * helpers handle CHECKSUM_PARTIAL skbs from veths; a UDP checksum of 0 stays 0). */
static __always_inline int mb_lb4_rewrite(struct __sk_buff *skb, struct mb_pkt *p, int src,
					  __be32 addr, __be16 port)
{
	__be32 old_addr = src ? p->saddr : p->daddr;
	__be16 old_port = src ? p->sport : p->dport;
	__u32 csum = p->l4_off + (p->proto == IPPROTO_TCP ? 16 : 6);
	__u64 mangled = p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (old_addr != addr) {
		if (bpf_l4_csum_replace(skb, csum, old_addr, addr, mangled | BPF_F_PSEUDO_HDR | 4) < 0 ||
		    bpf_l3_csum_replace(skb, MB_IP_CSUM_OFF, old_addr, addr, 4) < 0 ||
		    bpf_skb_store_bytes(skb, ETH_HLEN + (src ? 12 : 16), &addr, 4, 0) < 0)
			return -MB_DROP_INVALID;
	}
	if (old_port != port) {
		if (bpf_l4_csum_replace(skb, csum, old_port, port, mangled | 2) < 0 ||
		    bpf_skb_store_bytes(skb, p->l4_off + (src ? 0 : 2), &port, 2, 0) < 0)
			return -MB_DROP_INVALID;
	}
	if (src) {
		p->saddr = addr;
		p->sport = port;
	} else {
		p->daddr = addr;
		p->dport = port;
	}
	return 0;
}

/* Translate a client's packet to a frontend: 0 (x->hit says whether it was one) or a negative
 * drop reason (-MB_DROP_NO_SERVICE: no backend). external: the packet entered the node from
 * outside, where only NodePort and external-IP frontends exist. */
static __always_inline int mb_lb4_xlate(struct __sk_buff *skb, struct mb_pkt *p, __u32 len,
					int external, struct mb_lb_xlate *x)
{
	struct mb_ct_key ckey = {};
	struct mb_ct_entry entry = {}, *e;
	struct mb_lb4_service *svc;
	struct mb_lb4_backend *b = NULL;
	__be32 hairpin = bpf_htonl(MB_LB_HAIRPIN_IP);
	__u32 now, id = 0;
	int ret;

	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
		return 0;
	svc = mb_lb4_lookup(p->daddr, p->dport, p->proto);
	if (!svc)
		return 0;
	if (external && !(svc->flags & (MB_LB_F_NODEPORT | MB_LB_F_EXTERNAL)))
		return 0;
	x->hit = 1;
	x->rev_nat = svc->rev_nat;
	x->svc_flags = svc->flags;

	now = mb_ct_now();
	mb_ct_key_of(&ckey, p, MB_DIR_SERVICE);
	e = mb_ct_find(&ckey, now);
	if (e && (e->flags & MB_CT_F_CLOSING) && p->proto == IPPROTO_TCP &&
	    (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
		e = NULL;	/* a new connection on a closing 5-tuple picks again */
	if (e) {
		id = e->backend_id;
		b = mb_lb4_backend_of(id);
		if (b)
			mb_ct_touch(e, p, 0, len, now);
	}
	if (!b) {
		/* New, or its backend was removed: pick one (terminating backends have no slot). */
		id = mb_lb4_select(p->daddr, p->dport, p->proto, svc, p->saddr, mb_lb4_hash(p),
				   now);
		b = id ? mb_lb4_backend_of(id) : NULL;
		if (!b)
			return -MB_DROP_NO_SERVICE;
		entry.tx_packets = 1;
		entry.tx_bytes = len;
		entry.flags = mb_ct_tcp_flags(p, 0);
		entry.lifetime = now + mb_ct_timeout(p->proto, entry.flags);
		entry.backend_id = id;
		entry.rev_nat = svc->rev_nat;
		if (bpf_map_update_elem(&mb_ct, &ckey, &entry, BPF_ANY) < 0)
			return -MB_DROP_CT_CREATE_FAILED;
	}
	x->backend_id = id;
	if (external)
		x->lb_flags |= MB_CT_LB_F_NODEPORT;
	if (b->address == p->saddr) {
		/* Hairpin: the pod reaches itself. A packet from its own address would be a
		 * martian to its stack, so it comes from MB_LB_HAIRPIN_IP instead. */
		x->lb_flags |= MB_CT_LB_F_HAIRPIN;
		ret = mb_lb4_rewrite(skb, p, 1, hairpin, p->sport);
		if (ret < 0)
			return ret;
	}
	return mb_lb4_rewrite(skb, p, 0, b->address, b->port);
}

/* A reply of a translated connection (p->rev_nat from its conntrack entry): back to the
 * frontend's address and port; for hairpin also back to the pod's own address. 0 or a
 * negative drop reason. */
static __always_inline int mb_lb4_rev_nat(struct __sk_buff *skb, struct mb_pkt *p)
{
	struct mb_lb4_reverse_nat *r;
	__u32 idx = p->rev_nat;
	int ret;

	if (!idx || !p->reply)
		return 0;
	r = bpf_map_lookup_elem(&mb_lb4_reverse_nat, &idx);
	if (!r)
		return -MB_DROP_NO_SERVICE;	/* the frontend is gone */
	if (p->lb_flags & MB_CT_LB_F_HAIRPIN) {
		ret = mb_lb4_rewrite(skb, p, 0, p->saddr, p->dport);
		if (ret < 0)
			return ret;
	}
	return mb_lb4_rewrite(skb, p, 1, r->address, r->port);
}

/* The answer to a client of a frontend without backends: the packet becomes an ICMP port
 * unreachable from the frontend back to the client, which fails at once (ECONNREFUSED for TCP
 * and connected UDP) instead of retrying until its timeout. Returns a tc action. The caller
 * has accounted the drop (158). */
static __always_inline int mb_lb4_no_backend_reply(struct __sk_buff *skb)
{
	struct {
		struct mb_icmp_head icmp;
		struct mb_iphdr inner;
		__u8 inner_l4[8];
	} body = {};
	struct mb_iphdr ip = {};
	struct mb_ethhdr eth;
	__u8 mac[ETH_ALEN];
	__s64 sum;

	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0 ||
	    bpf_skb_load_bytes(skb, ETH_HLEN, &body.inner, sizeof(body.inner)) < 0 ||
	    body.inner.ver_ihl != 0x45 ||
	    bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(body.inner), body.inner_l4, 8) < 0)
		return TC_ACT_SHOT;
	__builtin_memcpy(mac, eth.dst, ETH_ALEN);
	__builtin_memcpy(eth.dst, eth.src, ETH_ALEN);
	__builtin_memcpy(eth.src, mac, ETH_ALEN);
	ip.ver_ihl = 0x45;
	ip.tot_len = bpf_htons(sizeof(ip) + sizeof(body));
	ip.ttl = 64;
	ip.protocol = IPPROTO_ICMP;
	ip.saddr = body.inner.daddr;
	ip.daddr = body.inner.saddr;
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&ip, sizeof(ip), 0);
	if (sum < 0)
		return TC_ACT_SHOT;
	ip.check = mb_csum_fold(sum);
	body.icmp.type = ICMP_DEST_UNREACH;
	body.icmp.code = 3;	/* port unreachable */
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&body, sizeof(body), 0);
	if (sum < 0)
		return TC_ACT_SHOT;
	body.icmp.check = mb_csum_fold(sum);
	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(ip) + sizeof(body), 0) < 0 ||
	    bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, &ip, sizeof(ip), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(ip), &body, sizeof(body), 0) < 0)
		return TC_ACT_SHOT;
	/* Out of the interface it came in by: back to the client. */
	return bpf_redirect(skb->ifindex, 0);
}

/* Send a packet the way the node's routing table says, without its stack (a NodePort reply
 * leaving from a node address would be refused there as a martian). */
static __always_inline int mb_fib_redirect(struct __sk_buff *skb, const struct mb_pkt *p)
{
	struct bpf_fib_lookup fib = {};
	long rc;

	fib.family = MB_AF_INET;
	fib.ipv4_src = p->saddr;
	fib.ipv4_dst = p->daddr;
	fib.l4_protocol = p->proto;
	fib.tot_len = skb->len - ETH_HLEN;
	fib.ifindex = skb->ifindex;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		if (bpf_skb_store_bytes(skb, 0, fib.dmac, ETH_ALEN, 0) < 0 ||
		    bpf_skb_store_bytes(skb, ETH_ALEN, fib.smac, ETH_ALEN, 0) < 0)
			return TC_ACT_SHOT;
		return bpf_redirect(fib.ifindex, 0);
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return bpf_redirect_neigh(fib.ifindex, NULL, 0, 0);
	return TC_ACT_OK;
}
