"""The Scheduler's pure core: a priority queue of waiting tasks drained against a view.

A task is placed the moment some node can take it; until then it waits here, ordered by
priority (critical first) then age, and is placed when capacity frees (late binding). A task
no node could ever take is rejected at once with the reason. The deployment in
`deployments/scheduler.py` only feeds this class views and carries its decisions out.
"""

from __future__ import annotations

import bisect
import itertools
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from .models import SchedulingDecision, SchedulingRequest
from .sharing import allocation_decision, may_fit_allocation
from .strategies import NoFit, PlacementError, place
from .view import ClusterView, GroupCounts, NodeView


@dataclass(frozen=True)
class Rejected:
    task_id: str
    group: str
    reason: str


@dataclass(order=True)
class _Waiting:
    key: tuple[int, float, int]
    request: SchedulingRequest = field(compare=False)
    enqueued_at: float = field(compare=False)


@dataclass
class DrainResult:
    placed: list[SchedulingDecision] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    view: ClusterView | None = None


def _signature(request: SchedulingRequest) -> tuple:
    """Requests with equal signatures succeed or wait together; one wait skips the rest."""
    needs = tuple(sorted(request.requirements.as_ray_resources().items()))
    return (request.group, request.strategy, needs, request.requirements.gpu_memory_mb, request.target_node,
            tuple(sorted(request.label_selector.items())), request.affinity_nodes, request.anti_affinity_nodes)


class SchedulerCore:
    """Queue + group counts. Not thread-safe: the deployment serialises calls with a lock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._waiting: list[_Waiting] = []
        self._seq = itertools.count()
        self.group_counts = GroupCounts()

    def __len__(self) -> int:
        return len(self._waiting)

    def queued_by_group(self) -> Mapping[str, int]:
        counts: dict[str, int] = {}
        for item in self._waiting:
            counts[item.request.group] = counts.get(item.request.group, 0) + 1
        return counts

    def enqueue(self, requests: Iterable[SchedulingRequest]) -> None:
        now = self._clock()
        for request in requests:
            item = _Waiting((-request.priority.rank, now, next(self._seq)), request, now)
            bisect.insort(self._waiting, item)

    def submit(self, requests: Iterable[SchedulingRequest], view: ClusterView) -> DrainResult:
        """Queue `requests` and place whatever fits now, highest priority first."""
        self.enqueue(requests)
        return self.drain(view)

    def drain(self, view: ClusterView) -> DrainResult:
        """Place every waiting task that some node can take now; reject the hopeless ones.

        The returned view carries the new reservations, so callers can chain decisions.
        """
        result = DrainResult(view=view)
        blocked: set[tuple] = set()
        keep: list[_Waiting] = []
        for item in self._waiting:
            request = item.request
            signature = _signature(request)
            if signature in blocked:
                keep.append(item)
                continue
            outcome = self._try_place(request, result.view)  # type: ignore[arg-type]
            if isinstance(outcome, SchedulingDecision):
                waited = max(0.0, self._clock() - item.enqueued_at)
                decision = outcome.model_copy(update={"waited_s": round(waited, 6)})
                result.placed.append(decision)
                result.view = self._reserve(result.view, decision)  # type: ignore[arg-type]
                self.group_counts.add(request.group, decision.node_id)
            elif isinstance(outcome, NoFit) and (outcome.can_wait or may_fit_allocation(request, result.view)):  # type: ignore[arg-type]
                blocked.add(signature)
                keep.append(item)
            else:
                reason = outcome.message if isinstance(outcome, NoFit) else outcome
                result.rejected.append(Rejected(request.task_id, request.group, reason))
        self._waiting = keep
        return result

    def _try_place(self, request: SchedulingRequest, view: ClusterView) -> SchedulingDecision | NoFit | str:
        """Where the strategy puts it, or inside capacity its node borrowed when the node is full."""
        try:
            outcome = place(request, view, self.group_counts.of(request.group))
        except PlacementError as exc:
            return str(exc)
        return allocation_decision(request, view, outcome) or outcome

    @staticmethod
    def _reserve(view: ClusterView, decision: SchedulingDecision) -> ClusterView:
        if decision.placement_group_id is not None:  # inside an allocation: its donor is already counted
            allocation = next(a for a in view.allocations.values()
                              if a.placement_group_id == decision.placement_group_id)
            return view.with_allocation(allocation.use(decision.resources))
        node: NodeView = view.nodes[decision.node_id]
        return view.with_node(node.reserve(decision.resources))

    def cancel(self, group: str | None = None, task_ids: Iterable[str] = ()) -> list[str]:
        """Drop waiting tasks of `group` and/or with the given ids; returns the dropped ids."""
        wanted = set(task_ids)
        dropped = [item.request.task_id for item in self._waiting
                   if item.request.group == group or item.request.task_id in wanted]
        gone = set(dropped)
        self._waiting = [item for item in self._waiting if item.request.task_id not in gone]
        return dropped

    def forget_group(self, group: str) -> None:
        """A finished job's counts are no longer needed for spreading."""
        if not any(item.request.group == group for item in self._waiting):
            self.group_counts.forget(group)
