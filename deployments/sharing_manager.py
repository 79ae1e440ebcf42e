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
from typing import Any

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.util.placement_group import PlacementGroup, placement_group, placement_group_table, remove_placement_group

from grid_serve.access import Caller, may_touch, refusal_to_touch
from grid_serve.config import ClusterConfig
from grid_serve.errors import ForbiddenError
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

from ._common import INTERNAL_OPTIONS, every, load_saved, logger, save

KV_KEY = "sharing-ledger"
READY_WAIT_S = 10.0


def live_groups() -> dict[str, tuple[str, str]]:
    """Every grid-sharing placement group Ray still has: name -> (id hex, state)."""
    groups = {}
    for group_id, info in placement_group_table().items():
        if info.get("name", "").startswith(PLACEMENT_GROUP_PREFIX) and info.get("state") != "REMOVED":
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
        self._metrics = metrics
        self._lb = load_balancer
        interval = interval_s or (config.resource_sharing.monitoring_interval_seconds if config else 1.0)
        # an ended allocation keeps its group a little past its last task: the Scheduler may
        # still be placing into it from a view up to one interval old
        self._ledger = SharingLedger(config, drain_grace_s=2 * interval + 1.0)
        self._lock = asyncio.Lock()
        self._saved = ""
        saved = load_saved(KV_KEY)
        if saved:
            self._ledger.load_state(saved)
        vanished, orphans = reconcile(self._ledger, live_groups())
        for record_id in vanished:
            logger.warning("sharing: allocation %s lost its placement group while the manager was down", record_id)
        groups = live_groups()
        for name in orphans:  # created just before a crash, never recorded: give the capacity back
            remove_placement_group(_group(groups[name][0]))
        self._save()
        logger.info("sharing: %d allocation(s), %d pending request(s) restored", len(self._ledger.holding()),
                    len(self._ledger.pending()))
        self._loop = every(interval, self._tick, "sharing-tick")

    # ------------------------------------------------------------------ API

    async def request(self, body: SharingRequest | dict[str, Any], owner: str | None = None) -> Allocation:
        """Grant now (preempting if the priority allows), or queue until a donor has room.
        Only `owner` may release it (a handle call may release anything)."""
        request = body if isinstance(body, SharingRequest) else SharingRequest.model_validate(body)
        view, available, in_flight = await self._observe()
        async with self._lock:
            self._ledger.set_in_flight(in_flight)
            record, changes = self._ledger.submit(request, view, available, owner)
            self._apply(changes)
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
            record, changes = self._ledger.release(record_id)
            self._apply(changes)
        return record

    async def holding(self) -> list[Allocation]:
        """Allocations holding capacity on their donors: what the Scheduler folds into its view."""
        return self._ledger.holding()

    async def status(self) -> SharingStatus:
        view, available, in_flight = await self._observe()
        async with self._lock:
            self._ledger.set_in_flight(in_flight)
            return sharing_status(self._ledger, view, available)

    # ------------------------------------------------------------------ the loop

    async def _tick(self) -> None:
        view, available, in_flight = await self._observe()
        async with self._lock:
            self._ledger.set_in_flight(in_flight)
            self._note_ready()
            self._apply(self._ledger.tick(view, available, in_flight))

    async def _observe(self) -> tuple[ClusterView, dict[str, dict[str, float]], dict[str, int]]:
        """Nodes and task reservations now, Ray's own free resources, and tasks per allocation."""
        nodes, taken_at = await self._metrics.snapshot.remote()
        ledger = await self._lb.snapshot.remote()
        view = view_from(nodes, ledger, admission=1.0, taken_at=taken_at)
        available = {node.node_id: dict(node.resources_available) for node in nodes}
        by_group = {r.placement_group_id: r.id for r in self._ledger.holding() if r.placement_group_id}
        in_flight = {by_group[group]: load.in_flight for group, load in ledger.group_loads.items() if group in by_group}
        return view, available, in_flight

    def _apply(self, changes: Changes) -> None:
        """Remove first (preempted and drained groups), then create, then save."""
        for record in changes.remove:
            group_id = record.placement_group_id or live_groups().get(record.placement_group, ("", ""))[0]
            if group_id:
                remove_placement_group(_group(group_id))
            logger.info("sharing: removed group of %s allocation %s", record.state, record.id)
        for record in changes.granted:
            group = create_group(record)
            self._ledger.placed(record.id, group.id.hex())
            logger.info("sharing: %s", record.reason)
        self._save()

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
                self._save()

    def _save(self) -> None:
        state = json.dumps(self._ledger.to_state(), sort_keys=True)
        if state != self._saved:
            save(KV_KEY, state)
            self._saved = state
