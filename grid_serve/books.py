"""The Scheduler's books: what is queued, placed and owned, and every change to them.

One pure object (no Ray, no asyncio) with named transitions, one per message of
`grid_serve.protocol` and one per input of the Scheduler's tick, so the whole exchange between
a job's owner and the Scheduler can be driven in a table test without a cluster
(tests/test_books.py). The Scheduler deployment (`deployments/scheduler.py`) is its shell: it
holds the lock, makes the remote calls (node snapshots, the runner asks, publishing), wakes
long-polls for the groups `take_woken` names, and calls these.

What the books hold, and the invariant `check()` asserts after every transition in tests:
  - `core`: the queue and each group's per-node counts (exact spread);
  - `ledger`: what is reserved where, and learned run times;
  - `owners`: each job's owner lease;
  - `meta`: what the Scheduler knows of each live task id. A task id is in `meta` exactly when
    it is queued or reserved, so a task the owner reports twice, or one that was rejected,
    reclaimed or cancelled, frees nothing twice;
  - `unsent`: tasks an owner holds back beyond its window (they count toward the queue's cap);
  - `outbox`: each group's news until its owner collects it (`collect`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping

from .access import Caller, may_touch, refusal_to_touch, schedule_quota_of
from .decision_log import DecisionLog
from .errors import ForbiddenError, InvalidRequestError, TooBusyError
from .ledger import EXTERNAL_PREFIX, Completion, Ledger, Reservation
from .limits import Limits
from .models import (
    ClusterStatus,
    Explanation,
    JobPending,
    NodeScores,
    NodeStatus,
    QueueLevel,
    QueueStatus,
    SchedulingDecision,
    SchedulingRequest,
    SchedulingStrategy,
    TaskPriority,
)
from .owners import Owners
from .pending import REPLAY_LIMIT, PendingInputs
from .protocol import Adopt, Finished, Placements, Report, Reuse, Submit
from .queues import DEFAULT_QUEUE, FairShares, QueueSettings, cluster_totals, held_beyond
from .scheduling import DrainResult, Rejected, SchedulerCore
from .sharing import Allocation, fold_allocations
from .take_back import beyond_total, shift, to_reclaim, to_take_back
from .view import ClusterView, view_from

RECLAIM_PATIENCE_S = 5.0  # a stop asked and not handed back in this long is asked again (`_reclaim`)
PINNED = str(SchedulingStrategy.NODE_SPECIFIC)  # as the ledger records it: never reclaimed, it could not move

logger = logging.getLogger("ray.serve")  # the Scheduler replica's log, where its operators read

SNAPSHOT_TRUST_INTERVALS = 5  # a node snapshot older than this many intervals (and 10 s) is not trusted
MIN_SNAPSHOT_TRUST_S = 10.0
LOST_NODE_S = 30.0  # a node a runner saw die stays out this long unless Ray's table agrees sooner

# placed (each with its priority), decided, seconds, and the queue: (priority, waiting, oldest's wait) per priority
DrainObserver = Callable[[list[tuple[SchedulingDecision, TaskPriority]], int, float,
                          list[tuple[TaskPriority, int, float]]], None]


@dataclass
class _News:
    """What a group got since it last asked, gathered until its owner collects it as `Placements`."""

    placed: list[SchedulingDecision] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    turns_given_up: dict[str, int] = field(default_factory=dict)
    take_back: list[str] = field(default_factory=list)
    reclaim: list[str] = field(default_factory=list)


@dataclass
class _Meta:
    task_type: str
    group: str
    lease_s: float | None
    priority: TaskPriority = TaskPriority.NORMAL
    owner: str | None = None  # who may complete a /v1/schedule reservation (grid_serve.access)
    request_key: str | None = None  # the /v1/schedule request that made it (`on_abandoned`)
    runner: bool = False  # a job runner's task (not a /v1/schedule caller's)
    queue: str = DEFAULT_QUEUE  # the queue it waits in (grid_serve.queues)
    queued_at: float = 0.0  # when it was first queued (clock): taken back and queued again, it keeps its age


class SchedulerBooks:
    """The Scheduler's state and its transitions. Not thread-safe: its shell serialises calls."""

    def __init__(self, *, epoch: str, lease_s: float, tick_s: float, lookahead_s: float | None,
                 admission: float = 1.0, limits: Limits | None = None, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, on_drain: DrainObserver | None = None,
                 queues: Mapping[str, QueueSettings] | None = None) -> None:
        """`lookahead_s` None keeps the fixed `admission`; `clock` orders leases and waits,
        `wall` dates node snapshots (the MetricsCollector stamps them with wall time);
        `queues`: the configured queues' weights and quotas (`grid_serve.queues`)."""
        self.epoch = epoch
        self.tick_s = tick_s
        self.limits = limits or Limits()
        self._for_callers: set[str] = set()  # /v1/schedule task ids (some may have ended: `_check_caller_room`)
        self.admission = admission
        self.core = SchedulerCore(clock=clock, lookahead_s=lookahead_s, quotas=queues,
                                  weights={name: queue.weight for name, queue in (queues or {}).items()})
        self.ledger = Ledger(clock=clock)
        self.owners = Owners(lease_s=lease_s, tick_s=tick_s, clock=clock)
        self.log = DecisionLog()  # what was decided lately and why: for /v1/decisions and the web page
        self.meta: dict[str, _Meta] = {}
        self.unsent: dict[str, tuple[int, TaskPriority]] = {}  # group -> tasks its owner holds back (its window)
        self.outbox: dict[str, _News] = {}
        self.nodes: list[NodeStatus] = []
        self.nodes_at = 0.0
        self.allocations: list[Allocation] = []  # held by borrowers: reserved on their donors
        self._lost_nodes: dict[str, float] = {}  # node id -> until when it stays out (clock)
        self._woken: set[str] = set()
        self._takes_back: set[str] = set()  # groups whose owners take back unstarted tasks when asked
        # task id -> group: asked back, no report from its owner since (then asked again if still
        # needed: the owner ignores an ask it already acted on, and an ask it refused, a chunk's
        # or one that came late, no longer counts as leaving)
        self._taking_back: dict[str, str] = {}
        # task id -> (group, when asked, its reservation's made_at): running tasks asked to stop
        self._reclaiming: dict[str, tuple[str, float, float]] = {}
        self.callers_version = 0  # grows whenever a /v1/schedule reservation is made or ends (`held_for_callers`)
        self._distrusted = False  # the node snapshot is too old: said once in the log per episode
        self._clock, self._wall = clock, wall
        self._on_drain = on_drain

    # ------------------------------------------------------------------ the tick's inputs

    def on_nodes(self, nodes: list[NodeStatus], taken_at: float) -> None:
        """A node snapshot from the MetricsCollector (taken at wall time `taken_at`)."""
        self.nodes, self.nodes_at = nodes, taken_at

    def on_allocations(self, allocations: list[Allocation] | None) -> None:
        """The SharingManager's allocations; None (it is restarting) keeps the last known."""
        if allocations is not None:
            self.allocations = allocations

    def on_leases_checked(self, overdue: Iterable[str], held: set[str]) -> list[str]:
        """The tick's lease check: of the `overdue` groups, those whose runner answered that it
        still holds them (`held`) are renewed, the rest reclaimed with everything they held;
        /v1/schedule reservations whose lease ran out are released. Returns the groups reclaimed."""
        if held:
            logger.warning("job(s) %s: no lease renewal came for %g s, but the runner answers that it holds "
                           "them: kept", ", ".join(sorted(held)), self.owners.lease_s)
            self.owners.renew(held)
        reclaimed = self.owners.reclaim(group for group in overdue if group not in held)
        for group in reclaimed:
            logger.warning("job %s: %s", group, self.owners.gone.get(group))
            self._drop_group(group)
        for reservation in self.ledger.expire():  # /v1/schedule callers that never reported
            self._forget_lone_decision(reservation.task_id)
        self._drain()
        return reclaimed

    def on_sharing_changed(self, allocations: list[Allocation] | None) -> None:
        """An allocation was granted or ended: place what it allows."""
        self.on_allocations(allocations)
        self._drain()

    # ------------------------------------------------------------------ an owner's messages

    def on_submitted(self, message: Submit) -> Placements:
        """A new group's requests: queued, and what fits placed now. Raises TooBusyError (429) or
        InvalidRequestError when the queue cannot take them; refuses a live task id."""
        requests, runner = message.requests, message.runner
        groups = {request.group for request in requests}
        if len(groups) != 1:
            raise ValueError("submit() takes the requests of one job (one group) at a time")
        group = groups.pop()
        self._check_queue_room(len(requests) + message.unsent)
        if runner is None:
            self._check_caller_room(schedule_quota_of(message.owner), len(requests))
        duplicates = [request for request in requests if request.task_id in self.meta]
        if duplicates:  # a live task id: a second reservation would overwrite the first's
            return Placements(rejected=[Rejected(r.task_id, r.group, f"task id {r.task_id!r} is already reserved "
                                                 "or waiting; give each task its own id") for r in duplicates],
                              epoch=self.epoch)
        if runner is not None:
            self.owners.register(group, runner)
        if message.takes_back:
            self._takes_back.add(group)
        self._hold_back(group, message.unsent, requests[0].priority)
        now = self._clock()
        for request in requests:
            self.meta[request.task_id] = _Meta(request.task_type, group, message.lease_s, request.priority,
                                               message.owner, message.request_key, runner=runner is not None,
                                               queue=request.queue or DEFAULT_QUEUE, queued_at=now)
        if runner is None:
            self._for_callers.update(request.task_id for request in requests)
        self._drain(requests)
        return self.collect(group)

    def on_reported(self, message: Report) -> Placements:
        """An owner's batch of news: release what ended, release and uncount what it handed back
        unused (spread stays exact), leave out the nodes it saw die, and queue `requeue`. A
        group these books do not know (reclaimed, or this Scheduler restarted) gets nothing
        queued or placed: the reply says unknown, and its owner adopts it with all it holds
        (placed now, beside what already runs unreserved, a job ran twice its share)."""
        group, requeue = message.group, message.requeue
        if self._taking_back:
            self._taking_back = {task_id: of for task_id, of in self._taking_back.items() if of != group}
        rank = self._reuse(group, message.reused)  # first: a slot reused and its next call's end may share a report
        released = self._release(message.ended)
        if rank is None and released:
            rank = released[0].rank
        first_queued = {task_id: self.meta[task_id].queued_at for task_id in message.returned if task_id in self.meta}
        for reservation in self._release([Completion.model_construct(task_id=task_id, ok=False, duration_s=None)
                                          for task_id in message.returned]):
            self.core.group_counts.add(group, reservation.node_id, -1)
        for node_id in message.lost_nodes:
            logger.warning("node %s lost a task of job %s: no new work goes there", node_id[:12], group)
            self._lost_nodes[node_id] = self._clock() + LOST_NODE_S
        if self.owners.renew([group]):
            self._drain()
            return self.collect(group)
        self._hold_back(group, message.unsent, requeue[0].priority if requeue else None)
        fresh = [request for request in requeue if request.task_id not in self.meta]
        now = self._clock()
        for request in fresh:
            self.meta[request.task_id] = _Meta(request.task_type, group, None, request.priority, runner=True,
                                               queue=request.queue or DEFAULT_QUEUE,
                                               queued_at=first_queued.get(request.task_id, now))
        self._drain(fresh, first_queued)
        return self.collect(group, reuse=None if rank is None else self.may_reuse(group, rank))

    def on_adopted(self, message: Adopt) -> Placements:
        """A group registered again with all it holds: what runs reserved where it runs, what it
        placed counted per node (spread stays exact), what waits queued. Replaces whatever the
        books had of it (an adopt that crosses a report)."""
        group, waiting = message.group, message.waiting
        self._drop_group(group)
        self.owners.register(group, message.runner)
        if message.takes_back:
            self._takes_back.add(group)
        priority = message.priority or (waiting[0].priority if waiting else TaskPriority.NORMAL)
        queue = message.queue or (waiting[0].queue if waiting else None) or DEFAULT_QUEUE
        self._hold_back(group, message.unsent, priority)
        for decision, task_type in message.running:
            self.meta[decision.task_id] = _Meta(task_type, group, None, priority, runner=True, queue=queue,
                                                queued_at=self._clock())
            self.ledger.reserve(decision.task_id, decision.node_id, decision.resources, task_type=task_type,
                                group=group, strategy=str(decision.strategy),
                                placement_group_id=decision.placement_group_id, rank=priority.rank, queue=queue)
        for node_id, count in message.placed_per_node.items():
            self.core.group_counts.add(group, node_id, count)
        fresh = [request for request in waiting if request.task_id not in self.meta]
        now = self._clock()
        for request in fresh:
            self.meta[request.task_id] = _Meta(request.task_type, group, None, request.priority, runner=True,
                                               queue=request.queue or queue, queued_at=now)
        self._drain(fresh)
        return self.collect(group)

    def on_renewed(self, groups: Iterable[str]) -> list[str]:
        """Owners' heartbeat: extends the leases; returns the groups unknown here (to adopt)."""
        return self.owners.renew(groups)

    def on_cancelled(self, group: str) -> list[str]:
        """The group's waiting tasks dropped (running ones are its owner's to cancel); their ids."""
        self.unsent.pop(group, None)
        return self._drop_waiting(group)

    def on_finished(self, group: str, reason: str | None = None, completions: Iterable[Completion] = ()) -> None:
        """The group's job is over: learn from its last ends, release whatever it still held,
        forget its counts, outbox and lease."""
        self.on_groups_ended([Finished(group=group, completions=list(completions), reason=reason)])

    def on_groups_ended(self, finished: Iterable[Finished]) -> None:
        """Several groups over at once (`on_finished` for each, one drain for the room they freed)."""
        for one in finished:
            self._release(one.completions)
            self._drop_group(one.group)
            self.owners.forget(one.group, one.reason)
        self._drain()

    def on_completed(self, completions: list[Completion]) -> int:
        """Tasks ended (a /v1/schedule caller's): released, and waiting tasks placed in the room."""
        released = self._release(completions)
        self._drain()
        return len(released)

    def on_abandoned(self, task_id: str, request_key: str) -> bool:
        """A /v1/schedule request whose caller left before its answer (nobody holds its owner key):
        released, or dropped from the queue, if it is still the one that `request_key` made; a
        duplicate that was refused leaves the first request's reservation alone."""
        meta = self.meta.get(task_id)
        if meta is None or meta.runner or meta.request_key != request_key:
            return False
        self._drop_group(task_id)  # its reservation (counted as kept: callers_version) or its place in the queue
        self._drain()
        return True

    def check_may_complete(self, completion: Completion, caller: Caller | None) -> bool:
        """Whether `completion` names a leased /v1/schedule reservation (a job's tasks are released
        by its own runner, never by a guess at their ids); ForbiddenError unless `caller` owns it."""
        meta = self.meta.get(completion.task_id)
        if meta is None or meta.lease_s is None:
            return False
        if not may_touch(caller, meta.owner):
            what = f"reservation {completion.task_id.removeprefix(EXTERNAL_PREFIX)}"
            raise ForbiddenError(refusal_to_touch(meta.owner, what), field="task_id")
        return True

    # ------------------------------------------------------------------ /v1/schedule reservations kept

    def held_for_callers(self) -> list[dict[str, Any]]:
        """The /v1/schedule reservations (each its own group, no runner holds them), as plain data
        to keep outside this process: a restarted Scheduler takes them back (`on_restored`), so a
        caller's reserved node stays reserved and its `complete` still finds it. Lease ends as
        wall time, since the next process's monotonic clock is another one."""
        now, wall = self._clock(), self._wall()
        held = []
        for task_id, reservation in self.ledger.reservations.items():
            meta = self.meta.get(task_id)
            if meta is None or meta.runner or reservation.lease_until is None:
                continue
            held.append({"task_id": task_id, "node_id": reservation.node_id, "resources": dict(reservation.resources),
                         "task_type": reservation.task_type, "priority": meta.priority.value, "owner": meta.owner,
                         "queue": meta.queue,
                         "placement_group_id": reservation.placement_group_id,
                         "lease_ends_at": wall + (reservation.lease_until - now)})
        return held

    def on_restored(self, held: Iterable[dict[str, Any]]) -> int:
        """Take back what `held_for_callers` kept (a predecessor's); leases that ran out meanwhile
        are not. Returns how many were restored."""
        wall = self._wall()
        restored = 0
        for record in held:
            remaining = float(record["lease_ends_at"]) - wall
            task_id = record["task_id"]
            if remaining <= 0 or task_id in self.meta:
                continue
            priority = TaskPriority(record["priority"])
            queue = record.get("queue") or DEFAULT_QUEUE  # kept by a predecessor that knew no queues: the default
            self.meta[task_id] = _Meta(record["task_type"], task_id, remaining, priority, record.get("owner"),
                                       queue=queue)
            self._for_callers.add(task_id)
            self.ledger.reserve(task_id, record["node_id"], record["resources"], task_type=record["task_type"],
                                group=task_id, lease_s=remaining, placement_group_id=record.get("placement_group_id"),
                                rank=priority.rank, queue=queue)
            restored += 1
        if restored:
            self.callers_version += 1
        return restored

    # ------------------------------------------------------------------ news

    def has_news(self, group: str) -> bool:
        return group in self.outbox

    def take_woken(self) -> set[str]:
        """Groups that got news since the last call: their long-polls are to be woken."""
        woken, self._woken = self._woken, set()
        return woken

    def collect(self, group: str, reuse: bool | None = None) -> Placements:
        """The group's news, taken out of the outbox."""
        news = self.outbox.pop(group, _News())
        self._woken.discard(group)  # taken with this reply: a long-poll has nothing to wake for
        return Placements(placed=news.placed, rejected=news.rejected, turns_given_up=news.turns_given_up,
                          queued=self.core.queued_by_group().get(group, 0), epoch=self.epoch,
                          known=self.owners.knows(group) or group in self.meta,
                          run_s=self._learned_run_s(news.placed[0].task_id) if news.placed else {}, reuse=reuse,
                          take_back=news.take_back, reclaim=news.reclaim)

    def may_reuse(self, group: str, rank: int) -> bool:
        """Whether `group` (of priority `rank`) may run its next calls in the slots its ended
        calls free without asking: only while no other job's work waits at its priority or
        above (queued here, or held back by its owner), since that work came first or matters
        more. Conservative: work that could never use those nodes also stops reuse."""
        others = self.core.waiting_at_or_above(rank) - self.core.queued_by_group().get(group, 0)
        held_back = sum(count for other, (count, priority) in self.unsent.items()
                        if other != group and priority.rank >= rank)
        return others + held_back == 0

    # ------------------------------------------------------------------ reading

    @property
    def needs_nodes(self) -> bool:
        """No node snapshot yet: a drain now would read every task as never fitting."""
        return not self.nodes

    def queued_total(self) -> int:
        """Tasks waiting: in the queue, and held back by owners beyond their windows."""
        return len(self.core) + sum(count for count, _ in self.unsent.values())

    def status(self) -> ClusterStatus:
        """Nodes with their reservations folded in, and the queue per priority."""
        view = self.view()
        nodes = []
        for status in self.trusted_nodes():
            node = view.nodes.get(status.node_id)
            nodes.append(status.model_copy(update={"reserved": dict(node.reserved) if node else {},
                                                   "in_flight": node.in_flight if node else 0}))
        return ClusterStatus(nodes=nodes, queued=self.queued_total(), queue=self.queue_levels(),
                             queues=self.queue_statuses(view), jobs_running=len(self.owners),
                             snapshot_age_s=max(0.0, self._wall() - self.nodes_at))

    def queue_statuses(self, view: ClusterView | None = None) -> list[QueueStatus]:
        """Each queue with work (waiting or running) and each configured one, by name."""
        view = view or self.view()
        waiting = self.core.waiting_per_queue()
        loads = self.ledger.queue_loads()
        weights = self.core.weights
        quotas = self.core.quotas
        names = sorted(set(waiting) | set(loads) | set(weights) | set(quotas))
        usage = {name: load.reserved for name, load in loads.items()}
        shares = FairShares(usage, cluster_totals(node.total for node in view.nodes.values()
                                                  if node.alive and not node.stale), weights)
        active = [name for name in names if name in waiting or name in loads]
        total_weight = sum(shares.weight(name) for name in active) or 1.0
        statuses = []
        for name in names:
            counts, oldest = waiting.get(name, ({}, 0.0))
            load = loads.get(name)
            dominant, share = shares.dominant(name)
            statuses.append(QueueStatus(
                name=name, weight=shares.weight(name), waiting=counts, running=load.in_flight if load else 0,
                holds=dict(load.reserved) if load else {}, dominant=dominant or None, share=round(share, 4),
                fair_share=round(shares.weight(name) / total_weight, 4) if name in active else 0.0,
                oldest_wait_s=round(oldest, 3), **self._quota_of(quotas.get(name), load.reserved if load else {})))
        return statuses

    @staticmethod
    def _quota_of(settings: QueueSettings | None, holds: Mapping[str, float]) -> dict[str, dict[str, float]]:
        """A queue's quota and what it holds beyond it (`QueueStatus.quota`, `.borrowed`)."""
        if settings is None:
            return {}
        borrowed = {name: round(amount, 6) for name, amount in held_beyond(settings.quota, holds).items()
                    if name in settings.quota}
        return {"quota": dict(settings.quota), "borrowed": borrowed}

    def queue_levels(self) -> list[QueueLevel]:
        """Waiting tasks per priority, highest first, counting what owners hold back beyond their
        windows (it waits as much as what the queue holds; the oldest wait is the queue's)."""
        levels = {priority: [tasks, wait] for priority, tasks, wait in self.core.waiting_by_priority()}
        for count, priority in self.unsent.values():
            levels.setdefault(priority, [0, 0.0])[0] += count
        return [QueueLevel(priority=priority, tasks=tasks, oldest_wait_s=round(wait, 3))
                for priority, (tasks, wait) in sorted(levels.items(), key=lambda item: -item[0].rank)]

    def pending(self, group: str) -> JobPending | None:
        """Why `group`'s queued tasks wait, what is ahead of them, and when they are expected to
        start and end (`grid_serve.pending`); None when none of its tasks waits here."""
        inputs = self.pending_inputs(group)
        return inputs.forecast() if inputs is not None else None

    def pending_inputs(self, group: str) -> PendingInputs | None:
        """What `pending` replays, copied, so that the replay can run off the Scheduler's lock:
        the first REPLAY_LIMIT + 1 of the queue, what runs per node, the run times learned."""
        waiting = self.core.queued_by_group().get(group, 0)
        if not waiting:
            return None
        view = self.view()
        return PendingInputs(group=group, queue=self.core.waiting_prefix(REPLAY_LIMIT + 1), waiting=waiting,
                             held_back=self.unsent.get(group, (0, TaskPriority.NORMAL))[0],
                             reason=self.core.why_waiting(group), nodes=list(view.nodes.values()),
                             running=self.ledger.running_everywhere(), durations=dict(view.durations),
                             group_run_s=dict(view.group_run_s), fair_share=self._fair_share_standing(group, view),
                             at_quota_limit=self.core.waits_for_its_quota(group))

    def _fair_share_standing(self, group: str, view: ClusterView) -> str | None:
        """Where the group's queue stands, when other queues wait at its priority too: over its
        fair share, their tasks go first; under it, its tasks go before older ones of theirs."""
        meta = next((self.meta[task_id] for task_id in self.core.task_ids_of(group)), None)
        if meta is None:
            return None
        rivals = [queue for queue, priority in self.core.waiting_levels() if priority == meta.priority]
        if len(set(rivals)) < 2:
            return None
        statuses = {status.name: status for status in self.queue_statuses(view)}
        mine = statuses[meta.queue]
        fair = sum(statuses[queue].weight for queue in set(rivals))
        entitled = mine.weight / fair
        held = f"{mine.share:.0%} of the {mine.dominant}" if mine.dominant else "nothing"
        order = ("the other queues' tasks at its priority go first" if mine.share / mine.weight * fair > 1.0 + 1e-9
                 else "its tasks go before older ones of queues holding more")
        return (f"queue {meta.queue} holds {held} against a fair share of {entitled:.0%} "
                f"(weight {mine.weight:g} of {fair:g}): {order}")

    def trusted_nodes(self) -> list[NodeStatus]:
        """The nodes, every one marked stale when the snapshot is too old to trust (the collector
        or Ray's state calls stalled): a stale node gets no new work."""
        age = self._wall() - self.nodes_at
        limit = max(MIN_SNAPSHOT_TRUST_S, SNAPSHOT_TRUST_INTERVALS * self.tick_s)
        if age <= limit or not self.nodes:
            if self._distrusted:
                logger.warning("the node snapshot is fresh again (%.1f s old): placing work again", age)
            self._distrusted = False
            return self.nodes
        if not self._distrusted:
            logger.warning("the MetricsCollector's node snapshot is %.0f s old (trusted up to %.0f s): every node "
                           "counts as stale, so no new work is placed until a fresh one arrives", age, limit)
            self._distrusted = True
        return [node.model_copy(update={"stale": True}) for node in self.nodes]

    def view(self) -> ClusterView:
        """What placement reads: trusted nodes, the ledger's reservations, lost nodes left out,
        borrowed capacity folded in."""
        ledger = self.ledger.snapshot()
        view = self._without_lost_nodes(view_from(self.trusted_nodes(), ledger, self.admission, self.nodes_at))
        return replace(fold_allocations(view, self.allocations, ledger.group_loads), running=self.ledger.running_on,
                       queue_usage=self._queue_usage())

    def check(self) -> None:
        """The invariants every transition keeps (asserted by the table tests)."""
        queued = self.core.task_ids()
        reserved = set(self.ledger.reservations)
        assert set(self.meta) == queued | reserved, ("meta is not queued | reserved",
                                                     set(self.meta) ^ (queued | reserved))
        assert not queued & reserved, ("queued and reserved at once", queued & reserved)
        unowned = {m.group for m in self.meta.values() if m.runner and not self.owners.knows(m.group)}
        assert not unowned, ("a runner's tasks with no owner lease", unowned)
        assert all(count > 0 for count, _ in self.unsent.values()), self.unsent

    # ------------------------------------------------------------------ internals

    def _drain(self, submitted: list[SchedulingRequest] | None = None,
               since: dict[str, float] | None = None) -> None:
        """Queue `submitted` (if any; aged from `since` where it names them), place whatever
        fits, reserve it and hand it out; ask back unstarted lower work where higher work waits."""
        submitted = submitted or []
        if not submitted and not len(self.core):
            return
        began = time.perf_counter()
        self.core.enqueue(submitted, since)  # first: the view's per-queue usage is read once two queues wait
        result = self.core.drain(self.view())
        if self._on_drain is not None:
            self._on_drain(self._with_priorities(result.placed), len(result.placed) + len(result.rejected),
                           time.perf_counter() - began, self.core.waiting_by_priority())
        self._commit(result)
        if result.awaited and self._takes_back and result.view is not None:
            self._ask_back(result.awaited, result.view)
        if result.owed and self._takes_back:
            self._reclaim(result)

    def _reclaim(self, result: DrainResult) -> None:
        """Ask owners to stop running tasks of queues beyond their quota, so that a queue that
        reclaims (`reclaim: cancel_running`) gets room for what its quota owes its waiting work,
        on nodes that turned it away only as busy (`grid_serve.take_back.to_reclaim`); each task
        is placed again by its owner. A stop asked and not yet handed back counts as room coming
        (and no longer as lent) until its reservation goes, or for `RECLAIM_PATIENCE_S` (then it
        may be asked again: its owner could not stop it). One scan of the reservations, made only
        while such a queue's work finds its nodes busy."""
        now = self._clock()
        view = result.view or self.view()
        nodes = set().union(*(owed.busy_nodes for owed in result.owed.values())) & set(view.nodes)
        self._reclaiming = {task_id: (group, at, made_at) for task_id, (group, at, made_at) in self._reclaiming.items()
                            if now - at < RECLAIM_PATIENCE_S and task_id in self.ledger.reservations
                            and self.ledger.reservations[task_id].made_at == made_at}  # not its next placement's
        room = {node_id: {name: view.nodes[node_id].free(name) for name in view.nodes[node_id].total}
                for node_id in nodes}
        lent = {queue: dict(amounts) for queue, amounts in result.lent.items()}
        candidates: list[Reservation] = []
        for reservation in self.ledger.reservations.values():
            leaving = reservation.task_id in self._reclaiming or reservation.task_id in self._taking_back
            if leaving and reservation.queue in lent:  # on its way out, wherever it runs: no longer lent
                shift(lent[reservation.queue], reservation.resources, -1)
            if reservation.node_id not in room:
                continue
            if leaving:
                shift(room[reservation.node_id], reservation.resources, 1)  # room coming
            elif (reservation.queue in lent and reservation.group in self._takes_back
                  and reservation.placement_group_id is None and reservation.strategy != PINNED):
                candidates.append(reservation)
        for queue, owed in result.owed.items():
            mine = [c for c in candidates if c.queue != queue and c.node_id in owed.busy_nodes]
            stops = to_reclaim(owed.rank, owed.needs, owed.tasks,
                               {node_id: room[node_id] for node_id in owed.busy_nodes if node_id in room}, lent, mine)
            if stops:  # the first owed task's room: held for it until it fits (or the stops' patience runs out)
                self.core.hold_room(owed.task_id, stops[0].node_id, RECLAIM_PATIENCE_S)
            for reservation in stops:  # `to_reclaim` left `room` and `lent` as a second owed queue reads them
                self._reclaiming[reservation.task_id] = (reservation.group, now, reservation.made_at)
                self._deliver(reservation.group).reclaim.append(reservation.task_id)
                candidates.remove(reservation)

    def _ask_back(self, awaited: dict[str, tuple[int, frozenset[str]]], view: ClusterView) -> None:
        """Ask owners to take back their unstarted tasks on the nodes higher-priority work waits
        for (`grid_serve.take_back`), each task once until its owner's next report. One scan of
        the reservations, made only while such work waits on a node reserved beyond its total."""
        totals = {node_id: {name: view.nodes[node_id].total.get(name, 0.0) for name in needs}
                  for node_id, (_, needs) in awaited.items() if node_id in view.nodes}
        over_total = dict.fromkeys(node_id for node_id, total in totals.items()
                                   if beyond_total(total, view.nodes[node_id].reserved))  # in order, O(1) to test
        if not over_total:
            return
        candidates: dict[str, list[Reservation]] = {}
        leaving: dict[str, list[Reservation]] = {}
        for reservation in self.ledger.reservations.values():
            if reservation.node_id not in over_total or reservation.placement_group_id is not None:
                continue
            if reservation.task_id in self._taking_back:
                leaving.setdefault(reservation.node_id, []).append(reservation)
            elif reservation.group in self._takes_back:
                candidates.setdefault(reservation.node_id, []).append(reservation)
        for node_id in over_total:
            if node_id not in candidates:
                continue
            over = beyond_total(totals[node_id], view.nodes[node_id].reserved, leaving.get(node_id, ()))
            for reservation in to_take_back(awaited[node_id][0], over, candidates[node_id]):
                self._taking_back[reservation.task_id] = reservation.group
                self._deliver(reservation.group).take_back.append(reservation.task_id)

    def _commit(self, result: DrainResult) -> None:
        """Reserve what was placed, then hand each group its news (placements, rejections, spread
        turns its nodes gave up)."""
        for decision in result.placed:
            meta = self.meta[decision.task_id]
            self.ledger.reserve(decision.task_id, decision.node_id, decision.resources, task_type=meta.task_type,
                                group=meta.group, strategy=str(decision.strategy), lease_s=meta.lease_s,
                                placement_group_id=decision.placement_group_id, rank=meta.priority.rank,
                                queue=meta.queue)
            self.log.record(decision, meta.group, meta.task_type, meta.priority)
            if not meta.runner:
                self.callers_version += 1
            # a job runner only runs the task; a /v1/schedule caller is shown why
            self._deliver(meta.group).placed.append(decision.to_run() if meta.runner else decision)
        for rejection in result.rejected:
            self._deliver(rejection.group).rejected.append(rejection)
            self.meta.pop(rejection.task_id, None)
        for group, given_up in result.turns_given_up.items():
            news = self._deliver(group).turns_given_up
            for name, turns in given_up.items():
                news[name] = news.get(name, 0) + turns

    def _reuse(self, group: str, reuses: list[Reuse]) -> int | None:
        """Move each reused slot's reservation from the call that ended to the one its owner ran
        in it (same node and resources), counted and logged like a placement; learns the ended
        call's run time. Returns the group's priority rank (None: nothing was reused)."""
        rank, decisions = None, []
        for reuse in reuses:
            meta = self.meta.get(reuse.ended.task_id)
            if meta is None or meta.group != group or reuse.ended.task_id not in self.ledger.reservations:
                continue  # not this group's live reservation (reclaimed, or reported twice)
            slot = self._release([reuse.ended])[0]
            self.meta[reuse.task_id] = replace(meta)
            self.ledger.reserve(reuse.task_id, slot.node_id, slot.resources, task_type=slot.task_type, group=group,
                                strategy=reuse.strategy, placement_group_id=slot.placement_group_id, rank=slot.rank,
                                queue=slot.queue)
            self.core.group_counts.add(group, slot.node_id, 1)
            decision = self._reused_decision(reuse, slot)
            self.log.record(decision, group, slot.task_type, meta.priority)
            decisions.append(decision)
            rank = slot.rank
        if decisions and self._on_drain is not None:
            self._on_drain(self._with_priorities(decisions), 0, 0.0, self.core.waiting_by_priority())
        return rank

    def _with_priorities(self, decisions: list[SchedulingDecision]) -> list[tuple[SchedulingDecision, TaskPriority]]:
        """Each decision with its task's priority (what the metrics count placements by)."""
        return [(decision, self.meta[decision.task_id].priority if decision.task_id in self.meta
                 else TaskPriority.NORMAL) for decision in decisions]

    def _reused_decision(self, reuse: Reuse, slot: Reservation) -> SchedulingDecision:
        """What `/v1/decisions` and `grid explain` show for a call run in a reused slot."""
        node = next((node for node in self.nodes if node.node_id == slot.node_id), None)
        name, ip = (node.name, node.address) if node is not None else (slot.node_id[:12], "")
        summary = (f"{reuse.strategy}: ran in the slot {reuse.ended.task_id} freed on {name} "
                   "(no other job's work waited at its priority or above)")
        return SchedulingDecision.model_construct(
            task_id=reuse.task_id, node_id=slot.node_id, node_name=name, node_ip=ip,
            strategy=SchedulingStrategy(reuse.strategy), score=0.0, reasons=[summary], waited_s=0.0,
            resources=dict(slot.resources),
            explanation=Explanation(summary=summary, winner=NodeScores(node=name, score=0.0, scores={}), nodes=1),
            placement_group_id=slot.placement_group_id, bundle_index=None, owner_key=None)

    def _deliver(self, group: str) -> _News:
        self._woken.add(group)
        return self.outbox.setdefault(group, _News())

    def _learned_run_s(self, task_id: str) -> dict[str, float]:
        """What tasks of this one's type took per node lately: the runner sizes its chunks by it."""
        meta = self.meta.get(task_id)
        if meta is None:
            return {}
        return {node_id: seconds for (node_id, kind), seconds in self.ledger.durations.items()
                if kind == meta.task_type}

    def _queue_usage(self) -> dict[str, dict[str, float]]:
        """What each queue's tasks hold, for fair share and quotas: only read while two queues
        have work waiting or a queue has a quota (`SchedulerCore._fair_shares`), so one queue's
        drains do not pay for it."""
        if not self.core.needs_queue_usage():
            return {}
        return {queue: dict(load.reserved) for queue, load in self.ledger.queue_loads().items()}

    def _without_lost_nodes(self, view: ClusterView) -> ClusterView:
        """The view with nodes a runner saw die marked dead: Ray's node table marks a killed
        raylet dead only after its health checks fail (about 15 s by default)."""
        now = self._clock()
        for node_id, until in list(self._lost_nodes.items()):
            node = view.nodes.get(node_id)
            if until < now or node is None or not node.alive:
                del self._lost_nodes[node_id]  # expired, or Ray's own table says it now
            else:
                view = view.with_node(replace(node, alive=False))
        return view

    def _check_queue_room(self, arriving: int) -> None:
        """Never an unbounded queue: a job that would pass `max_queued_tasks` is turned away
        (429, retry later), or refused outright if it alone is larger than the cap."""
        cap = self.limits.max_queued_tasks
        if arriving > cap:
            raise InvalidRequestError(f"a job of {arriving} tasks is larger than the queue may ever hold "
                                      f"(max_queued_tasks {cap}); split it", field="count")
        queued = self.queued_total()
        if queued + arriving > cap:
            raise TooBusyError(f"the queue holds {queued} waiting tasks and may hold {cap} "
                               f"(max_queued_tasks); {arriving} more do not fit now: retry later", field="count",
                               retry_after_s=self.limits.retry_after_s)

    def _check_caller_room(self, quota: str | None, arriving: int) -> None:
        """One /v1/schedule caller holds at most `max_schedule_held` reservations, placed or
        waiting (`schedule_quota_of`): a caller that went away, or a runaway one, cannot hold
        the whole cluster for its leases."""
        if quota is None:
            return
        cap = self.limits.max_schedule_held
        self._for_callers = {task_id for task_id in self._for_callers if task_id in self.meta}  # ended ones go
        held = sum(1 for task_id in self._for_callers if schedule_quota_of(self.meta[task_id].owner) == quota)
        if held + arriving > cap:
            who = quota.removeprefix("id:")
            raise TooBusyError(f"/v1/schedule reservations of {who}: {held} placed or waiting, at most {cap} "
                               "(max_schedule_held); complete some, or retry later", field="task_id",
                               retry_after_s=self.limits.retry_after_s)

    def _hold_back(self, group: str, unsent: int | None, priority: TaskPriority | None = None) -> None:
        """Record how many tasks of `group` its owner holds back (None: no news); `priority`
        None keeps the one recorded (a job's priority never changes)."""
        if unsent:
            self.unsent[group] = (unsent, priority or self.unsent.get(group, (0, TaskPriority.NORMAL))[1])
        elif unsent is not None:
            self.unsent.pop(group, None)

    def _release(self, completions: Iterable[Completion]) -> list[Reservation]:
        released = self.ledger.release(completions)
        for reservation in released:
            self.meta.pop(reservation.task_id, None)
            if reservation.group == reservation.task_id:  # a lone external decision
                self._forget_lone_decision(reservation.task_id)
        return released

    def _forget_lone_decision(self, task_id: str) -> None:
        self.callers_version += 1
        self.meta.pop(task_id, None)
        self.core.forget_group(task_id)
        self.outbox.pop(task_id, None)

    def _drop_waiting(self, group: str) -> list[str]:
        """Take the group's waiting tasks out of the queue and the books; returns their ids."""
        dropped = self.core.cancel(group=group)
        for task_id in dropped:
            self.meta.pop(task_id, None)
        return dropped

    def _drop_group(self, group: str) -> None:
        """Everything of `group` out of the books: waiting tasks, reservations, counts, outbox."""
        self._drop_waiting(group)
        for reservation in self.ledger.release_group(group):
            self.meta.pop(reservation.task_id, None)
            if reservation.lease_until is not None:
                self.callers_version += 1
        self.core.forget_group(group)
        self.unsent.pop(group, None)
        self.outbox.pop(group, None)
        self._takes_back.discard(group)
