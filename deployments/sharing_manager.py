"""SharingManager: the resource-sharing ledger, and the placement groups that make it real.

A granted allocation is a detached Ray placement group named `grid-sharing-<id>` with one
bundle pinned to the donor by `bundle_label_selector` on the node label, so Ray itself holds
the capacity and it outlives this replica. The ledger is saved to the GCS internal KV after
every change; a replacement replica (Serve restarts a killed one) reloads it and re-adopts the
groups that still exist. One replica: it owns the ledger.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

import ray
from ray import serve
from ray.experimental import internal_kv
from ray.serve.handle import DeploymentHandle
from ray.util.placement_group import PlacementGroup, placement_group, placement_group_table, remove_placement_group

from grid_serve.access import Caller, may_touch, refusal_to_touch
from grid_serve.config import ClusterConfig
from grid_serve.errors import ForbiddenError, UnavailableError
from grid_serve.handles import stop_safe
from grid_serve.models import NODE_LABEL
from grid_serve.sharing import (
    PLACEMENT_GROUP_PREFIX,
    Allocation,
    Changes,
    SharingLedger,
    SharingRequest,
    SharingStatus,
    reconcile,
    sharing_status,
)
from grid_serve.view import ClusterView, view_from

from ._common import INTERNAL_OPTIONS, ReplacedError, SoleWriterRecord, call_with_timeout, every, logger

KV_KEY = "sharing-ledger"  # one per app: `sharing-ledger:<app>`
READY_WAIT_S = 10.0
OBSERVE_TIMEOUT_S = 5.0  # a tick waits this long for the cluster's view, then ends the leases that are due
SWEEP_EVERY_TICKS = 5  # how often the manager looks for groups of its own that no record holds
# Fault injection for tests: while this KV key (namespace FAULTS_NAMESPACE) holds "fail", saving
# the ledger fails, as it would when the GCS's KV store does.
FAULTS_NAMESPACE = "grid_serve_faults"
FAIL_SAVE_KEY = "sharing-save"


def save(record: SoleWriterRecord, state_json: str) -> None:
    if internal_kv._internal_kv_get(FAIL_SAVE_KEY, namespace=FAULTS_NAMESPACE) == b"fail":
        raise ConnectionError("GCS KV put failed (injected fault)")
    record.save(state_json)


def live_groups(owns: Callable[[str], bool]) -> dict[str, tuple[str, str]]:
    """Every live placement group of this app's sharing ledger: name -> (id hex, state)."""
    groups = {}
    for group_id, info in placement_group_table().items():
        if owns(info.get("name", "")) and info.get("state") != "REMOVED":
            groups[info["name"]] = (group_id, info["state"])
    return groups


def _group(group_id: str) -> PlacementGroup:
    from ray._raylet import PlacementGroupID

    return PlacementGroup(PlacementGroupID(bytes.fromhex(group_id)))


def create_group(record: Allocation) -> PlacementGroup:
    """The allocation's bundle, on the donor and nowhere else, kept after this replica dies."""
    return placement_group([record.ray_bundle], strategy="STRICT_PACK", name=record.placement_group,
                           lifetime="detached", bundle_label_selector=[{NODE_LABEL: record.donor or ""}])


@serve.deployment(**INTERNAL_OPTIONS)
class SharingManager:
    def __init__(self, config: ClusterConfig | None, metrics: DeploymentHandle, load_balancer: DeploymentHandle,
                 interval_s: float | None = None) -> None:
        self._metrics = stop_safe(metrics)
        self._lb = stop_safe(load_balancer)
        interval = interval_s or (config.resource_sharing.monitoring_interval_seconds if config else 1.0)
        # an ended allocation keeps its group a little past its last task: the Scheduler may
        # still be placing into it from a view up to one interval old
        app = serve.get_replica_context().app_name
        # One writer at a time: in a rolling update the outgoing replica, still alive, must not
        # overwrite this one's ledger or sweep the groups of grants it never heard of
        self._record = SoleWriterRecord(f"{KV_KEY}:{app}")
        self._replaced = False  # a newer replica took the ledger over: this one grants nothing more
        self._ledger = SharingLedger(config, drain_grace_s=2 * interval + 1.0,
                                     group_prefix=f"{PLACEMENT_GROUP_PREFIX}{app}-")
        self._lock = asyncio.Lock()
        self._saved = ""
        self._ticks = 0
        saved = self._record.claim()
        if saved:
            self._ledger.load_state(saved)
        groups = live_groups(self._ledger.owns_group)
        vanished, orphans = reconcile(self._ledger, groups)
        for record_id in vanished:
            logger.warning("sharing: allocation %s lost its placement group while the manager was down", record_id)
        self._remove_orphans(orphans, groups)  # created just before a crash, never recorded: give the capacity back
        self._save_or_log()
        logger.info("sharing: %d allocation(s), %d pending request(s) restored", len(self._ledger.holding()),
                    len(self._ledger.pending()))
        self._loop = every(interval, self._tick, "sharing-tick")

    # ------------------------------------------------------------------ API

    async def request(self, body: SharingRequest | dict[str, Any], owner: str | None = None) -> Allocation:
        """Grant now (preempting if the priority allows), or queue until a donor has room.
        Only `owner` may release it (a handle call may release anything). When the request
        cannot be recorded (the GCS's KV store fails), nothing of it stays: 503, retry."""
        request = body if isinstance(body, SharingRequest) else SharingRequest.model_validate(body)
        self._refuse_if_replaced()
        view, available, in_flight = await self._observe_or_refuse()
        async with self._lock:
            self._refuse_if_replaced()
            self._ledger.set_in_flight(in_flight)
            record, changes = self._ledger.submit(request, view, available, owner)
            self._apply(changes, fresh=record.id)
        if record.state == "active":
            await self._wait_ready(record.id)
        return self._ledger.get(record.id)

    async def get(self, record_id: str) -> Allocation:
        return self._ledger.get(record_id)

    async def release(self, record_id: str, caller: Caller | None = None) -> Allocation:
        """End it: no new tasks go in; the group goes once its running tasks finish."""
        owner = self._ledger.get(record_id).owner
        if not may_touch(caller, owner):
            raise ForbiddenError(refusal_to_touch(owner, f"allocation {record_id}"), field="id")
        async with self._lock:
            self._refuse_if_replaced()
            record, changes = self._ledger.release(record_id)
            self._apply(changes)
        return record

    def _refuse_if_replaced(self) -> None:
        if self._replaced:
            raise UnavailableError("this sharing manager replica was replaced by a newer one, which keeps the "
                                   "ledger now: retry", field="resource_sharing")

    async def holding(self) -> list[Allocation]:
        """Allocations holding capacity on their donors: what the Scheduler folds into its view."""
        return self._ledger.holding()

    async def status(self) -> SharingStatus:
        view, available, in_flight = await self._observe_or_refuse()
        async with self._lock:
            self._ledger.set_in_flight(in_flight)
            return sharing_status(self._ledger, view, available)

    # ------------------------------------------------------------------ the loop

    async def _observe_in_time(self) -> tuple[ClusterView, dict[str, dict[str, float]], dict[str, int]] | None:
        """The cluster's view, or None after OBSERVE_TIMEOUT_S (the LoadBalancer or MetricsCollector
        is stalled): then the leases and donor waits that are due end anyway, since time passes."""
        try:
            return await call_with_timeout(self._observe(), OBSERVE_TIMEOUT_S)
        except asyncio.TimeoutError:
            logger.warning("sharing: no view of the cluster within %gs; ending leases that are due, granting "
                           "and draining nothing until it comes", OBSERVE_TIMEOUT_S)
            async with self._lock:
                if not self._replaced:
                    self._apply(self._ledger.expire())
            return None

    async def _observe_or_refuse(self) -> tuple[ClusterView, dict[str, dict[str, float]], dict[str, int]]:
        """The view a request or a status needs, or 503 (nothing recorded) when it does not come in time."""
        observed = await self._observe_in_time()
        if observed is None:
            raise UnavailableError(f"no view of the cluster within {OBSERVE_TIMEOUT_S:g} s (the LoadBalancer or "
                                   "MetricsCollector is stalled): nothing recorded; retry", field="resource_sharing")
        return observed

    async def check_health(self) -> None:
        """Serve's periodic health check: a replica a newer one replaced is replaced by Serve
        too (it grants nothing; after a rolling update it is going anyway)."""
        if self._replaced:
            raise RuntimeError("a newer sharing manager replica keeps the ledger now")

    async def _tick(self) -> None:
        if self._replaced or not self._record.still_mine():  # the newer replica ticks, expires and sweeps now
            self._replaced = True
            return
        observed = await self._observe_in_time()
        if observed is None:
            return
        view, available, in_flight = observed
        async with self._lock:
            if self._replaced:
                return
            self._ledger.set_in_flight(in_flight)
            self._note_ready()
            try:
                self._apply(self._ledger.tick(view, available, in_flight))
            except UnavailableError as exc:  # the grants went back to pending; the next tick tries again
                logger.warning("sharing: %s", exc)
            self._ticks += 1
            if self._ticks % SWEEP_EVERY_TICKS == 0:
                self._sweep_orphans()

    async def _observe(self) -> tuple[ClusterView, dict[str, dict[str, float]], dict[str, int]]:
        """Nodes and task reservations now, Ray's own free resources, and tasks per allocation."""
        nodes, taken_at = await self._metrics.snapshot.remote()
        ledger = await self._lb.snapshot.remote()
        view = view_from(nodes, ledger, admission=1.0, taken_at=taken_at)
        available = {node.node_id: dict(node.resources_available) for node in nodes}
        by_group = {r.placement_group_id: r.id for r in self._ledger.holding() if r.placement_group_id}
        in_flight = {by_group[group]: load.in_flight for group, load in ledger.group_loads.items() if group in by_group}
        return view, available, in_flight

    def _apply(self, changes: Changes, fresh: str | None = None) -> None:
        """Record, then remove (preempted and drained groups), then create, then record again.

        Write-ahead: a grant is saved (its group's name is known) before its group exists, so
        a crash in between leaves a record whose group vanished (forgotten on restart), never
        a group no record knows. If that save fails, nothing is created: the grants go back to
        pending, or, for `fresh` (the request being answered), the record is dropped and the
        caller hears 503, so a retry cannot make a second grant. A removal that fails is
        retried by the orphan sweep."""
        self._refuse_if_replaced()
        if changes.remove and not changes.granted:  # a record ends: recorded before its group goes
            self._save_or_refuse()
        if changes.granted:
            try:
                self._save()
            except Exception as exc:
                why = f"could not record the grant in Ray's GCS ({type(exc).__name__}: {exc}); nothing was granted"
                for record in changes.granted:
                    if record.id == fresh:
                        self._ledger.forget(record.id, why)
                    else:
                        self._ledger.ungrant(record.id, f"waiting: {why}; trying again")
                raise UnavailableError(f"{why}: retry", field="resource_sharing") from None
        for record in changes.remove:
            self._remove_group(record.placement_group, record.placement_group_id)
        for record in changes.granted:
            group = create_group(record)
            self._ledger.placed(record.id, group.id.hex())
            logger.info("sharing: %s", record.reason)
        self._save_or_refuse()

    def _save_or_refuse(self) -> None:
        """Save a change: a replica that was replaced answers 503 (the newer one's ledger does
        not have it); any other failure is retried at the next change or tick."""
        try:
            self._save()
        except ReplacedError:
            self._refuse_if_replaced()
        except Exception as exc:
            logger.warning("sharing: could not save the ledger (%s: %s); retrying", type(exc).__name__, exc)

    def _remove_group(self, name: str, group_id: str | None) -> None:
        group_id = group_id or live_groups(self._ledger.owns_group).get(name, ("", ""))[0]
        if not group_id:
            return
        try:
            remove_placement_group(_group(group_id))
            logger.info("sharing: removed group %s", name)
        except Exception as exc:  # its record has ended: the orphan sweep removes it later
            logger.warning("sharing: could not remove group %s (%s: %s); retrying", name, type(exc).__name__, exc)

    def _sweep_orphans(self) -> None:
        """Remove this app's groups that no holding record knows: a removal that failed, or a
        group created just before a crash. Another app's groups are never this ledger's."""
        groups = live_groups(self._ledger.owns_group)
        self._remove_orphans(self._ledger.orphans(groups), groups)

    def _remove_orphans(self, orphans: list[str], groups: dict[str, tuple[str, str]]) -> None:
        for name in orphans:
            logger.warning("sharing: group %s is held by no allocation; removing it", name)
            self._remove_group(name, groups[name][0])

    def _note_ready(self) -> None:
        unready = [r for r in self._ledger.holding() if not r.ready and r.placement_group_id]
        if not unready:
            return
        table = placement_group_table()
        for record in unready:
            if table.get(record.placement_group_id or "", {}).get("state") == "CREATED":
                self._ledger.placed(record.id, record.placement_group_id or "", ready=True)

    async def _wait_ready(self, record_id: str) -> None:
        """Give a fresh group a moment to be placed, so the answer can say it is ready."""
        record = self._ledger.get(record_id)
        if not record.placement_group_id:
            return
        try:
            await asyncio.wait_for(_group(record.placement_group_id).ready(), READY_WAIT_S)
        except (asyncio.TimeoutError, ray.exceptions.RayError):
            return  # still placing (a preempted group is going away); the loop notices later
        async with self._lock:
            if self._ledger.get(record_id).holding:
                self._ledger.placed(record_id, record.placement_group_id, ready=True)
                self._save_or_log()

    def _save(self) -> None:
        state = json.dumps(self._ledger.to_state(), sort_keys=True)
        if state != self._saved:
            try:
                save(self._record, state)
            except ReplacedError:
                self._replaced = True
                logger.warning("sharing: a newer sharing manager replica keeps the ledger now; this one stops")
                raise
            self._saved = state

    def _save_or_log(self) -> None:
        """Save; a failure is retried on the next change or tick (the state differs from the saved one)."""
        try:
            self._save()
        except ReplacedError:
            pass
        except Exception as exc:
            logger.warning("sharing: could not save the ledger (%s: %s); retrying", type(exc).__name__, exc)
