"""Placement strategies: small filters and scorers composed into a pipeline.

Read `place()` top to bottom, like Nomad's stack.go:

    candidates -> lasting checks ("never") -> current checks ("not now") -> scorers -> pick

A check is `(request, node, ctx) -> str | None`: None means the node passes, a string is the
reason with numbers ("needs 2 GPU, 1 free"). A scorer is `(request, node, ctx) -> float` in
[0, 1]. A `Strategy` is a frozen table of both. Ties break on `(-score, node name)`, so the
same view and request always give the same node. Nothing here imports Ray.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Iterable, Mapping

from .models import ZERO_RESOURCE_SLOT, SchedulingDecision, SchedulingRequest, SchedulingStrategy
from .view import ClusterView, NodeLookupError, NodeView



@dataclass(frozen=True)
class PlacementContext:
    """Per-decision facts that are not about one node alone."""

    view: ClusterView
    group_counts: Mapping[str, int] = field(default_factory=dict)  # node_id -> this job's tasks
    spread_floor: float = 0.0  # the lowest (count + 1) / weight among nodes that could ever fit
    finish_floor: float = math.inf  # performance_optimized: the soonest expected finish on any fresh node


Check = Callable[[SchedulingRequest, NodeView, PlacementContext], "str | None"]
Scorer = Callable[[SchedulingRequest, NodeView, PlacementContext], float]


@dataclass(frozen=True)
class Strategy:
    name: SchedulingStrategy
    current_checks: tuple[tuple[str, Check], ...]  # reasons to wait
    scorers: tuple[tuple[str, float, Scorer], ...]  # (name, weight, scorer)


@dataclass(frozen=True)
class Rejection:
    node: str
    check: str
    reason: str


@dataclass(frozen=True)
class NoFit:
    """No node can take the task: `can_wait` says whether capacity freeing up would help."""

    task_id: str
    can_wait: bool
    rejections: tuple[Rejection, ...]
    total_nodes: int

    @property
    def message(self) -> str:
        """kube-style: '0/3 nodes are available: 2 insufficient GPU, 1 label mismatch.'"""
        counts = Counter(rejection.check for rejection in self.rejections)
        parts = ", ".join(f"{count} {check}" for check, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        verdict = "waiting for capacity" if self.can_wait else "it can never fit"
        detail = "; ".join(f"{r.node}: {r.reason}" for r in self.rejections[:6])
        return f"0/{self.total_nodes} nodes are available: {parts or 'no nodes'} ({verdict}). {detail}".strip()


class PlacementError(ValueError):
    """The request itself is wrong (an unknown target node, say): waiting cannot help."""


def needs_of(request: SchedulingRequest) -> Mapping[str, float]:
    """`request.requirements.as_ray_resources()`, computed once per requirements object.

    Every check and scorer reads it for every node; the tasks of one job share one
    requirements object, so a one-entry memo (by identity, holding a reference so the id
    cannot be reused) turns thousands of pydantic calls per decision into one. Read-only.
    """
    requirements = request.requirements
    memo = _NEEDS_MEMO[0]  # one (requirements, needs) tuple, swapped whole: safe across threads
    if memo[0] is not requirements:
        needs = requirements.as_ray_resources() or {ZERO_RESOURCE_SLOT: 1.0}  # see models.ZERO_RESOURCE_SLOT
        memo = _NEEDS_MEMO[0] = (requirements, MappingProxyType(needs))
    return memo[1]


_NEEDS_MEMO: list[tuple[object, Mapping[str, float]]] = [(None, MappingProxyType({}))]


# ---------------------------------------------------------------- lasting checks ("never")


def check_alive(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> str | None:
    return None if node.alive else "node is dead"


def check_labels(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> str | None:
    for key, wanted in request.label_selector.items():
        have = node.labels.get(key)
        if have != wanted:
            return f"label {key}={have!r}, wanted {wanted!r}"
    return None


def _named(node: NodeView, references: tuple[str, ...]) -> bool:
    return any(node.answers_to(ref) for ref in references)


def check_affinity(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> str | None:
    if request.affinity_nodes and not _named(node, request.affinity_nodes):
        return f"not among affinity nodes {list(request.affinity_nodes)}"
    if _named(node, request.anti_affinity_nodes):
        return "excluded by anti-affinity"
    return None


def check_capacity(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> str | None:
    for resource, amount in needs_of(request).items():
        total = node.total.get(resource, 0.0)
        if amount > total + 1e-9:
            return f"needs {_amount(resource, amount)} {resource}, has {_amount(resource, total)}"
    return None


def gpus_needed(request: SchedulingRequest) -> int:
    """How many GPUs must each have `gpu_memory_mb`: the task's GPUs, at least one."""
    return max(1, math.ceil(request.requirements.gpu_count))


def check_gpu_memory(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> str | None:
    """Never fits: too few GPUs are big enough. A node whose GPUs NVML cannot see passes,
    because Ray's GPU count is then all there is to go on."""
    wanted = request.requirements.gpu_memory_mb
    if not wanted:
        return None
    if not node.gpus and node.gpu_count <= 0:
        return f"needs {wanted:.0f} MB GPU memory, node has no GPU"
    known = [gpu.memory_total_mb for gpu in node.gpus if gpu.memory_total_mb is not None]
    big_enough = sum(1 for total in known if total >= wanted)
    if known and big_enough < gpus_needed(request):
        return (f"needs {gpus_needed(request)} GPU(s) with {wanted:.0f} MB, "
                f"{big_enough} of {len(known)} that large (largest {max(known):.0f} MB)")
    return None


LASTING_CHECKS: tuple[tuple[str, Check], ...] = (
    ("dead", check_alive),
    ("label mismatch", check_labels),
    ("affinity", check_affinity),
    ("insufficient resources", check_capacity),
    ("insufficient GPU memory", check_gpu_memory),
)


# ---------------------------------------------------------------- current checks ("not now")


def check_fresh(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> str | None:
    """Not now: nothing vouches for the node lately (its probe went quiet, or the whole node
    snapshot is old). It may come back, so work waits rather than failing."""
    return "node is stale: no fresh measurements" if node.stale else None


def check_free_now(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> str | None:
    for resource, amount in needs_of(request).items():
        # the zero-resource cap counts worker processes: no lookahead beyond it
        free = node.free(resource, 1.0 if resource == ZERO_RESOURCE_SLOT else ctx.view.admission)
        if amount > free + 1e-9:
            return f"needs {_amount(resource, amount)} {resource}, {_amount(resource, max(free, 0))} free"
    return None


def check_gpu_memory_free(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> str | None:
    """Not now: NVML says too few GPUs have `gpu_memory_mb` free at the moment."""
    wanted = request.requirements.gpu_memory_mb
    free = [gpu.memory_free_mb for gpu in node.gpus if gpu.memory_free_mb is not None]
    if not wanted or not free:
        return None
    roomy = sum(1 for mb in free if mb >= wanted)
    if roomy < gpus_needed(request):
        return f"needs {gpus_needed(request)} GPU(s) with {wanted:.0f} MB free, {roomy} have it (most free {max(free):.0f} MB)"
    return None


def spread_weight(request: SchedulingRequest, node: NodeView) -> float:
    """The share of a batch a node should get: one per node, or one per GPU for GPU tasks."""
    if request.requirements.gpu_count > 0:
        return max(node.gpu_count, 1e-9)
    return 1.0


def spread_level(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> float:
    return (ctx.group_counts.get(node.node_id, 0) + 1) / spread_weight(request, node)


def check_spread_turn(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> str | None:
    """Only the nodes furthest behind in this job may take its next task: truly even."""
    if spread_level(request, node, ctx) <= ctx.spread_floor + 1e-9:
        return None
    have = ctx.group_counts.get(node.node_id, 0)
    return f"has {have} of this job's tasks; nodes with fewer go first"


# ---------------------------------------------------------------- scorers, each in [0, 1]


def load_of(request: SchedulingRequest, node: NodeView, extra: float = 0.0) -> float:
    """Reserved share of the busiest resource the task uses (CPU if it asks for none),
    blended with measured utilisation when a probe has reported it."""
    wanted = needs_of(request) or {"CPU": 1.0}
    reserved_share = 0.0
    for resource, amount in wanted.items():
        total = node.total.get(resource, 0.0)
        if total > 0:
            reserved_share = max(reserved_share, (node.reserved.get(resource, 0.0) + extra * amount) / total)
    measured = _measured_utilization(request, node)
    if measured is None:
        return reserved_share
    return 0.7 * reserved_share + 0.3 * measured


def _measured_utilization(request: SchedulingRequest, node: NodeView) -> float | None:
    """What the probe says about the part of the node the task will use: the mean GPU
    utilisation for GPU tasks; CPU otherwise, or memory when that is busier and the task asks
    for memory."""
    if request.requirements.gpu_count > 0:
        utils = [gpu.utilization for gpu in node.gpus if gpu.utilization is not None]
        return sum(utils) / len(utils) if utils else None
    figures = [node.cpu_utilization]
    if request.requirements.memory_mb > 0:
        figures.append(node.memory_utilization)
    known = [figure for figure in figures if figure is not None]
    return max(known) if known else None


def score_spread(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> float:
    return 1.0 / (1.0 + ctx.group_counts.get(node.node_id, 0) / spread_weight(request, node))


def score_idle(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> float:
    """Fewer tasks in flight per unit of capacity is better."""
    slots = max(node.total.get("CPU", 0.0), node.gpu_count, 1.0)
    return 1.0 / (1.0 + node.in_flight / slots)


def score_least_loaded(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> float:
    return max(0.0, 1.0 - min(load_of(request, node), ctx.view.admission) / ctx.view.admission)


def score_fullest(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> float:
    return min(load_of(request, node, extra=1.0), ctx.view.admission) / ctx.view.admission


# Rough relative speed of common GPU models (T4 = 1), matched by name. Only a prior: once a
# node has measured run times for a task type, its own numbers decide.
GPU_SPEED: tuple[tuple[str, float], ...] = (
    ("B200", 16.0), ("H200", 9.0), ("H100", 8.0), ("L40S", 4.0), ("L40", 3.5), ("A100", 4.0), ("A6000", 2.5),
    ("RTX 4090", 3.0), ("L4", 1.5), ("A10", 2.0), ("V100", 2.0), ("T4", 1.0),
)
NOMINAL_RUN_S = 1.0  # assumed run time of a task type nothing has measured yet


@dataclass(frozen=True)
class Estimate:
    """When a task would finish on a node, and the evidence behind the number."""

    seconds: float
    run_s: float
    wait_s: float
    evidence: str

    def describe(self) -> str:
        return f"~{self.seconds:.3f}s = wait {self.wait_s:.3f}s + run ({self.evidence})"


def gpu_speed(model: str) -> float:
    """The table's speed for the first key the model name contains; unknown models count as 1.

    >>> gpu_speed("NVIDIA H100 80GB HBM3"), gpu_speed("Tesla T4"), gpu_speed("Quadro P1000")
    (8.0, 1.0, 1.0)
    """
    return next((speed for key, speed in GPU_SPEED if key in model), 1.0)


def hardware_speed(request: SchedulingRequest, node: NodeView) -> tuple[float, str]:
    """A node's prior speed for this task: its best known GPU model for GPU tasks, a modest
    edge per CPU core otherwise (more cores also run the rest of the machine's load)."""
    if request.requirements.gpu_count > 0:
        speed, model = max(((gpu_speed(gpu.name), gpu.name) for gpu in node.gpus), default=(1.0, "unknown GPU"))
        return speed, f"{model} ×{speed:g}"
    cpus = max(node.total.get("CPU", 1.0), 1.0)
    return cpus ** 0.25, f"{cpus:g} CPU ×{cpus ** 0.25:.2f}"


def expected_finish_s(request: SchedulingRequest, node: NodeView, view: ClusterView) -> Estimate:
    """When this task would finish on `node`: the wait for a slot there, plus its run time there.

    Run time, best evidence first: the EWMA of this task type measured on this node; else what
    other nodes measured, scaled by relative hardware speed; else a nominal run time scaled by
    hardware speed (GPU model for GPU tasks, CPU count otherwise). The wait: none while the
    node has a free slot (CPUs, or GPUs for GPU tasks); else the tasks ahead of it (in flight
    beyond the slots, each a run time over the slots) plus half a run for the slot's current
    task, which is on average half done.
    """
    slots = max(node.gpu_count if request.requirements.gpu_count > 0 else node.total.get("CPU", 1.0), 1.0)
    run_s, evidence = _run_time(request, node, view)
    wait_s = 0.0 if node.in_flight < slots else ((node.in_flight - slots) / slots + 0.5) * run_s
    return Estimate(wait_s + run_s, run_s, wait_s, evidence)


def _run_time(request: SchedulingRequest, node: NodeView, view: ClusterView) -> tuple[float, str]:
    measured = view.durations.get((node.node_id, request.task_type))
    if measured is not None:
        return measured, f"measured {measured:.3f}s here"
    speed, hardware = hardware_speed(request, node)
    elsewhere = measured_elsewhere(request, view)
    if elsewhere is not None:
        work, count = elsewhere
        return work / speed, f"prior from {count} measured node(s) scaled to {hardware}: {work / speed:.3f}s"
    return NOMINAL_RUN_S / speed, f"hardware prior ({hardware}): {NOMINAL_RUN_S / speed:.3f}s"


def finish_floor(request: SchedulingRequest, nodes: Iterable[NodeView], view: ClusterView) -> float:
    """The soonest expected finish over `nodes` (those that could ever take the task), counting
    only fresh ones: a stale node may never answer, so nothing is held for it."""
    return min((expected_finish_s(request, node, view).seconds for node in nodes if not node.stale), default=math.inf)


FINISH_SLACK = 0.05  # a node within 5% of the soonest finish counts as soonest: no holding for crumbs


def check_soonest_finish(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> str | None:
    """Earliest finish: a node with room now still waits its turn when a busy node would
    finish the task sooner, once it frees a slot (the task is held for it)."""
    finish = expected_finish_s(request, node, ctx.view).seconds
    if finish <= ctx.finish_floor * (1 + FINISH_SLACK) + 1e-9:
        return None
    return f"would finish in ~{finish:.3f}s; another node would finish it in ~{ctx.finish_floor:.3f}s"


def measured_elsewhere(request: SchedulingRequest, view: ClusterView) -> tuple[float, int] | None:
    """(mean of run time × that node's hardware speed, how many nodes) over the nodes that
    measured this task type; None when none did. Dividing by a node's own speed gives its
    prior: mean(secs × other's speed / own speed).

    Memoised per durations mapping (by identity: views never mutate it; each ledger snapshot
    brings a new one): without it every node's score rescanned every node's measurements,
    O(nodes^2) per decision.
    """
    memo = _DURATION_MEMO[0]  # one (durations, table) tuple, swapped whole: safe across threads
    if memo[0] is not view.durations:
        memo = _DURATION_MEMO[0] = (view.durations, {})
    key = (request.task_type, request.requirements.gpu_count > 0)  # what hardware_speed depends on
    if key not in memo[1]:
        work = [secs * hardware_speed(request, view.nodes[node_id])[0]
                for (node_id, kind), secs in view.durations.items() if kind == request.task_type and node_id in view.nodes]
        memo[1][key] = (sum(work) / len(work), len(work)) if work else None
    return memo[1][key]


_DURATION_MEMO: list[tuple[object, dict[tuple[str, bool], tuple[float, int] | None]]] = [(None, {})]


def score_fastest(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> float:
    return 1.0 / (1.0 + expected_finish_s(request, node, ctx.view).seconds)


def score_target(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> float:
    return 1.0


# ---------------------------------------------------------------- the strategy table

_NOW: tuple[tuple[str, Check], ...] = (
    ("stale", check_fresh),
    ("busy", check_free_now),
    ("GPU memory busy", check_gpu_memory_free),
)

STRATEGIES: dict[SchedulingStrategy, Strategy] = {
    SchedulingStrategy.SPREAD: Strategy(
        SchedulingStrategy.SPREAD,
        current_checks=(("spread turn", check_spread_turn), *_NOW),
        scorers=(("job share", 1.0, score_spread), ("idle", 0.25, score_idle)),
    ),
    SchedulingStrategy.LOAD_BALANCED: Strategy(
        SchedulingStrategy.LOAD_BALANCED,
        current_checks=_NOW,
        scorers=(("least loaded", 1.0, score_least_loaded), ("idle", 0.1, score_idle)),
    ),
    SchedulingStrategy.PERFORMANCE_OPTIMIZED: Strategy(
        SchedulingStrategy.PERFORMANCE_OPTIMIZED,
        current_checks=(*_NOW, ("a busy node finishes sooner", check_soonest_finish)),
        # idle breaks ties between nodes that finish as soon: a free slot each is the same finish,
        # but spreading them also measures nodes nothing has measured yet
        scorers=(("fastest finish", 1.0, score_fastest), ("idle", 0.1, score_idle)),
    ),
    SchedulingStrategy.NODE_SPECIFIC: Strategy(
        SchedulingStrategy.NODE_SPECIFIC,
        current_checks=_NOW,
        scorers=(("named node", 1.0, score_target),),
    ),
    SchedulingStrategy.PACK: Strategy(
        SchedulingStrategy.PACK,
        current_checks=_NOW,
        scorers=(("fullest", 1.0, score_fullest),),
    ),
}


# ---------------------------------------------------------------- the pipeline


def candidates_for(request: SchedulingRequest, view: ClusterView) -> list[NodeView]:
    """Every node, or just the named one for node_specific (unknown names are an error)."""
    if request.strategy is SchedulingStrategy.NODE_SPECIFIC:
        assert request.target_node is not None  # the model validator guarantees it
        try:
            return [view.resolve(request.target_node)]
        except NodeLookupError as exc:
            raise PlacementError(str(exc)) from None
    return list(view.nodes.values())


def first_failure(checks: tuple[tuple[str, Check], ...], request: SchedulingRequest, node: NodeView,
                   ctx: PlacementContext) -> Rejection | None:
    for name, check in checks:
        reason = check(request, node, ctx)
        if reason is not None:
            return Rejection(node.name, name, reason)
    return None


def place(
    request: SchedulingRequest,
    view: ClusterView,
    group_counts: Mapping[str, int] | None = None,
) -> SchedulingDecision | NoFit:
    """Choose the node for one task. Pure: the same inputs always give the same answer."""
    strategy = STRATEGIES[request.strategy]
    ctx = PlacementContext(view=view, group_counts=group_counts or {})
    rejections: list[Rejection] = []

    possible: list[NodeView] = []
    for node in candidates_for(request, view):
        rejection = first_failure(LASTING_CHECKS, request, node, ctx)
        if rejection:
            rejections.append(rejection)
        else:
            possible.append(node)
    if not possible:
        return NoFit(request.task_id, can_wait=False, rejections=tuple(rejections), total_nodes=len(view.nodes))

    ctx = PlacementContext(
        view=view,
        group_counts=ctx.group_counts,
        spread_floor=min(spread_level(request, node, ctx) for node in possible),
        finish_floor=finish_floor(request, possible, view) if strategy.name is SchedulingStrategy.PERFORMANCE_OPTIMIZED
        else math.inf,
    )
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
    runner_up = scored[1][1] if len(scored) > 1 else None
    return decision_for(request, chosen, total, parts, len(ready), rejections, ctx, runner_up=runner_up)


def decision_for(request: SchedulingRequest, chosen: NodeView, total: float, parts: dict[str, float],
                 ready_count: int, rejections: list[Rejection], ctx: PlacementContext,
                 waited_s: float = 0.0, runner_up: NodeView | None = None) -> SchedulingDecision:
    """The decision for `chosen`, with its explanation; shared by `place()` and the index.
    `runner_up` is the next best ready node (performance_optimized names it)."""
    return SchedulingDecision(
        task_id=request.task_id,
        node_id=chosen.node_id,
        node_name=chosen.name,
        node_ip=chosen.ip,
        strategy=request.strategy,
        score=round(total, 6),
        reasons=_explain(request, chosen, parts, ready_count, rejections, ctx, runner_up),
        waited_s=waited_s,
        resources=dict(needs_of(request)),
    )


def score_node(strategy: Strategy, request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> tuple[float, dict[str, float]]:
    parts: dict[str, float] = {}
    for name, _, scorer in strategy.scorers:
        value = scorer(request, node, ctx)
        if not (0.0 <= value <= 1.0) or math.isnan(value):
            raise ValueError(f"scorer {name!r} gave {value} for node {node.name}; scores must lie in [0, 1]")
        parts[name] = value
    weight_sum = sum(weight for _, weight, _ in strategy.scorers)
    total = sum(weight * parts[name] for name, weight, _ in strategy.scorers) / weight_sum
    return total, parts


def _explain(request: SchedulingRequest, chosen: NodeView, parts: dict[str, float], ready_count: int,
             rejections: list[Rejection], ctx: PlacementContext, runner_up: NodeView | None = None) -> list[str]:
    """Plain words for why this node: the deciding evidence, then who was passed over."""
    reasons: list[str] = []
    strategy = request.strategy
    if strategy is SchedulingStrategy.SPREAD:
        reasons.append(f"spread: {chosen.name} had {ctx.group_counts.get(chosen.node_id, 0)} of this job's tasks, "
                       f"the fewest per {'GPU' if request.requirements.gpu_count else 'node'}")
    elif strategy is SchedulingStrategy.LOAD_BALANCED:
        reasons.append(f"load_balanced: {chosen.name} has the lowest load ({load_of(request, chosen):.2f}) "
                       f"of {ready_count} ready node(s)")
    elif strategy is SchedulingStrategy.PERFORMANCE_OPTIMIZED:
        reasons.append(_explain_fastest(request, chosen, runner_up, ctx.view))
    elif strategy is SchedulingStrategy.NODE_SPECIFIC:
        reasons.append(f"node_specific: {request.target_node!r} is {chosen.name} ({chosen.node_id[:8]})")
    else:
        reasons.append(f"pack: {chosen.name} is the fullest node that still fits")
    reasons.append("scores: " + ", ".join(f"{name}={value:.3f}" for name, value in parts.items()))
    if rejections:
        reasons.append("passed over: " + "; ".join(f"{r.node} ({r.reason})" for r in rejections[:5]))
    return reasons


def _explain_fastest(request: SchedulingRequest, chosen: NodeView, runner_up: NodeView | None,
                     view: ClusterView) -> str:
    """The winner's estimate and evidence, and the runner-up's, so a reader sees what decided."""
    text = (f"performance_optimized: {chosen.name} expected to finish soonest "
            f"({expected_finish_s(request, chosen, view).describe()}, {chosen.in_flight} in flight)")
    if runner_up is not None:
        text += f"; next best {runner_up.name} ({expected_finish_s(request, runner_up, view).describe()})"
    return text


def _amount(resource: str, value: float) -> str:
    if resource == ZERO_RESOURCE_SLOT:
        return f"{value:g} of its"
    if resource == "memory":
        return f"{value / (1024 * 1024):.0f} MB of"
    return f"{value:g}"
