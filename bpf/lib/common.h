/* Includes, packet header layouts and small helpers shared by every program. */
#pragma once

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include <membrane/common.h>

#define ETH_HLEN 14
#define ETH_ALEN 6
#define ETH_P_IP 0x0800
#define ETH_P_ARP 0x0806
#define ARPHRD_ETHER 1

#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8
#define ICMP_DEST_UNREACH 3
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/* Own header layouts: the distribution's <linux/ip.h> and friends drag in <asm/byteorder.h>,
 * which the BPF target does not have. */
struct mb_ethhdr {
	__u8 dst[ETH_ALEN];
	__u8 src[ETH_ALEN];
	__be16 proto;
};

struct mb_arp4 {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[ETH_ALEN];
	__be32 sip;
	__u8 tha[ETH_ALEN];
	__be32 tip;
} __attribute__((packed));

struct mb_iphdr {
	__u8 ver_ihl;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__sum16 check;
	__be32 saddr;
	__be32 daddr;
};

#define MB_IP_TTL_OFF (ETH_HLEN + 8)
#define MB_IP_CSUM_OFF (ETH_HLEN + 10)
#define MB_IP_FRAG_OFFSET_MASK 0x1fff

/* The first 14 bytes of a TCP header: enough for ports and flags. */
struct mb_tcp_head {
	__be16 source;
	__be16 dest;
	__be32 seq;
	__be32 ack_seq;
	__u8 doff;
	__u8 flags;
};

struct mb_icmp_head {
	__u8 type;
	__u8 code;
	__sum16 check;
	__be16 id;
	__be16 seq;
};

/* Byte-wise: the addresses sit at odd offsets of packed headers on the stack, where the
 * verifier refuses wider unaligned loads. */
static __always_inline int mb_mac_eq(const __u8 *a, const __u8 *b)
{
	__u8 diff = 0;

#pragma unroll
	for (int i = 0; i < ETH_ALEN; i++)
		diff |= a[i] ^ b[i];
	return diff == 0;
}

/* A 32-bit one's complement sum (bpf_csum_diff's result) folded into a header checksum. */
static __always_inline __sum16 mb_csum_fold(__s64 sum)
{
	__u32 s = (__u32)sum;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__sum16)~s;
}
