"""MetricsCollector: the live view of every node, refreshed every interval.

Reads Ray's node table (alive, labels, totals) and available resources, and names each node
by its `grid.io/node` label (else its IP, made unique when nodes share one). Per-node probes
(CPU %, memory, GPUs through NVML) plug in here as `NodeStatus` fields.
"""

from __future__ import annotations

import asyncio
import time

import ray
from ray import serve

from grid_serve.models import NODE_LABEL, NodeStatus

from ._common import INTERNAL_OPTIONS, every


def read_ray_nodes() -> list[NodeStatus]:
    """One blocking pass over Ray's node table; run it off the event loop."""
    available = ray._private.state.available_resources_per_node()
    raw = ray.nodes()
    ip_counts: dict[str, int] = {}
    for node in raw:
        ip_counts[node["NodeManagerAddress"]] = ip_counts.get(node["NodeManagerAddress"], 0) + 1
    statuses = []
    for node in raw:
        labels = {k: v for k, v in (node.get("Labels") or {}).items()}
        ip = node["NodeManagerAddress"]
        name = labels.get(NODE_LABEL) or (ip if ip_counts[ip] == 1 else f"{ip}/{node['NodeID'][:6]}")
        total = {k: float(v) for k, v in (node.get("Resources") or {}).items() if not k.startswith("node:")}
        statuses.append(NodeStatus(
            name=name,
            node_id=node["NodeID"],
            address=ip,
            alive=bool(node["Alive"]),
            is_head="node:__internal_head__" in (node.get("Resources") or {}),
            labels=labels,
            resources_total=total if node["Alive"] else {},
            resources_available={k: float(v) for k, v in available.get(node["NodeID"], {}).items()
                                 if not k.startswith("node:")},
        ))
    return sorted(statuses, key=lambda s: (not s.alive, s.name))


@serve.deployment(**INTERNAL_OPTIONS)
class MetricsCollector:
    def __init__(self, interval_s: float = 1.0) -> None:
        self._interval = interval_s
        self._nodes: list[NodeStatus] = read_ray_nodes()
        self._taken_at = time.time()
        self._loop = every(interval_s, self._refresh, "metrics-refresh")

    async def _refresh(self) -> None:
        self._nodes = await asyncio.to_thread(read_ray_nodes)
        self._taken_at = time.time()

    async def snapshot(self) -> tuple[list[NodeStatus], float]:
        """The nodes and when they were read (epoch seconds)."""
        return self._nodes, self._taken_at

    async def refresh_now(self) -> tuple[list[NodeStatus], float]:
        await self._refresh()
        return self._nodes, self._taken_at
