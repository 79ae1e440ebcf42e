"""spread: the node with the fewest of this job's tasks (per GPU for GPU tasks), then the idlest.

Its turn rule makes it exact: only the nodes furthest behind in this job may take its next
task, so a batch of N tasks over k nodes lands ceil(N/k) or floor(N/k) per node, every time
its nodes keep up. A node that cannot take the task (busy, stale) for 3 expected run times
(at least 5 s) while another node could gives up its turn, and the job's count on it goes up
by one as if it had taken a task: a stuck node slows the job by that much, not forever.
"""

from __future__ import annotations

from ..models import SchedulingRequest
from ..view import NodeView
from .framework import NOT_NOW, PlacementContext, Strategy, Turn, score_idle


def weight(request: SchedulingRequest, node: NodeView) -> float:
    """The share of a batch a node should get: one per node, or one per GPU for GPU tasks."""
    if request.requirements.gpu_count > 0:
        return max(node.gpu_count, 1e-9)
    return 1.0


def level(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> float:
    """This job's tasks on the node after one more, per unit of weight."""
    return (ctx.group_counts.get(node.node_id, 0) + 1) / weight(request, node)


def not_its_turn(request: SchedulingRequest, node: NodeView, ctx: PlacementContext, level: float) -> str:
    return f"has {ctx.group_counts.get(node.node_id, 0)} of this job's tasks; nodes with fewer go first"


def score_job_share(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> float:
    return 1.0 / (1.0 + ctx.group_counts.get(node.node_id, 0) / weight(request, node))


def explain(request: SchedulingRequest, chosen: NodeView, runner_up: NodeView | None, ctx: PlacementContext,
            ready: int) -> str:
    return (f"spread: {chosen.name} had {ctx.group_counts.get(chosen.node_id, 0)} of this job's tasks, "
            f"the fewest per {'GPU' if request.requirements.gpu_count else 'node'}")


TURN = Turn("spread turn", level, not_its_turn, patience_runs=3.0)
STRATEGY = Strategy(
    "spread",
    current_checks=((TURN.name, TURN.check), *NOT_NOW),
    scorers=(("job share", 1.0, score_job_share), ("idle", 0.25, score_idle)),
    explain=explain,
    turn=TURN,
)
