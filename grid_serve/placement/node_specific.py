"""node_specific: exactly the named node (its name, Ray node id, IP or hostname); an unknown name is
an error, a dead node a clear no-fit, never a silent fallback."""

from __future__ import annotations

from ..models import SchedulingRequest
from ..view import ClusterView, NodeLookupError, NodeView
from .framework import NOT_NOW, PlacementContext, PlacementError, Strategy


def named_node(request: SchedulingRequest, view: ClusterView) -> list[NodeView]:
    """The one candidate: the node the request names."""
    assert request.target_node is not None  # the model validator guarantees it
    try:
        return [view.resolve(request.target_node)]
    except NodeLookupError as exc:
        raise PlacementError(str(exc)) from None


def score_target(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> float:
    return 1.0


def explain(request: SchedulingRequest, chosen: NodeView, runner_up: NodeView | None, ctx: PlacementContext,
            ready: int) -> str:
    return f"node_specific: {request.target_node!r} is {chosen.name} ({chosen.node_id[:8]})"


STRATEGY = Strategy("node_specific", current_checks=NOT_NOW, scorers=(("named node", 1.0, score_target),),
                    explain=explain, candidates=named_node, reads_job_counts=False)
