"""Resource sharing: nodes borrow capacity from each other, with priorities, leases and preemption.

The rules, pure (no Ray): the `SharingManager` deployment wraps one `SharingLedger`, creates
and removes the placement groups its `Changes` ask for, and persists `to_state()`.

    request -> validate ("never": 422) -> queue -> grant on a donor | preempt lower | wait -> time out
    granted -> active -> lease end / release (drains: its tasks finish) | preemption (at once)

A donor may lend a resource only within its `resource_sharing` limits from the cluster config,
bounded by what the node really has (Ray's totals), minus what it already lends, and only what
is free now. The donor is chosen deterministically: the most spare room relative to its limit,
then the higher config sharing priority, then the name. When no donor has room, a request may
preempt allocations of strictly lower priority, lowest priority first, then newest first
(Kueue's reclaim order); otherwise it waits in a queue ordered by priority then age.
Amounts are in the units users type: CPUs, GPUs, and GB of memory.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .config import ClusterConfig, NodeConfig
from .errors import InvalidRequestError, NotFoundError
from .models import SchedulingDecision, SchedulingRequest, SchedulingStrategy, TaskPriority, NODE_LABEL
from .models import _CaseInsensitiveEnum
from .strategies import NoFit
from .view import AllocationView, ClusterView, NodeLookupError, NodeView

GiB = 1024**3
DEFAULT_LEASE_S = 30 * 60.0
MAX_LEASE_S = 7 * 24 * 3600.0
PLACEMENT_GROUP_PREFIX = "grid-sharing-"
ENDED_RECORDS_KEPT = 200
_EPS = 1e-9


class ResourceType(_CaseInsensitiveEnum):
    CPU = "CPU"
    GPU = "GPU"
    MEMORY = "MEMORY"

    @property
    def ray_name(self) -> str:
        return "memory" if self is ResourceType.MEMORY else self.value

    @property
    def unit(self) -> str:
        return "GB memory" if self is ResourceType.MEMORY else self.value

    def to_ray(self, amount: float) -> float:
        """User units (CPUs, GPUs, GB) -> Ray's (memory in bytes)."""
        return amount * GiB if self is ResourceType.MEMORY else amount

    def from_ray(self, amount: float) -> float:
        return amount / GiB if self is ResourceType.MEMORY else amount

    def limit_of(self, node: NodeConfig) -> float:
        sharing = node.resource_sharing
        if not sharing.can_share:
            return 0.0
        return {ResourceType.CPU: sharing.max_share_cpu, ResourceType.GPU: sharing.max_share_gpu,
                ResourceType.MEMORY: sharing.max_share_memory_gb}[self]


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|m|s)")
_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str | float | int) -> float:
    """Seconds in a duration a user typed: `90`, `"90s"`, `"30m"`, `"1h30m"`, `"2d"`.

    >>> parse_duration("1h30m")
    5400.0
    """
    if isinstance(text, (int, float)):
        return float(text)
    cleaned = text.strip().lower().replace(" ", "")
    try:
        return float(cleaned)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(cleaned)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != cleaned:
        raise ValueError(f"not a duration: {text!r} (try 90s, 30m, 2h, 1h30m)")
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


class SharingRequest(BaseModel):
    """A node asks to borrow `amount` of one resource for `duration_s`."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    node: str = Field(min_length=1, max_length=200, description="the borrowing node: name, Ray node id, IP or hostname")
    type: ResourceType = Field(description="cpu, gpu or memory (GB)")
    amount: float = Field(gt=0, le=1e6)
    priority: TaskPriority = TaskPriority.NORMAL
    duration_s: float = Field(DEFAULT_LEASE_S, gt=0, le=MAX_LEASE_S, description="lease; also '30m', '2h'")
    timeout_s: float | None = Field(None, gt=0, le=MAX_LEASE_S,
                                    description="how long to wait for a donor; default: allocation_timeout_minutes")
    donor: str | None = Field(None, min_length=1, max_length=200, description="borrow from this node only")

    @field_validator("duration_s", "timeout_s", mode="before")
    @classmethod
    def _durations_may_be_text(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("amount")
    @classmethod
    def _amount_is_finite(cls, value: float) -> float:
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("amount must be a finite number")
        return value


AllocationState = Literal["pending", "active", "released", "expired", "preempted", "timed_out"]
ENDED_STATES = ("released", "expired", "preempted", "timed_out")


class Allocation(BaseModel):
    """One request's whole life: pending, then active on a donor, then how it ended.

    `holding` says the donor's capacity is still set aside: from the grant until the placement
    group is removed (a released or expired allocation drains its running tasks first).
    """

    model_config = ConfigDict(frozen=True)

    id: str
    borrower: str
    resource: ResourceType
    amount: float
    priority: TaskPriority
    state: AllocationState
    requested_at: float
    duration_s: float
    timeout_at: float
    donor: str | None = None
    requested_donor: str | None = None
    granted_at: float | None = None
    expires_at: float | None = None
    ended_at: float | None = None
    holding: bool = False
    placement_group: str = ""
    placement_group_id: str | None = None
    ready: bool = False
    in_flight: int = 0
    reason: str = ""
    owner: str | None = Field(None, description="who made it: `id:<token identity>`, `key:<hash of its owner key>`, "
                                                "or `cluster` (a handle call); only they may release it")
    owner_key: str | None = Field(None, description="only in the answer that made it over HTTP without a token: "
                                                    "send it as X-Grid-Owner-Key to release it")

    @property
    def ray_bundle(self) -> dict[str, float]:
        return {self.resource.ray_name: self.resource.to_ray(self.amount)}


@dataclass
class Changes:
    """What the adapter must do after a ledger step: create or remove placement groups."""

    granted: list[Allocation] = field(default_factory=list)
    remove: list[Allocation] = field(default_factory=list)  # remove these placement groups now
    ended: list[Allocation] = field(default_factory=list)

    @property
    def any(self) -> bool:
        return bool(self.granted or self.remove or self.ended)

    def merge(self, other: "Changes") -> "Changes":
        return Changes(self.granted + other.granted, self.remove + other.remove, self.ended + other.ended)


@dataclass(frozen=True)
class Room:
    """What a donor could lend of one resource now, in user units, and why not more."""

    donor: str
    limit: float  # config limit bounded by the node's total
    lent: float
    free: float  # free on the node now, after task reservations and allocations

    @property
    def spare(self) -> float:
        return max(0.0, min(self.limit - self.lent, self.free))

    def describe(self, resource: ResourceType) -> str:
        return f"{self.donor}: {_num(self.spare)} of {_num(self.limit)} {resource.unit} spare ({_num(self.lent)} lent, {_num(max(self.free, 0))} free)"


def _queue_key(record: Allocation) -> tuple:
    return (-record.priority.rank, record.requested_at, record.id)


def _reclaim_key(record: Allocation) -> tuple:
    """Kueue's order: lowest priority first, then the newest."""
    return (record.priority.rank, -(record.granted_at or 0.0), record.id)


@dataclass
class SharingLedger:
    """Every sharing request and allocation, and the rules that move them. Not thread-safe."""

    config: ClusterConfig | None
    records: dict[str, Allocation] = field(default_factory=dict)
    clock: Callable[[], float] = time.time
    drain_grace_s: float = 0.0  # an ended allocation keeps its group this long after its last task

    # ------------------------------------------------------------------ capacity

    @property
    def enabled(self) -> bool:
        return self.config is not None and self.config.resource_sharing.enabled

    def limit(self, donor: NodeView, resource: ResourceType) -> float:
        """The most `donor` may lend: its config limit, bounded by what Ray says it has."""
        node = self.config.node(donor.name) if self.config else None
        if node is None or not donor.alive:
            return 0.0
        return min(resource.limit_of(node), resource.from_ray(donor.total.get(resource.ray_name, 0.0)))

    def lent(self, donor: str, resource: ResourceType, excluding: Iterable[str] = ()) -> float:
        skip = set(excluding)
        return sum(r.amount for r in self.records.values()
                   if r.holding and r.donor == donor and r.resource is resource and r.id not in skip)

    def room(self, donor: NodeView, resource: ResourceType, view: ClusterView,
             available: Mapping[str, Mapping[str, float]] | None = None) -> Room:
        """`view` reservations are tasks only; allocations held on the donor are subtracted here.
        `available` (Ray's own free resources per node id, which already net out placement
        groups and work Ray runs outside grid-serve) bounds it further when given."""
        total = donor.total.get(resource.ray_name, 0.0)
        lent = self.lent(donor.name, resource)
        free = resource.from_ray(total - donor.reserved.get(resource.ray_name, 0.0)) - lent
        if available is not None and donor.node_id in available:
            free = min(free, resource.from_ray(available[donor.node_id].get(resource.ray_name, 0.0)))
        return Room(donor.name, self.limit(donor, resource), lent, free)

    def donors(self, request: Allocation, view: ClusterView) -> list[NodeView]:
        """Nodes that may ever lend this request's resource to its borrower (never itself)."""
        nodes = [node for node in view.nodes.values()
                 if node.name != request.borrower and self.limit(node, request.resource) > _EPS]
        if request.requested_donor:
            nodes = [node for node in nodes if node.name == request.requested_donor]
        return nodes

    # ------------------------------------------------------------------ input checks ("never")

    def validate(self, request: SharingRequest, view: ClusterView) -> tuple[str, str | None]:
        """The borrower's and requested donor's names, or InvalidRequestError naming the field."""
        if not self.enabled:
            raise InvalidRequestError("resource sharing is disabled (resource_sharing.enabled in the cluster config)",
                                      field="node")
        borrower = _resolve(view, request.node, "node")
        donor = _resolve(view, request.donor, "donor") if request.donor else None
        if donor is not None and donor.name == borrower.name:
            raise InvalidRequestError(f"a node cannot lend to itself: {borrower.name} is both borrower and donor",
                                      field="donor")
        resource = request.type
        if resource is ResourceType.GPU and request.amount > 1 and request.amount != int(request.amount):
            raise InvalidRequestError(f"gpu amounts above 1 must be whole, got {request.amount:g}", field="amount")
        probe = Allocation(id="", borrower=borrower.name, resource=resource, amount=request.amount,
                           priority=request.priority, state="pending", requested_at=0, duration_s=1, timeout_at=0,
                           requested_donor=donor.name if donor else None)
        limits = {node.name: self.limit(node, resource) for node in self.donors(probe, view)}
        if not limits:
            where = f"{donor.name} does not" if donor else f"no node other than {borrower.name} may"
            raise InvalidRequestError(f"{where} lend {resource} (resource_sharing limits in the cluster config)",
                                      field="donor" if donor else "type")
        best = max(limits.values())
        if request.amount > best + _EPS:
            detail = ", ".join(f"{name} {limit:g}" for name, limit in sorted(limits.items()))
            raise InvalidRequestError(
                f"amount {request.amount:g} {resource.unit} is over the sharing limit: the most any node may lend "
                f"{borrower.name} is {best:g} ({detail})", field="amount")
        return borrower.name, donor.name if donor else None

    # ------------------------------------------------------------------ transitions

    def submit(self, request: SharingRequest, view: ClusterView,
               available: Mapping[str, Mapping[str, float]] | None = None,
               owner: str | None = None) -> tuple[Allocation, Changes]:
        """Record a request and grant it now if it can be (by preemption if it must); `owner`
        alone may release it (`grid_serve.access`)."""
        borrower, donor = self.validate(request, view)
        now = self.clock()
        timeout = request.timeout_s or (self.config.resource_sharing.allocation_timeout_minutes * 60.0
                                        if self.config else 600.0)
        record_id = uuid.uuid4().hex[:12]
        self.records[record_id] = Allocation(
            id=record_id, borrower=borrower, resource=request.type, amount=request.amount,
            priority=request.priority, state="pending", requested_at=now, duration_s=request.duration_s,
            timeout_at=now + timeout, requested_donor=donor, placement_group=PLACEMENT_GROUP_PREFIX + record_id,
            reason="waiting for a donor", owner=owner,
        )
        changes = self._grant_pending(view, available)
        return self.records[record_id], changes

    def release(self, record_id: str) -> tuple[Allocation, Changes]:
        """End an allocation (its running tasks may finish first) or withdraw a pending request."""
        record = self.get(record_id)
        if record.state == "pending":
            return self._end(record, "released", "withdrawn before it was granted", holding=False), Changes()
        if record.state != "active":
            return record, Changes()
        ended = self._end(record, "released", "released by request; running tasks may finish", holding=True)
        return ended, Changes(ended=[ended])

    def tick(self, view: ClusterView, available: Mapping[str, Mapping[str, float]] | None = None,
             in_flight: Mapping[str, int] | None = None) -> Changes:
        """Time passes: end leases, time out waiting requests, grant what now fits, drain."""
        now = self.clock()
        changes = Changes()
        for record in list(self.records.values()):
            if record.state == "active" and record.expires_at is not None and record.expires_at <= now:
                changes.ended.append(self._end(record, "expired", "lease ended; running tasks may finish", holding=True))
            elif record.state == "pending" and record.timeout_at <= now:
                changes.ended.append(self._end(record, "timed_out", f"no donor had {record.amount:g} {record.resource.unit} "
                                               f"to spare within {record.timeout_at - record.requested_at:g}s",
                                               holding=False))
        changes = changes.merge(self._drain(in_flight or {}))
        changes = changes.merge(self._grant_pending(view, available))
        self._forget_old()
        return changes

    def set_in_flight(self, in_flight: Mapping[str, int]) -> None:
        for record in self.holding():
            count = in_flight.get(record.id, 0)
            if record.in_flight != count:
                self.records[record.id] = record.model_copy(update={"in_flight": count})

    def placed(self, record_id: str, placement_group_id: str, ready: bool = False) -> None:
        """The adapter created (or found) the record's placement group."""
        record = self.records.get(record_id)
        if record is not None:
            self.records[record_id] = record.model_copy(update={"placement_group_id": placement_group_id,
                                                                "ready": ready or record.ready})

    def forget(self, record_id: str, reason: str) -> None:
        """The record's placement group vanished (while the manager was down, say)."""
        self.records.pop(record_id, None)

    # ------------------------------------------------------------------ queries

    def get(self, record_id: str) -> Allocation:
        record = self.records.get(record_id)
        if record is None:
            raise NotFoundError(f"no sharing request or allocation {record_id!r}", field="id")
        return record

    def holding(self) -> list[Allocation]:
        return sorted((r for r in self.records.values() if r.holding), key=lambda r: (r.granted_at or 0, r.id))

    def pending(self) -> list[Allocation]:
        return sorted((r for r in self.records.values() if r.state == "pending"), key=_queue_key)

    # ------------------------------------------------------------------ persistence

    def to_state(self) -> dict[str, Any]:
        return {"version": 1, "records": [r.model_dump(mode="json") for r in self.records.values()]}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.records = {r["id"]: Allocation.model_validate(r) for r in state.get("records", [])}

    # ------------------------------------------------------------------ internals

    def _grant_pending(self, view: ClusterView, available: Mapping[str, Mapping[str, float]] | None) -> Changes:
        """Try every waiting request, highest priority then oldest first."""
        changes = Changes()
        for record in self.pending():
            changes = changes.merge(self._try_grant(record, view, available))
        return changes

    def _try_grant(self, record: Allocation, view: ClusterView,
                   available: Mapping[str, Mapping[str, float]] | None) -> Changes:
        donors = self.donors(record, view)
        rooms = {node.name: self.room(node, record.resource, view, available) for node in donors}
        fitting = [node for node in donors if rooms[node.name].spare + _EPS >= record.amount]
        if fitting:
            chosen = min(fitting, key=lambda node: self._donor_rank(node, rooms[node.name]))
            return Changes(granted=[self._grant(record, chosen.name, f"granted on {chosen.name}: "
                                                + rooms[chosen.name].describe(record.resource))])
        plan = self._preemption_plan(record, donors, rooms)
        if plan is not None:
            donor, victims = plan
            ended = [self._end(victim, "preempted", f"preempted by {record.priority} request {record.id} "
                                                    f"from {record.borrower}", holding=False)
                     for victim in victims]
            granted = self._grant(record, donor, f"granted on {donor} by preempting "
                                  + ", ".join(f"{v.id} ({v.priority})" for v in victims))
            return Changes(granted=[granted], remove=ended, ended=ended)
        why = "; ".join(rooms[node.name].describe(record.resource) for node in donors) or "no donor is alive"
        self.records[record.id] = record.model_copy(update={
            "reason": f"waiting: no donor has {record.amount:g} {record.resource.unit} to spare ({why})"})
        return Changes()

    def _donor_rank(self, node: NodeView, room: Room) -> tuple:
        """Most spare relative to its limit, then the config sharing priority, then the name."""
        config_node = self.config.node(node.name) if self.config else None
        priority = config_node.resource_sharing.priority if config_node else 0.0
        return (-(room.spare / room.limit if room.limit > 0 else 0.0), -priority, node.name)

    def _preemption_plan(self, record: Allocation, donors: list[NodeView],
                         rooms: Mapping[str, Room]) -> tuple[str, list[Allocation]] | None:
        """The donor whose strictly-lower-priority allocations free the room with the fewest,
        lowest-priority victims, taken lowest priority first, then newest first."""
        if self.config is not None and self.config.resource_sharing.policy == "conservative":
            return None
        plans = []
        for node in donors:
            room = rooms[node.name]
            candidates = sorted((r for r in self.records.values()
                                 if r.state == "active" and r.holding and r.donor == node.name
                                 and r.resource is record.resource and r.priority.rank < record.priority.rank),
                                key=_reclaim_key)
            freed, victims = 0.0, []
            for victim in candidates:
                if min(room.limit - room.lent, room.free) + freed + _EPS >= record.amount:
                    break
                victims.append(victim)
                freed += victim.amount
            if victims and min(room.limit - room.lent, room.free) + freed + _EPS >= record.amount:
                plans.append((len(victims), sum(v.priority.rank for v in victims), node.name, victims))
        if not plans:
            return None
        _, _, donor, victims = min(plans, key=lambda plan: plan[:3])
        return donor, victims

    def _grant(self, record: Allocation, donor: str, reason: str) -> Allocation:
        now = self.clock()
        granted = record.model_copy(update={
            "state": "active", "donor": donor, "granted_at": now, "expires_at": now + record.duration_s,
            "holding": True, "reason": reason,
        })
        self.records[record.id] = granted
        return granted

    def _end(self, record: Allocation, state: AllocationState, reason: str, holding: bool) -> Allocation:
        ended = record.model_copy(update={"state": state, "ended_at": self.clock(), "reason": reason,
                                          "holding": holding and record.holding})
        self.records[record.id] = ended
        return ended

    def _drain(self, in_flight: Mapping[str, int]) -> Changes:
        """Ended allocations whose tasks are done (and a grace passed) give their group back."""
        now = self.clock()
        done = []
        for record in self.holding():
            if record.state in ENDED_STATES and in_flight.get(record.id, 0) == 0 \
                    and (record.ended_at or 0.0) + self.drain_grace_s <= now:
                done.append(record.model_copy(update={"holding": False, "in_flight": 0}))
                self.records[record.id] = done[-1]
        return Changes(remove=done)

    def _forget_old(self) -> None:
        ended = sorted((r for r in self.records.values() if r.state in ENDED_STATES and not r.holding),
                       key=lambda r: r.ended_at or 0.0)
        for record in ended[:max(0, len(ended) - ENDED_RECORDS_KEPT)]:
            del self.records[record.id]


def _resolve(view: ClusterView, reference: str, field_name: str) -> NodeView:
    try:
        return view.resolve(reference)
    except NodeLookupError as exc:
        raise InvalidRequestError(str(exc), field=field_name) from None


def reconcile(ledger: SharingLedger, groups: Mapping[str, tuple[str, str]]) -> tuple[list[str], list[str]]:
    """After a restart: re-adopt the placement groups that still exist.

    `groups` maps each live grid-sharing placement group's name to (id, Ray state). Returns
    the ids of holding records whose group vanished (now forgotten) and the names of groups no
    record holds (orphans the adapter should remove).
    """
    vanished = []
    held = set()
    for record in ledger.holding():
        found = groups.get(record.placement_group)
        if found is None:
            vanished.append(record.id)
            ledger.forget(record.id, "placement group vanished")
            continue
        held.add(record.placement_group)
        ledger.placed(record.id, found[0], ready=found[1] == "CREATED")
    orphans = sorted(name for name in groups if name.startswith(PLACEMENT_GROUP_PREFIX) and name not in held)
    return vanished, orphans


# ---------------------------------------------------------------- tasks inside allocations


def fold_allocations(view: ClusterView, records: Iterable[Allocation],
                     group_loads: Mapping[str, Any] | None = None) -> ClusterView:
    """The view with each held allocation's capacity reserved on its donor and attached as an
    `AllocationView` (with what its tasks use), so the Scheduler sees what Ray sees."""
    group_loads = group_loads or {}
    by_name = {node.name: node for node in view.nodes.values()}
    for record in records:
        donor = by_name.get(record.donor or "")
        if donor is None or not record.holding:
            continue
        capacity = record.ray_bundle
        view = view.with_node(view.nodes[donor.node_id].reserve(capacity, tasks=0))
        load = group_loads.get(record.placement_group_id or "")
        view = view.with_allocation(AllocationView(
            id=record.id, borrower=record.borrower, donor_id=donor.node_id, donor=donor.name,
            placement_group_id=record.placement_group_id or "", capacity=capacity,
            used=dict(load.reserved) if load else {}, in_flight=load.in_flight if load else 0,
            accepting=record.state == "active" and record.ready and record.placement_group_id is not None,
        ))
    return view


def borrower_of(request: SchedulingRequest, view: ClusterView) -> NodeView | None:
    """The node a task is meant for when it names exactly one: node_specific or its label."""
    try:
        if request.strategy is SchedulingStrategy.NODE_SPECIFIC and request.target_node:
            return view.resolve(request.target_node)
        name = request.label_selector.get(NODE_LABEL)
        return view.resolve(name) if name else None
    except NodeLookupError:
        return None


def _fits(needs: Mapping[str, float], free: Callable[[str], float]) -> bool:
    return all(amount <= free(resource) + _EPS for resource, amount in needs.items())


def allocation_decision(request: SchedulingRequest, view: ClusterView,
                        outcome: SchedulingDecision | NoFit) -> SchedulingDecision | None:
    """Run the task inside one of its node's allocations when the node itself has no room.

    Only when the task names its node (node_specific or the node label), the node has no room
    now without overbooking, and an accepting allocation holds every resource it needs; the
    least used such allocation wins (then the id). None: keep `outcome`.
    """
    borrower = borrower_of(request, view)
    if borrower is None or not view.allocations:
        return None
    needs = request.requirements.as_ray_resources()
    if isinstance(outcome, SchedulingDecision) and _fits(needs, lambda r: borrower.free(r, 1.0)):
        return None
    fitting = [a for a in view.allocations.values()
               if a.borrower == borrower.name and a.accepting and _fits(needs, a.free)
               and view.nodes.get(a.donor_id) is not None and view.nodes[a.donor_id].alive]
    if not fitting:
        return None
    chosen = min(fitting, key=lambda a: (_used_share(a), a.id))
    donor = view.nodes[chosen.donor_id]
    why = outcome.message if isinstance(outcome, NoFit) else f"{borrower.name} is full (would overbook)"
    return SchedulingDecision(
        task_id=request.task_id, node_id=donor.node_id, node_name=donor.name, node_ip=donor.ip,
        strategy=request.strategy, score=1.0,
        reasons=[f"ran in allocation {chosen.id} on donor {donor.name}, borrowed by {borrower.name}",
                 f"{borrower.name} had no room: {why}"],
        resources=needs, placement_group_id=chosen.placement_group_id, bundle_index=0,
    )


def may_fit_allocation(request: SchedulingRequest, view: ClusterView) -> bool:
    """Some accepting allocation of the task's node could hold it once its tasks finish."""
    borrower = borrower_of(request, view)
    if borrower is None:
        return False
    needs = request.requirements.as_ray_resources()
    return any(a.borrower == borrower.name and a.accepting and _fits(needs, lambda r: a.capacity.get(r, 0.0))
               for a in view.allocations.values())


def _used_share(allocation: AllocationView) -> float:
    return max((allocation.used.get(r, 0.0) / cap for r, cap in allocation.capacity.items() if cap > 0), default=0.0)


# ---------------------------------------------------------------- status, for HTTP and the CLI


class CapacityRow(BaseModel):
    """What one node may lend of one resource, and how much of that is in use."""

    node: str
    resource: ResourceType
    can_share: bool
    max_share: float  # config limit
    lendable: float  # the limit bounded by what the node has
    lent: float
    spare: float
    borrowed: float
    sharing_priority: float


class NodeUsage(BaseModel):
    """One node's totals, task reservations, and what it lends and borrows (user units)."""

    node: str
    alive: bool
    total: dict[str, float]
    reserved: dict[str, float]  # by tasks placed on it directly
    lent: dict[str, float]
    borrowed: dict[str, float]


class SharingStatus(BaseModel):
    enabled: bool
    policy: str
    allocations: list[Allocation]  # holding capacity: active, or ended and draining
    pending: list[Allocation]
    recent: list[Allocation]  # ended, newest first
    capacity: list[CapacityRow]
    nodes: list[NodeUsage]


def sharing_status(ledger: SharingLedger, view: ClusterView,
                   available: Mapping[str, Mapping[str, float]] | None = None, recent: int = 20) -> SharingStatus:
    capacity, usage = [], []
    holding = ledger.holding()
    for node in view.nodes.values():
        config_node = ledger.config.node(node.name) if ledger.config else None
        lent_by, borrowed_by, total, reserved = {}, {}, {}, {}
        for resource in ResourceType:
            key = str(resource)
            room = ledger.room(node, resource, view, available)
            borrowed = sum(r.amount for r in holding if r.borrower == node.name and r.resource is resource)
            lent_by[key], borrowed_by[key] = room.lent, borrowed
            total[key] = resource.from_ray(node.total.get(resource.ray_name, 0.0))
            reserved[key] = resource.from_ray(node.reserved.get(resource.ray_name, 0.0))
            if config_node is not None:
                capacity.append(CapacityRow(
                    node=node.name, resource=resource, can_share=config_node.resource_sharing.can_share,
                    max_share=resource.limit_of(config_node) if config_node.resource_sharing.can_share else 0.0,
                    lendable=room.limit, lent=room.lent, spare=room.spare, borrowed=borrowed,
                    sharing_priority=config_node.resource_sharing.priority))
        usage.append(NodeUsage(node=node.name, alive=node.alive, total=total, reserved=reserved,
                               lent=lent_by, borrowed=borrowed_by))
    ended = sorted((r for r in ledger.records.values() if r.state in ENDED_STATES and not r.holding),
                   key=lambda r: -(r.ended_at or 0.0))
    return SharingStatus(
        enabled=ledger.enabled, policy=ledger.config.resource_sharing.policy if ledger.config else "balanced",
        allocations=holding, pending=ledger.pending(), recent=ended[:recent], capacity=capacity, nodes=usage)


Table = tuple[list[str], list[list[str]]]


def _when(epoch: float | None, now: float) -> str:
    if epoch is None:
        return "-"
    seconds = epoch - now
    return f"in {seconds:.0f}s" if seconds >= 0 else f"{-seconds:.0f}s ago"


def allocation_rows(records: Iterable[Allocation], now: float | None = None) -> Table:
    """Active (and draining) allocations: id, donor, borrower, resource, amount, priority, expires."""
    now = time.time() if now is None else now
    headers = ["id", "donor", "borrower", "resource", "amount", "priority", "expires", "state", "in flight"]
    rows = [[r.id, r.donor or "-", r.borrower, str(r.resource), f"{r.amount:g}", str(r.priority),
             _when(r.expires_at, now), r.state if r.state != "active" else ("active" if r.ready else "placing"),
             str(r.in_flight)] for r in records]
    return headers, rows


def pending_rows(records: Iterable[Allocation], now: float | None = None) -> Table:
    now = time.time() if now is None else now
    headers = ["id", "borrower", "resource", "amount", "priority", "waiting", "gives up", "reason"]
    rows = [[r.id, r.borrower, str(r.resource), f"{r.amount:g}", str(r.priority), f"{now - r.requested_at:.0f}s",
             _when(r.timeout_at, now), r.reason] for r in records]
    return headers, rows


def _num(value: float) -> str:
    """Table figures to two decimals at most: 4.71, not 4.70812."""
    return f"{round(value, 2):g}"


def capacity_rows(rows: Iterable[CapacityRow]) -> Table:
    headers = ["node", "resource", "can share", "max share", "lendable", "lent", "spare", "borrowed", "priority"]
    return headers, [[r.node, str(r.resource), "yes" if r.can_share else "no", f"{_num(r.max_share)}", f"{_num(r.lendable)}",
                      f"{_num(r.lent)}", f"{_num(r.spare)}", f"{_num(r.borrowed)}", f"{_num(r.sharing_priority)}"] for r in rows]


def utilisation_rows(nodes: Iterable[NodeUsage]) -> Table:
    """Per node and resource: used (tasks + lent) of total, and what it borrows."""
    headers = ["node", "alive", "cpu used/total", "gpu used/total", "memory GB used/total", "lent", "borrowed"]

    def used(node: NodeUsage, key: str) -> str:
        return f"{_num(node.reserved.get(key, 0) + node.lent.get(key, 0))}/{node.total.get(key, 0):g}"

    def summary(amounts: Mapping[str, float]) -> str:
        return ", ".join(f"{_num(v)} {k}" for k, v in amounts.items() if v) or "-"

    return headers, [[n.node, "yes" if n.alive else "no", used(n, "cpu"), used(n, "gpu"), used(n, "memory"),
                      summary(n.lent), summary(n.borrowed)] for n in nodes]


def status_tables(status: SharingStatus, now: float | None = None) -> dict[str, Table]:
    """The four tables `grid resource-sharing status` prints, as (headers, rows) of strings."""
    return {
        "allocations": allocation_rows(status.allocations, now),
        "pending": pending_rows(status.pending, now),
        "capacity": capacity_rows(status.capacity),
        "utilisation": utilisation_rows(status.nodes),
    }


def config_capacity_rows(config: ClusterConfig) -> Table:
    """Shareable limits straight from a cluster file, for `status --config FILE` without a cluster."""
    headers = ["node", "can share", "max cpu", "max memory GB", "max gpu", "priority"]
    return headers, [[n.name, "yes" if n.resource_sharing.can_share else "no", f"{n.resource_sharing.max_share_cpu:g}",
                      f"{n.resource_sharing.max_share_memory_gb:g}", f"{n.resource_sharing.max_share_gpu:g}",
                      f"{n.resource_sharing.priority:g}"] for n in config.nodes]
