"""The live load ledger: what grid-serve has reserved on each node, and how long tasks take.

A reservation is made when a task is placed and released when it ends, whether it succeeded
or failed, when its owner goes (a job runner whose lease lapsed: `release_group`), or when its
own lease runs out (decisions handed to external submitters). Run times reported with
completions feed a per-(node, task type) EWMA that `performance_optimized` and the dispatch
lookahead read. Pure: the Scheduler owns the one live instance (reserving is on its decision
path, so no call to another process may sit there); the LoadBalancer keeps a published copy
(`LedgerSnapshot`) and hands it back to a restarted Scheduler.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable, Mapping, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from .models import RESOURCE_SCALE, to_units
from .view import Running

EWMA_ALPHA = 0.3
# Run times are learned per (node, task type) and per group, names a caller chooses: at most this
# many of each are kept, the least recently learned forgotten first (a forgotten one is learned
# again from its next end), so callers naming a task type per call cannot grow the Scheduler, nor
# the snapshot it copies for every view.
LEARNED_KEPT = 10_000

Key = TypeVar("Key", bound=Hashable)

# /v1/schedule task ids live under this prefix inside the Scheduler, apart from job task ids
# (`<job id>-<index>`): a caller's id can never address, block or release a job's task
EXTERNAL_PREFIX = "schedule:"


class Completion(BaseModel):
    """A task ended: reported by the job runner that ran it, or by an external submitter for `/v1/schedule`."""

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
    rank: int = 1  # its priority's rank (TaskPriority.rank): normal unless told
    queue: str = ""  # the queue its job waited in (grid_serve.queues): what fair share counts it against
    strategy: str = ""  # how it was placed (a node_specific task is never reclaimed: it could not move)


@dataclass(frozen=True)
class NodeLoad:
    reserved: Mapping[str, float]
    in_flight: int
    top_rank: int = -1  # the highest priority rank among its tasks (-1: none)
    low_rank: int = -1  # the lowest


@dataclass(frozen=True)
class LedgerSnapshot:
    """What the Scheduler folds into its view; `version` grows with every change."""

    version: int
    loads: Mapping[str, NodeLoad]
    durations: Mapping[tuple[str, str], float]
    placements: Mapping[tuple[str, str], int]  # (node_id, strategy) -> placements ever made
    group_loads: Mapping[str, NodeLoad] = field(default_factory=dict)  # placement group id -> its tasks
    epoch: str = ""  # which ledger instance: a restarted Scheduler's new ledger starts a new epoch at version 0
    group_run_s: Mapping[str, float] = field(default_factory=dict)  # group -> EWMA seconds of its own tasks


class _Totals:
    """Resources and task counts summed per key, kept as reservations come and go, so a view
    costs O(nodes) rather than O(reservations) per decision batch. Sums are in Ray's fixed
    point (`to_units`): exact, so what every reservation gave back reads exactly 0."""

    def __init__(self) -> None:
        self._sums: dict[str, dict[str, int]] = {}
        self._counts: dict[str, int] = {}
        self._ranks: dict[str, dict[int, int]] = {}  # tasks per priority rank

    def add(self, key: str, resources: Mapping[str, float], sign: int, rank: int = 1) -> None:
        sums = self._sums.setdefault(key, {})
        for name, amount in resources.items():
            units = sums.get(name, 0) + sign * to_units(amount)
            if units > 0:
                sums[name] = units
            else:
                sums.pop(name, None)
        self._counts[key] = self._counts.get(key, 0) + sign
        ranks = self._ranks.setdefault(key, {})
        ranks[rank] = ranks.get(rank, 0) + sign
        if ranks[rank] <= 0:
            del ranks[rank]
        if self._counts[key] <= 0:
            del self._sums[key], self._counts[key], self._ranks[key]

    def loads(self) -> dict[str, NodeLoad]:
        return {key: NodeLoad({name: units / RESOURCE_SCALE for name, units in sums.items()}, self._counts[key],
                              max(self._ranks[key], default=-1), min(self._ranks[key], default=-1))
                for key, sums in self._sums.items()}


@dataclass
class Ledger:
    clock: Callable[[], float] = time.monotonic
    reservations: dict[str, Reservation] = field(default_factory=dict)
    durations: dict[tuple[str, str], float] = field(default_factory=dict)
    # what a group's (a job's) own tasks took, apart from its task type's: the lookahead trusts
    # only this, since another job of the same function may run it with other arguments
    group_run_s: dict[str, float] = field(default_factory=dict)
    placements: dict[tuple[str, str], int] = field(default_factory=dict)
    version: int = 0
    epoch: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    _nodes: _Totals = field(default_factory=_Totals, repr=False)  # tasks placed on a node directly
    _groups: _Totals = field(default_factory=_Totals, repr=False)  # tasks inside borrowed allocations
    _queues: _Totals = field(default_factory=_Totals, repr=False)  # every task, per queue (fair share)

    def reserve(self, task_id: str, node_id: str, resources: Mapping[str, float], *, task_type: str = "task",
                group: str = "", strategy: str = "", lease_s: float | None = None,
                placement_group_id: str | None = None, rank: int = 1, queue: str = "") -> None:
        now = self.clock()
        self._drop(task_id)  # re-reserving a task (an owner re-registering) replaces it
        reservation = self.reservations[task_id] = Reservation(
            task_id, node_id, dict(resources), task_type, group or task_id, now,
            now + lease_s if lease_s else None, placement_group_id, rank, queue, strategy,
        )
        self._count(reservation, +1)
        key = (node_id, strategy)
        self.placements[key] = self.placements.get(key, 0) + 1
        self.version += 1

    def _count(self, reservation: Reservation, sign: int) -> None:
        self._queues.add(reservation.queue, reservation.resources, sign, reservation.rank)
        if reservation.placement_group_id is None:
            self._nodes.add(reservation.node_id, reservation.resources, sign, reservation.rank)
        else:
            self._groups.add(reservation.placement_group_id, reservation.resources, sign, reservation.rank)

    def _drop(self, task_id: str) -> Reservation | None:
        reservation = self.reservations.pop(task_id, None)
        if reservation is not None:
            self._count(reservation, -1)
        return reservation

    def release(self, completions: Iterable[Completion]) -> list[Reservation]:
        """Free the reservations of ended tasks; learn from their run times. Unknown ids are
        ignored, so a report sent twice (a retried call) frees nothing twice."""
        released = []
        for completion in completions:
            reservation = self._drop(completion.task_id)
            if reservation is None:
                continue
            released.append(reservation)
            if completion.ok and completion.duration_s is not None:
                self._learn(reservation, completion.duration_s)
        if released:
            self.version += 1
        return released

    def release_group(self, group: str) -> list[Reservation]:
        """Free everything reserved for `group`: its owner is gone or its job is over."""
        mine = [task_id for task_id, r in self.reservations.items() if r.group == group]
        released = [r for task_id in mine if (r := self._drop(task_id)) is not None]
        self.group_run_s.pop(group, None)
        if released:
            self.version += 1
        return released

    def expire(self) -> list[Reservation]:
        """Release reservations whose lease ran out (an external submitter never reported)."""
        now = self.clock()
        expired = [r for r in self.reservations.values() if r.lease_until is not None and r.lease_until <= now]
        for reservation in expired:
            self._drop(reservation.task_id)
        if expired:
            self.version += 1
        return expired

    def learned_from(self, snapshot: LedgerSnapshot) -> None:
        """Take run times and placement counts from a published snapshot (a restarted
        Scheduler keeps what its predecessor learned); reservations come from their owners."""
        for key, seconds in snapshot.durations.items():
            self.durations.setdefault(key, seconds)
        for key, count in snapshot.placements.items():
            self.placements[key] = max(self.placements.get(key, 0), count)

    def _learn(self, reservation: Reservation, seconds: float) -> None:
        _blend(self.durations, (reservation.node_id, reservation.task_type), seconds)
        if reservation.group != reservation.task_id:  # a lone decision's group never places again
            _blend(self.group_run_s, reservation.group, seconds)

    def running_on(self, node_id: str) -> list[Running]:
        """The tasks reserved on the node directly (not in a borrowed allocation), with their
        ages: what a backfill decision reads (`ClusterView.running`). A scan of every
        reservation, so asked only for a node held for a starving task."""
        now = self.clock()
        return [Running(r.task_type, r.resources, now - r.made_at) for r in self.reservations.values()
                if r.node_id == node_id and r.placement_group_id is None]

    def running_everywhere(self) -> dict[str, list[Running]]:
        """`running_on` for every node, in one scan (what a job's forecast replays)."""
        now = self.clock()
        running: dict[str, list[Running]] = {}
        for r in self.reservations.values():
            if r.placement_group_id is None:
                running.setdefault(r.node_id, []).append(Running(r.task_type, r.resources, now - r.made_at))
        return running

    def loads(self) -> dict[str, NodeLoad]:
        """Per node, the tasks placed on it directly. Tasks inside a borrowed allocation are
        left out: the allocation's whole capacity is already counted on its donor."""
        return self._nodes.loads()

    def group_loads(self) -> dict[str, NodeLoad]:
        """Per placement group (borrowed allocation), the tasks running inside it."""
        return self._groups.loads()

    def queue_loads(self) -> dict[str, NodeLoad]:
        """Per queue, what its tasks hold wherever they run (what fair share weighs)."""
        return self._queues.loads()

    def snapshot(self) -> LedgerSnapshot:
        return LedgerSnapshot(self.version, self.loads(), dict(self.durations), dict(self.placements),
                              self.group_loads(), self.epoch, dict(self.group_run_s))


def _blend(averages: dict[Key, float], key: Key, seconds: float, kept: int = LEARNED_KEPT) -> None:
    """Fold `seconds` into the EWMA kept under `key` (the first one is taken as it is); the key
    moves to the newest end, and past `kept` keys the least recently learned one goes.

    >>> averages = {}
    >>> for key, seconds in (("a", 1.0), ("b", 2.0), ("a", 2.0), ("c", 3.0)):
    ...     _blend(averages, key, seconds, kept=2)
    >>> list(averages)  # "b" was learned least recently
    ['a', 'c']
    """
    previous = averages.pop(key, None)
    averages[key] = seconds if previous is None else (1 - EWMA_ALPHA) * previous + EWMA_ALPHA * seconds
    while len(averages) > kept:
        del averages[next(iter(averages))]
