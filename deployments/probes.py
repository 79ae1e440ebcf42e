"""One probe actor per alive node, and the fleet that keeps that true as nodes come and go.

A probe is a tiny actor (`num_cpus=0`, so it never takes a CPU a task needs) pinned hard to
its node with `NodeAffinitySchedulingStrategy(soft=False)`: if it ran anywhere else it would
report the wrong machine. The MetricsCollector owns the fleet; the actors die with it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from grid_serve.probe import NodeSample, Probe, is_stale, load_nvml

from ._common import logger


@ray.remote(num_cpus=0, max_restarts=3, max_task_retries=0)
class NodeProbe:
    """Samples the node it runs on; `sample()` is cheap (see BENCHMARKS.md, "Probe cost")."""

    def __init__(self) -> None:
        self._probe = Probe(nvml=load_nvml())
        self._node_id = ray.get_runtime_context().get_node_id()

    def sample(self) -> tuple[str, NodeSample]:
        """The node id this probe really runs on, and its reading."""
        return self._node_id, self._probe.sample()


@dataclass
class _Member:
    actor: ray.actor.ActorHandle
    started_at: float
    pending: asyncio.Future | None = None
    answered_at: float | None = None
    sample: NodeSample | None = None


class ProbeFleet:
    """Starts probes on nodes that joined, drops those of nodes that left, and collects.

    Each probe has at most one sample call outstanding: a probe that hangs is not buried under
    a pile of calls, and it becomes stale once its last answer is older than `stale_after_s`.
    """

    def __init__(self, stale_after_s: float, startup_grace_s: float = 60.0) -> None:
        self._members: dict[str, _Member] = {}
        self._stale_after_s = stale_after_s
        self._startup_grace_s = startup_grace_s

    def sync(self, alive_node_ids: set[str]) -> None:
        for node_id in set(self._members) - alive_node_ids:
            self._drop(node_id)
        for node_id in alive_node_ids - set(self._members):
            self._members[node_id] = _Member(self._start(node_id), time.time())

    @staticmethod
    def _start(node_id: str) -> ray.actor.ActorHandle:
        return NodeProbe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        ).remote()

    def _drop(self, node_id: str) -> None:
        member = self._members.pop(node_id)
        if member.pending is not None:
            member.pending.cancel()
        ray.kill(member.actor, no_restart=True)

    async def collect(self, wait_s: float) -> None:
        """Ask every probe without a call in flight for a sample; wait up to `wait_s` for answers."""
        for member in self._members.values():
            if member.pending is None:
                member.pending = asyncio.wrap_future(member.actor.sample.remote().future())
        pending = [m.pending for m in self._members.values() if m.pending is not None]
        if pending:
            await asyncio.wait(pending, timeout=wait_s)
        for node_id, member in list(self._members.items()):
            if member.pending is not None and member.pending.done():
                self._take_answer(node_id, member)

    def _take_answer(self, node_id: str, member: _Member) -> None:
        future, member.pending = member.pending, None
        try:
            ran_on, sample = future.result()  # type: ignore[union-attr]
        except Exception as exc:  # the probe failed (its node may be going): try again next round
            logger.warning("grid-serve probe on node %s did not answer: %s", node_id[:8], type(exc).__name__)
            if isinstance(exc, ray.exceptions.ActorDiedError):  # out of restarts: a fresh one, same node
                member.actor = self._start(node_id)
            return
        if ran_on != node_id:
            logger.error("grid-serve probe for node %s ran on %s; ignoring its sample", node_id[:8], ran_on[:8])
            return
        member.answered_at, member.sample = time.time(), sample

    def reading(self, node_id: str) -> tuple[NodeSample | None, float | None, bool]:
        """The node's last sample, when it arrived, and whether the probe has gone stale."""
        member = self._members.get(node_id)
        if member is None:
            return None, None, False
        stale = is_stale(time.time(), member.started_at, member.answered_at, self._stale_after_s,
                         self._startup_grace_s)
        return member.sample, member.answered_at, stale

    def shutdown(self) -> None:
        for node_id in list(self._members):
            self._drop(node_id)
