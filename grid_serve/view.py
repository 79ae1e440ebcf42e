"""The immutable picture of the cluster that every placement decision reads.

The MetricsCollector supplies the nodes, the Scheduler's ledger supplies what is reserved on
them, and the Scheduler folds the two into a `ClusterView` (resource sharing folds the
LoadBalancer's published copy of that ledger the same way). Strategies only ever see this,
so they can be tested with a table of hand-made nodes (`make_node`) and no Ray at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Protocol, Sequence

from .models import RESOURCE_SCALE, ZERO_RESOURCE_SLOT, to_units, zero_resource_slots

if TYPE_CHECKING:
    from .models import GpuInfo, NodeStatus

EMPTY: Mapping[Any, Any] = MappingProxyType({})  # empty and read-only: stands for a mapping of any type


class NodeLookupError(LookupError):
    """A node reference (name, Ray node id, IP or hostname) matched no node, or more than one."""


@dataclass(frozen=True)
class GpuView:
    index: int
    name: str = "unknown"
    utilization: float | None = None  # 0..1
    memory_free_mb: float | None = None
    memory_total_mb: float | None = None


@dataclass(frozen=True)
class NodeView:
    """One node: identity, Ray's totals, grid-serve's reservations, measured load."""

    node_id: str
    name: str
    ip: str
    alive: bool = True
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    total: Mapping[str, float] = field(default_factory=lambda: EMPTY)
    reserved: Mapping[str, float] = field(default_factory=lambda: EMPTY)
    in_flight: int = 0
    cpu_utilization: float | None = None  # measured, 0..1, None until a probe reports
    memory_utilization: float | None = None  # measured, 0..1, None until a probe reports
    gpus: tuple[GpuView, ...] = ()
    stale: bool = False
    hostname: str | None = None
    top_rank: int = -1  # the highest priority rank (TaskPriority.rank) among the tasks reserved on it
    low_rank: int = -1  # the lowest (-1: none reserved)

    def answers_to(self, reference: str) -> bool:
        """Whether `reference` is this node's name, Ray node id, IP or hostname."""
        return reference in (self.name, self.node_id, self.ip, self.hostname)

    def free(self, resource: str, admission: float = 1.0) -> float:
        """What is left of `resource` for new reservations, allowing `admission`× the total."""
        return self.total.get(resource, 0.0) * admission - self.reserved.get(resource, 0.0)

    def reserve(self, resources: Mapping[str, float], tasks: int = 1, rank: int = -1) -> NodeView:
        """A copy with `resources` more reserved and `tasks` more in flight (negative releases),
        for a task of priority `rank` (-1: none is added)."""
        reserved = dict(self.reserved)
        sign = 1 if tasks >= 0 else -1
        for name, amount in resources.items():  # in Ray's fixed point, so taking back what was added leaves 0
            units = to_units(reserved.get(name, 0.0)) + sign * to_units(amount)
            reserved[name] = units / RESOURCE_SCALE if units > 0 else 0.0
        # a copy of the fields with three changed: `dataclasses.replace` re-runs __init__ over all of
        # them, a visible share of a decision (BENCHMARKS.md), and the Scheduler reserves once per task
        clone = object.__new__(NodeView)
        object.__setattr__(clone, "__dict__", {**self.__dict__, "reserved": MappingProxyType(reserved),
                                               "in_flight": max(0, self.in_flight + tasks),
                                               "top_rank": max(self.top_rank, rank),
                                               "low_rank": self.low_rank if rank < 0 else
                                               rank if self.low_rank < 0 else min(self.low_rank, rank)})
        return clone

    @property
    def gpu_count(self) -> float:
        return self.total.get("GPU", 0.0)


@dataclass(frozen=True)
class AllocationView:
    """Capacity a borrower holds on a donor (a placement group bundle) and what its tasks use.

    The donor's `reserved` already counts the whole `capacity`, so tasks placed inside an
    allocation add to `used` here and never to the donor's own reservations.
    """

    id: str
    borrower: str  # node name
    donor_id: str
    donor: str  # node name
    placement_group_id: str
    capacity: Mapping[str, float]  # Ray units
    used: Mapping[str, float] = field(default_factory=lambda: EMPTY)
    in_flight: int = 0
    accepting: bool = True  # False once ended or before its placement group is placed

    def free(self, resource: str) -> float:
        return self.capacity.get(resource, 0.0) - self.used.get(resource, 0.0)

    def use(self, resources: Mapping[str, float]) -> AllocationView:
        used = dict(self.used)
        for name, amount in resources.items():
            used[name] = (to_units(used.get(name, 0.0)) + to_units(amount)) / RESOURCE_SCALE
        return replace(self, used=MappingProxyType(used), in_flight=self.in_flight + 1)


@dataclass(frozen=True)
class Running:
    """A task reserved on a node: its type, what it holds, and how long ago it was placed."""

    task_type: str
    resources: Mapping[str, float]
    age_s: float


def nothing_known_running(node_id: str) -> tuple[Running, ...]:
    """The default `ClusterView.running`: no task is known, so no backfill is ever allowed."""
    return ()


@dataclass(frozen=True)
class ClusterView:
    """All nodes plus the evidence strategies weigh; copy-on-write, never mutated.

    `running` lists the tasks reserved on a node, asked only when a starving task has a node
    held for it (`SchedulerCore`): a scan of every reservation, too dear to make per view."""

    nodes: Mapping[str, NodeView]  # by node id, in a stable order
    admission: float = 1.0  # a node takes reservations up to this many times its resources
    # (node_id, task_type) -> EWMA seconds
    durations: Mapping[tuple[str, str], float] = field(default_factory=lambda: EMPTY)
    group_run_s: Mapping[str, float] = field(default_factory=lambda: EMPTY)  # group -> EWMA seconds of its own tasks
    taken_at: float = 0.0
    allocations: Mapping[str, AllocationView] = field(default_factory=lambda: EMPTY)  # by allocation id
    running: Callable[[str], Sequence[Running]] = nothing_known_running  # node id -> the tasks reserved there
    # queue -> what its tasks hold, wherever they run: what fair share between queues weighs
    queue_usage: Mapping[str, Mapping[str, float]] = field(default_factory=lambda: EMPTY)

    @classmethod
    def of(cls, nodes: Iterable[NodeView], **kwargs: object) -> ClusterView:
        ordered = sorted(nodes, key=lambda node: (node.name, node.node_id))
        return cls(nodes=MappingProxyType({node.node_id: node for node in ordered}), **kwargs)  # type: ignore[arg-type]

    def with_node(self, node: NodeView) -> ClusterView:
        nodes = dict(self.nodes)
        nodes[node.node_id] = node
        return replace(self, nodes=MappingProxyType(nodes))

    def with_allocation(self, allocation: AllocationView) -> ClusterView:
        allocations = dict(self.allocations)
        allocations[allocation.id] = allocation
        return replace(self, allocations=MappingProxyType(allocations))

    def resolve(self, reference: str) -> NodeView:
        """The node a user means by a name, a Ray node id (or its unique prefix), an IP or a hostname.

        Several nodes may share an IP or a hostname (a local cluster's nodes share both), so one
        that matches more than one node is an error rather than a guess.
        """
        by_name = [node for node in self.nodes.values() if node.name == reference]
        if by_name:  # a restarted machine leaves its dead entry behind: the live one is meant
            return max(by_name, key=lambda node: node.alive)
        if reference in self.nodes:
            return self.nodes[reference]
        for kind, matches in (("IP", [n for n in self.nodes.values() if n.ip == reference]),
                              ("hostname", [n for n in self.nodes.values() if n.hostname == reference])):
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                names = ", ".join(node.name for node in matches)
                raise NodeLookupError(f"{kind} {reference} is shared by nodes {names}; name one of them instead")
        if len(reference) >= 6:
            by_prefix = [node for node in self.nodes.values() if node.node_id.startswith(reference)]
            if len(by_prefix) == 1:
                return by_prefix[0]
        known = ", ".join(node.name for node in self.nodes.values()) or "none"
        raise NodeLookupError(f"unknown node {reference!r}; known nodes: {known}")


def make_node(
    name: str,
    cpus: float = 2,
    gpus: float = 0,
    memory_mb: float = 4096,
    reserved: Mapping[str, float] | None = None,
    alive: bool = True,
    labels: Mapping[str, str] | None = None,
    in_flight: int = 0,
    node_id: str | None = None,
    ip: str = "127.0.0.1",
    cpu_utilization: float | None = None,
    memory_utilization: float | None = None,
    gpu_views: tuple[GpuView, ...] = (),
    custom: Mapping[str, float] | None = None,
    hostname: str | None = None,
    labelled: bool = True,
) -> NodeView:
    """A node for tests, benchmarks and examples: `make_node("gpu1", cpus=4, gpus=1)`.
    It carries the label grid.io/node=`name` unless `labelled=False` (a node named otherwise)."""
    total = {"CPU": float(cpus), "memory": memory_mb * 1024 * 1024}
    if gpus:
        total["GPU"] = float(gpus)
    total.update(custom or {})
    total[ZERO_RESOURCE_SLOT] = zero_resource_slots(total)
    return NodeView(
        node_id=node_id or f"id-{name}",
        name=name,
        ip=ip,
        alive=alive,
        labels=MappingProxyType({**({"grid.io/node": name} if labelled else {}), **(labels or {})}),
        total=MappingProxyType(total),
        reserved=MappingProxyType(dict(reserved or {})),
        in_flight=in_flight,
        cpu_utilization=cpu_utilization,
        memory_utilization=memory_utilization,
        gpus=gpu_views,
        hostname=hostname,
    )


@dataclass
class GroupCounts:
    """How many tasks of each job (group) each node has been given: what `spread` evens out."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def of(self, group: str) -> Mapping[str, int]:
        return self.counts.get(group, {})

    def live(self, group: str) -> Mapping[str, int]:
        """The group's counts as a mapping that follows later `add`s (for incremental placers)."""
        return self.counts.setdefault(group, {})

    def add(self, group: str, node_id: str, amount: int = 1) -> None:
        per_node = self.counts.setdefault(group, {})
        per_node[node_id] = per_node.get(node_id, 0) + amount

    def forget(self, group: str) -> None:
        self.counts.pop(group, None)


class Load(Protocol):
    """What `view_from` reads of one node's load (a `ledger.NodeLoad`)."""

    @property
    def reserved(self) -> Mapping[str, float]: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def top_rank(self) -> int: ...

    @property
    def low_rank(self) -> int: ...


class Loads(Protocol):
    """What `view_from` reads of a ledger (a `ledger.LedgerSnapshot`). Named here, not
    imported: the ledger builds on this module (`Running`), so this one cannot import it."""

    @property
    def loads(self) -> Mapping[str, Load]: ...

    @property
    def durations(self) -> Mapping[tuple[str, str], float]: ...

    @property
    def group_run_s(self) -> Mapping[str, float]: ...


def view_from(nodes: Iterable[NodeStatus], ledger: Loads | None = None, admission: float = 1.0,
              taken_at: float = 0.0) -> ClusterView:
    """Fold the MetricsCollector's inventory and a ledger snapshot (the Scheduler's own, or the
    LoadBalancer's published copy of it) into one view."""
    loads = ledger.loads if ledger else {}
    views = []
    for node in nodes:
        load = loads.get(node.node_id)
        views.append(NodeView(
            node_id=node.node_id,
            name=node.name,
            ip=node.address,
            alive=node.alive,
            labels=MappingProxyType(dict(node.labels)),
            total=MappingProxyType(_with_zero_resource_slots(node.resources_total)),
            reserved=MappingProxyType(dict(load.reserved) if load else {}),
            in_flight=load.in_flight if load else 0,
            top_rank=load.top_rank if load else -1,
            low_rank=load.low_rank if load else -1,
            cpu_utilization=None if node.cpu_percent is None else node.cpu_percent / 100.0,
            memory_utilization=None if node.memory_percent is None else node.memory_percent / 100.0,
            gpus=tuple(_gpu_view(gpu) for gpu in node.gpus),
            stale=node.stale,
            hostname=node.hostname,
        ))
    durations = ledger.durations if ledger else EMPTY
    group_run_s = ledger.group_run_s if ledger else EMPTY
    return ClusterView.of(views, admission=admission, durations=durations, group_run_s=group_run_s, taken_at=taken_at)


def _with_zero_resource_slots(total: Mapping[str, float]) -> dict[str, float]:
    return {**total, ZERO_RESOURCE_SLOT: zero_resource_slots(total)} if total else {}


def _gpu_view(gpu: GpuInfo) -> GpuView:
    free = None
    if gpu.memory_total_mb is not None and gpu.memory_used_mb is not None:
        free = gpu.memory_total_mb - gpu.memory_used_mb
    utilization = None if gpu.utilization_pct is None else gpu.utilization_pct / 100.0
    return GpuView(gpu.index, gpu.name, utilization, free, gpu.memory_total_mb)
