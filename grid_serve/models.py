"""Pydantic models shared by the HTTP API, the handle API, the client and the CLI.

One definition of every request and answer, so the three ways in cannot drift apart.
Nothing here imports Ray when loaded: `SchedulingDecision.ray_options()` imports it only when
called, to build the Ray scheduling-strategy object for a caller that is about to run the task.
"""

from __future__ import annotations

import enum
import math
import re
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator

MAX_TASKS_PER_JOB = 100_000
# Levels of lists and objects one task's arguments may nest (its argument list is the first):
# far past what real arguments use, and far inside what parsing, validation, pickling and the
# JSON answer can carry (the Ingress answered a RecursionError at 600)
MAX_ARGS_DEPTH = 64
RESOURCE_NAME = re.compile(r"[A-Za-z0-9_.:/-]{1,100}")
MAX_CPUS = 4096.0
MAX_GPUS = 1024.0
MAX_MEMORY_MB = 64 * 1024 * 1024.0  # 64 TiB: anything above is a typo, not a machine
NODE_LABEL = "grid.io/node"
MB = 1024 * 1024


class _CaseInsensitiveEnum(str, enum.Enum):
    """Accepts `spread`, `SPREAD` and `Spread` alike, as users type all three."""

    @classmethod
    def _missing_(cls, value: object) -> _CaseInsensitiveEnum | None:
        if isinstance(value, str):
            wanted = value.strip().upper().replace("-", "_")
            for member in cls:
                if member.value == wanted:
                    return member
        return None

    def __str__(self) -> str:
        value: str = self.value
        return value.lower()


class SchedulingStrategy(_CaseInsensitiveEnum):
    SPREAD = "SPREAD"
    LOAD_BALANCED = "LOAD_BALANCED"
    PERFORMANCE_OPTIMIZED = "PERFORMANCE_OPTIMIZED"
    NODE_SPECIFIC = "NODE_SPECIFIC"
    PACK = "PACK"


class TaskPriority(_CaseInsensitiveEnum):
    LOW = "LOW"
    NORMAL = "NORMAL"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"

    @property
    def rank(self) -> int:
        """Higher runs first: low=0 < normal=1 < high=2 < critical=3. Looked up, not found by
        listing the enum: it is asked several times per decision (BENCHMARKS.md)."""
        return _PRIORITY_RANKS[self]


_PRIORITY_RANKS = {priority: rank for rank, priority in enumerate(TaskPriority)}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# Work that asks for no resources at all still takes a worker process each: it holds one of
# these per task instead, so a 100,000-task job of 0 CPUs cannot start 100,000 workers at once.
# Ray never sees it (`ray_options` leaves it out); `/v1/cluster` shows it among the reservations.
ZERO_RESOURCE_SLOT = "grid.zero_resource_tasks"
QUEUE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"
_QUEUE_NAME = re.compile(QUEUE_NAME_PATTERN)


def _queue_name(value: str) -> str:
    if not _QUEUE_NAME.match(value):
        raise ValueError(f"{value[:40]!r} is not a queue name: up to 128 letters, digits and _ . : @ -, starting "
                         "with a letter or digit")
    return value


QueueName = Annotated[str, AfterValidator(_queue_name)]
QUEUE_FIELD_TEXT = ("the queue its tasks wait in (grid_serve.queues); queues share the cluster by weighted fair "
                    "share at each priority. Default: the caller's own (its token identity, or its Ray job)")


def zero_resource_slots(total: dict[str, float] | Any) -> float:
    """How many zero-resource tasks a node runs at once: twice its CPUs, at least 4."""
    return max(4.0, 2.0 * float(total.get("CPU", 0.0)))


RAY_RESOURCE_UNIT = 0.0001  # Ray refuses fractional amounts finer than this
RESOURCE_SCALE = 10_000  # Ray keeps every resource in fixed point, 1/RESOURCE_SCALE of a unit


def to_units(amount: float) -> int:
    """An amount in Ray's fixed point: sums of these are exact, so books that add and take
    back the same amounts return to exactly 0 (float sums left `GPU: 1e-323` on idle nodes).

    >>> to_units(0.1) + to_units(0.2) - to_units(0.3), to_units(0.5) / RESOURCE_SCALE
    (0, 0.5)
    """
    return round(amount * RESOURCE_SCALE)


def ray_refuses(amount: float) -> str | None:
    """Why Ray would refuse this resource amount (checked before anything is reserved)."""
    if 0 < amount < RAY_RESOURCE_UNIT:
        return f"{amount:g} is below Ray's smallest unit of a resource ({RAY_RESOURCE_UNIT:g}); use 0 or more"
    return None


def non_finite_path(value: Any, path: str = "") -> str | None:
    """Where a NaN or infinity sits in a JSON-like value (JSON cannot carry them back), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path or "value"
    if isinstance(value, dict):
        return next((hit for key, item in value.items() if (hit := non_finite_path(item, f"{path}.{key}"))), None)
    if isinstance(value, (list, tuple)):
        return next((hit for i, item in enumerate(value) if (hit := non_finite_path(item, f"{path}[{i}]"))), None)
    return None


_CONTAINERS = (list, tuple, dict)


def nests_deeper(value: Any, limit: int) -> bool:
    """Whether `value` nests lists and objects more than `limit` levels deep (a list of scalars
    is one level). A loop, not recursion: the input may be deeper than Python's stack.

    >>> nests_deeper([1, [2]], 2), nests_deeper([1, {"a": [2]}], 2)
    (False, True)
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, (list, tuple)) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, _CONTAINERS))
    return False


class ResourceRequirement(_Model):
    """What one task needs, in the units users think in (CPUs, MB, GPUs)."""

    cpu_count: float = Field(1.0, ge=0, le=MAX_CPUS)
    memory_mb: float = Field(0.0, ge=0, le=MAX_MEMORY_MB)
    gpu_count: float = Field(0.0, ge=0, le=MAX_GPUS)
    gpu_memory_mb: float = Field(0.0, ge=0, le=MAX_MEMORY_MB)
    custom_resources: dict[str, float] = Field(default_factory=dict)

    @field_validator("custom_resources")
    @classmethod
    def _custom_amounts_are_sane(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if name in ("CPU", "GPU", "memory"):
                raise ValueError(f"{name!r} is set with cpu_count/gpu_count/memory_mb, not custom_resources")
            if not RESOURCE_NAME.fullmatch(name):
                raise ValueError(f"custom resource name {name[:40]!r} must be 1-100 letters, digits or _.:/- "
                                 "(a name Ray nodes can carry)")
            if not 0 <= amount <= 1e6:
                raise ValueError(f"custom resource {name!r} must be between 0 and 1e6, got {amount}")
            refused = ray_refuses(amount)
            if refused:
                raise ValueError(f"custom resource {name!r}: {refused}")
        return value

    @field_validator("cpu_count", "gpu_count", "memory_mb", "gpu_memory_mb")
    @classmethod
    def _amount_ray_accepts(cls, value: float) -> float:
        refused = ray_refuses(value)
        if refused:
            raise ValueError(refused)
        return value

    @field_validator("gpu_count")
    @classmethod
    def _fractional_gpus_below_one(cls, value: float) -> float:
        # Ray accepts 0.5 of a GPU but not 1.5: whole GPUs above one.
        if value > 1 and value != int(value):
            raise ValueError(f"gpu_count above 1 must be a whole number, got {value}")
        return value

    def as_ray_resources(self) -> dict[str, float]:
        """The request in Ray's resource names and units (memory in bytes); zeros left out."""
        resources = {"CPU": self.cpu_count, "GPU": self.gpu_count, "memory": self.memory_mb * MB}
        resources.update(self.custom_resources)
        return {name: amount for name, amount in resources.items() if amount > 0}


class SchedulingRequest(_Model):
    """One task to place. `job_id` groups the tasks that `spread` balances together."""

    task_id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12], min_length=1, max_length=200,
                         pattern=r"^[^/\s\x00-\x1f\x7f]+$",
                         description="no '/', spaces or control characters: it is a path segment of /complete")
    task_type: str = Field("task", min_length=1, max_length=200)
    job_id: str | None = Field(None, min_length=1, max_length=200)
    requirements: ResourceRequirement = Field(default_factory=ResourceRequirement)
    strategy: SchedulingStrategy = SchedulingStrategy.SPREAD
    priority: TaskPriority = TaskPriority.NORMAL
    target_node: str | None = Field(None, min_length=1, max_length=200)
    affinity_nodes: tuple[str, ...] = Field((), max_length=1000)
    anti_affinity_nodes: tuple[str, ...] = Field((), max_length=1000)
    label_selector: dict[str, str] = Field(default_factory=dict, max_length=64)
    queue: QueueName | None = Field(None, description=QUEUE_FIELD_TEXT)

    @model_validator(mode="after")
    def _node_specific_names_a_node(self) -> SchedulingRequest:
        if self.strategy is SchedulingStrategy.NODE_SPECIFIC and not self.target_node:
            raise ValueError("strategy node_specific needs target_node (a node name, Ray node id, IP or hostname)")
        return self

    @property
    def group(self) -> str:
        """The key `spread` balances over: the job, or the task itself when it has none."""
        return self.job_id or self.task_id


@dataclass(frozen=True)
class PassedOver:
    """One node a decision passed over (or a no-fit rejected): the check it failed, why, and
    the cause it is counted under, e.g. check 'busy', reason 'needs 2 CPU, 1 free', cause
    'CPU busy'. The cause is the check's name, except that a node short of a resource is
    counted per resource ('insufficient GPU', 'CPU busy'), as kube-scheduler counts nodes.

    Made where the check fails, which is the placer's innermost loop, so it is a plain frozen
    dataclass (half a pydantic model's cost); the models that hold it serialise it all the same."""

    node: str
    check: str
    reason: str
    cause: str
    node_id: str = ""


@dataclass(frozen=True)
class NodeScores:
    """A node's weighted total and each named scorer's score in [0, 1]."""

    node: str
    score: float
    scores: dict[str, float]


EXPLAINED_NODES = 5  # how many passed-over nodes an explanation names (all of them are counted)


@dataclass(frozen=True)
class Explanation:
    """Why a node won, as data: the strategy's summary of the winner's evidence, the named
    scores of the winner and the runner-up, the first EXPLAINED_NODES nodes passed over, and
    every node passed over counted per cause (kube's "2 insufficient GPU, 1 stale"; see
    `PassedOver`); `nodes` is how many the view had. `reasons()` renders the text every
    surface shows.

    Plain frozen dataclasses (like `PassedOver`), since one is made per task on the placer's
    path; pydantic models holding them validate and serialise them like models.
    """

    summary: str
    winner: NodeScores
    runner_up: NodeScores | None = None
    passed_over: list[PassedOver] = field(default_factory=list)
    passed_over_counts: dict[str, int] = field(default_factory=dict)  # cause -> nodes passed over for it
    nodes: int = 0

    def reasons(self) -> list[str]:
        """The summary, the winner's scores, then who was passed over.

        >>> Explanation(summary="pack: b is the fullest node that still fits",
        ...             winner=NodeScores(node="b", score=0.5, scores={"fullest": 0.5}),
        ...             passed_over=[PassedOver(node="a", check="busy", reason="needs 1 CPU, 0 free",
        ...                                     cause="CPU busy")],
        ...             passed_over_counts={"CPU busy": 1}, nodes=2).reasons()[1:]
        ['scores: fullest=0.500', 'passed over 1/2 nodes (1 CPU busy): a (needs 1 CPU, 0 free)']
        """
        lines = [self.summary,
                 "scores: " + ", ".join([f"{name}={value:.3f}" for name, value in self.winner.scores.items()])]
        if self.passed_over:
            counts = self.passed_over_counts
            lines.append(f"passed over {sum(counts.values())}/{self.nodes} nodes ({count_text(counts)}): "
                         + "; ".join([f"{p.node} ({p.reason})" for p in self.passed_over]))
        return lines


def count_text(counts: dict[str, int]) -> str:
    """Counts per reason, most first, the way kube-scheduler words them.

    >>> count_text({"stale": 1, "insufficient GPU": 2})
    '2 insufficient GPU, 1 stale'
    """
    if len(counts) == 1:  # the usual case, per decision: no sort
        (reason, count), = counts.items()
        return f"{count} {reason}"
    return ", ".join(f"{count} {reason}" for reason, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


class SchedulingDecision(_Model):
    """Where a task runs and why; `ray_options()` pins it there. `explanation` is the why as
    data (None for capacity borrowed through resource sharing); `reasons` is its text."""

    task_id: str
    node_id: str
    node_name: str
    node_ip: str
    strategy: SchedulingStrategy
    score: float
    reasons: list[str] = Field(default_factory=list)
    waited_s: float = 0.0
    resources: dict[str, float] = Field(default_factory=dict)
    explanation: Explanation | None = None
    placement_group_id: str | None = None
    bundle_index: int | None = None
    owner_key: str | None = Field(None, description="only in a /v1/schedule answer made without a token: send it "
                                                    "as X-Grid-Owner-Key to complete the task")

    def to_run(self) -> SchedulingDecision:
        """This decision without its why (`explanation`, `reasons`): what a job runner needs to
        run the task. Sent per task on the dispatch path, where the why cost more to pickle and
        unpickle than the rest of the decision; the Scheduler's decision log keeps it for
        `/v1/decisions` and `grid explain`."""
        fields = dict(self.__dict__, explanation=None, reasons=[])
        return SchedulingDecision.model_construct(self.model_fields_set, **fields)

    def pin_key(self) -> tuple[Any, ...]:
        """Decisions with equal keys run alike (same node, bundle and resources), so they can
        share one configured Ray remote function: `.options()` is costly per call."""
        return (self.node_id, self.placement_group_id, self.bundle_index, tuple(sorted(self.resources.items())))

    def ray_options(self, soft: bool = False) -> dict[str, Any]:
        """`.options(**decision.ray_options())` for a Ray remote function.

        The task is pinned to the chosen node (`NodeAffinitySchedulingStrategy`: hard, or with
        `soft` allowed elsewhere once that node is dead, so Ray's own retries can move it), or,
        when it runs in capacity its node borrowed, into that allocation's placement group
        bundle (which Ray keeps on the donor). It asks Ray for the same resources grid-serve
        reserved, so Ray's own accounting and ours agree.
        """
        options: dict[str, Any] = {
            "num_cpus": self.resources.get("CPU", 0.0),
            "num_gpus": self.resources.get("GPU", 0.0),
            "scheduling_strategy": self._ray_strategy(soft),
        }
        if self.resources.get("memory"):
            options["memory"] = self.resources["memory"]
        custom = {k: v for k, v in self.resources.items() if k not in ("CPU", "GPU", "memory", ZERO_RESOURCE_SLOT)}
        if custom:
            options["resources"] = custom
        return options

    def _ray_strategy(self, soft: bool = False) -> Any:
        if self.placement_group_id is None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            return NodeAffinitySchedulingStrategy(node_id=self.node_id, soft=soft)
        from ray._raylet import PlacementGroupID
        from ray.util.placement_group import PlacementGroup
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        group = PlacementGroup(PlacementGroupID(bytes.fromhex(self.placement_group_id)))
        return PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=self.bundle_index or 0,
                                                placement_group_capture_child_tasks=False)


class JobSubmission(_Model):
    """A job: `count` runs of one registered task, or one run per entry of `args`."""

    task: str = Field("compute_task", min_length=1, max_length=200)
    count: int | None = Field(None, ge=1, le=MAX_TASKS_PER_JOB)
    args: list[list[Any] | dict[str, Any]] | None = Field(None, min_length=1, max_length=MAX_TASKS_PER_JOB)
    strategy: SchedulingStrategy = SchedulingStrategy.SPREAD
    node: str | None = Field(None, min_length=1, max_length=200,
                             description="target node for node_specific: name, Ray node id, IP or hostname")
    priority: TaskPriority = TaskPriority.NORMAL
    resources: ResourceRequirement | None = Field(None, description="per task; default: the task type's own")
    label_selector: dict[str, str] = Field(default_factory=dict, max_length=64)
    affinity_nodes: tuple[str, ...] = Field((), max_length=1000)
    anti_affinity_nodes: tuple[str, ...] = Field((), max_length=1000)
    wait: bool = Field(False, description="wait for the results instead of returning a job id at once")
    timeout_s: float = Field(600.0, gt=0, le=24 * 3600)
    result_refs: bool = Field(False, description="handle callers only: each task's result stays in Ray's object "
                                                 "store and the job's results hold its ObjectRef, not a copy")
    queue: QueueName | None = Field(None, description=QUEUE_FIELD_TEXT)

    @field_validator("args", mode="before")
    @classmethod
    def _args_nest_within_the_limit(cls, value: Any) -> Any:
        """Before anything else reads them: a walk that recursed would overflow on deep input."""
        if isinstance(value, (list, tuple)):
            for index, entry in enumerate(value):
                flat = isinstance(entry, list) and not any(isinstance(item, _CONTAINERS) for item in entry)
                if not flat and nests_deeper(entry, MAX_ARGS_DEPTH):  # the common case first: plain values
                    raise ValueError(f"args[{index}] nests more than {MAX_ARGS_DEPTH} levels of lists and "
                                     f"objects; a task's arguments may nest at most {MAX_ARGS_DEPTH} (its "
                                     "argument list is the first)")
        return value

    @field_validator("args")
    @classmethod
    def _args_are_finite(cls, value: list[Any] | None) -> list[Any] | None:
        where = non_finite_path(value, "args") if value is not None else None
        if where:
            raise ValueError(f"{where} is not a finite number (NaN and infinity cannot travel as JSON)")
        return value

    @model_validator(mode="after")
    def _count_or_args(self) -> JobSubmission:
        if self.count is not None and self.args is not None:
            raise ValueError("give either count or args, not both")
        if self.strategy is SchedulingStrategy.NODE_SPECIFIC and not self.node:
            raise ValueError("strategy node_specific needs node (a node name, Ray node id, IP or hostname)")
        if self.node and self.strategy is not SchedulingStrategy.NODE_SPECIFIC:
            raise ValueError(f"node is only used with strategy node_specific (got {self.strategy}); "
                             "use affinity_nodes to prefer nodes with other strategies")
        return self

    @property
    def task_count(self) -> int:
        if self.args is not None:
            return len(self.args)
        return self.count if self.count is not None else 1

    def name_for(self, own_name: str) -> str:
        """What a job of a caller's own function is called: the `task` it names, or (left at
        the default) the function's own name."""
        return self.task if self.task != type(self).model_fields["task"].default else own_name

    def without_args(self) -> JobSubmission:
        """The spec with its `args` gone and its task count kept (a job that ended runs nothing
        again). Built without validation: the count of an `args` job may pass `count`'s own cap."""
        if self.args is None:
            return self
        return self.model_copy(update={"args": None, "count": self.task_count})

    def call_args(self, index: int) -> tuple[list[Any], dict[str, Any]]:
        """Positional and keyword arguments of task `index`; `count` jobs pass the index."""
        if self.args is None:
            return [index], {}
        entry = self.args[index]
        return (list(entry), {}) if isinstance(entry, list) else ([], dict(entry))

    def has_object_refs(self) -> bool:
        """Whether a task's argument is an object reference (a handle caller's `ray.put` or a
        task's result)."""
        for entry in self.args or ():
            for value in entry if isinstance(entry, list) else entry.values():
                if is_object_ref(value):
                    return True
        return False

    def scheduling_request(self, job_id: str, index: int, default: ResourceRequirement) -> SchedulingRequest:
        return SchedulingRequest(
            task_id=f"{job_id}-{index}",
            task_type=self.task,
            job_id=job_id,
            requirements=self.resources or default,
            strategy=self.strategy,
            priority=self.priority,
            target_node=self.node,
            affinity_nodes=self.affinity_nodes,
            anti_affinity_nodes=self.anti_affinity_nodes,
            label_selector=self.label_selector,
            queue=self.queue,
        )


JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


def is_object_ref(value: Any) -> bool:
    """A Ray ObjectRef, found by its type's name, so this module needs no Ray."""
    return type(value).__name__ == "ObjectRef"


class TaskOutcome(BaseModel):
    """What one task did, as measured inside the task itself."""

    task_id: str
    index: int
    node_id: str
    node_name: str
    ok: bool
    result: Any = None  # an ObjectRef for a job with `result_refs`
    error: str | None = None
    started_at: float = 0.0
    duration_s: float = 0.0
    attempts: int = 1  # runs started: more than one when a worker or node died under it

    @field_serializer("result", when_used="json")
    def _result_as_json(self, result: Any) -> Any:
        """A result kept in Ray's object store (`result_refs`) reads over HTTP as its object id."""
        return {"object_ref": result.hex()} if is_object_ref(result) else result


class JobPending(BaseModel):
    """Why a job's queued tasks wait and when they are expected to run (`grid_serve.pending`)."""

    position: int = Field(description="tasks queued ahead of the job's next one, all priorities")
    ahead: dict[str, int] = Field(default_factory=dict, description="priority -> tasks queued ahead of it")
    waiting: int = Field(description="the job's tasks queued at the Scheduler")
    held_back: int = Field(0, description="the job's tasks its runner has not handed to the Scheduler yet")
    reason: str | None = Field(None, description="why no node takes its next task now, counted per cause")
    expected_start_s: float | None = Field(None, description="seconds until its next task is expected to start, "
                                                             "from learned run times; null: unknown (see note)")
    expected_end_s: float | None = Field(None, description="seconds until its last task is expected to end")
    note: str | None = Field(None, description="why an expected time is unknown")
    fair_share: str | None = Field(None, description="where its queue stands in fair share, when other queues' work "
                                                     "waits at its priority too (which of them goes first)")


class JobStatus(BaseModel):
    job_id: str
    task: str
    strategy: SchedulingStrategy
    priority: TaskPriority
    queue: str | None = Field(None, description="the queue its tasks wait in (`grid queue`; grid_serve.queues)")
    state: JobState
    total: int
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    per_node: dict[str, int] = Field(default_factory=dict, description="finished tasks per node name")
    owner_key: str | None = Field(None, description="only in the answer that made the job over HTTP without a token: "
                                                    "send it as X-Grid-Owner-Key to cancel the job")
    ray_tasks: int = Field(0, description="Ray tasks that carried this job's tasks so far: fewer than its tasks when "
                                          "very short ones shared Ray tasks (the app's chunk_ms)")
    turns_given_up: dict[str, int] = Field(default_factory=dict, description="spread: node name -> turns the node "
                                           "gave up, busy or stale past its patience while another node could take the "
                                           "task; each counts as one of the job's tasks there, so the rest spread on")
    taken_back: int = Field(0, description="tasks handed to Ray that were taken back before they started, for "
                                           "higher-priority work waiting for their nodes, or stopped running for "
                                           "a queue reclaiming its quota (`reclaim: cancel_running`), and queued "
                                           "again with their age (issue 22)")
    submitted_at: float
    finished_at: float | None = None
    error: str | None = None
    pending: JobPending | None = Field(None, description="while tasks are queued: why, and when they should run")
    results: list[TaskOutcome] | None = None


class GpuInfo(BaseModel):
    index: int
    name: str = "unknown"
    utilization_pct: float | None = None
    memory_used_mb: float | None = None
    memory_total_mb: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None


class NodeStatus(BaseModel):
    """One node as the cluster-status route shows it."""

    name: str
    node_id: str
    address: str
    alive: bool
    hostname: str | None = Field(None, description="as Ray reports it; names an unlabelled node when unique")
    is_head: bool = False
    labels: dict[str, str] = Field(default_factory=dict)
    resources_total: dict[str, float] = Field(default_factory=dict)
    resources_available: dict[str, float] = Field(default_factory=dict)
    reserved: dict[str, float] = Field(default_factory=dict)
    in_flight: int = 0
    cpu_percent: float | None = None
    cpu_percent_per_core: list[float] = Field(default_factory=list)
    cpu_count: int | None = Field(None, description="logical cores the probe sees (the machine, not Ray's CPU total)")
    memory_percent: float | None = None
    memory_used_mb: float | None = None
    memory_total_mb: float | None = None
    swap_percent: float | None = None
    load_avg: list[float] | None = Field(None, description="1, 5 and 15 minute load averages")
    gpus: list[GpuInfo] = Field(default_factory=list)
    gpu_note: str | None = Field(None, description="why there are no GPU figures (no NVML, no GPUs)")
    sampled_at: float | None = Field(None, description="epoch seconds of the probe's last answer; None: none yet")
    stale: bool = Field(False, description="the probe stopped answering: left out of decisions")


class QueueLevel(BaseModel):
    """The tasks waiting at one priority, and how long the oldest of them has waited."""

    priority: TaskPriority
    tasks: int
    oldest_wait_s: float


class QueueStatus(BaseModel):
    """One queue (`grid_serve.queues`): what waits in it, what it runs, and where it stands in
    fair share against the other queues with work."""

    name: str
    weight: float
    waiting: dict[TaskPriority, int] = Field(description="tasks waiting per priority (held back by owners not counted)")
    running: int = Field(description="its tasks placed and not yet ended")
    holds: dict[str, float] = Field(description="resources its running tasks hold (Ray's names; memory in bytes)")
    dominant: str | None = Field(description="the resource it holds the largest fraction of")
    share: float = Field(description="that fraction of the cluster, 0 to 1")
    fair_share: float = Field(description="what its weight entitles it to among the queues with work: "
                                          "weight / the sum of their weights")
    oldest_wait_s: float = Field(description="how long its oldest waiting task has waited")
    quota: dict[str, float] = Field(default_factory=dict, description="what it is owed per resource (`queues:` "
                                                                      "in serve_config); empty: no quota")
    borrowed: dict[str, float] = Field(default_factory=dict, description="what it holds beyond its quota, per "
                                                                         "resource: capacity other queues lent")


class ClusterStatus(BaseModel):
    nodes: list[NodeStatus]
    queued: int
    queue: list[QueueLevel] = Field(default_factory=list, description="waiting tasks per priority, highest first")
    queues: list[QueueStatus] = Field(default_factory=list, description="each queue with work, and every "
                                                                         "configured one; by name")
    jobs_running: int = Field(0, description="jobs whose runner holds a live lease with the Scheduler")
    snapshot_age_s: float


class DecisionRecord(BaseModel):
    """One placement as the Scheduler made it, with its reasons (`GET /v1/decisions`)."""

    at: float = Field(description="epoch seconds of the decision")
    task_id: str
    job_id: str = Field(description="the job (or, for a /v1/schedule caller, the task itself)")
    task_type: str
    node: str
    node_id: str
    strategy: SchedulingStrategy
    priority: TaskPriority
    score: float
    waited_s: float
    borrowed: bool = Field(False, description="placed into capacity its node borrowed (resource sharing)")
    reasons: list[str]
    explanation: Explanation | None = Field(None, description="the reasons as data (`grid explain` prints it)")


class RecentDecisions(BaseModel):
    now: float = Field(description="the Scheduler's clock (epoch seconds), to age `at` and lease ends against")
    decisions: list[DecisionRecord] = Field(description="newest first")
    job_placed: int | None = Field(None, description="with job_id: decisions the job got in all "
                                                     "(the list keeps its latest)")


class PlacementHistory(BaseModel):
    """Tasks placed per node in equal time buckets, oldest first (`GET /v1/placements`)."""

    now: float
    bucket_s: float
    start: float = Field(description="epoch seconds where the first bucket begins")
    per_node: dict[str, list[int]] = Field(description="node name -> tasks placed in each bucket")
