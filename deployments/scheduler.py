"""Scheduler: decides where every task runs, from the MetricsCollector's nodes and the
LoadBalancer's ledger, and holds the tasks that must wait for capacity.

Decisions leave through per-group outboxes: the caller that submitted a job collects its
placements with `wait_placed(job_id)` as capacity frees. One replica: it owns the queue.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from ray import serve
from ray.serve.handle import DeploymentHandle

from grid_serve.ledger import Completion, LedgerSnapshot, Reservation
from grid_serve.models import ClusterStatus, NodeStatus, SchedulingDecision, SchedulingRequest
from grid_serve.scheduling import DrainResult, Rejected, SchedulerCore
from grid_serve.sharing import Allocation, fold_allocations
from grid_serve.view import ClusterView, view_from

from ._common import INTERNAL_OPTIONS, every, logger
from .telemetry import SchedulerMetrics


@dataclass
class Placements:
    """What a group got since it last asked: placed decisions and rejections."""

    placed: list[SchedulingDecision] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    queued: int = 0


@dataclass
class _Meta:
    task_type: str
    group: str
    lease_s: float | None
    node_id: str | None = None  # where it was placed, with what: to release it locally
    resources: dict[str, float] | None = None
    in_allocation: bool = False  # placed in borrowed capacity: the donor's load never counted it


@serve.deployment(**INTERNAL_OPTIONS)
class Scheduler:
    def __init__(self, metrics: DeploymentHandle, load_balancer: DeploymentHandle, admission: float = 1.0,
                 interval_s: float = 1.0, sharing: DeploymentHandle | None = None) -> None:
        self._metrics = metrics
        self._lb = load_balancer
        self._sharing = sharing
        self._allocations: list[Allocation] = []  # held by borrowers: reserved on their donors
        self._admission = admission
        self._core = SchedulerCore()
        self._lock = asyncio.Lock()
        self._nodes: list[NodeStatus] = []
        self._nodes_at = 0.0
        self._ledger: LedgerSnapshot | None = None
        self._meta: dict[str, _Meta] = {}
        self._outbox: dict[str, Placements] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        self._metrics_out = SchedulerMetrics()
        self._settling: set[asyncio.Task] = set()  # ledger calls still running after their reply
        self._tick_loop = every(interval_s, self._tick, "scheduler-tick")

    # ------------------------------------------------------------------ inputs

    async def _tick(self) -> None:
        """Pick up node changes and lease expiries, then place whatever now fits."""
        nodes, taken_at = await self._metrics.snapshot.remote()
        ledger = await self._lb.snapshot.remote()
        allocations = await self._fetch_allocations()
        async with self._lock:
            if allocations is not None:
                self._allocations = allocations
            self._nodes, self._nodes_at = nodes, taken_at
            self._take_ledger(ledger)
            await self._drain_locked()
            self._metrics_out.queue_length.set(float(len(self._core)))

    def _take_ledger(self, ledger: LedgerSnapshot) -> None:
        """Newer snapshots win; a restarted LoadBalancer (new epoch) always wins, or the
        Scheduler would keep its dead predecessor's reservations for ever."""
        if (self._ledger is None or ledger.epoch != self._ledger.epoch
                or ledger.version >= self._ledger.version):
            self._ledger = ledger

    async def _ensure_nodes(self) -> None:
        if not self._nodes:
            self._nodes, self._nodes_at = await self._metrics.refresh_now.remote()
            self._take_ledger(await self._lb.snapshot.remote())

    async def _fetch_allocations(self) -> list[Allocation] | None:
        """The allocations holding capacity; None (keep the last) when the manager is restarting."""
        if self._sharing is None:
            return []
        try:
            return await self._sharing.holding.remote()
        except Exception:  # the manager's replica is being replaced: keep the last known picture
            return None

    def _view(self) -> ClusterView:
        view = view_from(self._nodes, self._ledger, self._admission, self._nodes_at)
        group_loads = self._ledger.group_loads if self._ledger else {}
        return fold_allocations(view, self._allocations, group_loads)

    async def sharing_changed(self) -> None:
        """An allocation was granted or ended: take the news now and place what it allows."""
        allocations = await self._fetch_allocations()
        async with self._lock:
            if allocations is not None:
                self._allocations = allocations
            await self._drain_locked()

    # ------------------------------------------------------------------ core loop

    async def _drain_locked(self, submitted: list[SchedulingRequest] | None = None) -> None:
        """Queue `submitted` (if any) and place whatever fits; the caller holds the lock."""
        submitted = submitted or []
        if not submitted and not len(self._core):
            return
        began = time.perf_counter()
        result = self._core.submit(submitted, self._view())
        self._metrics_out.record_drain(result.placed, len(result.placed) + len(result.rejected),
                                       time.perf_counter() - began, len(self._core))
        await self._commit(result)

    async def _commit(self, result: DrainResult, completions: list[Completion] | None = None,
                      delivered: asyncio.Event | None = None) -> list[Reservation]:
        """Reserve what was placed in the ledger (releasing `completions` in the same call
        when given), then hand each group its news. Returns the released reservations.

        With `delivered`, the news goes out first and `delivered` is set before the ledger
        call: a job runner can dispatch while the ledger catches up (still under the lock,
        so nothing else decides from a half-written ledger)."""
        if delivered is not None:
            self._hand_out(result)
            delivered.set()
        reservations = []
        for decision in result.placed:
            meta = self._meta[decision.task_id]
            meta.node_id, meta.resources = decision.node_id, decision.resources
            meta.in_allocation = decision.placement_group_id is not None
            reservations.append((decision, meta.task_type, meta.group, meta.lease_s))
        released: list[Reservation] = []
        try:
            if completions is not None:
                released, ledger = await self._lb.settle.remote(completions, reservations)
                self._take_ledger(ledger)
            elif reservations:
                self._take_ledger(await self._lb.reserve.remote(reservations))
        except Exception as exc:  # the ledger is unreachable: fail these tasks rather than lose them
            logger.exception("could not record %d placement(s) in the ledger", len(result.placed))
            if delivered is not None:  # already handed out and running: the next snapshot re-syncs
                return released
            result.rejected.extend(Rejected(d.task_id, self._meta[d.task_id].group,
                                            f"could not reserve on {d.node_name}: the ledger is unavailable "
                                            f"({type(exc).__name__}); try again") for d in result.placed)
            result.placed = []
        if delivered is None:
            self._hand_out(result)
        return released

    def _hand_out(self, result: DrainResult) -> None:
        for decision in result.placed:
            self._deliver(self._meta[decision.task_id].group).placed.append(decision)
        for rejection in result.rejected:
            self._deliver(rejection.group).rejected.append(rejection)
            self._meta.pop(rejection.task_id, None)

    def _deliver(self, group: str) -> Placements:
        self._wakeups.setdefault(group, asyncio.Event()).set()
        return self._outbox.setdefault(group, Placements())

    def _collect(self, group: str) -> Placements:
        placements = self._outbox.pop(group, Placements())
        self._wakeups.setdefault(group, asyncio.Event()).clear()
        placements.queued = self._core.queued_by_group().get(group, 0)
        return placements

    # ------------------------------------------------------------------ API

    async def submit(self, requests: list[SchedulingRequest], lease_s: float | None = None) -> Placements:
        """Queue `requests` and place what fits now. Returns the caller's group's news at once;
        later placements come from `wait_placed`. All requests must share one group."""
        groups = {request.group for request in requests}
        if len(groups) != 1:
            raise ValueError("submit() takes the requests of one job (one group) at a time")
        duplicates = [request for request in requests if request.task_id in self._meta]
        if duplicates:  # a live task id: a second reservation would overwrite the first's
            return Placements(rejected=[Rejected(r.task_id, r.group, f"task id {r.task_id!r} is already reserved "
                                                 "or waiting; give each task its own id") for r in duplicates])
        for request in requests:
            self._meta[request.task_id] = _Meta(request.task_type, request.group, lease_s)
        async with self._lock:
            await self._ensure_nodes()
            await self._drain_locked(requests)
            return self._collect(groups.pop())

    async def wait_placed(self, group: str, timeout_s: float = 5.0) -> Placements:
        """Long-poll: returns when the group has news, or after `timeout_s` with none."""
        wakeup = self._wakeups.setdefault(group, asyncio.Event())
        deadline = time.monotonic() + timeout_s
        while group not in self._outbox and (remaining := deadline - time.monotonic()) > 0:
            try:
                await asyncio.wait_for(wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                break
            if group not in self._outbox:  # a complete_for reply carried the news away already
                wakeup.clear()
        return self._collect(group)

    async def complete(self, completions: list[Completion], delivered: asyncio.Event | None = None) -> int:
        """Tasks ended: place waiting tasks in their room, then release and reserve in the
        ledger in one call.

        Room is freed locally first (`LedgerSnapshot.released`) only for tasks this Scheduler
        placed without a lease and outside borrowed capacity: those cannot have expired in the
        ledger meanwhile and count on their own node, so the local picture cannot free anything
        twice or in the wrong place. Leased (external) tasks and tasks in allocations free room
        when the ledger's answer arrives, and are placed into by the next drain.
        """
        async with self._lock:
            await self._ensure_nodes()
            freed = [(meta.node_id, meta.resources) for c in completions
                     if (meta := self._meta.get(c.task_id)) and meta.node_id and meta.lease_s is None
                     and not meta.in_allocation]
            if freed and self._ledger is not None:
                self._ledger = self._ledger.released(freed)
            result = self._core.drain(self._view()) if len(self._core) else DrainResult()
            released = await self._commit(result, completions, delivered)
            for reservation in released:
                meta = self._meta.pop(reservation.task_id, None)
                if meta and meta.group == reservation.task_id:  # a lone external decision
                    self._core.forget_group(meta.group)
                    self._wakeups.pop(meta.group, None)
                    self._outbox.pop(meta.group, None)
            if len(released) > len(freed):  # leased tasks' room is known only now
                await self._drain_locked()
        return len(released)

    async def complete_external(self, completion: Completion) -> int:
        """A `/v1/schedule` caller reports its task. Only leased reservations qualify: a job's
        tasks are released by the job's own runner, never by a guess at their ids."""
        meta = self._meta.get(completion.task_id)
        if meta is None or meta.lease_s is None:
            return 0
        return await self.complete([completion])

    async def complete_for(self, group: str, completions: list[Completion]) -> Placements:
        """`complete()`, then `group`'s news at once: a job runner reporting its own tasks'
        ends gets the tasks placed in their room in the same reply, not a long-poll later."""
        delivered = asyncio.Event()
        work = asyncio.get_running_loop().create_task(self.complete(completions, delivered))
        self._settling.add(work)
        work.add_done_callback(self._settling.discard)
        handed_out = asyncio.ensure_future(delivered.wait())
        await asyncio.wait({work, handed_out}, return_when=asyncio.FIRST_COMPLETED)
        handed_out.cancel()
        if work.done():
            work.result()  # raise what went wrong
        return self._collect(group)

    async def cancel(self, group: str) -> list[str]:
        """Drop the group's waiting tasks; running ones are the caller's to cancel."""
        async with self._lock:
            return self._drop_waiting(group)

    def _drop_waiting(self, group: str) -> list[str]:
        """Take the group's waiting tasks out of the queue and the books; the lock is held."""
        dropped = self._core.cancel(group=group)
        for task_id in dropped:
            self._meta.pop(task_id, None)
        return dropped

    async def finished(self, group: str) -> None:
        """The group's job is over: forget its spread counts and outbox, and release anything
        placed for it that its runner never collected (it was cancelled meanwhile)."""
        async with self._lock:
            self._drop_waiting(group)
            self._core.forget_group(group)
            leftover = self._outbox.pop(group, None)
            self._wakeups.pop(group, None)
        if leftover and leftover.placed:
            await self.complete([Completion(task_id=d.task_id, ok=False) for d in leftover.placed])

    async def cluster_status(self) -> ClusterStatus:
        """Nodes with their reservations folded in, for the status route and the CLI."""
        async with self._lock:
            await self._ensure_nodes()
            view = self._view()
            nodes = []
            for status in self._nodes:
                node = view.nodes.get(status.node_id)
                reserved = dict(node.reserved) if node else {}
                nodes.append(status.model_copy(update={"reserved": reserved,
                                                       "in_flight": node.in_flight if node else 0}))
            return ClusterStatus(nodes=nodes, queued=len(self._core),
                                 snapshot_age_s=max(0.0, time.time() - self._nodes_at))
