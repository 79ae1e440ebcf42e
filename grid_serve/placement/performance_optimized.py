"""performance_optimized: the node expected to finish the task soonest (earliest finish).

The estimate is `strategies.expected_finish_s`: the wait for a slot plus the learned run time
there. Its turn rule holds a task for a busy node that would still finish it sooner: a node
with room now passes only while its finish is within 5% of the soonest. Idle breaks ties
between nodes that finish as soon (a free slot each is the same finish, and spreading them
also measures nodes nothing has measured yet).
"""

from __future__ import annotations

from ..models import SchedulingRequest
from ..strategies import NOT_NOW, PlacementContext, Strategy, Turn, expected_finish_s, score_idle
from ..view import NodeView

FINISH_SLACK = 0.05  # a node within 5% of the soonest finish counts as soonest: no holding for crumbs


def finish(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> float:
    return expected_finish_s(request, node, ctx.view).seconds


def finishes_later(request: SchedulingRequest, node: NodeView, ctx: PlacementContext, level: float) -> str:
    return f"would finish in ~{level:.3f}s; another node would finish it in ~{ctx.turn_floor:.3f}s"


def score_fastest(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> float:
    return 1.0 / (1.0 + finish(request, node, ctx))


def explain(request: SchedulingRequest, chosen: NodeView, runner_up: NodeView | None, ctx: PlacementContext,
            ready: int) -> str:
    """The winner's estimate and evidence, and the runner-up's, so a reader sees what decided."""
    text = (f"performance_optimized: {chosen.name} expected to finish soonest "
            f"({expected_finish_s(request, chosen, ctx.view).describe()}, {chosen.in_flight} in flight)")
    if runner_up is not None:
        text += f"; next best {runner_up.name} ({expected_finish_s(request, runner_up, ctx.view).describe()})"
    return text


TURN = Turn("a busy node finishes sooner", finish, finishes_later, slack=FINISH_SLACK, stale_sets_floor=False)
STRATEGY = Strategy(
    "performance_optimized",
    current_checks=(*NOT_NOW, (TURN.name, TURN.check)),
    scorers=(("fastest finish", 1.0, score_fastest), ("idle", 0.1, score_idle)),
    explain=explain,
    turn=TURN,
)
