"""Scheduler: decides where every task runs and owns the books of what is placed and waiting.

The books and every change to them are pure (`grid_serve.books.SchedulerBooks`); this is their
shell: a lock around each transition, the remote calls around them, the long-polls. The books
fold the MetricsCollector's nodes and the ledger (reservations, learned run times) into a
`ClusterView`, run the pure pipeline (`SchedulerCore`), and hand each job's placements to its
owner: in the reply to the runner's report of finished tasks, or through
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
import json
import time
import uuid
from typing import Any

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from grid_serve.access import Caller
from grid_serve.books import SchedulerBooks
from grid_serve.handles import stop_safe
from grid_serve.ledger import Completion
from grid_serve.limits import Limits
from grid_serve.models import ClusterStatus, JobPending, PlacementHistory, RecentDecisions
from grid_serve.protocol import Adopt, Finished, Placements, Report, Submit
from grid_serve.queues import QueueSettings
from grid_serve.sharing import Allocation

from ._common import INTERNAL_OPTIONS, ReplacedError, SoleWriterRecord, call_with_timeout, every, logger
from .runner_parent import RUNNER_NAMESPACE, RUNNER_PREFIX
from .telemetry import SchedulerMetrics

OWNER_LEASE_INTERVALS = 2.0  # a runner that misses this many intervals of renewals is gone
# A live runner busy with a large job on a loaded 2-core machine went 2 s without a renewal
# reaching the Scheduler (two false lapses in one fresh-clone CI run, each taking a live job's
# queue away until it registered again): a lease never lapses in under 5 s
MIN_OWNER_LEASE_S = 5.0
RUNNER_ASK_TIMEOUT_S = 2.0  # a runner whose lease lapsed must answer this fast that it still holds its jobs
SUBMIT_PUBLISH_TIMEOUT_S = 0.5
FORECAST_KEPT_S = 1.0  # a job's forecast is worked out at most this often (`pending`)
RESERVATIONS_KEY = "scheduler-reservations"  # GCS KV key (per app) of the /v1/schedule reservations
NOT_READ_BACK = -1  # `_kept_version` before the kept reservations are read back: nothing is written
REPLACED = -2  # ... once a newer replica keeps them: nothing is written any more
PUBLISH_SPACING_S = 0.25  # publishing every 20 ms kept the LoadBalancer busy (py-spy; BENCHMARKS.md)


@serve.deployment(**INTERNAL_OPTIONS)
class Scheduler:
    """The shell of `SchedulerBooks`: one lock around every transition, the remote calls
    around them, and the long-polls the books' news wakes."""

    def __init__(self, metrics: DeploymentHandle, load_balancer: DeploymentHandle, admission: float | None = None,
                 interval_s: float = 1.0, sharing: DeploymentHandle | None = None,
                 lookahead_ms: float = 100.0, limits: Limits | None = None,
                 queues: dict[str, QueueSettings] | None = None) -> None:
        self._metrics = stop_safe(metrics)
        self._lb = stop_safe(load_balancer)
        self._sharing = stop_safe(sharing)
        self._interval_s = interval_s
        self._metrics_out = SchedulerMetrics()
        self._books = SchedulerBooks(epoch=uuid.uuid4().hex[:8], lease_s=max(MIN_OWNER_LEASE_S,
                                     OWNER_LEASE_INTERVALS * interval_s), tick_s=interval_s,
                                     lookahead_s=None if admission else lookahead_ms / 1000.0,
                                     admission=admission or 1.0, limits=limits, on_drain=self._metrics_out.record_drain,
                                     queues=queues)
        self._lock = asyncio.Lock()
        self._forecasts: dict[str, tuple[float, JobPending | None]] = {}  # group -> (monotonic time, forecast)
        self._waiters: dict[str, list[asyncio.Event]] = {}  # group -> its long-polls waiting for news
        self._recovered = False  # learned run times taken back from the LoadBalancer's copy
        self._published = -1  # ledger version the LoadBalancer last got
        self._publisher: asyncio.Task | None = None
        # one writer at a time: an outgoing replica (a rolling update) must not overwrite this one's
        self._kept = SoleWriterRecord(f"{RESERVATIONS_KEY}:{serve.get_replica_context().app_name}")
        self._kept_version = NOT_READ_BACK  # callers_version last written to the GCS
        self._keeper: asyncio.Task | None = None
        self._restore_reservations()
        self._tick_loop = every(interval_s, self._tick, "scheduler-tick")

    def _restore_reservations(self) -> None:
        """A predecessor's /v1/schedule reservations, from the GCS (they outlive this replica).
        Until they are read back nothing is written there, so a failed read (tried again each
        tick) never overwrites them with this replica's empty books."""
        try:
            restored = self._books.on_restored(self._kept.claim() or [])
        except Exception as exc:  # the GCS not answering must not keep the Scheduler from starting
            logger.warning("could not read the kept /v1/schedule reservations yet (%s); trying again", exc)
            return
        if restored:
            logger.warning("%d /v1/schedule reservation(s) taken back from before this Scheduler started", restored)
        self._kept_version = self._books.callers_version

    # ------------------------------------------------------------------ inputs

    async def _tick(self) -> None:
        """Pick up node changes, reclaim lapsed owners and leases, place what now fits, and
        publish the ledger to the LoadBalancer."""
        nodes, taken_at = await call_with_timeout(self._metrics.snapshot.remote(), self._interval_s * 5)
        allocations = await self._fetch_allocations()
        await self._recover_learning()
        overdue = self._books.owners.overdue()
        held = await self._still_held(overdue)
        async with self._lock:
            if self._kept_version == NOT_READ_BACK:
                self._restore_reservations()
            self._books.on_allocations(allocations)
            self._books.on_nodes(nodes, taken_at)
            self._books.on_leases_checked(overdue, held)
            self._metrics_out.record_queue(self._books.core.waiting_by_priority())
            self._metrics_out.record_queues(self._books.queue_statuses())
            self._after_change()
        await self._publish()

    async def _still_held(self, groups: list[str]) -> set[str]:
        """Which of `groups` (their leases lapsed) their runner answers that it still holds, asked
        directly, not through Serve: renewals go through Serve's router, which on a loaded
        machine held a live runner's for over 5 s. A dead or stopped runner, or a caller's
        process (no actor to ask), answers nothing within RUNNER_ASK_TIMEOUT_S."""
        by_runner: dict[str, list[str]] = {}
        for group in groups:
            by_runner.setdefault(self._books.owners.runners.get(group, ""), []).append(group)
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
        self._books.ledger.learned_from(published)
        self._recovered = True

    async def _publish(self, timeout_s: float | None = None) -> None:
        """Give the LoadBalancer the ledger as it stands, when it changed. Off every decision
        path: a slow or restarting LoadBalancer delays only its copy."""
        ledger = self._books.ledger
        if ledger.version == self._published:
            return
        snapshot = ledger.snapshot()
        try:
            await call_with_timeout(self._lb.publish.remote(snapshot), timeout_s or self._interval_s * 5)
            self._published = max(self._published, snapshot.version)
        except Exception:
            logger.warning("could not publish the ledger to the LoadBalancer; retrying next tick")

    def _after_change(self) -> None:
        """After every transition: wake the long-polls of the groups with news, and publish the
        ledger in the background, PUBLISH_SPACING_S after the change at most, one call in
        flight: readers of the copy lag by a fraction of a second (a new job's placements are
        published before `submit` returns, unless its caller waits for the job's end), and a
        busy job costs the LoadBalancer a few calls a second."""
        for group in self._books.take_woken():
            for waiter in self._waiters.get(group, ()):
                waiter.set()
        if (self._kept_version >= 0 and self._books.callers_version != self._kept_version
                and (self._keeper is None or self._keeper.done())):
            self._keeper = asyncio.get_running_loop().create_task(self._keep_reservations())
        if self._books.ledger.version == self._published or (self._publisher is not None
                                                            and not self._publisher.done()):
            return

        async def later() -> None:
            await asyncio.sleep(PUBLISH_SPACING_S)
            await self._publish()

        self._publisher = asyncio.get_running_loop().create_task(later())

    async def _keep_reservations(self) -> None:
        """Write the /v1/schedule reservations to the GCS after they change, off the loop (a GCS
        call blocks); a failed write is tried again at the next change or tick."""
        while self._books.callers_version != self._kept_version:
            version, held = self._books.callers_version, self._books.held_for_callers()
            try:
                await asyncio.to_thread(self._kept.save, json.dumps(held))
            except ReplacedError:  # a newer Scheduler replica keeps them now: never write over its
                logger.warning("a newer Scheduler replica keeps the /v1/schedule reservations now; this one "
                               "no longer writes them")
                self._kept_version = REPLACED
                return
            except Exception as exc:
                logger.warning("could not keep the /v1/schedule reservations in the GCS (%s); retrying", exc)
                return
            self._kept_version = version

    async def _ensure_nodes(self) -> None:
        if self._books.needs_nodes:
            self._books.on_nodes(*await call_with_timeout(self._metrics.refresh_now.remote(), 30.0))

    async def _fetch_allocations(self) -> list[Allocation] | None:
        """The allocations holding capacity; None (keep the last) when the manager is restarting."""
        if self._sharing is None:
            return []
        try:
            return await call_with_timeout(self._sharing.holding.remote(), self._interval_s * 5)
        except Exception:  # the manager's replica is being replaced: keep the last known picture
            return None

    async def sharing_changed(self) -> None:
        """An allocation was granted or ended: take the news now and place what it allows."""
        allocations = await self._fetch_allocations()
        async with self._lock:
            self._books.on_sharing_changed(allocations)
            self._after_change()

    # ------------------------------------------------------------------ the runner's API

    async def submit(self, message: Submit) -> Placements:
        """Queue a new group's requests and place what fits now. Returns the group's news at
        once; later placements come with `report` replies or from `wait_placed`. The held-back
        tasks (`unsent`) count toward the queue and its cap all the same; `publish` makes the
        LoadBalancer's copy show the new placements before this returns (a caller that waits
        for the job's end does not read it meanwhile, and the publish delayed its first task)."""
        async with self._lock:
            await self._ensure_nodes()
            placements = self._books.on_submitted(message)
            self._after_change()
        # Once per job (unless its caller waits for its end), so the copy shows a new job's
        # placements when submit returns; bounded, so a LoadBalancer being replaced delays a
        # submission by a moment at most.
        if message.publish:
            await self._publish(SUBMIT_PUBLISH_TIMEOUT_S)
        if message.runner is not None:  # the lease runs from when the runner hears it owns the job
            self._books.on_renewed([message.requests[0].group])
        return placements

    async def report(self, message: Report) -> Placements:
        """A runner's tasks ended: release them, place waiting tasks in the room, and return the
        group's news at once. Renews the group's lease. Sent in batches, one at a time per job,
        while Ray already runs the tasks placed ahead (the lookahead): never awaited per task.
        See `SchedulerBooks.on_reported` for what each field does."""
        async with self._lock:
            if message.requeue:  # a restarted Scheduler's first drain needs nodes
                await self._ensure_nodes()
            placements = self._books.on_reported(message)
            self._after_change()
            return placements

    async def wait_placed(self, group: str, timeout_s: float = 5.0) -> Placements:
        """Long-poll: returns when the group has news, or after `timeout_s` with none."""
        await self._news_for([group], timeout_s)
        return self._books.collect(group)

    async def wait_news(self, groups: list[str], timeout_s: float = 1.0) -> dict[str, Placements]:
        """One long-poll for several groups (a runner's jobs whose tasks are all in Ray: they wait
        only for asks to take some back): the news of those that have some."""
        await self._news_for(groups, timeout_s)
        return {group: self._books.collect(group) for group in groups if self._books.has_news(group)}

    async def _news_for(self, groups: list[str], timeout_s: float) -> None:
        """Renew `groups`, then wait until one of them has news, or `timeout_s`."""
        self._books.on_renewed(groups)
        if any(self._books.has_news(group) for group in groups):
            return
        waiter = asyncio.Event()
        for group in groups:
            self._waiters.setdefault(group, []).append(waiter)
        try:
            await asyncio.wait_for(waiter.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass
        finally:
            for group in groups:
                waiters = self._waiters.get(group, [])
                waiters.remove(waiter)
                if not waiters:
                    self._waiters.pop(group, None)

    async def caller_settings(self) -> dict[str, Any]:
        """What a `grid.remote` caller's dispatcher needs to know first: this instance's epoch and
        how long an owner lease lasts without a renewal."""
        return {"epoch": self._books.epoch, "lease_s": self._books.owners.lease_s}

    async def renew(self, groups: list[str]) -> tuple[str, list[str]]:
        """A runner's heartbeat: extend its jobs' leases. Returns this Scheduler's epoch and the
        groups it does not know, which the runner must `adopt` again."""
        return self._books.epoch, self._books.on_renewed(groups)

    async def adopt(self, message: Adopt) -> Placements:
        """A runner registers a job this Scheduler does not know (it restarted, or the job's
        lease lapsed) with all it holds."""
        async with self._lock:
            await self._ensure_nodes()
            placements = self._books.on_adopted(message)
            self._after_change()
            return placements

    async def cancel(self, group: str) -> list[str]:
        """Drop the group's waiting tasks; running ones are the caller's to cancel."""
        async with self._lock:
            dropped = self._books.on_cancelled(group)
            self._after_change()
            return dropped

    async def finished(self, group: str, reason: str | None = None,
                       completions: list[Completion] | None = None) -> None:
        """The group's job is over: learn from its last ends (`completions`), release whatever
        it still held (its runner has reported every task, or is giving up), forget its counts,
        outbox and lease."""
        async with self._lock:
            self._books.on_finished(group, reason, completions or [])
            self._after_change()

    async def end_groups(self, finished: list[Finished]) -> None:
        """Several groups' jobs over (a runner's, batched): as `finished` for each."""
        async with self._lock:
            self._books.on_groups_ended(finished)
            self._after_change()

    async def pending(self, group: str) -> JobPending | None:
        """Why the job's queued tasks wait and when they should run (None: none waits here). The
        inputs are copied under the lock; the replay runs in a thread, so a long queue costs the
        read its time, never the drains, reports and renewals the lock serves."""
        kept = self._forecasts.get(group)
        if kept is not None and time.monotonic() - kept[0] < FORECAST_KEPT_S:  # the web page asks every second
            return kept[1]
        async with self._lock:
            inputs = self._books.pending_inputs(group)
        forecast = await asyncio.to_thread(inputs.forecast) if inputs is not None else None
        if len(self._forecasts) > 1000:
            self._forecasts.clear()
        self._forecasts[group] = (time.monotonic(), forecast)
        return forecast

    async def job_fate(self, group: str) -> str | None:
        """Why a job this Scheduler reclaimed is gone (its runner stopped renewing), if it was."""
        return self._books.owners.gone.get(group)

    # ------------------------------------------------------------------ /v1/schedule callers

    async def complete(self, completions: list[Completion]) -> int:
        """Tasks ended: release them and place waiting tasks in their room."""
        async with self._lock:
            released = self._books.on_completed(completions)
            self._after_change()
        return released

    async def abandon(self, task_id: str, request_key: str) -> bool:
        """A /v1/schedule request whose caller left before its answer: released if `request_key`
        made it (`SchedulerBooks.on_abandoned`)."""
        async with self._lock:
            abandoned = self._books.on_abandoned(task_id, request_key)
            self._after_change()
        return abandoned

    async def complete_external(self, completion: Completion, caller: Caller | None = None) -> int:
        """A `/v1/schedule` caller reports its task: only its leased reservation, by its owner."""
        if not self._books.check_may_complete(completion, caller):
            return 0
        return await self.complete([completion])

    # ------------------------------------------------------------------ status

    async def cluster_status(self) -> ClusterStatus:
        """Nodes with their reservations folded in, for the status route and the CLI. Borrowed
        capacity is asked for afresh: a reader must not see an allocation the SharingManager
        has already ended, only because the next tick has not come yet."""
        allocations = await self._fetch_allocations()
        async with self._lock:
            self._books.on_allocations(allocations)
            await self._ensure_nodes()
            return self._books.status()

    async def recent_decisions(self, limit: int = 50, job_id: str | None = None) -> RecentDecisions:
        """The latest decisions with their reasons, newest first; one job's when `job_id` is
        given. No lock: reading the log awaits nothing, so no decision lands halfway through."""
        log = self._books.log
        return RecentDecisions(now=time.time(), decisions=log.recent(limit, job_id),
                               job_placed=log.placed_in_job(job_id) if job_id else None)

    async def placement_history(self, window_s: float = 600.0) -> PlacementHistory:
        return self._books.log.placements(window_s)
