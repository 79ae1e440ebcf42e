"""`grid resource-sharing status` as table rows of strings: rendering, apart from the rules."""

from __future__ import annotations

import time
from typing import Iterable, Mapping

from ..config import ClusterConfig
from .models import Allocation, figure
from .status import CapacityRow, NodeUsage, SharingStatus

Table = tuple[list[str], list[list[str]]]


def _when(epoch: float | None, now: float) -> str:
    if epoch is None:
        return "-"
    seconds = epoch - now
    return f"in {seconds:.0f}s" if seconds >= 0 else f"{-seconds:.0f}s ago"


def allocation_rows(records: Iterable[Allocation], now: float | None = None) -> Table:
    """Active (and draining) allocations: id, donor, borrower, resource, amount, priority, expires."""
    now = time.time() if now is None else now
    headers = ["id", "donor", "borrower", "resource", "amount", "priority", "expires", "state", "in flight"]
    rows = [[r.id, r.donor or "-", r.borrower, str(r.resource), f"{r.amount:g}", str(r.priority),
             _when(r.expires_at, now), r.state if r.state != "active" else ("active" if r.ready else "placing"),
             str(r.in_flight)] for r in records]
    return headers, rows


def pending_rows(records: Iterable[Allocation], now: float | None = None) -> Table:
    now = time.time() if now is None else now
    headers = ["id", "borrower", "resource", "amount", "priority", "waiting", "gives up", "reason"]
    rows = [[r.id, r.borrower, str(r.resource), f"{r.amount:g}", str(r.priority), f"{now - r.requested_at:.0f}s",
             _when(r.timeout_at, now), r.reason] for r in records]
    return headers, rows


def capacity_rows(rows: Iterable[CapacityRow]) -> Table:
    headers = ["node", "resource", "can share", "max share", "lendable", "lent", "spare", "borrowed", "priority"]
    return headers, [[r.node, str(r.resource), "yes" if r.can_share else "no", f"{figure(r.max_share)}",
                      f"{figure(r.lendable)}", f"{figure(r.lent)}", f"{figure(r.spare)}", f"{figure(r.borrowed)}",
                      f"{figure(r.sharing_priority)}"] for r in rows]


def utilisation_rows(nodes: Iterable[NodeUsage]) -> Table:
    """Per node and resource: used (tasks + lent) of total, and what it borrows."""
    headers = ["node", "alive", "cpu used/total", "gpu used/total", "memory GB used/total", "lent", "borrowed"]

    def used(node: NodeUsage, key: str) -> str:
        return f"{figure(node.reserved.get(key, 0) + node.lent.get(key, 0))}/{node.total.get(key, 0):g}"

    def summary(amounts: Mapping[str, float]) -> str:
        return ", ".join(f"{figure(v)} {k}" for k, v in amounts.items() if v) or "-"

    return headers, [[n.node, "yes" if n.alive else "no", used(n, "cpu"), used(n, "gpu"), used(n, "memory"),
                      summary(n.lent), summary(n.borrowed)] for n in nodes]


def status_tables(status: SharingStatus, now: float | None = None) -> dict[str, Table]:
    """The four tables `grid resource-sharing status` prints, as (headers, rows) of strings."""
    return {
        "allocations": allocation_rows(status.allocations, now),
        "pending": pending_rows(status.pending, now),
        "capacity": capacity_rows(status.capacity),
        "utilisation": utilisation_rows(status.nodes),
    }


def config_capacity_rows(config: ClusterConfig) -> Table:
    """Shareable limits straight from a cluster file, for `status --config FILE` without a cluster."""
    headers = ["node", "can share", "max cpu", "max memory GB", "max gpu", "priority"]
    return headers, [[n.name, "yes" if n.resource_sharing.can_share else "no", f"{n.resource_sharing.max_share_cpu:g}",
                      f"{n.resource_sharing.max_share_memory_gb:g}", f"{n.resource_sharing.max_share_gpu:g}",
                      f"{n.resource_sharing.priority:g}"] for n in config.nodes]
