"""performance_optimized: the node expected to finish the task soonest (earliest finish).

The estimate is `strategies.expected_finish_s`: the wait for a slot plus the learned run time
there. Its turn rule holds a task for a busy node that would still finish it sooner: a node
with room now passes only while its finish is within 5% of the soonest. Idle breaks ties
between nodes that finish as soon (a free slot each is the same finish, and spreading them
also measures nodes nothing has measured yet).

Exploration: a node measured slow once is tried again now and then. Once a job has placed
EXPLORE_EVERY (20) x (k + 1) tasks, a measured node holding only k of them is due a trial: it
passes the turn rule and its "explore" score outweighs any finish, so the job's next task goes
there if it has room now. A node the job keeps using is never due; one it avoids gets about one
task in 20, and its new measurement decides from then on.
"""

from __future__ import annotations

from ..models import SchedulingRequest
from ..view import NodeView
from .framework import NOT_NOW, PlacementContext, Strategy, Turn, expected_finish_s, score_idle

FINISH_SLACK = 0.05  # a node within 5% of the soonest finish counts as soonest: no holding for crumbs
EXPLORE_EVERY = 20  # a node this job passed over is tried again once per this many of its tasks


def finish(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> float:
    return expected_finish_s(request, node, ctx.view).seconds


def finishes_later(request: SchedulingRequest, node: NodeView, ctx: PlacementContext, level: float) -> str:
    return f"would finish in ~{level:.3f}s; another node would finish it in ~{ctx.turn_floor:.3f}s"


def exploring(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> bool:
    """Due a trial: the node has a measurement of this task type (it was measured, and may have
    been measured slow) but fewer of this job's tasks than one per EXPLORE_EVERY the job has
    placed. Without trials a node measured slow once, on a bad minute, would never be measured
    again; with them each such node costs a job about one task in EXPLORE_EVERY, and only when
    it has room (the current checks still apply)."""
    if (node.node_id, request.task_type) not in ctx.view.durations:
        return False  # never measured: the hardware prior and the idle tie-break already try it
    return ctx.job_placed >= EXPLORE_EVERY * (ctx.group_counts.get(node.node_id, 0) + 1)


def job_round(ctx: PlacementContext) -> int:
    """Which of the job's rounds of EXPLORE_EVERY tasks this is: a new one may make nodes due."""
    return ctx.job_placed // EXPLORE_EVERY


def check_turn_unless_exploring(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> str | None:
    return None if exploring(request, node, ctx) else TURN.check(request, node, ctx)


def score_explore(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> float:
    return 1.0 if exploring(request, node, ctx) else 0.0


def score_fastest(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> float:
    return 1.0 / (1.0 + finish(request, node, ctx))


def explain(request: SchedulingRequest, chosen: NodeView, runner_up: NodeView | None, ctx: PlacementContext,
            ready: int) -> str:
    """The winner's estimate and evidence, and the runner-up's, so a reader sees what decided."""
    if exploring(request, chosen, ctx):
        return (f"performance_optimized: trying {chosen.name} again "
                f"({expected_finish_s(request, chosen, ctx.view).describe()}): "
                f"the job has placed {ctx.job_placed} tasks, {ctx.group_counts.get(chosen.node_id, 0)} of them here, "
                f"and a node it passes over is re-measured once per {EXPLORE_EVERY}")
    text = (f"performance_optimized: {chosen.name} expected to finish soonest "
            f"({expected_finish_s(request, chosen, ctx.view).describe()}, {chosen.in_flight} in flight)")
    if runner_up is not None:
        text += f"; next best {runner_up.name} ({expected_finish_s(request, runner_up, ctx.view).describe()})"
    return text


TURN = Turn("a busy node finishes sooner", finish, finishes_later, slack=FINISH_SLACK, stale_sets_floor=False)
STRATEGY = Strategy(
    "performance_optimized",
    current_checks=(*NOT_NOW, (TURN.name, check_turn_unless_exploring)),
    # a node due a trial outweighs any finish (weights 2 vs 1.1): it is what the trial is for
    scorers=(("fastest finish", 1.0, score_fastest), ("idle", 0.1, score_idle), ("explore", 2.0, score_explore)),
    explain=explain,
    turn=TURN,
    epoch=job_round,
)
