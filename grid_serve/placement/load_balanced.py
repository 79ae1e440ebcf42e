"""load_balanced: the node with the lowest live load (reservations against capacity, blended
with measured utilisation), then the idlest."""

from __future__ import annotations

from ..models import SchedulingRequest
from ..view import NodeView
from .framework import NOT_NOW, PlacementContext, Strategy, load_of, score_idle


def score_least_loaded(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> float:
    return max(0.0, 1.0 - min(load_of(request, node), ctx.view.admission) / ctx.view.admission)


def explain(request: SchedulingRequest, chosen: NodeView, runner_up: NodeView | None, ctx: PlacementContext,
            ready: int) -> str:
    return f"load_balanced: {chosen.name} has the lowest load ({load_of(request, chosen):.2f}) of {ready} ready node(s)"


STRATEGY = Strategy(
    "load_balanced",
    current_checks=NOT_NOW,
    scorers=(("least loaded", 1.0, score_least_loaded), ("idle", 0.1, score_idle)),
    explain=explain,
    reads_job_counts=False,
)
