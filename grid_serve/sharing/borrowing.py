"""Tasks inside allocations: the Scheduler's view of borrowed capacity, and when a task runs in it."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from ..models import NODE_LABEL, SchedulingDecision, SchedulingRequest, SchedulingStrategy
from ..strategies import NoFit
from ..view import AllocationView, ClusterView, NodeLookupError, NodeView
from .models import EPS, Allocation


def fold_allocations(view: ClusterView, records: Iterable[Allocation],
                     group_loads: Mapping[str, Any] | None = None) -> ClusterView:
    """The view with each held allocation's capacity reserved on its donor and attached as an
    `AllocationView` (with what its tasks use), so the Scheduler sees what Ray sees."""
    group_loads = group_loads or {}
    by_name = {node.name: node for node in view.nodes.values()}
    for record in records:
        donor = by_name.get(record.donor or "")
        if donor is None or not record.holding:
            continue
        capacity = record.ray_bundle
        view = view.with_node(view.nodes[donor.node_id].reserve(capacity, tasks=0))
        load = group_loads.get(record.placement_group_id or "")
        view = view.with_allocation(AllocationView(
            id=record.id, borrower=record.borrower, donor_id=donor.node_id, donor=donor.name,
            placement_group_id=record.placement_group_id or "", capacity=capacity,
            used=dict(load.reserved) if load else {}, in_flight=load.in_flight if load else 0,
            accepting=record.state == "active" and record.ready and record.placement_group_id is not None,
        ))
    return view


def borrower_of(request: SchedulingRequest, view: ClusterView) -> NodeView | None:
    """The node a task is meant for when it names exactly one: node_specific or its label."""
    try:
        if request.strategy is SchedulingStrategy.NODE_SPECIFIC and request.target_node:
            return view.resolve(request.target_node)
        name = request.label_selector.get(NODE_LABEL)
        return view.resolve(name) if name else None
    except NodeLookupError:
        return None


def _fits(needs: Mapping[str, float], free: Callable[[str], float]) -> bool:
    return all(amount <= free(resource) + EPS for resource, amount in needs.items())


def allocation_decision(request: SchedulingRequest, view: ClusterView,
                        outcome: SchedulingDecision | NoFit) -> SchedulingDecision | None:
    """Run the task inside one of its node's allocations when the node itself has no room.

    Only when the task names its node (node_specific or the node label), the node has no room
    now without overbooking, and an accepting allocation holds every resource it needs; the
    least used such allocation wins (then the id). None: keep `outcome`.
    """
    borrower = borrower_of(request, view)
    if borrower is None or not view.allocations:
        return None
    needs = request.requirements.as_ray_resources()
    if isinstance(outcome, SchedulingDecision) and _fits(needs, lambda r: borrower.free(r, 1.0)):
        return None
    fitting = [a for a in view.allocations.values()
               if a.borrower == borrower.name and a.accepting and _fits(needs, a.free)
               and view.nodes.get(a.donor_id) is not None and view.nodes[a.donor_id].alive]
    if not fitting:
        return None
    chosen = min(fitting, key=lambda a: (_used_share(a), a.id))
    donor = view.nodes[chosen.donor_id]
    why = outcome.message if isinstance(outcome, NoFit) else f"{borrower.name} is full (would overbook)"
    return SchedulingDecision(
        task_id=request.task_id, node_id=donor.node_id, node_name=donor.name, node_ip=donor.ip,
        strategy=request.strategy, score=1.0,
        reasons=[f"ran in allocation {chosen.id} on donor {donor.name}, borrowed by {borrower.name}",
                 f"{borrower.name} had no room: {why}"],
        resources=needs, placement_group_id=chosen.placement_group_id, bundle_index=0,
    )


def may_fit_allocation(request: SchedulingRequest, view: ClusterView) -> bool:
    """Some accepting allocation of the task's node could hold it once its tasks finish."""
    borrower = borrower_of(request, view)
    if borrower is None:
        return False
    needs = request.requirements.as_ray_resources()
    return any(a.borrower == borrower.name and a.accepting and _fits(needs, lambda r: a.capacity.get(r, 0.0))  # noqa: B023
               for a in view.allocations.values())


def _used_share(allocation: AllocationView) -> float:
    return max((allocation.used.get(r, 0.0) / cap for r, cap in allocation.capacity.items() if cap > 0), default=0.0)


