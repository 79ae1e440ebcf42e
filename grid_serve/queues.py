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
weighs 1. Pure: no Ray.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Callable, Hashable, Iterable, Iterator, Mapping, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from .models import ZERO_RESOURCE_SLOT

DEFAULT_QUEUE = "default"  # a submission from inside the cluster that names none
ANONYMOUS_QUEUE = "anonymous"  # every HTTP caller without a token

Item = TypeVar("Item")
Key = TypeVar("Key", bound=Hashable)


class QueueSettings(BaseModel):
    """One queue's settings in serve_config (`args: queues: <name>:`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    weight: float = Field(1.0, gt=0, le=1000, description="its share of the cluster against the other queues' "
                                                          "weights, at one priority (3 against 1: 75% to 25%)")


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
                 weights: Mapping[str, float]) -> None:
        self._used = {queue: dict(held) for queue, held in usage.items()}
        self._totals = totals
        self._weights = weights
        self._shares: dict[str, float] = {}

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
                  age_of: Callable[[Item], Key]) -> Iterator[Item]:
    """`items` (one priority's, oldest first) served queue by queue: each next item is the oldest
    of the queue with the smallest share, ties to the queue whose oldest waited longest. Lazy:
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
    heap = [(shares.share(queue), age_of(waiting[0]), queue) for queue, waiting in by_queue.items()]
    heapq.heapify(heap)
    while heap:
        _, _, queue = heapq.heappop(heap)
        waiting = by_queue[queue]
        yield waiting.popleft()
        if waiting:
            heapq.heappush(heap, (shares.share(queue), age_of(waiting[0]), queue))

