"""MetricsCollector: the live view of every node, refreshed every interval.

Reads Ray's node table (alive, labels, hostname, totals) and available resources, and names each
node once for its life (grid_serve/naming.py: its unique `grid.io/node` label, else its hostname,
else its IP); the names are kept in Ray's GCS, so a restarted collector gives the same ones. A probe actor on
every alive node (deployments/probes.py) adds CPU per core, memory, swap, load and GPUs; a
node whose probe stops answering is marked stale, which takes it out of decisions.

Each refresh publishes Ray's node table first, before waiting on the probes, so a node Ray
reports dead leaves the snapshot at the next refresh whatever its probe does.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import ray
from ray import serve

from grid_serve.models import NODE_LABEL, NodeStatus
from grid_serve.naming import NodeFacts, NodeNamer
from grid_serve.probe import with_reading

from ._common import INTERNAL_OPTIONS, every, load_saved, logger, save
from .probes import ProbeFleet
from .telemetry import NodeMetrics


def default_stale_after_s(interval_s: float) -> float:
    """Generous on purpose: a busy machine answers late, and a stale node gets no work."""
    return max(5 * interval_s, 10.0)


def read_ray_nodes(namer: NodeNamer) -> list[NodeStatus]:
    """One blocking pass over Ray's node table; run it off the event loop."""
    available = ray._private.state.available_resources_per_node()
    raw = ray.nodes()
    names = namer.name_all(_facts(node) for node in raw)
    statuses = []
    for node in raw:
        total = {k: float(v) for k, v in (node.get("Resources") or {}).items() if not k.startswith("node:")}
        statuses.append(NodeStatus(
            name=names[node["NodeID"]],
            node_id=node["NodeID"],
            address=node["NodeManagerAddress"],
            alive=bool(node["Alive"]),
            hostname=node.get("NodeManagerHostname") or None,
            is_head="node:__internal_head__" in (node.get("Resources") or {}),
            labels=dict(node.get("Labels") or {}),
            resources_total=total if node["Alive"] else {},
            resources_available={k: float(v) for k, v in available.get(node["NodeID"], {}).items()
                                 if not k.startswith("node:")},
        ))
    return sorted(statuses, key=lambda s: (not s.alive, s.name))


def _facts(node: dict[str, Any]) -> NodeFacts:
    return NodeFacts(node_id=node["NodeID"], ip=node["NodeManagerAddress"], alive=bool(node["Alive"]),
                     label=(node.get("Labels") or {}).get(NODE_LABEL), hostname=node.get("NodeManagerHostname"))


@serve.deployment(**INTERNAL_OPTIONS)
class MetricsCollector:
    def __init__(self, interval_s: float = 1.0, stale_after_s: float | None = None) -> None:
        self._interval = interval_s
        self._fleet = ProbeFleet(stale_after_s or default_stale_after_s(interval_s))
        self._metrics = NodeMetrics()
        self._reading: asyncio.Future | None = None
        self._names_key = f"node-names:{serve.get_replica_context().app_name}"
        self._namer = NodeNamer(load_saved(self._names_key))
        self._saved_names = self._namer.names
        self._ray_nodes: list[NodeStatus] = read_ray_nodes(self._namer)
        self._nodes: list[NodeStatus] = self._ray_nodes
        self._taken_at = time.time()
        self._loop = every(interval_s, self._refresh, "metrics-refresh")

    async def _refresh(self) -> None:
        await self._read_ray()
        self._fleet.sync({node.node_id for node in self._ray_nodes if node.alive})
        await self._fleet.collect(wait_s=self._interval / 2)
        self._publish()
        self._metrics.record(self._nodes)

    async def _read_ray(self) -> None:
        """Read Ray's node table, for at most 5 intervals. A read that hangs is not stacked
        upon (one in flight); the snapshot keeps its old time, and the Scheduler stops
        trusting it once it is too old."""
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(asyncio.to_thread(self._read_and_keep_names))
        try:
            self._ray_nodes = await asyncio.wait_for(asyncio.shield(self._reading), 5 * self._interval)
        except asyncio.TimeoutError:
            logger.warning("Ray's node table did not answer within %.1f s; the node snapshot is %.0f s old",
                           5 * self._interval, time.time() - self._taken_at)
            return
        self._taken_at = time.time()
        self._publish()

    def _read_and_keep_names(self) -> list[NodeStatus]:
        nodes = read_ray_nodes(self._namer)
        if self._namer.names != self._saved_names:  # a node came or went: rarely
            save(self._names_key, json.dumps(self._namer.names))
            self._saved_names = self._namer.names
        return nodes

    def _publish(self) -> None:
        self._nodes = [with_reading(node, *self._fleet.reading(node.node_id)) for node in self._ray_nodes]

    async def snapshot(self) -> tuple[list[NodeStatus], float]:
        """The nodes and when Ray's node table was read (epoch seconds)."""
        return self._nodes, self._taken_at

    async def refresh_now(self) -> tuple[list[NodeStatus], float]:
        await self._read_ray()
        return self._nodes, self._taken_at
