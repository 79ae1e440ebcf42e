"""The sharing rules: grant on a donor, preempt lower priorities, wait, time out, drain.

Pure (no Ray): the `SharingManager` deployment wraps one `SharingLedger`, creates and removes
the placement groups its `Changes` ask for, and persists `to_state()`. Every change of an
allocation's state goes through `lifecycle.next_state`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from ..config import ClusterConfig
from ..errors import InvalidRequestError, NotFoundError, TooBusyError
from ..view import ClusterView, NodeLookupError, NodeView
from .lifecycle import ENDED_STATES, Event, next_state
from .models import EPS, PLACEMENT_GROUP_PREFIX, RECORD_ID, Allocation, ResourceType, SharingRequest, figure

ENDED_RECORDS_KEPT = 200
# Requests waiting for a donor, all callers together: each is kept (and saved to the GCS with the
# ledger on every change) until granted, released or timed out (up to a week), so past this a new
# one is turned away, 429, rather than grow the ledger without bound.
PENDING_KEPT = 1_000


@dataclass
class Changes:
    """What the adapter must do after a ledger step: create or remove placement groups."""

    granted: list[Allocation] = field(default_factory=list)
    remove: list[Allocation] = field(default_factory=list)  # remove these placement groups now
    ended: list[Allocation] = field(default_factory=list)

    @property
    def any(self) -> bool:
        return bool(self.granted or self.remove or self.ended)

    def merge(self, other: Changes) -> Changes:
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
        return (f"{self.donor}: {figure(self.spare)} of {figure(self.limit)} {resource.unit} spare "
                f"({figure(self.lent)} lent, {figure(max(self.free, 0))} free)")


def _queue_key(record: Allocation) -> tuple[int, float, str]:
    return (-record.priority.rank, record.requested_at, record.id)


def _reclaim_key(record: Allocation) -> tuple[int, float, str]:
    """Kueue's order: lowest priority first, then the newest."""
    return (record.priority.rank, -(record.granted_at or 0.0), record.id)


@dataclass
class SharingLedger:
    """Every sharing request and allocation, and the rules that move them. Not thread-safe."""

    config: ClusterConfig | None
    records: dict[str, Allocation] = field(default_factory=dict)
    clock: Callable[[], float] = time.time
    drain_grace_s: float = 0.0  # an ended allocation keeps its group this long after its last task
    group_prefix: str = PLACEMENT_GROUP_PREFIX  # one per app: two grid apps on a cluster keep apart

    def owns_group(self, name: str) -> bool:
        """Whether a placement group of this name is one of this ledger's (its prefix, then a
        record id and nothing else: app `grid` never claims app `grid-auth`'s groups).

        >>> ledger = SharingLedger(None, group_prefix="grid-sharing-grid-")
        >>> (ledger.owns_group("grid-sharing-grid-0123456789ab"),
        ...  ledger.owns_group("grid-sharing-grid-auth-0123456789ab"))
        (True, False)
        """
        return name.startswith(self.group_prefix) and RECORD_ID.fullmatch(name[len(self.group_prefix):]) is not None

    def orphans(self, groups: Iterable[str]) -> list[str]:
        """Names among live `groups` that are this ledger's but no holding record's: a group
        made just before a crash, or one whose removal failed. The adapter removes them."""
        held = {record.placement_group for record in self.holding()}
        return sorted(name for name in groups if self.owns_group(name) and name not in held)

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
                 if node.name != request.borrower and self.limit(node, request.resource) > EPS]
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
        if request.amount > best + EPS:
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
        waiting = sum(1 for record in self.records.values() if record.state == "pending")
        if waiting >= PENDING_KEPT:
            raise TooBusyError(f"{waiting} sharing requests already wait for a donor (at most {PENDING_KEPT}); "
                               "release one or retry later", field="node", retry_after_s=30)
        now = self.clock()
        timeout = request.timeout_s or (self.config.resource_sharing.allocation_timeout_minutes * 60.0
                                        if self.config else 600.0)
        record_id = uuid.uuid4().hex[:12]
        self.records[record_id] = Allocation(
            id=record_id, borrower=borrower, resource=request.type, amount=request.amount,
            priority=request.priority, state="pending", requested_at=now, duration_s=request.duration_s,
            timeout_at=now + timeout, requested_donor=donor, placement_group=self.group_prefix + record_id,
            reason="waiting for a donor", owner=owner,
        )
        changes = self._grant_pending(view, available)
        return self.records[record_id], changes

    def release(self, record_id: str) -> tuple[Allocation, Changes]:
        """End an allocation (its running tasks may finish first) or withdraw a pending request."""
        record = self.get(record_id)
        if record.state == "pending":
            return self._end(record, Event.WITHDRAW, "withdrawn before it was granted"), Changes()
        if record.state != "active":
            return record, Changes()
        ended = self._end(record, Event.RELEASE, "released by request; running tasks may finish")
        return ended, Changes(ended=[ended])

    def tick(self, view: ClusterView, available: Mapping[str, Mapping[str, float]] | None = None,
             in_flight: Mapping[str, int] | None = None) -> Changes:
        """Time passes: end leases, time out waiting requests, grant what now fits, drain."""
        changes = self.expire({node.name for node in view.nodes.values() if not node.alive})
        changes = changes.merge(self._drain(in_flight or {}))
        changes = changes.merge(self._grant_pending(view, available))
        self._forget_old()
        return changes

    def expire(self, dead: set[str] | frozenset[str] = frozenset()) -> Changes:
        """End what time ends (leases, waits for a donor) and what lent from a `dead` donor.
        Alone when the cluster cannot be observed (a stalled LoadBalancer or MetricsCollector):
        leases still end on time, and granting and draining wait for the next view."""
        now = self.clock()
        changes = Changes()
        for record in list(self.records.values()):
            if record.state == "active" and record.donor in dead:
                lost = self._end(record, Event.DONOR_DIES, f"donor {record.donor} died: what it lent is gone, and "
                                                           "tasks running in it were lost (a job places them again)")
                changes.ended.append(lost)
                changes.remove.append(lost)
            elif record.state == "active" and record.expires_at is not None and record.expires_at <= now:
                changes.ended.append(self._end(record, Event.LEASE_END, "lease ended; running tasks may finish"))
            elif record.state == "pending" and record.timeout_at <= now:
                changes.ended.append(self._end(record, Event.TIME_OUT,
                                               f"no donor had {record.amount:g} {record.resource.unit} "
                                               f"to spare within {record.timeout_at - record.requested_at:g}s"))
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

    def ungrant(self, record_id: str, reason: str) -> None:
        """A grant that could not be recorded (its group was never created): pending again,
        to be granted on a later tick."""
        record = self.records.get(record_id)
        if record is not None:
            state, holding = next_state(record.state, Event.UNGRANT)
            self.records[record_id] = record.model_copy(update={
                "state": state, "donor": None, "granted_at": None, "expires_at": None, "holding": holding,
                "placement_group_id": None, "ready": False, "reason": reason})

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
        fitting = [node for node in donors if rooms[node.name].spare + EPS >= record.amount]
        if fitting:
            chosen = min(fitting, key=lambda node: self._donor_rank(node, rooms[node.name]))
            return Changes(granted=[self._grant(record, chosen.name, f"granted on {chosen.name}: "
                                                + rooms[chosen.name].describe(record.resource))])
        plan = self._preemption_plan(record, donors, rooms)
        if plan is not None:
            donor, victims = plan
            ended = [self._end(victim, Event.PREEMPT, f"preempted by {record.priority} request {record.id} "
                                                    f"from {record.borrower}")
                     for victim in victims]
            granted = self._grant(record, donor, f"granted on {donor} by preempting "
                                  + ", ".join(f"{v.id} ({v.priority})" for v in victims))
            return Changes(granted=[granted], remove=ended, ended=ended)
        why = "; ".join(rooms[node.name].describe(record.resource) for node in donors) or "no donor is alive"
        self.records[record.id] = record.model_copy(update={
            "reason": f"waiting: no donor has {record.amount:g} {record.resource.unit} to spare ({why})"})
        return Changes()

    def _donor_rank(self, node: NodeView, room: Room) -> tuple[float, float, str]:
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
                if min(room.limit - room.lent, room.free) + freed + EPS >= record.amount:
                    break
                victims.append(victim)
                freed += victim.amount
            if victims and min(room.limit - room.lent, room.free) + freed + EPS >= record.amount:
                plans.append((len(victims), sum(v.priority.rank for v in victims), node.name, victims))
        if not plans:
            return None
        _, _, donor, victims = min(plans, key=lambda plan: plan[:3])
        return donor, victims

    def _grant(self, record: Allocation, donor: str, reason: str) -> Allocation:
        now = self.clock()
        state, holding = next_state(record.state, Event.GRANT)
        granted = record.model_copy(update={
            "state": state, "donor": donor, "granted_at": now, "expires_at": now + record.duration_s,
            "holding": holding, "reason": reason,
        })
        self.records[record.id] = granted
        return granted

    def _end(self, record: Allocation, event: Event, reason: str) -> Allocation:
        """`event` ends the record; it keeps holding its capacity only if the transition says
        so (a drain) and it held any."""
        state, holding = next_state(record.state, event)
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
    for record in ledger.holding():
        found = groups.get(record.placement_group)
        if found is None:
            vanished.append(record.id)
            ledger.forget(record.id, "placement group vanished")
            continue
        ledger.placed(record.id, found[0], ready=found[1] == "CREATED")
    return vanished, ledger.orphans(groups)


