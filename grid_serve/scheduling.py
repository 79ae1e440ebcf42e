"""The Scheduler's pure core: a priority queue of waiting tasks drained against a view.

A task is placed the moment some node can take it; until then it waits here, ordered by
priority (critical first) then age, and is placed when capacity frees (late binding). A task
no node could ever take is rejected at once with the reason. The deployment in
`deployments/scheduler.py` only feeds this class views and carries its decisions out.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import time
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Callable, Iterable, Mapping

from .lookahead import lookahead_admission
from .models import SchedulingDecision, SchedulingRequest, TaskPriority
from .pending import when_fits
from .placement_index import IncrementalPlacer
from .sharing import allocation_decision, may_fit_allocation
from .strategies import NoFit, PlacementContext, PlacementError, check_free_now, needs_of, place
from .view import ClusterView, GroupCounts, NodeView, Running

STARVE_AFTER_S = 30.0  # a task waiting this long gets a node held for it (see SchedulerCore._hold)


@dataclass(frozen=True)
class Rejected:
    task_id: str
    group: str
    reason: str


# what makes requests succeed or wait together (`_signature`): group, priority, strategy, task type,
# resources, GPU memory, target node, labels, affinity and anti-affinity
Signature = tuple[str, TaskPriority, str, str, tuple[tuple[str, float], ...], float, str | None,
                  tuple[tuple[str, str], ...], tuple[str, ...], tuple[str, ...]]


@dataclass(order=True)
class _Waiting:
    key: tuple[int, float, int]
    request: SchedulingRequest = field(compare=False)
    enqueued_at: float = field(compare=False)
    signature: Signature = field(compare=False)


@dataclass
class DrainResult:
    placed: list[SchedulingDecision] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    view: ClusterView | None = None
    # group -> node name -> spread turns the node gave up in this drain (news for the job's counts)
    turns_given_up: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Hold:
    """A node held for a starving task for the rest of a drain: its needs are reserved there.
    `start_in_s`: when the task is expected to start there (None: unknown); until then, work
    expected to end sooner may still run there (backfill). Worked out only when a task could
    backfill there: it reads every task running on the node."""

    node_id: str
    needs: Mapping[str, float]
    estimate_start_s: Callable[[], float | None]

    @functools.cached_property
    def start_in_s(self) -> float | None:
        return self.estimate_start_s()


def expected_start_s(needs: Mapping[str, float], node: NodeView, running: Iterable[Running],
                     durations: Mapping[tuple[str, str], float]) -> float | None:
    """Seconds from now until `needs` fits beside what runs on `node`, each running task ending
    at its run time learned there. None when one has no learned run time there: then nobody
    knows when the node frees, and a hold stays strict.

    >>> from grid_serve.view import make_node
    >>> node = make_node("big", cpus=2)
    >>> running = [Running("low", {"CPU": 1.0}, age_s=0.5), Running("low", {"CPU": 1.0}, age_s=1.5)]
    >>> expected_start_s({"CPU": 1.0}, node, running, {("id-big", "low"): 2.0})  # the older one ends first
    0.5
    >>> expected_start_s({"CPU": 2.0}, node, running, {("id-big", "low"): 2.0})  # both must end
    1.5
    >>> expected_start_s({"CPU": 2.0}, node, running, {}) is None
    True
    """
    ends: list[tuple[float, Mapping[str, float]]] = []
    for task in running:
        run_s = durations.get((node.node_id, task.task_type))
        if run_s is None:
            return None
        ends.append((max(0.0, run_s - task.age_s), task.resources))
    return when_fits(needs, node.total, ends)


def _key(item: _Waiting) -> tuple[float, ...]:  # compared with a priority's (-rank,) when bisecting
    return item.key


def _signature(request: SchedulingRequest) -> Signature:
    """Requests with equal signatures succeed or wait together; one wait skips the rest."""
    needs = tuple(sorted(request.requirements.as_ray_resources().items()))
    return (request.group, request.priority, request.strategy, request.task_type, needs,
            request.requirements.gpu_memory_mb, request.target_node, tuple(sorted(request.label_selector.items())),
            request.affinity_nodes, request.anti_affinity_nodes)


def _backfill_window_s(holds: list[_Hold], node_id: str) -> float | None:
    """How long backfill on the node may run: until the soonest expected start of the tasks
    holding it; None when one of those starts is unknown."""
    starts = [hold.start_in_s for hold in holds if hold.node_id == node_id]
    known = [start for start in starts if start is not None]
    return min(known) if known and len(known) == len(starts) else None


def _unheld(node: NodeView, hold: _Hold) -> NodeView:
    """The node without the hold's reservation."""
    return node.reserve({name: -amount for name, amount in hold.needs.items()}, tasks=0)


class SchedulerCore:
    """Queue + group counts. Not thread-safe: the deployment serialises calls with a lock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, lookahead_s: float | None = None,
                 starve_after_s: float | None = STARVE_AFTER_S) -> None:
        """`lookahead_s`: each kind of request is admitted up to its lookahead admission
        (`grid_serve.lookahead`); None keeps the view's own fixed `admission`.
        `starve_after_s`: how long a task may wait before a node is held for it (None: never)."""
        self._clock = clock
        self._lookahead_s = lookahead_s
        self._starve_after_s = starve_after_s
        self._held: dict[str, str] = {}  # task id -> the node held for it (it has waited too long)
        self._turn_blocked_since: dict[str, float] = {}  # group -> when its turn holders began to block it
        self._waiting: list[_Waiting] = []
        self._seq = itertools.count()
        self._queued: dict[str, int] = {}  # group -> tasks waiting
        # group -> why its next task waited in the last drain (`pending`); its text is made when asked
        self._reasons: dict[str, NoFit] = {}
        self.group_counts = GroupCounts()

    def __len__(self) -> int:
        return len(self._waiting)

    def task_ids(self) -> set[str]:
        """The ids of the tasks waiting."""
        return {item.request.task_id for item in self._waiting}

    def queued_by_group(self) -> Mapping[str, int]:
        """Tasks waiting per group (kept up to date, not counted per call); read-only."""
        return MappingProxyType(self._queued)

    def waiting_by_priority(self) -> list[tuple[TaskPriority, int, float]]:
        """(priority, tasks waiting, seconds the oldest has waited), highest priority first, for
        the priorities that have any. The queue is sorted by (-rank, age), so each priority's
        first item is its oldest and two bisections count it: cheap enough for every status call.

        >>> core = SchedulerCore(clock=lambda: 10.0)
        >>> core.enqueue([SchedulingRequest(task_id="a", priority="high"), SchedulingRequest(task_id="b")])
        >>> [(str(p), n, wait) for p, n, wait in core.waiting_by_priority()]
        [('high', 1, 0.0), ('normal', 1, 0.0)]
        """
        levels = []
        now = self._clock()
        for priority in sorted(TaskPriority, key=lambda p: -p.rank):
            start: tuple[float, ...] = (-priority.rank,)  # this priority's keys lie in [start, stop)
            stop: tuple[float, ...] = (-priority.rank + 1,)
            first = bisect.bisect_left(self._waiting, start, key=_key)
            end = bisect.bisect_left(self._waiting, stop, key=_key)
            if end > first:
                levels.append((priority, end - first, max(0.0, now - self._waiting[first].enqueued_at)))
        return levels

    def waiting_at_or_above(self, rank: int) -> int:
        """Tasks waiting at priority `rank` or higher: one bisection of the sorted queue."""
        stop: tuple[float, ...] = (-rank + 1,)
        return bisect.bisect_left(self._waiting, stop, key=_key)

    def waiting_prefix(self, count: int) -> list[SchedulingRequest]:
        """The first `count` of the queue as it is served: priority, then age."""
        return [item.request for item in self._waiting[:count]]

    def why_waiting(self, group: str) -> str | None:
        """Why the group's next task found no node in the last drain, counted per cause."""
        outcome = self._reasons.get(group)
        return outcome.message if outcome is not None else None

    def _keep_only(self, keep: list[_Waiting]) -> None:
        self._waiting = keep
        self._queued = {}
        for item in keep:
            self._queued[item.request.group] = self._queued.get(item.request.group, 0) + 1

    def enqueue(self, requests: Iterable[SchedulingRequest]) -> None:
        now = self._clock()
        for request in requests:
            item = _Waiting((-request.priority.rank, now, next(self._seq)), request, now, _signature(request))
            bisect.insort(self._waiting, item)
            self._queued[request.group] = self._queued.get(request.group, 0) + 1

    def submit(self, requests: Iterable[SchedulingRequest], view: ClusterView) -> DrainResult:
        """Queue `requests` and place whatever fits now, highest priority first."""
        self.enqueue(requests)
        return self.drain(view)

    def drain(self, view: ClusterView) -> DrainResult:
        """Place every waiting task that some node can take now; reject the hopeless ones.

        The returned view carries the new reservations, so callers can chain decisions.
        """
        result = DrainResult(view=view)
        if not self._waiting:
            return result
        nodes = dict(view.nodes)  # reserved into as decisions are made; one view built at the end
        allocations = dict(view.allocations)  # capacity nodes borrowed, and what their tasks use
        placers: dict[Signature, IncrementalPlacer | str] = {}
        blocked: set[Signature] = set()
        keep: list[_Waiting] = []
        holds: list[_Hold] = []  # nodes held for starving tasks, in this drain
        self._reasons = {}
        for item in self._waiting:
            request = item.request
            if item.signature in blocked:
                keep.append(item)
                continue
            placer = placers.get(item.signature)
            if placer is None:
                placer = placers[item.signature] = self._placer(request, view, nodes)
            if isinstance(placer, str):  # the request itself is wrong (unknown node, say)
                result.rejected.append(Rejected(request.task_id, request.group, placer))
                continue
            waited = round(max(0.0, self._clock() - item.enqueued_at), 6)
            outcome = placer.place(request, waited_s=waited)
            if (isinstance(outcome, NoFit) and outcome.can_wait
                    and self._give_up_turns(request, placer, placers, nodes, result)):
                outcome = placer.place(request, waited_s=waited)
            elif self._turn_blocked_since and isinstance(outcome, SchedulingDecision):
                self._turn_blocked_since.pop(request.group, None)  # the turn moved: a later wait starts afresh
            if holds and isinstance(outcome, NoFit) and outcome.can_wait:
                outcome = self._backfill(request, outcome, holds, nodes, view, waited)
            current = replace(view, nodes=MappingProxyType(nodes), allocations=MappingProxyType(allocations)) \
                if allocations else None
            borrowed = allocation_decision(request, current, outcome) if current else None
            if borrowed is not None:
                result.placed.append(borrowed.model_copy(update={"waited_s": waited}))
                allocation = next(a for a in allocations.values()
                                  if a.placement_group_id == borrowed.placement_group_id)
                allocations[allocation.id] = allocation.use(borrowed.resources)  # the donor already counts it
                self.group_counts.add(request.group, borrowed.node_id)
                if isinstance(outcome, SchedulingDecision):  # the placer assumed its pick got reserved
                    self._changed(placers, outcome.node_id)
            elif isinstance(outcome, SchedulingDecision):
                result.placed.append(outcome)
                nodes[outcome.node_id] = nodes[outcome.node_id].reserve(outcome.resources, rank=request.priority.rank)
                self.group_counts.add(request.group, outcome.node_id)
                self._changed(placers, outcome.node_id)
            elif outcome.can_wait or (current is not None and may_fit_allocation(request, current)):
                blocked.add(item.signature)
                keep.append(item)
                if isinstance(outcome, NoFit):
                    self._reasons.setdefault(request.group, outcome)
                if isinstance(outcome, NoFit) and outcome.can_wait:
                    self._close_lookahead_below(request.priority.rank, outcome, nodes, placers)
                if isinstance(outcome, NoFit) and outcome.can_wait and self._starving(item):
                    held = self._hold(request, outcome, nodes, view)
                    if held is not None:
                        holds.append(held)
                        self._changed(placers, held.node_id)
            else:
                result.rejected.append(Rejected(request.task_id, request.group, outcome.message))
        self._keep_only(keep)
        for hold in holds:  # a hold lasts one drain: the next one holds again if still needed
            nodes[hold.node_id] = _unheld(nodes[hold.node_id], hold)
        if self._held:  # forget the holds of tasks no longer waiting
            waiting = {item.request.task_id for item in keep}
            self._held = {task_id: node_id for task_id, node_id in self._held.items() if task_id in waiting}
        for signature in placers:  # a group that got nothing needs no (empty) counts kept
            if not self.group_counts.of(signature[0]):
                self.group_counts.forget(signature[0])
        if result.placed:
            result.view = replace(view, nodes=MappingProxyType(nodes), allocations=MappingProxyType(allocations))
        return result

    def _close_lookahead_below(self, rank: int, outcome: NoFit, nodes: dict[str, NodeView],
                               placers: Mapping[Signature, IncrementalPlacer | str]) -> None:
        """A task that waits because nodes are busy keeps work of lower priorities out of those
        nodes' lookahead for the rest of the drain (`check_free_now` opens a node's lookahead to
        one priority only): else lower work, admitted ahead of free capacity, took each slot as
        it freed, and the waiting task, which takes only free capacity there, never saw one."""
        for passed in outcome.rejections:
            node = nodes.get(passed.node_id) if passed.check == "busy" else None
            if node is not None and node.top_rank < rank:
                nodes[passed.node_id] = replace(node, top_rank=rank)
                self._changed(placers, passed.node_id)

    def _give_up_turns(self, request: SchedulingRequest, placer: IncrementalPlacer,
                       placers: Mapping[Signature, IncrementalPlacer | str], nodes: Mapping[str, NodeView],
                       result: DrainResult) -> bool:
        """A job whose next task has waited only for its turn (some node could take it, the
        nodes whose turn it is cannot) for longer than the turn's patience: every node holding
        the turn gives it up. That counts as one of the job's tasks there (so the turn moves
        on), and the drain's `turns_given_up` says so, for the job's counts. True if any did."""
        holders = placer.turn_holders()
        if not holders:
            self._turn_blocked_since.pop(request.group, None)
            return False
        now = self._clock()
        since = self._turn_blocked_since.setdefault(request.group, now)
        if now - since < placer.patience_s(holders):
            return False
        del self._turn_blocked_since[request.group]
        given_up = result.turns_given_up.setdefault(request.group, {})
        for node_id in holders:
            self.group_counts.add(request.group, node_id)
            name = nodes[node_id].name
            given_up[name] = given_up.get(name, 0) + 1
            self._changed(placers, node_id)
        return True

    def _starving(self, item: _Waiting) -> bool:
        return self._starve_after_s is not None and self._clock() - item.enqueued_at >= self._starve_after_s

    def _hold(self, request: SchedulingRequest, outcome: NoFit, nodes: dict[str, NodeView],
              view: ClusterView) -> _Hold | None:
        """Hold a node for a task that waited too long (Slurm's backfill idea): reserve its needs
        there for the rest of this drain, so the tasks queued behind it (lower priority, or
        younger) may only take what the node has beyond it, and what frees there goes to it;
        or work expected to end before it starts there (`_backfill`).

        The node it waits for is, among those it is only too busy for (its turn, freshness and
        lasting checks pass), the one closest to fitting it: the smallest shortfall in any
        resource it needs, then the name; the same node from drain to drain while it qualifies,
        so what frees there is not handed to the queue behind it again. None when it is not only
        waiting for capacity."""
        needs = needs_of(request)
        busy = [nodes[r.node_id] for r in outcome.rejections if r.check == "busy"]
        if not busy:
            return None

        def shortfall(node: NodeView) -> float:
            return max(amount - node.free(name) for name, amount in needs.items())

        node = min(busy, key=lambda node: (node.node_id != self._held.get(request.task_id), shortfall(node), node.name))
        self._held[request.task_id] = node.node_id
        nodes[node.node_id] = node.reserve(needs, tasks=0)
        return _Hold(node.node_id, needs,
                     lambda: expected_start_s(needs, node, view.running(node.node_id), view.durations))

    def _backfill(self, request: SchedulingRequest, outcome: NoFit, holds: list[_Hold], nodes: dict[str, NodeView],
                  view: ClusterView, waited_s: float) -> SchedulingDecision | NoFit:
        """Slurm's backfill: a task that fits nowhere now may still go to a held node, if it
        fits there now beside what runs (its hold aside, at the node's real capacity: it must
        start at once) and its run time measured there ends before the held task is expected
        to start, so it is not expected to delay it (run times are learned averages: one that
        runs long can). The request's own strategy decides, on the view with
        that hold lifted. A task never measured there, or a hold whose start is unknown, gets
        nothing: the hold stays strict. `outcome` when no hold takes it."""
        strict = replace(view, admission=1.0)
        for hold in holds:
            run_s = view.durations.get((hold.node_id, request.task_type))
            if run_s is None:
                continue
            unheld = _unheld(nodes[hold.node_id], hold)
            if check_free_now(request, unheld, PlacementContext(view=strict)) is not None:
                continue  # no room there now: spare the start estimate and the pass over every node
            window_s = _backfill_window_s(holds, hold.node_id)
            if window_s is None or run_s > window_s + 1e-9:
                continue
            trial = replace(strict, nodes=MappingProxyType({**nodes, hold.node_id: unheld}))
            decision = place(request, trial, group_counts=self.group_counts.of(request.group))
            if isinstance(decision, SchedulingDecision) and decision.node_id == hold.node_id and decision.explanation:
                explanation = replace(decision.explanation, summary=(
                    f"{decision.explanation.summary}; backfilled: a task waiting too long holds this node and is "
                    f"expected to start in ~{window_s:.3f}s, this one to end in ~{run_s:.3f}s"))
                return decision.model_copy(update={"waited_s": waited_s, "explanation": explanation,
                                                   "reasons": explanation.reasons()})
        return outcome

    @staticmethod
    def _changed(placers: Mapping[Signature, IncrementalPlacer | str], node_id: str) -> None:
        """Every placer rescoring the node a decision just changed."""
        for placer in placers.values():
            if not isinstance(placer, str):
                placer.node_changed(node_id)

    def _placer(self, request: SchedulingRequest, view: ClusterView,
                nodes: Mapping[str, NodeView]) -> IncrementalPlacer | str:
        """The placer for requests of this kind, or why none can be placed at all."""
        if self._lookahead_s is not None:
            view = replace(view, admission=lookahead_admission(view.group_run_s.get(request.group), self._lookahead_s))
        try:
            return IncrementalPlacer(request, view, nodes, self.group_counts.live(request.group))
        except PlacementError as exc:
            return str(exc)

    def cancel(self, group: str | None = None, task_ids: Iterable[str] = ()) -> list[str]:
        """Drop waiting tasks of `group` and/or with the given ids; returns the dropped ids."""
        wanted = set(task_ids)
        dropped = [item.request.task_id for item in self._waiting
                   if item.request.group == group or item.request.task_id in wanted]
        gone = set(dropped)
        self._keep_only([item for item in self._waiting if item.request.task_id not in gone])
        return dropped

    def forget_group(self, group: str) -> None:
        """A finished job's counts are no longer needed for spreading."""
        if not any(item.request.group == group for item in self._waiting):
            self.group_counts.forget(group)
            self._turn_blocked_since.pop(group, None)
