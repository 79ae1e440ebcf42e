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
from .placement_index import IncrementalPlacer, NodeChanges
from .queues import AT_LIMIT, BORROWS, DEFAULT_QUEUE, WITHIN, FairShares, QueueSettings, cluster_totals, in_fair_order
from .sharing import allocation_decision, may_fit_allocation
from .strategies import (
    LASTING_CHECKS,
    NOT_NOW,
    NoFit,
    PlacementContext,
    PlacementError,
    check_free_now,
    needs_of,
    place,
    strategy_named,
)
from .view import ClusterView, GroupCounts, NodeView, Running

# how far ahead of free capacity a task may be queued inside Ray (`SchedulerCore._rule`)
LOOKAHEAD, UNLESS_SHORT, FREE_NOW = 0, 1, 2
STARVE_AFTER_S = 30.0  # a task waiting this long gets a node held for it (see SchedulerCore._hold)


@dataclass(frozen=True)
class QuotaWait:
    """Why a task waits when no node was even asked: its queue is at its quota plus borrowing limit."""

    message: str
    can_wait: bool = True


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
    queue: str = field(compare=False, default=DEFAULT_QUEUE)


@dataclass(frozen=True)
class Owed:
    """A reclaiming queue's first task that found no node: its priority rank, its needs, how
    many such tasks its quota still covers, and the nodes that turned it away only as busy."""

    rank: int
    needs: Mapping[str, float]
    tasks: int
    busy_nodes: frozenset[str]
    task_id: str = ""


@dataclass
class DrainResult:
    placed: list[SchedulingDecision] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    view: ClusterView | None = None
    # group -> node name -> spread turns the node gave up in this drain (news for the job's counts)
    turns_given_up: dict[str, dict[str, int]] = field(default_factory=dict)
    # node id -> the highest priority rank of the tasks left waiting because the node is busy
    # and holds work of a lower one, with the resources they need (what `SchedulerBooks` may take
    # back there: `grid_serve.take_back`)
    awaited: dict[str, tuple[int, frozenset[str]]] = field(default_factory=dict)
    # queue -> what its quota still owes its waiting work, for a queue that reclaims (`reclaim:
    # cancel_running`) whose work within its quota found every node it may run on busy
    # (`Owed`); `lent` then says what each queue holds beyond its quota
    # (`grid_serve.take_back.to_reclaim`)
    owed: dict[str, Owed] = field(default_factory=dict)
    lent: dict[str, dict[str, float]] = field(default_factory=dict)


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


NO_COUNTS: Mapping[str, int] = MappingProxyType({})  # a job that has placed nothing: its counts per node
# a request kind's placer: its signature (the group left out when every job is placed alike) and admission
PlacerKey = tuple[object, ...]
# the checks whose verdict is the same for every job's task of a kind: a task that only these
# turned away everywhere tells that every other job's task of its kind would be turned away too
_JOB_INDEPENDENT_CHECKS = frozenset(name for name, _ in (*LASTING_CHECKS, *NOT_NOW))


def _same_for_every_job(outcome: NoFit) -> bool:
    return all(rejection.check in _JOB_INDEPENDENT_CHECKS for rejection in outcome.rejections)


def _note_awaited(awaited: dict[str, tuple[int, frozenset[str]]], request: SchedulingRequest, outcome: NoFit,
                  nodes: Mapping[str, NodeView]) -> None:
    """Record the nodes the waiting `request` found busy while they hold work of a lower
    priority (`DrainResult.awaited`)."""
    rank = request.priority.rank
    needs = frozenset(name for name, amount in needs_of(request).items() if amount > 0)
    for passed in outcome.rejections:
        node = nodes.get(passed.node_id) if passed.check == "busy" else None
        if node is None or not 0 <= node.low_rank < rank:
            continue
        known = awaited.get(passed.node_id)
        if known is None or known[0] < rank:
            awaited[passed.node_id] = (rank, needs)
        elif known[0] == rank:
            awaited[passed.node_id] = (rank, known[1] | needs)


def _queue_note(item: _Waiting, shares: FairShares | None, contended: Mapping[float, float],
                standing: int) -> str | None:
    """What its decision's summary says of the item's queue: where it stood in fair share when
    other queues waited at its priority (its share before this task), and against its quota."""
    if shares is None:
        return None
    total_weight = contended.get(item.key[0])
    fair = None if total_weight is None else f"fair share chose it: {shares.describe(item.queue, total_weight)}"
    notes = [note for note in (fair, shares.quota_note(item.queue, standing)) if note]
    return "; ".join(notes) or None


def _counted(decision: SchedulingDecision, item: _Waiting, shares: FairShares | None) -> SchedulingDecision:
    """A placement counted against its queue's share (what the next pick reads)."""
    if shares is not None:
        shares.add(item.queue, decision.resources)
    return decision


def with_note(decision: SchedulingDecision, note: str) -> SchedulingDecision:
    """The decision with `note` added to its explanation's summary (and its reasons)."""
    if decision.explanation is None:
        return decision
    explanation = replace(decision.explanation, summary=f"{decision.explanation.summary}; {note}")
    return decision.model_copy(update={"explanation": explanation, "reasons": explanation.reasons()})


def _queue_of(item: _Waiting) -> str:
    return item.queue


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
                 starve_after_s: float | None = STARVE_AFTER_S, weights: Mapping[str, float] | None = None,
                 quotas: Mapping[str, QueueSettings] | None = None) -> None:
        """`lookahead_s`: each kind of request is admitted up to its lookahead admission
        (`grid_serve.lookahead`); None keeps the view's own fixed `admission`.
        `starve_after_s`: how long a task may wait before a node is held for it (None: never).
        `weights`: each queue's weight in fair share (`grid_serve.queues`; 1 when not named).
        `quotas`: each queue's settings with a quota (`grid_serve.queues`); none: no quotas."""
        self._clock = clock
        self._weights: Mapping[str, float] = dict(weights or {})
        self._quotas = {name: queue for name, queue in (quotas or {}).items() if queue.quota} or None
        self._reclaimers = frozenset(name for name, queue in (self._quotas or {}).items()
                                     if queue.reclaim == "cancel_running")
        self._lookahead_s = lookahead_s
        self._starve_after_s = starve_after_s
        self._held: dict[str, str] = {}  # task id -> the node held for it (it has waited too long)
        self._room_held: dict[str, float] = {}  # task id -> until when room made for it is held (`hold_room`)
        self._turn_blocked_since: dict[str, float] = {}  # group -> when its turn holders began to block it
        self._waiting: list[_Waiting] = []
        self._seq = itertools.count()
        self._queued: dict[str, int] = {}  # group -> tasks waiting
        self._queued_per_queue: dict[str, int] = {}  # queue -> tasks waiting
        self._per_queue_level: dict[tuple[str, TaskPriority], int] = {}  # (queue, priority) -> tasks waiting
        self._oldest_per_queue: dict[str, float] = {}  # queue -> when its oldest waiting task was queued
        # group -> why its next task waited in the last drain (`pending`); its text is made when asked
        self._reasons: dict[str, NoFit | QuotaWait] = {}
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
        """The first `count` of the queue by priority, then age (fair share between queues may
        serve a younger task of another queue first: the forecast replays this order)."""
        return [item.request for item in self._waiting[:count]]

    def why_waiting(self, group: str) -> str | None:
        """Why the group's next task found no node in the last drain, counted per cause."""
        outcome = self._reasons.get(group)
        return outcome.message if outcome is not None else None

    def waits_for_its_quota(self, group: str) -> bool:
        """Whether the group's next task waited in the last drain because its queue is at its
        quota plus borrowing limit (it starts as its own queue's tasks end, not as slots free)."""
        return isinstance(self._reasons.get(group), QuotaWait)

    @property
    def weights(self) -> Mapping[str, float]:
        """Each configured queue's weight (a queue not named weighs 1)."""
        return self._weights

    @property
    def quotas(self) -> Mapping[str, QueueSettings]:
        """The queues with a quota, by name (empty: none has one)."""
        return self._quotas or {}

    def needs_queue_usage(self) -> bool:
        """Whether a drain reads what each queue holds (`ClusterView.queue_usage`): two queues
        have work waiting (fair share), or a queue with a quota has."""
        return len(self._queued_per_queue) > 1 or self._quotas_waiting()

    def _quotas_waiting(self) -> bool:
        """Whether a queue with a quota has work waiting: else quotas change no decision (every
        other queue's work stands alike, and theirs is not queued here)."""
        return self._quotas is not None and any(queue in self._queued_per_queue for queue in self._quotas)

    def waiting_levels(self) -> list[tuple[str, TaskPriority]]:
        """The (queue, priority) pairs with tasks waiting."""
        return list(self._per_queue_level)

    def task_ids_of(self, group: str) -> Iterable[str]:
        """The ids of the group's waiting tasks (a scan: for reads, not for drains)."""
        return (item.request.task_id for item in self._waiting if item.request.group == group)

    def queued_per_queue(self) -> Mapping[str, int]:
        """Tasks waiting per queue; read-only."""
        return MappingProxyType(self._queued_per_queue)

    def waiting_per_queue(self) -> dict[str, tuple[dict[TaskPriority, int], float]]:
        """Per queue: tasks waiting per priority, and how long its oldest has waited (kept as
        tasks come and go, so a status read does not scan the queue)."""
        now = self._clock()
        levels: dict[str, dict[TaskPriority, int]] = {}
        for (queue, priority), count in self._per_queue_level.items():
            levels.setdefault(queue, {})[priority] = count
        return {queue: (counts, max(0.0, now - self._oldest_per_queue[queue])) for queue, counts in levels.items()}

    def _keep_only(self, keep: list[_Waiting]) -> None:
        self._waiting = keep
        self._queued, self._queued_per_queue, self._per_queue_level, self._oldest_per_queue = {}, {}, {}, {}
        for item in keep:
            self._queued[item.request.group] = self._queued.get(item.request.group, 0) + 1
            self._count_in_queue(item)

    def _count_in_queue(self, item: _Waiting) -> None:
        self._queued_per_queue[item.queue] = self._queued_per_queue.get(item.queue, 0) + 1
        level = (item.queue, item.request.priority)
        self._per_queue_level[level] = self._per_queue_level.get(level, 0) + 1
        oldest = self._oldest_per_queue.get(item.queue)
        if oldest is None or item.enqueued_at < oldest:
            self._oldest_per_queue[item.queue] = item.enqueued_at

    def enqueue(self, requests: Iterable[SchedulingRequest], since: Mapping[str, float] | None = None) -> None:
        """Queue `requests`, each aged from now or, for a task queued before (taken back from
        Ray unstarted), from when it first was (`since`, task id -> clock time): it keeps its place."""
        now = self._clock()
        for request in requests:
            at = since.get(request.task_id, now) if since else now
            item = _Waiting((-request.priority.rank, at, next(self._seq)), request, at, _signature(request),
                            request.queue or DEFAULT_QUEUE)
            bisect.insort(self._waiting, item)
            self._queued[request.group] = self._queued.get(request.group, 0) + 1
            self._count_in_queue(item)

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
        placers: dict[PlacerKey, IncrementalPlacer | str | None] = {}  # None: a kind's job-less copy not made yet
        changes = NodeChanges()  # what each decision changed: placers re-read it when next asked
        keys: dict[tuple[Signature, int], tuple[PlacerKey, PlacerKey]] = {}  # (its placer's key, for every job)
        busy_everywhere: dict[PlacerKey, NoFit] = {}  # kinds no node can take now, whatever the job
        blocked: set[Signature] = set()
        keep: list[_Waiting] = []
        holds: list[_Hold] = []  # nodes held for starving tasks, in this drain
        self._reasons = {}
        shares, contended = self._fair_shares(view)
        borrowers = frozenset(shares.lent()) if self._reclaimers and shares is not None else frozenset()
        for item in self._in_serving_order(shares):
            request = item.request
            if item.signature in blocked:
                keep.append(item)
                continue
            standing = shares.standing(item.queue, needs_of(request)) if shares is not None else 0
            if standing == AT_LIMIT and shares is not None:
                never = shares.beyond_cap(item.queue, needs_of(request))
                if never is not None:
                    result.rejected.append(Rejected(request.task_id, request.group, never))
                    continue
                blocked.add(item.signature)  # its queue only grows in this drain: its job's next tasks wait too
                keep.append(item)
                self._reasons.setdefault(request.group, QuotaWait(shares.quota_note(item.queue, standing)
                                                                  or "its queue is at its limit"))
                continue
            rule = self._rule(item, standing, contended, borrowers)
            keys_at = (item.signature, rule)
            key, any_job = keys.get(keys_at) or keys.setdefault(keys_at, self._keys(item, view, rule))
            if any_job in busy_everywhere and self._told_alike(item):  # spare building a placer to hear it
                blocked.add(item.signature)
                keep.append(item)
                self._note_owed(result, item, standing, shares, busy_everywhere[any_job])
                self._reasons.setdefault(request.group, busy_everywhere[any_job])
                self._turn_blocked_since.pop(request.group, None)  # as its turn holders, all busy, would say
                continue
            placer = placers.get(key)
            if placer is None:
                placer = placers[key] = self._placer(request, view, nodes, placers, any_job, changes, rule)
            if isinstance(placer, str):  # the request itself is wrong (unknown node, say)
                result.rejected.append(Rejected(request.task_id, request.group, placer))
                continue
            waited = round(max(0.0, self._clock() - item.enqueued_at), 6)
            note = _queue_note(item, shares, contended, standing)
            outcome = placer.place(request, waited_s=waited, note=note)
            if (isinstance(outcome, NoFit) and outcome.can_wait
                    and self._give_up_turns(request, placer, changes, nodes, result)):
                outcome = placer.place(request, waited_s=waited, note=note)
            elif self._turn_blocked_since and isinstance(outcome, SchedulingDecision):
                self._turn_blocked_since.pop(request.group, None)  # the turn moved: a later wait starts afresh
            if holds and isinstance(outcome, NoFit) and outcome.can_wait:
                outcome = self._backfill(request, outcome, holds, nodes, view, waited)
            current = replace(view, nodes=MappingProxyType(nodes), allocations=MappingProxyType(allocations)) \
                if allocations else None
            borrowed = allocation_decision(request, current, outcome) if current else None
            if borrowed is not None:
                borrowed = borrowed.model_copy(update={"waited_s": waited})
                result.placed.append(_counted(borrowed, item, shares))
                allocation = next(a for a in allocations.values()
                                  if a.placement_group_id == borrowed.placement_group_id)
                allocations[allocation.id] = allocation.use(borrowed.resources)  # the donor already counts it
                self.group_counts.add(request.group, borrowed.node_id)
                if isinstance(outcome, SchedulingDecision):  # the placer assumed its pick got reserved
                    changes.add(outcome.node_id)
            elif isinstance(outcome, SchedulingDecision):
                result.placed.append(_counted(outcome, item, shares))
                nodes[outcome.node_id] = nodes[outcome.node_id].reserve(outcome.resources, rank=request.priority.rank)
                self.group_counts.add(request.group, outcome.node_id)
                changes.add(outcome.node_id)
            elif outcome.can_wait or (current is not None and may_fit_allocation(request, current)):
                blocked.add(item.signature)
                keep.append(item)
                if isinstance(outcome, NoFit):
                    self._note_owed(result, item, standing, shares, outcome)
                if isinstance(outcome, NoFit):
                    self._reasons.setdefault(request.group, outcome)
                if isinstance(outcome, NoFit) and outcome.can_wait:
                    _note_awaited(result.awaited, request, outcome, nodes)
                    self._close_lookahead_below(request.priority.rank, outcome, nodes, changes)
                    if not allocations and not holds and _same_for_every_job(outcome):
                        busy_everywhere[any_job] = outcome
                if isinstance(outcome, NoFit) and outcome.can_wait and self._starving(item):
                    held = self._hold(request, outcome, nodes, view)
                    if held is not None:
                        holds.append(held)
                        busy_everywhere.clear()  # whether a task may backfill there depends on its job
                        changes.add(held.node_id)
            else:
                result.rejected.append(Rejected(request.task_id, request.group, outcome.message))
        if shares is not None:
            keep.sort()  # served queue by queue: back to (priority, age), which bisection reads
            if result.owed:
                result.lent = shares.lent()
        self._keep_only(keep)
        for hold in holds:  # a hold lasts one drain: the next one holds again if still needed
            nodes[hold.node_id] = _unheld(nodes[hold.node_id], hold)
        if self._held:  # forget the holds of tasks no longer waiting
            waiting = {item.request.task_id for item in keep}
            self._held = {task_id: node_id for task_id, node_id in self._held.items() if task_id in waiting}
            self._room_held = {task_id: until for task_id, until in self._room_held.items() if task_id in waiting}
        for signature, _ in keys:  # a group that got nothing needs no (empty) counts kept
            if not self.group_counts.of(signature[0]):
                self.group_counts.forget(signature[0])
        if result.placed:
            result.view = replace(view, nodes=MappingProxyType(nodes), allocations=MappingProxyType(allocations))
        return result

    def _note_owed(self, result: DrainResult, item: _Waiting, standing: int, shares: FairShares | None,
                   outcome: NoFit) -> None:
        """For a blocked item within its quota, of a queue that reclaims: record what that queue is
        still owed for its waiting work, once per queue per drain (its first blocked task is its
        most urgent), and where room could be made for it: the nodes that turned it away only as busy."""
        if (standing != WITHIN or shares is None or item.queue not in self._reclaimers
                or item.queue in result.owed):
            return
        busy = frozenset(passed.node_id for passed in outcome.rejections if passed.check == "busy")
        needs = needs_of(item.request)
        owed = shares.owed(item.queue, needs, self._queued_per_queue.get(item.queue, 1))
        tasks = min((int(owed[name] / needs[name] + 1e-9) for name in owed), default=0)
        if busy and tasks > 0:
            result.owed[item.queue] = Owed(item.request.priority.rank, needs, tasks, busy, item.request.task_id)

    def _fair_shares(self, view: ClusterView) -> tuple[FairShares | None, dict[float, float]]:
        """The queues' shares, and for each priority where more than one queue waits, their
        weights together (read off the per-queue counts, not the queue); (None, {}) when no
        priority has two queues waiting and no queue has a quota: then age alone orders it."""
        if self._quotas_waiting():
            totals = cluster_totals(node.total for node in view.nodes.values() if node.alive and not node.stale)
            return FairShares(view.queue_usage, totals, self._weights, self._quotas), self._contended()
        if len(self._queued_per_queue) < 2:
            return None, {}
        contended = self._contended()
        if not contended:
            return None, {}
        totals = cluster_totals(node.total for node in view.nodes.values() if node.alive and not node.stale)
        return FairShares(view.queue_usage, totals, self._weights), contended

    def _contended(self) -> dict[float, float]:
        """For each priority where more than one queue waits, their weights together."""
        per_level: dict[float, list[str]] = {}
        for queue, priority in self._per_queue_level:
            per_level.setdefault(-priority.rank, []).append(queue)
        return {level: sum(self._weights.get(queue, 1.0) for queue in queues)
                for level, queues in per_level.items() if len(queues) > 1}

    def _in_serving_order(self, shares: FairShares | None) -> Iterable[_Waiting]:
        """The queue as it is served: priority first; at one priority, the queue furthest under
        its fair share first (`grid_serve.queues`), then age."""
        if shares is None:
            return self._waiting

        def tier(queue: str, item: _Waiting) -> int:  # within its quota before borrowing (`grid_serve.queues`)
            return shares.standing(queue, needs_of(item.request))

        tier_of = tier if shares.quotas is not None else None
        levels = (list(level) for _, level in itertools.groupby(self._waiting, key=lambda item: item.key[0]))
        return itertools.chain.from_iterable(in_fair_order(level, _queue_of, shares, _key, tier_of) for level in levels)

    def _close_lookahead_below(self, rank: int, outcome: NoFit, nodes: dict[str, NodeView],
                               changes: NodeChanges) -> None:
        """A task that waits because nodes are busy keeps work of lower priorities out of those
        nodes' lookahead for the rest of the drain (`check_free_now` opens a node's lookahead to
        one priority only): else lower work, admitted ahead of free capacity, took each slot as
        it freed, and the waiting task, which takes only free capacity there, never saw one."""
        for passed in outcome.rejections:
            node = nodes.get(passed.node_id) if passed.check == "busy" else None
            if node is not None and node.top_rank < rank:
                nodes[passed.node_id] = replace(node, top_rank=rank)
                changes.add(passed.node_id)

    def _give_up_turns(self, request: SchedulingRequest, placer: IncrementalPlacer,
                       changes: NodeChanges, nodes: Mapping[str, NodeView],
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
            changes.add(node_id)
        return True

    def _starving(self, item: _Waiting) -> bool:
        """Whether a node is held for the item (`_hold`): it has waited too long, or room is being
        made for it by stopping other queues' tasks (`hold_room`)."""
        room = self._room_held.get(item.request.task_id)
        if room is not None and self._clock() < room:
            return True
        return self._starve_after_s is not None and self._clock() - item.enqueued_at >= self._starve_after_s

    def hold_room(self, task_id: str, node_id: str, for_s: float) -> None:
        """Room is being made on `node_id` for the waiting task (`reclaim: cancel_running`): for
        `for_s`, the node is held for it as for a starving task, so the tasks stopped there, placed
        again, do not take the room back before it fits."""
        self._room_held[task_id] = self._clock() + for_s
        self._held[task_id] = node_id

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
                return with_note(decision.model_copy(update={"waited_s": waited_s}),
                                 f"backfilled: a task waiting too long holds this node and is expected to start in "
                                 f"~{window_s:.3f}s, this one to end in ~{run_s:.3f}s")
        return outcome

    def _told_alike(self, item: _Waiting) -> bool:
        """Whether the item would hear what its kind heard when no node could take it: not when
        it is starving (it may get a node held), nor when its job's own counts could make its
        strategy turn nodes away for another reason first (spread's turn, before busy)."""
        if self._starving(item):
            return False
        request = item.request
        return not strategy_named(request.strategy).reads_job_counts or not self.group_counts.of(request.group)

    def _rule(self, item: _Waiting, standing: int, contended: Mapping[float, float],
              borrowers: frozenset[str] = frozenset()) -> int:
        """How far ahead of free capacity the item may be queued inside Ray (`grid_serve.queues`):
        what a queue borrows beyond its quota, never (it would start before a quota's work queued
        behind it); what a queue that reclaims is owed, never while other queues hold more than
        their quota (`borrowers`): it waits here, and what it waits for is stopped
        (`DrainResult.owed`); what a quota covers, while other queues wait at its priority, only
        if known to be short (committed behind running tasks on one node, it would see a slot
        that frees elsewhere go to their borrowed work first); anything else, its job's lookahead."""
        if item.queue not in self.quotas:
            return LOOKAHEAD
        if standing == BORROWS or (item.queue in self._reclaimers and borrowers - {item.queue}):
            return FREE_NOW
        return UNLESS_SHORT if -item.request.priority.rank in contended else LOOKAHEAD

    def _admission(self, request: SchedulingRequest, view: ClusterView, rule: int = LOOKAHEAD) -> float:
        """How far beyond free capacity the request's kind may be admitted under `rule`: its
        job's lookahead at most, none for a task not known to be short while work it goes
        before waits (`_lower_waits`, `_rule`)."""
        if rule == FREE_NOW:
            return 1.0
        if self._lookahead_s is None:
            return view.admission
        run_s = view.group_run_s.get(request.group)
        if (run_s is None or run_s >= self._lookahead_s) and (
                rule == UNLESS_SHORT or self._lower_waits(request.priority.rank)):
            return 1.0
        return lookahead_admission(run_s, self._lookahead_s)

    def _lower_waits(self, rank: int) -> bool:
        """Whether lower-priority work waits here. Then a task not known to be short is placed
        only into capacity free now: queued inside Ray behind its own priority's work on one
        node, it is committed there, while a slot that frees elsewhere first goes to the lower
        work (seen in CI: two high tasks queued behind two others on gpu-master, and 40 ms later
        gpu1 and gpu2 freed and started low work 0.5 s before them). Waiting here, it takes the
        first slot that frees on any node. A short task's lookahead costs at most `lookahead_s`."""
        return self.waiting_at_or_above(rank) < len(self._waiting)

    def _keys(self, item: _Waiting, view: ClusterView, rule: int = LOOKAHEAD) -> tuple[PlacerKey, PlacerKey]:
        """The key of the placer the item's kind is placed by, and its key for every job alike.
        A strategy that does not read the job's own counts (load_balanced, pack) places tasks of
        every job alike: they share one placer, so a drain over many jobs builds one, not one per
        job (each building is a pass over every node)."""
        any_job: PlacerKey = ("", *item.signature[1:], self._admission(item.request, view, rule))
        if strategy_named(item.request.strategy).reads_job_counts:
            return (item.signature[0], *any_job[1:]), any_job
        return any_job, any_job

    def _placer(self, request: SchedulingRequest, view: ClusterView, nodes: Mapping[str, NodeView],
                placers: dict[PlacerKey, IncrementalPlacer | str | None], any_job: PlacerKey,
                changes: NodeChanges, rule: int = LOOKAHEAD) -> IncrementalPlacer | str:
        """The placer for requests of this kind, or why none can be placed at all. Jobs that
        have placed nothing yet, of a strategy that reads each job's counts: the first builds its
        own; from the second on, each gets a copy of the kind's placer for such a job (kept
        under `any_job`, built once per drain)."""
        if self._lookahead_s is not None or rule == FREE_NOW:
            view = replace(view, admission=self._admission(request, view, rule))
        try:
            fresh = strategy_named(request.strategy).reads_job_counts and not self.group_counts.of(request.group)
            if fresh and any_job in placers:
                template = placers[any_job]
                if template is None:  # the second such job: from now on they copy
                    template = placers[any_job] = IncrementalPlacer(request, view, nodes, NO_COUNTS, changes=changes)
                if isinstance(template, str):
                    return template
                return template.for_job(self.group_counts.live(request.group))
            if fresh:
                placers[any_job] = None  # one such job so far: it builds its own, as a lone job does
            return IncrementalPlacer(request, view, nodes, self.group_counts.live(request.group), changes=changes)
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
