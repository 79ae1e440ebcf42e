"""The live load ledger: what grid-serve has reserved on each node, and how long tasks take.

A reservation is made when a task is placed and released when it ends, whether it succeeded
or failed, or when its lease runs out (for decisions handed to external submitters). Run
times reported with completions feed a per-(node, task type) EWMA that
`performance_optimized` reads. Pure: the LoadBalancer deployment wraps one instance.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Mapping

from pydantic import BaseModel, ConfigDict, Field

EWMA_ALPHA = 0.3


class Completion(BaseModel):
    """A task ended: reported by the Ingress, or by an external submitter for `/v1/schedule`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_id: str
    ok: bool = True
    duration_s: float | None = Field(None, ge=0)


@dataclass(frozen=True)
class Reservation:
    task_id: str
    node_id: str
    resources: Mapping[str, float]
    task_type: str
    group: str
    made_at: float
    lease_until: float | None = None
    placement_group_id: str | None = None  # set when the task runs inside a borrowed allocation


@dataclass(frozen=True)
class NodeLoad:
    reserved: Mapping[str, float]
    in_flight: int


@dataclass(frozen=True)
class LedgerSnapshot:
    """What the Scheduler folds into its view; `version` grows with every change."""

    version: int
    loads: Mapping[str, NodeLoad]
    durations: Mapping[tuple[str, str], float]
    placements: Mapping[tuple[str, str], int]  # (node_id, strategy) -> placements ever made
    group_loads: Mapping[str, NodeLoad] = field(default_factory=dict)  # placement group id -> its tasks
    epoch: str = ""  # which ledger instance: a restarted LoadBalancer starts a new epoch at version 0

    def released(self, freed: Iterable[tuple[str, Mapping[str, float]]]) -> "LedgerSnapshot":
        """This snapshot as it will read once the (node id, resources) reservations in `freed`
        are released: lets the Scheduler place into freed room before the ledger confirms.
        The version stays, so the ledger's own next snapshot always supersedes it."""
        loads = dict(self.loads)
        for node_id, resources in freed:
            load = loads.get(node_id)
            if load is None:
                continue
            reserved = {name: max(0.0, load.reserved.get(name, 0.0) - resources.get(name, 0.0))
                        for name in load.reserved}
            loads[node_id] = NodeLoad(reserved, max(0, load.in_flight - 1))
        return replace(self, loads=loads)


@dataclass
class Ledger:
    clock: Callable[[], float] = time.monotonic
    reservations: dict[str, Reservation] = field(default_factory=dict)
    durations: dict[tuple[str, str], float] = field(default_factory=dict)
    placements: dict[tuple[str, str], int] = field(default_factory=dict)
    version: int = 0
    epoch: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def reserve(self, task_id: str, node_id: str, resources: Mapping[str, float], task_type: str = "task",
                group: str = "", strategy: str = "", lease_s: float | None = None,
                placement_group_id: str | None = None) -> None:
        now = self.clock()
        self.reservations[task_id] = Reservation(
            task_id, node_id, dict(resources), task_type, group or task_id, now,
            now + lease_s if lease_s else None, placement_group_id,
        )
        key = (node_id, strategy)
        self.placements[key] = self.placements.get(key, 0) + 1
        self.version += 1

    def release(self, completions: Iterable[Completion]) -> list[Reservation]:
        """Free the reservations of ended tasks; learn from their run times."""
        released = []
        for completion in completions:
            reservation = self.reservations.pop(completion.task_id, None)
            if reservation is None:
                continue
            released.append(reservation)
            if completion.ok and completion.duration_s is not None:
                self._learn(reservation.node_id, reservation.task_type, completion.duration_s)
        if released:
            self.version += 1
        return released

    def expire(self) -> list[Reservation]:
        """Release reservations whose lease ran out (an external submitter never reported)."""
        now = self.clock()
        expired = [r for r in self.reservations.values() if r.lease_until is not None and r.lease_until <= now]
        for reservation in expired:
            del self.reservations[reservation.task_id]
        if expired:
            self.version += 1
        return expired

    def _learn(self, node_id: str, task_type: str, seconds: float) -> None:
        key = (node_id, task_type)
        previous = self.durations.get(key)
        self.durations[key] = seconds if previous is None else (1 - EWMA_ALPHA) * previous + EWMA_ALPHA * seconds

    def loads(self) -> dict[str, NodeLoad]:
        """Per node, the tasks placed on it directly. Tasks inside a borrowed allocation are
        left out: the allocation's whole capacity is already counted on its donor."""
        return _sum_by(r for r in self.reservations.values() if r.placement_group_id is None)

    def group_loads(self) -> dict[str, NodeLoad]:
        """Per placement group (borrowed allocation), the tasks running inside it."""
        inside = [r for r in self.reservations.values() if r.placement_group_id is not None]
        return _sum_by(inside, key=lambda r: r.placement_group_id or "")

    def snapshot(self) -> LedgerSnapshot:
        return LedgerSnapshot(self.version, self.loads(), dict(self.durations), dict(self.placements),
                              self.group_loads(), self.epoch)


def _sum_by(reservations: Iterable[Reservation],
            key: Callable[[Reservation], str] = lambda r: r.node_id) -> dict[str, NodeLoad]:
    totals: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    for reservation in reservations:
        per_key = totals.setdefault(key(reservation), {})
        for name, amount in reservation.resources.items():
            per_key[name] = per_key.get(name, 0.0) + amount
        counts[key(reservation)] = counts.get(key(reservation), 0) + 1
    return {k: NodeLoad(totals[k], counts[k]) for k in totals}
