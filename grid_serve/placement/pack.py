"""pack: the fullest node that still fits, to keep the others free (bin packing)."""

from __future__ import annotations

from ..models import SchedulingRequest
from ..view import NodeView
from .framework import NOT_NOW, PlacementContext, Strategy, load_of


def score_fullest(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> float:
    """The node's load once this task is on it: fuller is better."""
    return min(load_of(request, node, extra=1.0), ctx.view.admission) / ctx.view.admission


def explain(request: SchedulingRequest, chosen: NodeView, runner_up: NodeView | None, ctx: PlacementContext,
            ready: int) -> str:
    return f"pack: {chosen.name} is the fullest node that still fits"


STRATEGY = Strategy("pack", current_checks=NOT_NOW, scorers=(("fullest", 1.0, score_fullest),), explain=explain,
                    reads_job_counts=False)
