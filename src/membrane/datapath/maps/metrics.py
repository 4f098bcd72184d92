"""mb_metrics: per-CPU packet/byte counters by endpoint, direction, verdict, drop reason."""

from __future__ import annotations

from dataclasses import dataclass

from membrane.datapath.abi import Direction, MetricsKey, MetricsValue, Verdict
from membrane.datapath.maps.base import BpfMap


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsRow:
    """Counters summed over CPUs. ep_id 0: not attributable to a local endpoint."""

    ep_id: int
    direction: str  # "ingress" (into the pod) / "egress" (out of the pod)
    verdict: str  # "forwarded" / "dropped"
    reason: int  # Cilium drop reason, 0 when forwarded
    packets: int
    bytes: int


class MetricsMap(BpfMap[MetricsKey, MetricsValue]):
    key_type = MetricsKey
    value_type = MetricsValue
    percpu = True

    def dump(self) -> list[MetricsRow]:
        rows: list[MetricsRow] = []
        for key, per_cpu in self.items_c_percpu():
            rows.append(MetricsRow(
                ep_id=key.ep_id,
                direction=_name(Direction, key.direction),
                verdict=_name(Verdict, key.verdict),
                reason=key.reason,
                packets=sum(v.packets for v in per_cpu),
                bytes=sum(v.bytes for v in per_cpu),
            ))
        rows.sort(key=lambda r: (r.ep_id, r.direction, r.verdict, r.reason))
        return rows

    def delete_all(self) -> int:
        return self.clear()


def _name(enum: type[Direction] | type[Verdict], value: int) -> str:
    try:
        return enum(value).name.lower()
    except ValueError:
        return str(value)
