/* Map definitions. Every map is pinned by name under the node's pin directory (the loader sets
 * the path), so its contents outlive programs and the agent. */
#pragma once

#include "common.h"
#include <membrane/config.h>
#include <membrane/conntrack.h>
#include <membrane/endpoint.h>
#include <membrane/events.h>
#include <membrane/ipcache.h>
#include <membrane/lb.h>
#include <membrane/metrics.h>
#include <membrane/policy.h>

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MB_ENDPOINTS_MAX);
	__type(key, struct mb_endpoint_key);
	__type(value, struct mb_endpoint_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_endpoints SEC(".maps");

/* The peer's identity by address, for policy. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MB_IPCACHE_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mb_ipcache_key);
	__type(value, struct mb_ipcache_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MB_IPBLOCK_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mb_ipcache_key);
	__type(value, struct mb_ipcache_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_ipblock SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MB_POLICY_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mb_policy_key);
	__type(value, struct mb_policy_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MB_POLICY_RANGES_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mb_policy_range_key);
	__type(value, struct mb_policy_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_policy_ranges SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MB_CT_MAX);
	__type(key, struct mb_ct_key);
	__type(value, struct mb_ct_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MB_METRICS_MAX);
	__type(key, struct mb_metrics_key);
	__type(value, struct mb_metrics_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_metrics SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mb_node_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mb_meta);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_meta SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, MB_EVENTS_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_events SEC(".maps");

/* Events the ring had no room for, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_events_lost SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MB_DROP_NOTIFY_MAX);
	__type(key, struct mb_drop_notify_key);
	__type(value, struct mb_drop_notify_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_drop_notify SEC(".maps");

/* Service load-balancing (membrane/lb.h). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MB_LB4_SERVICES_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mb_lb4_key);
	__type(value, struct mb_lb4_service);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_lb4_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MB_LB4_BACKENDS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct mb_lb4_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_lb4_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MB_LB4_REVNAT_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct mb_lb4_reverse_nat);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_lb4_reverse_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MB_LB4_AFFINITY_MAX);
	__type(key, struct mb_lb4_affinity_key);
	__type(value, struct mb_lb4_affinity_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_lb4_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MB_LB4_MAGLEV_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mb_lb4_maglev_key);
	__type(value, struct mb_lb4_maglev_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_lb4_maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MB_LB4_REVERSE_SK_MAX);
	__type(key, struct mb_lb4_sock_key);
	__type(value, struct mb_lb4_sock_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_lb4_reverse_sk SEC(".maps");
