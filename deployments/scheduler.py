"""Scheduler: decides where every task runs and owns the books of what is placed and waiting.

It folds the MetricsCollector's nodes and its own ledger (reservations, learned run times)
into a `ClusterView`, runs the pure pipeline (`SchedulerCore`), and hands each job's
placements to its runner: in the reply to the runner's report of finished tasks, or through
the `wait_placed` long-poll. Placements run ahead of free capacity by the lookahead
(`grid_serve.lookahead`), so a runner's report is never between a slot freeing and the next
task starting: Ray already holds that task.

Who owns what (one replica; it owns the queue and the reservations):
  - every job is a group with an owner lease (`grid_serve.owners`), renewed by its runner;
    a lapsed lease releases what the job held and drops what it had waiting;
  - `/v1/schedule` decisions carry their own lease in the ledger;
  - the LoadBalancer keeps the published copy of the ledger (asynchronously, each tick);
  - a restarted Scheduler (new `epoch`) takes the learned run times back from that copy, and
    the runners, seeing the new epoch, register their jobs again (`adopt`): what runs, what
    the job already placed where, what waits.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from grid_serve.access import Caller, may_touch, refusal_to_touch
from grid_serve.errors import ForbiddenError, InvalidRequestError, TooBusyError
from grid_serve.ledger import EXTERNAL_PREFIX, Completion, Ledger, Reservation
from grid_serve.decision_log import DecisionLog
from grid_serve.limits import Limits
from grid_serve.models import (ClusterStatus, NodeStatus, PlacementHistory, QueueLevel, RecentDecisions,
                               SchedulingDecision, SchedulingRequest, TaskPriority)
from grid_serve.owners import Owners
from grid_serve.protocol import Adopt, Placements, Report, Submit
from grid_serve.scheduling import DrainResult, Rejected, SchedulerCore
from grid_serve.sharing import Allocation, fold_allocations
from grid_serve.view import ClusterView, view_from

from ._common import INTERNAL_OPTIONS, call_with_timeout, every, logger
from .runner import RUNNER_NAMESPACE, RUNNER_PREFIX
from .telemetry import SchedulerMetrics

OWNER_LEASE_INTERVALS = 2.0  # a runner that misses this many intervals of renewals is gone
# A live runner busy with a large job on a loaded 2-core machine went 2 s without a renewal
# reaching the Scheduler (two false lapses in one fresh-clone CI run, each taking a live job's
# queue away until it registered again): a lease never lapses in under 5 s
MIN_OWNER_LEASE_S = 5.0
RUNNER_ASK_TIMEOUT_S = 2.0  # a runner whose lease lapsed must answer this fast that it still holds its jobs
SUBMIT_PUBLISH_TIMEOUT_S = 0.5
SNAPSHOT_TRUST_INTERVALS = 5  # a node snapshot older than this many intervals (and 10 s) is not trusted
MIN_SNAPSHOT_TRUST_S = 10.0
LOST_NODE_S = 30.0  # a node a runner saw die stays out this long unless Ray's table agrees sooner
PUBLISH_SPACING_S = 0.25  # publishing every 20 ms kept the LoadBalancer busy (py-spy; BENCHMARKS.md)


@dataclass
class _News:
    """What a group got since it last asked, gathered until its owner collects it as `Placements`."""

    placed: list[SchedulingDecision] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    turns_given_up: dict[str, int] = field(default_factory=dict)


@dataclass
class _Meta:
    task_type: str
    group: str
    lease_s: float | None
    priority: TaskPriority = TaskPriority.NORMAL
    owner: str | None = None  # who may complete a /v1/schedule reservation (grid_serve.access)
    runner: bool = False  # a job runner's task (not a /v1/schedule caller's)


@serve.deployment(**INTERNAL_OPTIONS)
class Scheduler:
    def __init__(self, metrics: DeploymentHandle, load_balancer: DeploymentHandle, admission: float | None = None,
                 interval_s: float = 1.0, sharing: DeploymentHandle | None = None,
                 lookahead_ms: float = 100.0, limits: Limits | None = None) -> None:
        self._metrics = metrics
        self._limits = limits or Limits()
        self._lb = load_balancer
        self._sharing = sharing
        self._allocations: list[Allocation] = []  # held by borrowers: reserved on their donors
        self._admission = admission or 1.0
        self._core = SchedulerCore(lookahead_s=None if admission else lookahead_ms / 1000.0)
        self._interval_s = interval_s
        self._epoch = uuid.uuid4().hex[:8]
        self._ledger = Ledger()
        self._owners = Owners(lease_s=max(MIN_OWNER_LEASE_S, OWNER_LEASE_INTERVALS * interval_s), tick_s=interval_s)
        self._lock = asyncio.Lock()
        self._nodes: list[NodeStatus] = []
        self._nodes_at = 0.0
        self._meta: dict[str, _Meta] = {}
        self._unsent: dict[str, tuple[int, TaskPriority]] = {}  # group -> tasks its runner holds back (its window)
        self._lost_nodes: dict[str, float] = {}  # node id -> until when it stays out (monotonic)
        self._distrusted = False  # the node snapshot is too old: said once in the log per episode
        self._outbox: dict[str, _News] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        self._metrics_out = SchedulerMetrics()
        self._log = DecisionLog()  # what was decided lately and why: for /v1/decisions and the web page
        self._recovered = False  # learned run times taken back from the LoadBalancer's copy
        self._published = -1  # ledger version the LoadBalancer last got
        self._publisher: asyncio.Task | None = None
        self._tick_loop = every(interval_s, self._tick, "scheduler-tick")

    # ------------------------------------------------------------------ inputs

    async def _tick(self) -> None:
        """Pick up node changes, reclaim lapsed owners and leases, place what now fits, and
        publish the ledger to the LoadBalancer."""
        nodes, taken_at = await call_with_timeout(self._metrics.snapshot.remote(), self._interval_s * 5)
        allocations = await self._fetch_allocations()
        await self._recover_learning()
        overdue = self._owners.overdue()
        held = await self._still_held(overdue)
        async with self._lock:
            if allocations is not None:
                self._allocations = allocations
            self._nodes, self._nodes_at = nodes, taken_at
            if held:
                logger.warning("job(s) %s: no lease renewal came for %g s, but the runner answers that it holds "
                               "them: kept", ", ".join(sorted(held)), self._owners.lease_s)
                self._owners.renew(held)
            for group in self._owners.reclaim(group for group in overdue if group not in held):
                logger.warning("job %s: %s", group, self._owners.gone.get(group))
                self._drop_group(group)
            for reservation in self._ledger.expire():  # /v1/schedule callers that never reported
                self._forget_lone_decision(reservation.task_id)
            self._drain_locked()
            self._metrics_out.queue_length.set(float(len(self._core)))
        await self._publish()

    async def _still_held(self, groups: list[str]) -> set[str]:
        """Which of `groups` (their leases lapsed) their runner answers that it still holds, asked
        directly, not through Serve: renewals go through Serve's router, which on a loaded
        machine held a live runner's for over 5 s. A dead or stopped runner, or a caller's
        process (no actor to ask), answers nothing within RUNNER_ASK_TIMEOUT_S."""
        by_runner: dict[str, list[str]] = {}
        for group in groups:
            by_runner.setdefault(self._owners.runners.get(group, ""), []).append(group)
        answers = await asyncio.gather(*(self._ask_runner(runner, asked) for runner, asked in by_runner.items()))
        return {group for held in answers for group in held}

    @staticmethod
    async def _ask_runner(runner: str, groups: list[str]) -> list[str]:
        if not runner.startswith(RUNNER_PREFIX):
            return []
        try:
            actor = await asyncio.to_thread(ray.get_actor, runner, namespace=RUNNER_NAMESPACE)
            return await call_with_timeout(actor.holds.remote(groups), RUNNER_ASK_TIMEOUT_S)
        except Exception:  # gone (ValueError, ActorDiedError) or not answering (stopped, stuck)
            return []

    async def _recover_learning(self) -> None:
        """Once: take back what a predecessor learned (run times) from the LoadBalancer's copy."""
        if self._recovered:
            return
        try:
            published = await call_with_timeout(self._lb.snapshot.remote(), self._interval_s * 5)
        except Exception:
            logger.warning("no ledger copy from the LoadBalancer yet; run times are learned anew")
            return
        self._ledger.learned_from(published)
        self._recovered = True

    async def _publish(self, timeout_s: float | None = None) -> None:
        """Give the LoadBalancer the ledger as it stands, when it changed. Off every decision
        path: a slow or restarting LoadBalancer delays only its copy."""
        if self._ledger.version == self._published:
            return
        snapshot = self._ledger.snapshot()
        try:
            await call_with_timeout(self._lb.publish.remote(snapshot), timeout_s or self._interval_s * 5)
            self._published = max(self._published, snapshot.version)
        except Exception:
            logger.warning("could not publish the ledger to the LoadBalancer; retrying next tick")

    def _publish_soon(self) -> None:
        """Publish in the background, PUBLISH_SPACING_S after the change at most, one call in
        flight: readers of the copy lag by a fraction of a second (a new job's placements are
        published before `submit` returns, unless its caller waits for the job's end), and a
        busy job costs the LoadBalancer a few calls a second."""
        if self._ledger.version == self._published or (self._publisher is not None and not self._publisher.done()):
            return

        async def later() -> None:
            await asyncio.sleep(PUBLISH_SPACING_S)
            await self._publish()

        self._publisher = asyncio.get_running_loop().create_task(later())

    async def _ensure_nodes(self) -> None:
        if not self._nodes:
            self._nodes, self._nodes_at = await call_with_timeout(self._metrics.refresh_now.remote(), 30.0)

    async def _fetch_allocations(self) -> list[Allocation] | None:
        """The allocations holding capacity; None (keep the last) when the manager is restarting."""
        if self._sharing is None:
            return []
        try:
            return await call_with_timeout(self._sharing.holding.remote(), self._interval_s * 5)
        except Exception:  # the manager's replica is being replaced: keep the last known picture
            return None

    def _trusted_nodes(self) -> list[NodeStatus]:
        """The MetricsCollector's nodes, every one marked stale when its snapshot is too old to
        trust (the collector or Ray's state calls stalled): a stale node gets no new work."""
        age = time.time() - self._nodes_at
        limit = max(MIN_SNAPSHOT_TRUST_S, SNAPSHOT_TRUST_INTERVALS * self._interval_s)
        if age <= limit or not self._nodes:
            if self._distrusted:
                logger.warning("the node snapshot is fresh again (%.1f s old): placing work again", age)
            self._distrusted = False
            return self._nodes
        if not self._distrusted:
            logger.warning("the MetricsCollector's node snapshot is %.0f s old (trusted up to %.0f s): every node "
                           "counts as stale, so no new work is placed until a fresh one arrives", age, limit)
            self._distrusted = True
        return [node.model_copy(update={"stale": True}) for node in self._nodes]

    def _view(self) -> ClusterView:
        ledger = self._ledger.snapshot()
        view = view_from(self._trusted_nodes(), ledger, self._admission, self._nodes_at)
        view = self._without_lost_nodes(view)
        return replace(fold_allocations(view, self._allocations, ledger.group_loads), running=self._ledger.running_on)

    def _without_lost_nodes(self, view: ClusterView) -> ClusterView:
        """The view with nodes a runner saw die marked dead: Ray's node table marks a killed
        raylet dead only after its health checks fail (about 15 s by default)."""
        now = time.monotonic()
        for node_id, until in list(self._lost_nodes.items()):
            node = view.nodes.get(node_id)
            if until < now or node is None or not node.alive:
                del self._lost_nodes[node_id]  # expired, or Ray's own table says it now
            else:
                view = view.with_node(replace(node, alive=False))
        return view

    async def sharing_changed(self) -> None:
        """An allocation was granted or ended: take the news now and place what it allows."""
        allocations = await self._fetch_allocations()
        async with self._lock:
            if allocations is not None:
                self._allocations = allocations
            self._drain_locked()

    # ------------------------------------------------------------------ core loop

    def _drain_locked(self, submitted: list[SchedulingRequest] | None = None) -> None:
        """Queue `submitted` (if any), place whatever fits, reserve it and hand it out. Every
        path that changes the ledger ends here, so this is where its copy is scheduled."""
        submitted = submitted or []
        if not submitted and not len(self._core):
            self._publish_soon()
            return
        began = time.perf_counter()
        result = self._core.submit(submitted, self._view())
        self._metrics_out.record_drain(result.placed, len(result.placed) + len(result.rejected),
                                       time.perf_counter() - began, len(self._core))
        self._commit(result)
        self._publish_soon()

    def _commit(self, result: DrainResult) -> None:
        """Reserve what was placed in the ledger, then hand each group its news (placements,
        rejections, spread turns its nodes gave up)."""
        for decision in result.placed:
            meta = self._meta[decision.task_id]
            self._ledger.reserve(decision.task_id, decision.node_id, decision.resources, task_type=meta.task_type,
                                 group=meta.group, strategy=str(decision.strategy), lease_s=meta.lease_s,
                                 placement_group_id=decision.placement_group_id, rank=meta.priority.rank)
            self._log.record(decision, meta.group, meta.task_type, meta.priority)
            # a job runner only runs the task; a /v1/schedule caller is shown why
            self._deliver(meta.group).placed.append(decision.to_run() if meta.runner else decision)
        for rejection in result.rejected:
            self._deliver(rejection.group).rejected.append(rejection)
            self._meta.pop(rejection.task_id, None)
        for group, given_up in result.turns_given_up.items():
            news = self._deliver(group).turns_given_up
            for name, turns in given_up.items():
                news[name] = news.get(name, 0) + turns

    def _deliver(self, group: str) -> _News:
        self._wakeups.setdefault(group, asyncio.Event()).set()
        return self._outbox.setdefault(group, _News())

    def _collect(self, group: str) -> Placements:
        news = self._outbox.pop(group, _News())
        self._wakeups.setdefault(group, asyncio.Event()).clear()
        return Placements(placed=news.placed, rejected=news.rejected, turns_given_up=news.turns_given_up,
                          queued=self._core.queued_by_group().get(group, 0), epoch=self._epoch,
                          known=self._owners.knows(group) or group in self._meta,
                          run_s=self._learned_run_s(news.placed[0].task_id) if news.placed else {})

    def _learned_run_s(self, task_id: str) -> dict[str, float]:
        """What tasks of this one's type took per node lately: the runner sizes its chunks by it."""
        meta = self._meta.get(task_id)
        if meta is None:
            return {}
        return {node_id: seconds for (node_id, kind), seconds in self._ledger.durations.items()
                if kind == meta.task_type}

    def _release(self, completions: list[Completion]) -> list[Reservation]:
        released = self._ledger.release(completions)
        for reservation in released:
            self._meta.pop(reservation.task_id, None)
            if reservation.group == reservation.task_id:  # a lone external decision
                self._forget_lone_decision(reservation.task_id)
        return released

    def _forget_lone_decision(self, task_id: str) -> None:
        self._meta.pop(task_id, None)
        self._core.forget_group(task_id)
        self._wakeups.pop(task_id, None)
        self._outbox.pop(task_id, None)

    def _drop_waiting(self, group: str) -> list[str]:
        """Take the group's waiting tasks out of the queue and the books; returns their ids."""
        dropped = self._core.cancel(group=group)
        for task_id in dropped:
            self._meta.pop(task_id, None)
        return dropped

    def _drop_group(self, group: str) -> None:
        """Everything of `group` out of the books: waiting tasks, reservations, counts, outbox."""
        self._drop_waiting(group)
        for reservation in self._ledger.release_group(group):
            self._meta.pop(reservation.task_id, None)
        self._core.forget_group(group)
        self._unsent.pop(group, None)
        self._outbox.pop(group, None)
        self._wakeups.pop(group, None)

    # ------------------------------------------------------------------ the runner's API

    async def submit(self, message: Submit) -> Placements:
        """Queue a new group's requests and place what fits now. Returns the group's news at
        once; later placements come with `report` replies or from `wait_placed`. The held-back
        tasks (`unsent`) count toward the queue and its cap all the same; `publish` makes the
        LoadBalancer's copy show the new placements before this returns (a caller that waits
        for the job's end does not read it meanwhile, and the publish delayed its first task)."""
        requests, runner, unsent = message.requests, message.runner, message.unsent
        groups = {request.group for request in requests}
        if len(groups) != 1:
            raise ValueError("submit() takes the requests of one job (one group) at a time")
        group = groups.pop()
        self._check_queue_room(len(requests) + unsent)
        duplicates = [request for request in requests if request.task_id in self._meta]
        if duplicates:  # a live task id: a second reservation would overwrite the first's
            return Placements(rejected=[Rejected(r.task_id, r.group, f"task id {r.task_id!r} is already reserved "
                                                 "or waiting; give each task its own id") for r in duplicates],
                              epoch=self._epoch)
        async with self._lock:
            await self._ensure_nodes()
            if runner is not None:
                self._owners.register(group, runner)
            self._hold_back(group, unsent, requests[0].priority)
            for request in requests:
                self._meta[request.task_id] = _Meta(request.task_type, request.group, message.lease_s,
                                                    request.priority, message.owner, runner=runner is not None)
            self._drain_locked(requests)
            placements = self._collect(group)
        # Once per job (unless its caller waits for its end), so the copy shows a new job's
        # placements when submit returns; bounded, so a LoadBalancer being replaced delays a
        # submission by a moment at most.
        if message.publish:
            await self._publish(SUBMIT_PUBLISH_TIMEOUT_S)
        if runner is not None:  # the lease runs from when the runner hears it owns the job
            self._owners.renew([group])
        return placements

    def _check_queue_room(self, arriving: int) -> None:
        """Never an unbounded queue: a job that would pass `max_queued_tasks` is turned away
        (429, retry later), or refused outright if it alone is larger than the cap."""
        cap = self._limits.max_queued_tasks
        if arriving > cap:
            raise InvalidRequestError(f"a job of {arriving} tasks is larger than the queue may ever hold "
                                      f"(max_queued_tasks {cap}); split it", field="count")
        queued = self._queued_total()
        if queued + arriving > cap:
            raise TooBusyError(f"the queue holds {queued} waiting tasks and may hold {cap} "
                               f"(max_queued_tasks); {arriving} more do not fit now: retry later", field="count",
                               retry_after_s=self._limits.retry_after_s)

    def _queued_total(self) -> int:
        """Tasks waiting: in the queue, and held back by runners beyond their windows."""
        return len(self._core) + sum(count for count, _ in self._unsent.values())

    def _hold_back(self, group: str, unsent: int | None, priority: TaskPriority | None = None) -> None:
        """Record how many tasks of `group` its runner holds back (None: no news); `priority`
        None keeps the one recorded (a job's priority never changes)."""
        if unsent:
            self._unsent[group] = (unsent, priority or self._unsent.get(group, (0, TaskPriority.NORMAL))[1])
        elif unsent is not None:
            self._unsent.pop(group, None)

    async def report(self, message: Report) -> Placements:
        """A runner's tasks ended: release them, place waiting tasks in the room, and return the
        group's news at once. Renews the group's lease. Sent in batches, one at a time per job,
        while Ray already runs the tasks placed ahead (the lookahead): never awaited per task.

        `requeue`: tasks whose worker or node died, to place again (their lost attempts are
        among `ended`), and the window's next ones; `lost_nodes` are left out of decisions from
        now on (until Ray's node table says so too, or `LOST_NODE_S` passes); `returned`
        placements are released and no longer counted where they were placed, so spread stays
        exact."""
        group, requeue = message.group, message.requeue
        async with self._lock:
            if requeue:  # a restarted Scheduler's first drain needs nodes: none would read as "never fits"
                await self._ensure_nodes()
            self._release(message.ended)
            for reservation in self._release([Completion.model_construct(task_id=task_id, ok=False, duration_s=None)
                                              for task_id in message.returned]):
                self._core.group_counts.add(group, reservation.node_id, -1)
            for node_id in message.lost_nodes:
                logger.warning("node %s lost a task of job %s: no new work goes there", node_id[:12], group)
                self._lost_nodes[node_id] = time.monotonic() + LOST_NODE_S
            if self._owners.renew([group]):
                # reclaimed (its lease lapsed) or never known (this Scheduler restarted): nothing
                # of it is queued or placed until its runner registers it again with all it holds
                # (the reply says unknown: `adopt`). Placed now, beside what already runs unreserved,
                # the job ran twice its share (the overfull-queue test's 8 tasks per 2-CPU node)
                self._drain_locked()
                return self._collect(group)
            self._hold_back(group, message.unsent, requeue[0].priority if requeue else None)
            fresh = [request for request in requeue if request.task_id not in self._meta]
            for request in fresh:
                self._meta[request.task_id] = _Meta(request.task_type, group, None, request.priority, runner=True)
            self._drain_locked(fresh)
            return self._collect(group)

    async def wait_placed(self, group: str, timeout_s: float = 5.0) -> Placements:
        """Long-poll: returns when the group has news, or after `timeout_s` with none."""
        self._owners.renew([group])
        wakeup = self._wakeups.setdefault(group, asyncio.Event())
        deadline = time.monotonic() + timeout_s
        while group not in self._outbox and (remaining := deadline - time.monotonic()) > 0:
            try:
                await asyncio.wait_for(wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                break
            if group not in self._outbox:  # a report reply carried the news away already
                wakeup.clear()
        return self._collect(group)

    async def caller_settings(self) -> dict[str, Any]:
        """What a `grid.remote` caller's dispatcher needs to know first: this instance's epoch and
        how long an owner lease lasts without a renewal."""
        return {"epoch": self._epoch, "lease_s": self._owners.lease_s}

    async def renew(self, groups: list[str]) -> tuple[str, list[str]]:
        """A runner's heartbeat: extend its jobs' leases. Returns this Scheduler's epoch and the
        groups it does not know, which the runner must `adopt` again."""
        return self._epoch, self._owners.renew(groups)

    async def adopt(self, message: Adopt) -> Placements:
        """A runner registers a job this Scheduler does not know (it restarted, or the job's
        lease lapsed): reserve what runs (decision, task type) where it runs, count what the
        job already placed per node (spread stays exact), and queue what waits."""
        group, waiting = message.group, message.waiting
        async with self._lock:
            await self._ensure_nodes()
            self._drop_group(group)
            self._owners.register(group, message.runner)
            priority = message.priority or (waiting[0].priority if waiting else TaskPriority.NORMAL)
            self._hold_back(group, message.unsent, priority)
            for decision, task_type in message.running:
                self._meta[decision.task_id] = _Meta(task_type, group, None, priority, runner=True)
                self._ledger.reserve(decision.task_id, decision.node_id, decision.resources, task_type=task_type,
                                     group=group, strategy=str(decision.strategy),
                                     placement_group_id=decision.placement_group_id, rank=priority.rank)
            for node_id, count in message.placed_per_node.items():
                self._core.group_counts.add(group, node_id, count)
            fresh = [request for request in waiting if request.task_id not in self._meta]
            for request in fresh:
                self._meta[request.task_id] = _Meta(request.task_type, group, None, request.priority, runner=True)
            self._drain_locked(fresh)
            return self._collect(group)

    async def cancel(self, group: str) -> list[str]:
        """Drop the group's waiting tasks; running ones are the caller's to cancel."""
        async with self._lock:
            self._unsent.pop(group, None)
            return self._drop_waiting(group)

    async def finished(self, group: str, reason: str | None = None, completions: list[Completion] | None = None) -> None:
        """The group's job is over: learn from its last ends (`completions`), release whatever
        it still held (its runner has reported every task, or is giving up), forget its counts,
        outbox and lease."""
        async with self._lock:
            self._release(completions or [])
            self._drop_group(group)
            self._owners.forget(group, reason)
            self._drain_locked()

    async def job_fate(self, group: str) -> str | None:
        """Why a job this Scheduler reclaimed is gone (its runner stopped renewing), if it was."""
        return self._owners.gone.get(group)

    # ------------------------------------------------------------------ /v1/schedule callers

    async def complete(self, completions: list[Completion]) -> int:
        """Tasks ended: release them and place waiting tasks in their room."""
        async with self._lock:
            released = self._release(completions)
            self._drain_locked()
        return len(released)

    async def complete_external(self, completion: Completion, caller: Caller | None = None) -> int:
        """A `/v1/schedule` caller reports its task. Only leased reservations qualify: a job's
        tasks are released by the job's own runner, never by a guess at their ids; and only
        their owner may report them."""
        meta = self._meta.get(completion.task_id)
        if meta is None or meta.lease_s is None:
            return 0
        if not may_touch(caller, meta.owner):
            what = f"reservation {completion.task_id.removeprefix(EXTERNAL_PREFIX)}"
            raise ForbiddenError(refusal_to_touch(meta.owner, what), field="task_id")
        return await self.complete([completion])

    # ------------------------------------------------------------------ status

    async def cluster_status(self) -> ClusterStatus:
        """Nodes with their reservations folded in, for the status route and the CLI. Borrowed
        capacity is asked for afresh: a reader must not see an allocation the SharingManager
        has already ended, only because the next tick has not come yet."""
        allocations = await self._fetch_allocations()
        async with self._lock:
            if allocations is not None:
                self._allocations = allocations
            await self._ensure_nodes()
            view = self._view()
            nodes = []
            for status in self._trusted_nodes():
                node = view.nodes.get(status.node_id)
                reserved = dict(node.reserved) if node else {}
                nodes.append(status.model_copy(update={"reserved": reserved,
                                                       "in_flight": node.in_flight if node else 0}))
            queue = self._queue_levels()
            return ClusterStatus(nodes=nodes, queued=self._queued_total(), queue=queue, jobs_running=len(self._owners),
                                 snapshot_age_s=max(0.0, time.time() - self._nodes_at))

    def _queue_levels(self) -> list[QueueLevel]:
        """Waiting tasks per priority, highest first, counting what runners hold back beyond
        their windows (it waits as much as what the queue holds; the oldest wait is the queue's)."""
        levels = {priority: [tasks, wait] for priority, tasks, wait in self._core.waiting_by_priority()}
        for count, priority in self._unsent.values():
            levels.setdefault(priority, [0, 0.0])[0] += count
        return [QueueLevel(priority=priority, tasks=tasks, oldest_wait_s=round(wait, 3))
                for priority, (tasks, wait) in sorted(levels.items(), key=lambda item: -item[0].rank)]

    async def recent_decisions(self, limit: int = 50, job_id: str | None = None) -> RecentDecisions:
        """The latest decisions with their reasons, newest first; one job's when `job_id` is
        given. No lock: reading the log awaits nothing, so no decision lands halfway through."""
        return RecentDecisions(now=time.time(), decisions=self._log.recent(limit, job_id),
                               job_placed=self._log.placed_in_job(job_id) if job_id else None)

    async def placement_history(self, window_s: float = 600.0) -> PlacementHistory:
        return self._log.placements(window_s)
