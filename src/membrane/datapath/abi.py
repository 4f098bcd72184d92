"""ctypes mirrors of the ABI contract in bpf/include/membrane/*.h, with the C field names.

Every struct is registered in `ABI_STRUCTS` and every shared constant in `ABI_CONSTANTS`; a test
compiles `_Static_assert`s of sizes, offsets and values against the headers, so drift fails.
Fields hold the kernel's byte order (addresses and ports in network order); the map modules
convert to and from host-order domain values.
"""

from __future__ import annotations

import ctypes
from ctypes import Structure, c_uint8, c_uint16, c_uint32, c_uint64
from enum import IntEnum


class Family(IntEnum):
    IPV4 = 2
    IPV6 = 10


class Direction(IntEnum):
    INGRESS = 1
    EGRESS = 2
    SERVICE = 3


class Verdict(IntEnum):
    FORWARDED = 1
    DROPPED = 2


class DropReason(IntEnum):
    """enum mb_drop_reason: Cilium's drop reason numbers."""

    NONE = 0
    INVALID_SMAC = 130
    INVALID_SIP = 132
    POLICY = 133
    INVALID = 134
    CT_UNKNOWN_PROTO = 137
    UNKNOWN_L3 = 139
    CT_CREATE_FAILED = 155
    NO_SERVICE = 158
    POLICY_DENY = 181


DROP_REASON_DESC: dict[int, str] = {
    0: "",
    130: "Invalid source mac",
    132: "Invalid source ip",
    133: "Policy denied",
    134: "Invalid packet",
    137: "CT: Unknown L4 protocol",
    139: "Unknown L3 target address",
    155: "CT: Map insertion failed",
    158: "Service backend not found",
    181: "Policy denied by denylist",
}
"""Cilium's descriptions, for `membrane monitor` and compact flows."""

HUBBLE_DROP_REASON: dict[int, str] = {
    130: "INVALID_SOURCE_MAC",
    132: "INVALID_SOURCE_IP",
    133: "POLICY_DENIED",
    134: "INVALID_PACKET_DROPPED",
    137: "CT_UNKNOWN_L4_PROTOCOL",
    139: "UNKNOWN_L3_TARGET_ADDRESS",
    155: "CT_MAP_INSERTION_FAILED",
    158: "SERVICE_BACKEND_NOT_FOUND",
    181: "POLICY_DENY",
}
"""Hubble's flow.DropReason enum names, which its JSON puts in `drop_reason_desc`."""


class EventType(IntEnum):
    """enum mb_event_type (membrane/events.h)."""

    DROP = 1
    TRACE = 2
    POLICY = 3


class TracePoint(IntEnum):
    """enum mb_trace_point: a connection milestone."""

    NEW = 1
    REPLY = 2
    CLOSE = 3


class PolicyMatch(IntEnum):
    """enum mb_policy_match, Hubble's policy_match_type numbers."""

    NONE = 0
    L3_ONLY = 1
    L3_L4 = 2
    L4_ONLY = 3
    ALL = 4


EVENT_F_REPLY = 1 << 0
EVENTS_SIZE = 1 << 22
DROP_NOTIFY_MAX = 16384


class CTFlags(IntEnum):
    TX_FIN = 1 << 0
    TX_RST = 1 << 1
    RX_FIN = 1 << 2
    RX_RST = 1 << 3
    SEEN_NON_SYN = 1 << 4
    SEEN_REPLY = 1 << 5


CT_F_CLOSING = CTFlags.TX_FIN | CTFlags.TX_RST | CTFlags.RX_FIN | CTFlags.RX_RST
CFG_F_REDIRECT_PEER = 1 << 0
CFG_F_TRACE_EVENTS = 1 << 1
CFG_F_POLICY_EVENTS = 1 << 2

CT_SYN_TIMEOUT = 60
CT_ESTABLISHED_TIMEOUT = 21600
CT_CLOSE_TIMEOUT = 10
CT_DATAGRAM_TIMEOUT = 60
IPCACHE_PREFIX_BASE = 32
POLICY_RANGE_PREFIX_BASE = 80
POLICY_RANGE_FULL_PREFIX = 96
POLICY_F_DENY = 1 << 0
POLICY_F_DEFAULT_DENY = 1 << 1
IDENTITY_HOST = 1
IDENTITY_WORLD = 2

ENDPOINTS_MAX = 16384
IPCACHE_MAX = 65536
CT_MAX = 65536
IPBLOCK_MAX = 16384
POLICY_MAX = 65536
POLICY_RANGES_MAX = 16384
METRICS_MAX = 65536

LB4_SERVICES_MAX = 262144
LB4_BACKENDS_MAX = 65536
LB4_REVNAT_MAX = 65536
LB4_AFFINITY_MAX = 65536
LB4_MAGLEV_MAX = 1048576
LB4_REVERSE_SK_MAX = 65536
LB_HAIRPIN_IP = 0xA9FE2A01
LB_F_AFFINITY = 1 << 0
LB_F_MAGLEV = 1 << 1
LB_F_NODEPORT = 1 << 2
LB_F_EXTERNAL = 1 << 3
LB_BACKEND_ACTIVE = 0
LB_BACKEND_TERMINATING = 1
CT_LB_F_HAIRPIN = 1 << 0
CT_LB_F_NODEPORT = 1 << 1


class EndpointKey(Structure):
    """struct mb_endpoint_key (membrane/endpoint.h)."""

    _fields_ = [
        ("ip4", c_uint32),
        ("pad1", c_uint32 * 3),
        ("family", c_uint8),
        ("pad2", c_uint8 * 3),
    ]


class EndpointInfo(Structure):
    """struct mb_endpoint_info (membrane/endpoint.h)."""

    _fields_ = [
        ("ifindex", c_uint32),
        ("ep_id", c_uint16),
        ("flags", c_uint16),
        ("identity", c_uint32),
        ("mac", c_uint8 * 6),
        ("node_mac", c_uint8 * 6),
    ]


class IPCacheKey(Structure):
    """struct mb_ipcache_key (membrane/ipcache.h)."""

    _fields_ = [
        ("prefixlen", c_uint32),
        ("family", c_uint8),
        ("pad1", c_uint8 * 3),
        ("ip4", c_uint32),
        ("pad2", c_uint32 * 3),
    ]


class IPCacheValue(Structure):
    """struct mb_ipcache_value (membrane/ipcache.h)."""

    _fields_ = [("identity", c_uint32)]


class PolicyKey(Structure):
    """struct mb_policy_key (membrane/policy.h)."""

    _fields_ = [
        ("subject", c_uint32),
        ("peer", c_uint32),
        ("direction", c_uint8),
        ("proto", c_uint8),
        ("dport", c_uint16),
    ]


class PolicyRangeKey(Structure):
    """struct mb_policy_range_key (membrane/policy.h)."""

    _fields_ = [
        ("prefixlen", c_uint32),
        ("subject", c_uint32),
        ("peer", c_uint32),
        ("direction", c_uint8),
        ("proto", c_uint8),
        ("dport", c_uint16),
    ]


class PolicyValue(Structure):
    """struct mb_policy_value (membrane/policy.h)."""

    _fields_ = [("cookie", c_uint32), ("flags", c_uint16), ("pad", c_uint16)]


class CTKey(Structure):
    """struct mb_ct_key (membrane/conntrack.h)."""

    _fields_ = [
        ("saddr", c_uint32),
        ("daddr", c_uint32),
        ("sport", c_uint16),
        ("dport", c_uint16),
        ("proto", c_uint8),
        ("direction", c_uint8),
        ("family", c_uint8),
        ("pad", c_uint8),
    ]


class CTEntryC(Structure):
    """struct mb_ct_entry (membrane/conntrack.h)."""

    _fields_ = [
        ("tx_packets", c_uint64),
        ("tx_bytes", c_uint64),
        ("rx_packets", c_uint64),
        ("rx_bytes", c_uint64),
        ("lifetime", c_uint32),
        ("flags", c_uint16),
        ("rev_nat", c_uint16),
        ("backend_id", c_uint32),
        ("lb_flags", c_uint8),
        ("pad", c_uint8 * 3),
    ]


class MetricsKey(Structure):
    """struct mb_metrics_key (membrane/metrics.h)."""

    _fields_ = [
        ("ep_id", c_uint32),
        ("direction", c_uint8),
        ("verdict", c_uint8),
        ("reason", c_uint8),
        ("pad", c_uint8),
    ]


class MetricsValue(Structure):
    """struct mb_metrics_value (membrane/metrics.h)."""

    _fields_ = [("packets", c_uint64), ("bytes", c_uint64)]


class NodeConfig(Structure):
    """struct mb_node_config (membrane/config.h)."""

    _fields_ = [("flags", c_uint32), ("drop_notify_ms", c_uint32), ("maglev_size", c_uint32),
                ("wakeup_bytes", c_uint32)]


class EventC(Structure):
    """struct mb_event (membrane/events.h). membrane.datapath.events decodes it with `struct`
    for speed; the layout test keeps both in step with the header."""

    _fields_ = [
        ("ktime", c_uint64),
        ("type", c_uint8),
        ("subtype", c_uint8),
        ("direction", c_uint8),
        ("reason", c_uint8),
        ("ep_id", c_uint32),
        ("ifindex", c_uint32),
        ("src_identity", c_uint32),
        ("dst_identity", c_uint32),
        ("saddr", c_uint32),
        ("daddr", c_uint32),
        ("sport", c_uint16),
        ("dport", c_uint16),
        ("proto", c_uint8),
        ("tcp_flags", c_uint8),
        ("icmp_type", c_uint8),
        ("match", c_uint8),
        ("cookie", c_uint32),
        ("len", c_uint32),
        ("drops", c_uint32),
        ("flags", c_uint8),
        ("pad", c_uint8 * 7),
    ]


class DropNotifyKey(Structure):
    """struct mb_drop_notify_key (membrane/events.h)."""

    _fields_ = [
        ("saddr", c_uint32),
        ("daddr", c_uint32),
        ("sport", c_uint16),
        ("dport", c_uint16),
        ("proto", c_uint8),
        ("direction", c_uint8),
        ("reason", c_uint8),
        ("pad", c_uint8),
        ("ep_id", c_uint32),
    ]


class DropNotifyValue(Structure):
    """struct mb_drop_notify_value (membrane/events.h)."""

    _fields_ = [("last_ns", c_uint64), ("suppressed", c_uint32), ("pad", c_uint32)]


class Meta(Structure):
    """struct mb_meta (membrane/config.h)."""

    _fields_ = [("obj_sha256", c_uint8 * 32)]


class SkBuff(Structure):
    """struct __sk_buff (linux/bpf.h), the context of tc programs in BPF_PROG_TEST_RUN."""

    _fields_ = [
        ("len", c_uint32),
        ("pkt_type", c_uint32),
        ("mark", c_uint32),
        ("queue_mapping", c_uint32),
        ("protocol", c_uint32),
        ("vlan_present", c_uint32),
        ("vlan_tci", c_uint32),
        ("vlan_proto", c_uint32),
        ("priority", c_uint32),
        ("ingress_ifindex", c_uint32),
        ("ifindex", c_uint32),
        ("tc_index", c_uint32),
        ("cb", c_uint32 * 5),
        ("hash", c_uint32),
        ("tc_classid", c_uint32),
        ("data", c_uint32),
        ("data_end", c_uint32),
        ("napi_id", c_uint32),
        ("family", c_uint32),
        ("remote_ip4", c_uint32),
        ("local_ip4", c_uint32),
        ("remote_ip6", c_uint32 * 4),
        ("local_ip6", c_uint32 * 4),
        ("remote_port", c_uint32),
        ("local_port", c_uint32),
        ("data_meta", c_uint32),
        ("flow_keys", c_uint64),
        ("tstamp", c_uint64),
        ("wire_len", c_uint32),
        ("gso_segs", c_uint32),
        ("sk", c_uint64),
        ("gso_size", c_uint32),
        ("tstamp_type", c_uint8),
        ("_pad", c_uint8 * 3),
        ("hwtstamp", c_uint64),
    ]


class LB4Key(Structure):
    """struct mb_lb4_key (membrane/lb.h)."""

    _fields_ = [("address", c_uint32), ("dport", c_uint16), ("slot", c_uint16),
                ("proto", c_uint8), ("scope", c_uint8), ("pad", c_uint8 * 2)]


class LB4Service(Structure):
    """struct mb_lb4_service (membrane/lb.h)."""

    _fields_ = [("backend_id", c_uint32), ("count", c_uint16), ("rev_nat", c_uint16),
                ("affinity_timeout", c_uint32), ("flags", c_uint8), ("pad", c_uint8 * 3)]


class LB4Backend(Structure):
    """struct mb_lb4_backend (membrane/lb.h)."""

    _fields_ = [("address", c_uint32), ("port", c_uint16), ("proto", c_uint8),
                ("state", c_uint8)]


class LB4ReverseNat(Structure):
    """struct mb_lb4_reverse_nat (membrane/lb.h)."""

    _fields_ = [("address", c_uint32), ("port", c_uint16), ("pad", c_uint16)]


class LB4AffinityKey(Structure):
    """struct mb_lb4_affinity_key (membrane/lb.h)."""

    _fields_ = [("client", c_uint32), ("rev_nat", c_uint16), ("pad", c_uint16)]


class LB4AffinityValue(Structure):
    """struct mb_lb4_affinity_value (membrane/lb.h)."""

    _fields_ = [("backend_id", c_uint32), ("last_used", c_uint32)]


class LB4MaglevKey(Structure):
    """struct mb_lb4_maglev_key (membrane/lb.h)."""

    _fields_ = [("rev_nat", c_uint32), ("index", c_uint32)]


class LB4MaglevValue(Structure):
    """struct mb_lb4_maglev_value (membrane/lb.h)."""

    _fields_ = [("backend_id", c_uint32)]


class LB4SockKey(Structure):
    """struct mb_lb4_sock_key (membrane/lb.h)."""

    _fields_ = [("cookie", ctypes.c_uint64), ("address", c_uint32), ("port", c_uint16),
                ("pad", c_uint16)]


class LB4SockValue(Structure):
    """struct mb_lb4_sock_value (membrane/lb.h)."""

    _fields_ = [("address", c_uint32), ("port", c_uint16), ("rev_nat", c_uint16)]


class U32Key(Structure):
    """A bare __u32 key (backend ids, rev_nat indexes)."""

    _fields_ = [("id", c_uint32)]


ABI_STRUCTS: dict[str, type[Structure]] = {
    "struct mb_lb4_key": LB4Key,
    "struct mb_lb4_service": LB4Service,
    "struct mb_lb4_backend": LB4Backend,
    "struct mb_lb4_reverse_nat": LB4ReverseNat,
    "struct mb_lb4_affinity_key": LB4AffinityKey,
    "struct mb_lb4_affinity_value": LB4AffinityValue,
    "struct mb_lb4_maglev_key": LB4MaglevKey,
    "struct mb_lb4_maglev_value": LB4MaglevValue,
    "struct mb_lb4_sock_key": LB4SockKey,
    "struct mb_lb4_sock_value": LB4SockValue,
    "struct mb_endpoint_key": EndpointKey,
    "struct mb_endpoint_info": EndpointInfo,
    "struct mb_ipcache_key": IPCacheKey,
    "struct mb_ipcache_value": IPCacheValue,
    "struct mb_policy_key": PolicyKey,
    "struct mb_policy_range_key": PolicyRangeKey,
    "struct mb_policy_value": PolicyValue,
    "struct mb_ct_key": CTKey,
    "struct mb_ct_entry": CTEntryC,
    "struct mb_metrics_key": MetricsKey,
    "struct mb_metrics_value": MetricsValue,
    "struct mb_node_config": NodeConfig,
    "struct mb_meta": Meta,
    "struct mb_event": EventC,
    "struct mb_drop_notify_key": DropNotifyKey,
    "struct mb_drop_notify_value": DropNotifyValue,
}

ABI_CONSTANTS: dict[str, int] = {
    **{f"MB_FAMILY_{m.name}": m.value for m in Family},
    **{f"MB_DIR_{m.name}": m.value for m in Direction},
    **{f"MB_VERDICT_{m.name}": m.value for m in Verdict},
    **{f"MB_DROP_{m.name}": m.value for m in DropReason if m is not DropReason.NONE},
    "MB_REASON_NONE": DropReason.NONE.value,
    **{f"MB_CT_F_{m.name}": m.value for m in CTFlags},
    "MB_CT_F_CLOSING": int(CT_F_CLOSING),
    "MB_CFG_F_REDIRECT_PEER": CFG_F_REDIRECT_PEER,
    "MB_CFG_F_TRACE_EVENTS": CFG_F_TRACE_EVENTS,
    "MB_CFG_F_POLICY_EVENTS": CFG_F_POLICY_EVENTS,
    **{f"MB_EVENT_{m.name}": m.value for m in EventType},
    **{f"MB_TRACE_{m.name}": m.value for m in TracePoint},
    **{f"MB_MATCH_{m.name}": m.value for m in PolicyMatch},
    "MB_EVENT_F_REPLY": EVENT_F_REPLY,
    "MB_EVENTS_SIZE": EVENTS_SIZE,
    "MB_DROP_NOTIFY_MAX": DROP_NOTIFY_MAX,
    "MB_CT_SYN_TIMEOUT": CT_SYN_TIMEOUT,
    "MB_CT_ESTABLISHED_TIMEOUT": CT_ESTABLISHED_TIMEOUT,
    "MB_CT_CLOSE_TIMEOUT": CT_CLOSE_TIMEOUT,
    "MB_CT_DATAGRAM_TIMEOUT": CT_DATAGRAM_TIMEOUT,
    "MB_IPCACHE_PREFIX_BASE": IPCACHE_PREFIX_BASE,
    "MB_POLICY_RANGE_PREFIX_BASE": POLICY_RANGE_PREFIX_BASE,
    "MB_POLICY_RANGE_FULL_PREFIX": POLICY_RANGE_FULL_PREFIX,
    "MB_POLICY_RANGES_MAX": POLICY_RANGES_MAX,
    "MB_POLICY_F_DENY": POLICY_F_DENY,
    "MB_POLICY_F_DEFAULT_DENY": POLICY_F_DEFAULT_DENY,
    "MB_IDENTITY_HOST": IDENTITY_HOST,
    "MB_IDENTITY_WORLD": IDENTITY_WORLD,
    "MB_IPBLOCK_MAX": IPBLOCK_MAX,
    "MB_POLICY_MAX": POLICY_MAX,
    "MB_ENDPOINTS_MAX": ENDPOINTS_MAX,
    "MB_IPCACHE_MAX": IPCACHE_MAX,
    "MB_CT_MAX": CT_MAX,
    "MB_METRICS_MAX": METRICS_MAX,
    "MB_LB4_SERVICES_MAX": LB4_SERVICES_MAX,
    "MB_LB4_BACKENDS_MAX": LB4_BACKENDS_MAX,
    "MB_LB4_REVNAT_MAX": LB4_REVNAT_MAX,
    "MB_LB4_AFFINITY_MAX": LB4_AFFINITY_MAX,
    "MB_LB4_MAGLEV_MAX": LB4_MAGLEV_MAX,
    "MB_LB4_REVERSE_SK_MAX": LB4_REVERSE_SK_MAX,
    "MB_LB_HAIRPIN_IP": LB_HAIRPIN_IP,
    "MB_LB_F_AFFINITY": LB_F_AFFINITY,
    "MB_LB_F_MAGLEV": LB_F_MAGLEV,
    "MB_LB_F_NODEPORT": LB_F_NODEPORT,
    "MB_LB_F_EXTERNAL": LB_F_EXTERNAL,
    "MB_LB_BACKEND_ACTIVE": LB_BACKEND_ACTIVE,
    "MB_LB_BACKEND_TERMINATING": LB_BACKEND_TERMINATING,
    "MB_CT_LB_F_HAIRPIN": CT_LB_F_HAIRPIN,
    "MB_CT_LB_F_NODEPORT": CT_LB_F_NODEPORT,
}


def to_bytes(s: Structure) -> bytes:
    return ctypes.string_at(ctypes.addressof(s), ctypes.sizeof(s))
