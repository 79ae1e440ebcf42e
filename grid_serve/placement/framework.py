"""What a strategy is made of: checks, scorers, the turn rule and the run-time estimate.

A check is `(request, node, ctx) -> str | None`: None means the node passes, a string is the
reason with numbers ("needs 2 GPU, 1 free"). Nodes passed over are counted per cause: the
check's name, or per resource for a `Shortfall` ("insufficient GPU", "CPU busy"). A scorer
is `(request, node, ctx) -> float` in [0, 1]. A `Strategy` is a frozen table of both, with an
optional `Turn` rule and the sentence that explains its winner. The strategy modules beside
this one build on it; `grid_serve.strategies` runs them (`place()`) and re-exports all of it.
Nothing here imports Ray, the strategy modules or the pipeline.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Callable, Iterable, Mapping

from ..models import ZERO_RESOURCE_SLOT, PassedOver, SchedulingRequest, count_text
from ..view import ClusterView, NodeView


@dataclass(frozen=True)
class PlacementContext:
    """Per-decision facts that are not about one node alone."""

    view: ClusterView
    group_counts: Mapping[str, int] = field(default_factory=dict)  # node_id -> this job's tasks
    turn_floor: float = math.inf  # the strategy's Turn: the lowest level among nodes that could ever fit

    @cached_property
    def job_placed(self) -> int:
        """This job's tasks placed so far, on every node (summed once per context, when asked)."""
        return sum(self.group_counts.values())


Check = Callable[[SchedulingRequest, NodeView, PlacementContext], "str | None"]
Scorer = Callable[[SchedulingRequest, NodeView, PlacementContext], float]
Level = Callable[[SchedulingRequest, NodeView, PlacementContext], float]
# (request, winner, runner-up, ctx, ready nodes) -> the sentence that says why the winner won
Explain = Callable[[SchedulingRequest, NodeView, "NodeView | None", PlacementContext, int], str]
Candidates = Callable[[SchedulingRequest, ClusterView], "list[NodeView]"]


@dataclass(frozen=True)
class Turn:
    """A turn rule: a node may take the task only while its level is within `slack` of the
    floor, the lowest level among the nodes that could ever take it. spread's level is the
    job's tasks on the node; performance_optimized's is the expected finish there.

    Reserving a task only ever raises a node's level, which is what lets the fast path keep
    the floor without rescanning every node per decision. A stale node sets no floor when
    `stale_sets_floor` is False: it may never answer, so nothing is held for it.

    `patience_runs`: how long a node may hold the turn while it cannot take the task (busy,
    stale) and another node could, in expected run times there (at least PATIENCE_MIN_S);
    past it the node gives up its turn, which counts as one of the job's tasks on it (see
    `SchedulerCore`). None: never given up (the level does not read the job's counts).
    """

    name: str
    level: Level
    reason: Callable[[SchedulingRequest, NodeView, PlacementContext, float], str]  # (..., level) -> why not yet
    slack: float = 0.0
    stale_sets_floor: bool = True
    patience_runs: float | None = None

    def floor_level(self, request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> float:
        """What the node counts toward the floor (infinity when it sets none)."""
        if node.stale and not self.stale_sets_floor:
            return math.inf
        return self.level(request, node, ctx)

    def floor(self, request: SchedulingRequest, nodes: Iterable[NodeView], ctx: PlacementContext) -> float:
        return min((self.floor_level(request, node, ctx) for node in nodes), default=math.inf)

    def admits(self, level: float, floor: float) -> bool:
        return level <= floor * (1 + self.slack) + 1e-9

    def check(self, request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> str | None:
        level = self.level(request, node, ctx)
        return None if self.admits(level, ctx.turn_floor) else self.reason(request, node, ctx, level)


PATIENCE_MIN_S = 5.0  # a turn is never given up sooner: a short task's run time is no time to wait


def all_nodes(request: SchedulingRequest, view: ClusterView) -> list[NodeView]:
    """The default candidates: every node in the view."""
    return list(view.nodes.values())


@dataclass(frozen=True)
class Strategy:
    """One strategy, declared once (in its own module under `grid_serve.placement`)."""

    name: str
    current_checks: tuple[tuple[str, Check], ...]  # reasons to wait, in the order they are tried
    scorers: tuple[tuple[str, float, Scorer], ...]  # (name, weight, scorer)
    explain: Explain
    turn: Turn | None = None
    candidates: Candidates = all_nodes
    # a number that, when it changes, may change any node's checks or scores (not only the node a
    # decision changed): the fast path then re-reads every node. None: only that node changes.
    epoch: Callable[[PlacementContext], int] | None = None
    # whether its checks or scores may read the job's own counts per node (`group_counts`): then
    # each job's tasks need a placer of their own in a drain. A strategy that reads none says
    # False, and tasks of every job alike share one placer (True, the default, is always safe)
    reads_job_counts: bool = True

    @cached_property
    def weight_sum(self) -> float:
        return sum(weight for _, weight, _ in self.scorers)


def count_causes(rejections: Iterable[PassedOver]) -> dict[str, int]:
    """Nodes passed over per cause: the numbers behind "2 insufficient GPU, 1 stale"."""
    return dict(Counter(rejection.cause for rejection in rejections))


@dataclass(frozen=True)
class NoFit:
    """No node can take the task: `can_wait` says whether capacity freeing up would help."""

    task_id: str
    can_wait: bool
    rejections: tuple[PassedOver, ...]
    total_nodes: int

    @property
    def message(self) -> str:
        """kube-style: '0/3 nodes are available: 2 insufficient GPU, 1 label mismatch (...)'."""
        verdict = "waiting for capacity" if self.can_wait else "it can never fit"
        detail = "; ".join(f"{r.node}: {r.reason}" for r in self.rejections[:6])
        parts = count_text(count_causes(self.rejections)) or "no nodes"
        return f"0/{self.total_nodes} nodes are available: {parts} ({verdict}). {detail}".strip()


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


class Shortfall(str):
    """A check's reason that names the resource the node is short of, so the node is counted
    per resource ("insufficient GPU", "CPU busy"), as kube-scheduler counts nodes, rather than
    under the check's name. Still a str: whatever reads a reason reads it unchanged.

    >>> reason = Shortfall("needs 2 GPU, has 1", "GPU", "insufficient {}")
    >>> reason, reason.cause
    ('needs 2 GPU, has 1', 'insufficient GPU')
    """

    cause: str

    def __new__(cls, reason: str, resource: str, cause: str) -> Shortfall:
        made = super().__new__(cls, reason)
        made.cause = cause.format(_RESOURCE_WORDS.get(resource, resource))
        return made


_RESOURCE_WORDS = {ZERO_RESOURCE_SLOT: "worker slots"}  # how a cause names a resource, where not by its name


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
            return Shortfall(f"needs {_amount(resource, amount)} {resource}, has {_amount(resource, total)}",
                             resource, "insufficient {}")
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
    """Not now: too little is free. The lookahead (room queued inside Ray beyond what runs)
    never mixes priorities: a node holding work of another priority than this task's takes it
    only into capacity free now. A lower task queued beside higher work may be started first by
    Ray (it orders a submitter's queued tasks by its own keys, not by the order they were sent);
    a higher task queued behind lower work waits for that work to end, committed to this node,
    while a slot that frees elsewhere goes to lower work (the flaky priority test, again: two
    high tasks waited 3.6 s behind normal ones while low tasks ran on another node)."""
    rank = request.priority.rank
    mixed = node.top_rank >= 0 and not node.top_rank == node.low_rank == rank
    admission = 1.0 if mixed else ctx.view.admission
    for resource, amount in needs_of(request).items():
        # the zero-resource cap counts worker processes: no lookahead beyond it
        free = node.free(resource, 1.0 if resource == ZERO_RESOURCE_SLOT else admission)
        if amount > free + 1e-9:
            return Shortfall(f"needs {_amount(resource, amount)} {resource}, {_amount(resource, max(free, 0))} free",
                             resource, "{} busy")
    return None


def check_gpu_memory_free(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> str | None:
    """Not now: NVML says too few GPUs have `gpu_memory_mb` free at the moment."""
    wanted = request.requirements.gpu_memory_mb
    free = [gpu.memory_free_mb for gpu in node.gpus if gpu.memory_free_mb is not None]
    if not wanted or not free:
        return None
    roomy = sum(1 for mb in free if mb >= wanted)
    if roomy < gpus_needed(request):
        return (f"needs {gpus_needed(request)} GPU(s) with {wanted:.0f} MB free, {roomy} have it "
                f"(most free {max(free):.0f} MB)")
    return None



NOT_NOW: tuple[tuple[str, Check], ...] = (  # the current checks every strategy makes
    ("stale", check_fresh),
    ("busy", check_free_now),
    ("GPU memory busy", check_gpu_memory_free),
)


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


def score_idle(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> float:
    """Fewer tasks in flight per unit of capacity is better."""
    slots = max(node.total.get("CPU", 0.0), node.gpu_count, 1.0)
    return 1.0 / (1.0 + node.in_flight / slots)


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
                for (node_id, kind), secs in view.durations.items()
                if kind == request.task_type and node_id in view.nodes]
        memo[1][key] = (sum(work) / len(work), len(work)) if work else None
    return memo[1][key]


_DURATION_MEMO: list[tuple[object, dict[tuple[str, bool], tuple[float, int] | None]]] = [(None, {})]


def _amount(resource: str, value: float) -> str:
    if resource == ZERO_RESOURCE_SLOT:
        return f"{value:g} of its"
    if resource == "memory":
        return f"{value / (1024 * 1024):.0f} MB of"
    return f"{value:g}"
