"""Queues: who shares the cluster with whom, and how much of it each is due (issue 22).

Work waits in a queue: by default one per caller (a token identity over HTTP, callers without a
token sharing one; the Ray job of a handle or `grid.remote` caller), or the one a submission
names (`queue`). Priorities stay strict across queues. At one priority, the Scheduler serves the
queues by weighted dominant-resource fair share (DRF, as Mesos and YuniKorn do): a queue's share
is the largest fraction of any resource its running tasks hold, divided by its weight; the
queue furthest under its share is served next, and within a queue it is age, as before. A GPU
queue holding 1 of 2 GPUs has a share of 0.5 even while it holds 1 of 6 CPUs, so GPU work and
CPU work are weighed by what each is scarce in, not by CPU counts.

Weights come from serve_config (`args: queues: {alice: {weight: 3}}`); a queue not listed
weighs 1.

Quotas (Kueue's nominal quota and borrowing limit, over the whole cluster as one cohort): a
queue may be given a `quota` per resource, what it is owed, and a `borrowing_limit`, how much
beyond it it may use of what other queues leave idle. At one priority, a task its queue's quota
covers comes before any task that would borrow or whose queue has no quota (fair share orders
each side), so capacity a queue lent comes back at task boundaries as soon as it has work. Work
beyond a queue's quota is placed only into capacity free now, never queued inside Ray ahead of
it (`grid_serve.lookahead`), so nothing a lending queue is owed sits behind borrowed work: it
frees within one run time of the borrower's tasks. While other queues wait at its priority, work
a quota covers is not queued inside Ray either (unless known to be short): committed behind a
running task on one node, it would see a slot that frees on another go to borrowed work first
(`SchedulerCore._rule`). A queue with no quota is as before, lookahead
included (so what it queued inside Ray starts before a quota's work: give every queue that
shares with quotas one). A task that would take its queue past quota plus borrowing limit
waits. Running tasks are not stopped to give capacity back, unless the owed queue says `reclaim:
cancel_running` (Kueue's reclaimWithinCohort): then its work within its quota waits here while
others borrow, and when it finds no node, the borrowers' youngest running tasks are stopped and
placed again (`grid_serve.take_back.to_reclaim`). Pure: no Ray.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Annotated, Callable, Hashable, Iterable, Iterator, Literal, Mapping, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .models import ZERO_RESOURCE_SLOT

DEFAULT_QUEUE = "default"  # a submission from inside the cluster that names none
ANONYMOUS_QUEUE = "anonymous"  # every HTTP caller without a token

Item = TypeVar("Item")
ResourceName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:/-]+$")]
Amount = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Key = TypeVar("Key", bound=Hashable)
RAY_RESOURCES = {name.lower(): name for name in ("CPU", "GPU", "memory", "object_store_memory")}


class QueueSettings(BaseModel):
    """One queue's settings in serve_config (`args: queues: <name>:`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    weight: float = Field(1.0, gt=0, le=1000, description="its share of the cluster against the other queues' "
                                                          "weights, at one priority (3 against 1: 75% to 25%)")
    quota: dict[ResourceName, Amount] = Field(
        default_factory=dict, description="what the queue is owed per resource (Ray's names and units: CPU, GPU, "
                                          "memory in bytes, custom): its tasks within it come before borrowed work")
    borrowing_limit: dict[ResourceName, Amount] = Field(
        default_factory=dict, description="how much beyond its quota it may use, per resource of its quota "
                                          "(0: none); a resource not named: whatever the other queues leave idle")

    reclaim: Literal["never", "cancel_running"] = Field(
        "never", description="whether the queue's work within its quota may stop other queues' running borrowed "
                             "tasks when none of its own can start (cancel_running: each is placed again; "
                             "never: it waits for them to end)")

    @field_validator("borrowing_limit", mode="before")
    @classmethod
    def _none_is_no_limit(cls, value: object) -> object:
        return {} if value is None else value  # `borrowing_limit: null`, as older configs wrote "no limit"

    @model_validator(mode="after")
    def _amounts_mean_what_they_say(self) -> QueueSettings:
        if self.reclaim != "never" and not self.quota:
            raise ValueError("reclaim: a queue reclaims only what its quota owes it, and it has no quota")
        for name in (*self.quota, *self.borrowing_limit):
            canonical = RAY_RESOURCES.get(name.lower())
            if canonical is not None and name != canonical:
                raise ValueError(f"{name}: Ray's resource is {canonical!r} (names are case-sensitive)")
        extra = sorted(set(self.borrowing_limit) - set(self.quota))
        if extra:
            raise ValueError(f"borrowing_limit names {', '.join(extra)}, which quota does not: "
                             f"a limit is on borrowing beyond a quota")
        for field, amounts in (("quota", self.quota), ("borrowing_limit", self.borrowing_limit)):
            if 0 < amounts.get("memory", 0) < 2**20:
                raise ValueError(f"{field}: memory is in bytes, as Ray counts it ({amounts['memory']:g} is under "
                                 f"1 MiB): 4 GiB is {4 * 2**30}")
        return self

    def cap(self, resource: str) -> float | None:
        """The most of `resource` the queue may hold: quota plus borrowing limit (None: no cap,
        as in Kueue, where a resource with no borrowing limit may borrow whatever is idle)."""
        if resource not in self.quota or resource not in self.borrowing_limit:
            return None
        return self.quota[resource] + self.borrowing_limit[resource]


WITHIN, BORROWS, AT_LIMIT = 0, 1, 2  # a task's standing against its queue's quota; served in this order


def standing(settings: QueueSettings | None, used: Mapping[str, float], needs: Mapping[str, float]) -> int:
    """Where a task of a queue holding `used` stands if placed: WITHIN its quota, BORROWS (beyond
    it, or its queue has none), or AT_LIMIT (past quota plus borrowing limit: it waits).

    >>> a = QueueSettings(quota={"CPU": 2}, borrowing_limit={"CPU": 2})
    >>> [standing(a, {"CPU": held}, {"CPU": 1.0}) for held in (0.0, 1.0, 2.0, 3.0, 4.0)]
    [0, 0, 1, 1, 2]
    >>> standing(None, {}, {"CPU": 1.0}), standing(a, {}, {"GPU": 1.0})  # no quota; none on GPU
    (1, 1)
    """
    if settings is None:
        return BORROWS
    beyond = False
    covered = False
    for name, amount in needs.items():
        if amount <= 0 or name not in settings.quota:
            continue
        after = used.get(name, 0.0) + amount
        cap = settings.cap(name)
        if cap is not None and after > cap + 1e-9:
            return AT_LIMIT
        covered = True
        beyond = beyond or after > settings.quota[name] + 1e-9
    return BORROWS if beyond or not covered else WITHIN


def beyond_cap(settings: QueueSettings | None, needs: Mapping[str, float]) -> str | None:
    """Why a task can never run in its queue: it alone needs more than quota plus borrowing limit.

    >>> beyond_cap(QueueSettings(quota={"CPU": 2}, borrowing_limit={"CPU": 1}), {"CPU": 4.0})
    'its queue may hold at most 3 CPU (quota 2 plus borrowing limit 1); the task needs 4'
    """
    for name, amount in needs.items():
        cap = settings.cap(name) if settings is not None else None
        if cap is not None and amount > cap + 1e-9:
            assert settings is not None
            limit = settings.borrowing_limit[name]
            return (f"its queue may hold at most {amount_text(name, cap)} {name} (quota "
                    f"{amount_text(name, settings.quota[name])} plus borrowing limit {amount_text(name, limit)}); "
                    f"the task needs {amount_text(name, amount)}")
    return None


def quota_text(queue: str, settings: QueueSettings | None, used: Mapping[str, float], rank: int) -> str:
    """What an explanation says of a task's queue and its quota (`used`: before the task).

    >>> a = QueueSettings(quota={"CPU": 2})
    >>> quota_text("a", a, {"CPU": 1.0}, WITHIN)
    'queue a is within its quota: 1 of 2 CPU'
    >>> quota_text("a", a, {"CPU": 5.0}, BORROWS)
    'queue a borrows beyond its quota (holds 5 of 2 CPU): placed only into capacity free now'
    """
    if settings is None or not settings.quota:
        return f"queue {queue} has no quota: served after work within a quota"
    held = ", ".join(f"{amount_text(name, used.get(name, 0.0))} of {amount_text(name, amount)} {name}"
                     for name, amount in settings.quota.items())
    if rank == WITHIN:
        return f"queue {queue} is within its quota: {held}"
    if rank == AT_LIMIT:
        return f"queue {queue} is at its quota plus borrowing limit (holds {held}): it waits for its own tasks to end"
    return f"queue {queue} borrows beyond its quota (holds {held}): placed only into capacity free now"


def amount_text(resource: str, value: float) -> str:
    """An amount of a resource as people read it: memory in MB, the rest as Ray counts it.

    >>> amount_text("memory", 4 * 2**30), amount_text("memory", 2**19), amount_text("CPU", 2.0)
    ('4096 MB', '0.5 MB', '2')
    """
    if resource != "memory":
        return f"{value:g}"
    megabytes = value / 2**20
    return f"{megabytes:.0f} MB" if megabytes >= 10 or megabytes == 0 else f"{megabytes:.2g} MB"


def held_beyond(quota: Mapping[str, float], held: Mapping[str, float]) -> dict[str, float]:
    """What a queue holds beyond its quota, per resource it holds (all of it where the quota
    names none).

    >>> held_beyond({"CPU": 2.0}, {"CPU": 5.0, "GPU": 1.0, "memory": 0.0})
    {'CPU': 3.0, 'GPU': 1.0}
    """
    return {name: amount - quota.get(name, 0.0) for name, amount in held.items()
            if amount - quota.get(name, 0.0) > 1e-9}


def queue_of_caller(identity: str | None) -> str:
    """The queue an HTTP caller's work waits in when it names none: its token identity's own,
    one for every caller without a token.

    >>> queue_of_caller("alice"), queue_of_caller(None)
    ('alice', 'anonymous')
    """
    return identity if identity is not None else ANONYMOUS_QUEUE


def queue_of_ray_job(job_id_hex: str) -> str:
    """The queue a handle or `grid.remote` caller's work waits in when it names none: its Ray
    job's own (every process of one driver program shares it).

    >>> queue_of_ray_job("02000000")
    'ray-job:02000000'
    """
    return f"ray-job:{job_id_hex}"


def cluster_totals(capacities: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """What the nodes hold together, per resource (the denominators of a share); Ray's per-node
    resources (`node:<ip>`) are left out. The worker slots that tasks asking for nothing hold
    (`ZERO_RESOURCE_SLOT`) count like any resource, so such a queue's share is not always 0.

    >>> cluster_totals([{"CPU": 4, "GPU": 1, "node:10.0.0.1": 1}, {"CPU": 2}])
    {'CPU': 6.0, 'GPU': 1.0}
    """
    totals: dict[str, float] = {}
    for capacity in capacities:
        for name, amount in capacity.items():
            if amount > 0 and not name.startswith("node:"):
                totals[name] = totals.get(name, 0.0) + float(amount)
    return totals


class FairShares:
    """Each queue's weighted dominant share, kept up to date as a drain places tasks.

    >>> shares = FairShares({"a": {"CPU": 3.0}}, {"CPU": 6.0, "GPU": 2.0}, {"a": 3.0})
    >>> shares.share("a"), shares.share("b")  # a holds half the CPUs at weight 3; b holds nothing
    (0.16666666666666666, 0.0)
    >>> shares.add("b", {"GPU": 1.0})  # half the GPUs: b's dominant resource
    >>> shares.share("b")
    0.5
    >>> shares.describe("b", shares.total_weight(["a", "b"]))
    'queue b: 1 of 2 GPU (its dominant resource), weight 1 of 4'
    """

    def __init__(self, usage: Mapping[str, Mapping[str, float]], totals: Mapping[str, float],
                 weights: Mapping[str, float], quotas: Mapping[str, QueueSettings] | None = None) -> None:
        """`quotas`: the queues that have one, when any has (`standing` reads them); None: none has."""
        self._used = {queue: dict(held) for queue, held in usage.items()}
        self._totals = totals
        self._weights = weights
        self._shares: dict[str, float] = {}
        self.quotas = quotas

    def standing(self, queue: str, needs: Mapping[str, float]) -> int:
        """Where a task of `queue` needing `needs` stands against its quota now (`standing`);
        WITHIN for every task when no queue has a quota (then quotas change nothing)."""
        if self.quotas is None:
            return WITHIN
        return standing(self.quotas.get(queue), self._used.get(queue, {}), needs)

    def quota_note(self, queue: str, rank: int) -> str | None:
        """What a decision's explanation says of the queue's quota, its task standing at `rank`
        (None: no queue has one)."""
        if self.quotas is None:
            return None
        return quota_text(queue, self.quotas.get(queue), self._used.get(queue, {}), rank)

    def beyond_cap(self, queue: str, needs: Mapping[str, float]) -> str | None:
        """Why a task of `queue` can never run there (`beyond_cap`); None: it can."""
        return beyond_cap(self.quotas.get(queue), needs) if self.quotas is not None else None

    def owed(self, queue: str, needs: Mapping[str, float], tasks: int) -> dict[str, float]:
        """What `tasks` of the queue's waiting tasks, each needing `needs`, would use of what its
        quota still owes it, per resource (empty: nothing owed, or no quota)."""
        settings = self.quotas.get(queue) if self.quotas is not None else None
        if settings is None:
            return {}
        used = self._used.get(queue, {})
        owed = {name: min(settings.quota[name] - used.get(name, 0.0), amount * tasks)
                for name, amount in needs.items() if amount > 0 and name in settings.quota}
        return {name: amount for name, amount in owed.items() if amount > 1e-9}

    def lent(self) -> dict[str, dict[str, float]]:
        """What each queue holds beyond its quota, per resource: all it holds when it has none
        (what a queue that reclaims may take back from it)."""
        quotas = self.quotas or {}
        lent = {}
        for queue, held in self._used.items():
            beyond = held_beyond(quotas[queue].quota if queue in quotas else {}, held)
            if beyond:
                lent[queue] = beyond
        return lent

    def weight(self, queue: str) -> float:
        return self._weights.get(queue, 1.0)

    def share(self, queue: str) -> float:
        """The queue's dominant share over its weight (0 when it holds nothing)."""
        share = self._shares.get(queue)
        if share is None:
            share = self._shares[queue] = self.dominant(queue)[1] / self.weight(queue)
        return share

    def add(self, queue: str, resources: Mapping[str, float]) -> None:
        """A task of the queue placed: it holds `resources` now."""
        used = self._used.setdefault(queue, {})
        for name, amount in resources.items():
            used[name] = used.get(name, 0.0) + amount
        self._shares.pop(queue, None)

    def total_weight(self, queues: Iterable[str]) -> float:
        """The weights of `queues` together (what each one's weight is "of")."""
        return sum(self.weight(queue) for queue in set(queues))

    def describe(self, queue: str, total_weight: float) -> str:
        """What an explanation says of the queue: what it holds of its dominant resource, and
        its weight against `total_weight`, the queues' that were waiting with it."""
        name, fraction = self.dominant(queue)
        weight = f"weight {self.weight(queue):g} of {total_weight:g}"
        if not name:
            return f"queue {queue}: holds nothing yet, {weight}"
        held = self._used.get(queue, {}).get(name, 0.0)
        label = "worker slots of tasks that ask for nothing" if name == ZERO_RESOURCE_SLOT else name
        what = f"{fraction:.0%} of the memory" if name == "memory" else f"{held:g} of {self._totals[name]:g} {label}"
        return f"queue {queue}: {what} (its dominant resource), {weight}"

    def dominant(self, queue: str) -> tuple[str, float]:
        """The resource the queue holds the largest fraction of, and that fraction."""
        best, fraction = "", 0.0
        for name, amount in self._used.get(queue, {}).items():
            total = self._totals.get(name)
            if total and amount / total > fraction:
                best, fraction = name, amount / total
        return best, fraction


def in_fair_order(items: Iterable[Item], queue_of: Callable[[Item], str], shares: FairShares,
                  age_of: Callable[[Item], Key], tier_of: Callable[[str, Item], int] | None = None) -> Iterator[Item]:
    """`items` (one priority's, oldest first) served queue by queue: each next item is the oldest
    of the queue with the smallest share, ties to the queue whose oldest waited longest; with
    `tier_of` (a queue's next item's standing against its quota), the lowest tier first. Lazy:
    the caller places each item before asking for the next, and `shares.add`s what it placed,
    so the next pick reads the share that placement left.

    >>> shares = FairShares({"a": {"CPU": 2.0}}, {"CPU": 4.0}, {})
    >>> items = [("a", 1), ("a", 2), ("b", 3), ("b", 4)]
    >>> order = in_fair_order(items, lambda item: item[0], shares, lambda item: item[1])
    >>> first = next(order); shares.add(first[0], {"CPU": 1.0}); first  # b holds nothing
    ('b', 3)
    >>> second = next(order); shares.add(second[0], {"CPU": 1.0}); second  # 1 of 4 against a's 2
    ('b', 4)
    >>> list(order)  # b has no more: a's, in age order
    [('a', 1), ('a', 2)]
    """
    by_queue: dict[str, deque[Item]] = {}
    for item in items:
        by_queue.setdefault(queue_of(item), deque()).append(item)
    def entry(queue: str, head: Item) -> tuple[int, float, Key, str]:
        tier = tier_of(queue, head) if tier_of is not None else 0
        return tier, shares.share(queue), age_of(head), queue

    heap = [entry(queue, waiting[0]) for queue, waiting in by_queue.items()]
    heapq.heapify(heap)
    while heap:
        queue = heapq.heappop(heap)[-1]
        waiting = by_queue[queue]
        yield waiting.popleft()
        if waiting:
            heapq.heappush(heap, entry(queue, waiting[0]))

