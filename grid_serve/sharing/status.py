"""The sharing status as data, for HTTP and the CLI (`render` turns it into table rows)."""

from __future__ import annotations

from typing import Mapping

from pydantic import BaseModel

from ..view import ClusterView
from .lifecycle import ENDED_STATES
from .models import Allocation, ResourceType
from .rules import SharingLedger


class CapacityRow(BaseModel):
    """What one node may lend of one resource, and how much of that is in use."""

    node: str
    resource: ResourceType
    can_share: bool
    max_share: float  # config limit
    lendable: float  # the limit bounded by what the node has
    lent: float
    spare: float
    borrowed: float
    sharing_priority: float


class NodeUsage(BaseModel):
    """One node's totals, task reservations, and what it lends and borrows (user units)."""

    node: str
    alive: bool
    total: dict[str, float]
    reserved: dict[str, float]  # by tasks placed on it directly
    lent: dict[str, float]
    borrowed: dict[str, float]


class SharingStatus(BaseModel):
    enabled: bool
    policy: str
    allocations: list[Allocation]  # holding capacity: active, or ended and draining
    pending: list[Allocation]
    recent: list[Allocation]  # ended, newest first
    capacity: list[CapacityRow]
    nodes: list[NodeUsage]


def sharing_status(ledger: SharingLedger, view: ClusterView,
                   available: Mapping[str, Mapping[str, float]] | None = None, recent: int = 20) -> SharingStatus:
    capacity, usage = [], []
    holding = ledger.holding()
    for node in view.nodes.values():
        config_node = ledger.config.node(node.name) if ledger.config else None
        lent_by, borrowed_by, total, reserved = {}, {}, {}, {}
        for resource in ResourceType:
            key = str(resource)
            room = ledger.room(node, resource, view, available)
            borrowed = sum(r.amount for r in holding if r.borrower == node.name and r.resource is resource)
            lent_by[key], borrowed_by[key] = room.lent, borrowed
            total[key] = resource.from_ray(node.total.get(resource.ray_name, 0.0))
            reserved[key] = resource.from_ray(node.reserved.get(resource.ray_name, 0.0))
            if config_node is not None:
                capacity.append(CapacityRow(
                    node=node.name, resource=resource, can_share=config_node.resource_sharing.can_share,
                    max_share=resource.limit_of(config_node) if config_node.resource_sharing.can_share else 0.0,
                    lendable=room.limit, lent=room.lent, spare=room.spare, borrowed=borrowed,
                    sharing_priority=config_node.resource_sharing.priority))
        usage.append(NodeUsage(node=node.name, alive=node.alive, total=total, reserved=reserved,
                               lent=lent_by, borrowed=borrowed_by))
    ended = sorted((r for r in ledger.records.values() if r.state in ENDED_STATES and not r.holding),
                   key=lambda r: -(r.ended_at or 0.0))
    return SharingStatus(
        enabled=ledger.enabled, policy=ledger.config.resource_sharing.policy if ledger.config else "balanced",
        allocations=holding, pending=ledger.pending(), recent=ended[:recent], capacity=capacity, nodes=usage)
