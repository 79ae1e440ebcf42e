"""Placement: small filters and scorers composed into a pipeline; the strategies that compose
them live one per module in `grid_serve.placement`, found through its one table.

Read `place()` top to bottom, like Nomad's stack.go:

    candidates -> lasting checks ("never") -> current checks ("not now") -> scorers -> pick

The parts (checks, scorers, `Strategy`, `Turn`, the estimate) are defined in
`grid_serve.placement.framework`, below the strategy modules, and re-exported here. Ties break
on `(-score, node name)`, so the same view and request always give the same node. The
decision carries its explanation as data (`Explanation`). Nothing here imports Ray.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Mapping

from .models import EXPLAINED_NODES, Explanation, NodeScores, PassedOver, SchedulingDecision, SchedulingRequest
from .placement import strategy_named
from .placement.framework import (
    GPU_SPEED,
    LASTING_CHECKS,
    NOMINAL_RUN_S,
    NOT_NOW,
    PATIENCE_MIN_S,
    Candidates,
    Check,
    Estimate,
    Explain,
    Level,
    NoFit,
    PlacementContext,
    PlacementError,
    Scorer,
    Shortfall,
    Strategy,
    Turn,
    all_nodes,
    check_affinity,
    check_alive,
    check_capacity,
    check_free_now,
    check_fresh,
    check_gpu_memory,
    check_gpu_memory_free,
    check_labels,
    count_causes,
    expected_finish_s,
    gpu_speed,
    gpus_needed,
    hardware_speed,
    load_of,
    measured_elsewhere,
    needs_of,
    score_idle,
)
from .view import ClusterView, NodeView

__all__ = [  # the pipeline, and the parts it runs (their home is grid_serve.placement.framework)
    "place", "first_failure", "decision_for", "score_node", "node_scores", "strategy_named",
    "GPU_SPEED", "LASTING_CHECKS", "NOMINAL_RUN_S", "NOT_NOW", "PATIENCE_MIN_S", "Candidates", "Check", "Estimate",
    "Explain", "Level", "NoFit", "PlacementContext", "PlacementError", "Scorer", "Shortfall", "Strategy", "Turn",
    "all_nodes", "check_affinity", "check_alive", "check_capacity", "check_free_now", "check_fresh",
    "check_gpu_memory", "check_gpu_memory_free", "check_labels", "count_causes", "expected_finish_s", "gpu_speed",
    "gpus_needed", "hardware_speed", "load_of", "measured_elsewhere", "needs_of", "score_idle",
]


def first_failure(checks: tuple[tuple[str, Check], ...], request: SchedulingRequest, node: NodeView,
                  ctx: PlacementContext) -> PassedOver | None:
    for name, check in checks:
        reason = check(request, node, ctx)
        if reason is not None:
            if type(reason) is Shortfall:
                return PassedOver(node=node.name, check=name, reason=str(reason), cause=reason.cause,
                                  node_id=node.node_id)
            return PassedOver(node=node.name, check=name, reason=reason, cause=name, node_id=node.node_id)
    return None


def place(
    request: SchedulingRequest,
    view: ClusterView,
    strategy: Strategy | None = None,
    group_counts: Mapping[str, int] | None = None,
) -> SchedulingDecision | NoFit:
    """Choose the node for one task with `strategy` (None: the request's own, from the table).
    Pure: the same inputs always give the same answer."""
    strategy = strategy or strategy_named(request.strategy)
    ctx = PlacementContext(view=view, group_counts=group_counts or {})
    rejections: list[PassedOver] = []

    possible: list[NodeView] = []
    for node in strategy.candidates(request, view):
        rejection = first_failure(LASTING_CHECKS, request, node, ctx)
        if rejection:
            rejections.append(rejection)
        else:
            possible.append(node)
    if not possible:
        return NoFit(request.task_id, can_wait=False, rejections=tuple(rejections), total_nodes=len(view.nodes))

    if strategy.turn is not None:
        ctx = replace(ctx, turn_floor=strategy.turn.floor(request, possible, ctx))
    ready: list[NodeView] = []
    for node in possible:
        rejection = first_failure(strategy.current_checks, request, node, ctx)
        if rejection:
            rejections.append(rejection)
        else:
            ready.append(node)
    if not ready:
        return NoFit(request.task_id, can_wait=True, rejections=tuple(rejections), total_nodes=len(view.nodes))

    scored = sorted(((score_node(strategy, request, node, ctx), node) for node in ready),
                    key=lambda item: (-item[0][0], item[1].name, item[1].node_id))
    (total, parts), chosen = scored[0]
    runner_up = (scored[1][1], node_scores(scored[1][1], *scored[1][0])) if len(scored) > 1 else None
    return decision_for(request, strategy, chosen, node_scores(chosen, total, parts), len(ready),
                        rejections[:EXPLAINED_NODES], count_causes(rejections), ctx, runner_up=runner_up)


def decision_for(request: SchedulingRequest, strategy: Strategy, chosen: NodeView, winner: NodeScores,
                 ready_count: int, passed_over: list[PassedOver], counts: dict[str, int], ctx: PlacementContext,
                 waited_s: float = 0.0, runner_up: tuple[NodeView, NodeScores] | None = None,
                 note: str | None = None) -> SchedulingDecision:
    """The decision for `chosen` with its explanation as data; shared by `place()` and the
    index. `passed_over` is the first few rejections, `counts` counts all of them per cause,
    `runner_up` is the next best ready node and its scores, `note` what the queue adds to the
    strategy's summary (why fair share served this task now).

    The parts arrive as models already (`PassedOver` is made where a check fails), so the
    decision only checks their types: this runs per task, and validating them from dicts cost
    several times more (BENCHMARKS.md).
    """
    summary = strategy.explain(request, chosen, runner_up[0] if runner_up else None, ctx, ready_count)
    explanation = Explanation(
        summary=f"{summary}; {note}" if note else summary,
        winner=winner, runner_up=runner_up[1] if runner_up else None, passed_over=passed_over,
        passed_over_counts=counts,
        nodes=len(ctx.view.nodes),
    )
    return SchedulingDecision(
        task_id=request.task_id,
        node_id=chosen.node_id,
        node_name=chosen.name,
        node_ip=chosen.ip,
        strategy=request.strategy,
        score=winner.score,
        reasons=explanation.reasons(),
        waited_s=waited_s,
        resources=dict(needs_of(request)),
        explanation=explanation,
    )


def score_node(strategy: Strategy, request: SchedulingRequest, node: NodeView,
               ctx: PlacementContext) -> tuple[float, dict[str, float]]:
    """The node's weighted total (unrounded, to rank by) and each named score."""
    parts: dict[str, float] = {}
    total = 0.0
    for name, weight, scorer in strategy.scorers:
        value = scorer(request, node, ctx)
        if not (0.0 <= value <= 1.0) or math.isnan(value):
            raise ValueError(f"scorer {name!r} gave {value} for node {node.name}; scores must lie in [0, 1]")
        parts[name] = value
        total += weight * value
    return total / strategy.weight_sum, parts


def node_scores(node: NodeView, total: float, parts: dict[str, float]) -> NodeScores:
    """`score_node`'s answer as the explanation shows it: made only for the winner and the
    runner-up, since most nodes scored are neither."""
    return NodeScores(node=node.name, score=round(total, 6), scores=parts)

