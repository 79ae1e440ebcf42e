"""Taking back work handed to Ray that has not started, when higher-priority work waits for its node.

The lookahead (`grid_serve.lookahead`) hands Ray work beyond a node's free capacity, so a slot
that frees starts its next task at once instead of after a round trip. Until it starts, such a
task is not committed: when a task of a higher priority waits because the node is busy, the
node's queued lower-priority tasks are taken back rather than let the higher task wait behind
them (issue 22: behind five queued 0.3 s tasks per slot, a high task waited longer than with no
priorities at all). The Scheduler asks each task's owner (`Placements.take_back`); the owner
cancels it in Ray, which drops a task that has not started and leaves one that has running
(`grid_serve.tasks` guards it), and hands back only what Ray dropped (`Report.returned`, with
the task queued again in `requeue`), which the Scheduler queues with its first age.

What is taken back on a node: no more than what the node has reserved beyond its total (what
cannot be running there), of priorities below the one waiting, the lowest priority first and,
within one, the youngest first (Ray starts a node's queued tasks roughly in the order they came,
so the youngest are the least likely to have started). Pure: `SchedulerBooks` asks it.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Protocol, TypeVar

EPSILON = 1e-9


class Queued(Protocol):
    """What the choice reads of a reservation (`grid_serve.ledger.Reservation` is one)."""

    @property
    def rank(self) -> int: ...

    @property
    def made_at(self) -> float: ...

    @property
    def resources(self) -> Mapping[str, float]: ...


class Lent(Queued, Protocol):
    """What reclaiming reads besides: the reservation's queue."""

    @property
    def queue(self) -> str: ...


Q = TypeVar("Q", bound=Queued)
L = TypeVar("L", bound=Lent)


def beyond_total(total: Mapping[str, float], reserved: Mapping[str, float],
                 leaving: Iterable[Queued] = ()) -> dict[str, float]:
    """What the node has reserved beyond its total, per resource, once the reservations already
    `leaving` (asked back, not yet handed back) are gone.

    >>> beyond_total({"CPU": 4.0}, {"CPU": 6.0, "memory": 1.0})
    {'CPU': 2.0}
    """
    over = {name: reserved.get(name, 0.0) - amount for name, amount in total.items()}
    for reservation in leaving:
        for name, amount in reservation.resources.items():
            if name in over:
                over[name] -= amount
    return {name: amount for name, amount in over.items() if amount > EPSILON}


def to_take_back(waiting_rank: int, over: Mapping[str, float], candidates: Iterable[Q]) -> list[Q]:
    """Of `candidates` (a node's reservations its owners can take back, in the order they were
    placed), those to take back for
    a task of priority `waiting_rank` waiting there: below that priority, lowest first, youngest
    first within one, until `over` (`beyond_total`) is covered. A reservation that uses none
    of what is over stays (it can be running).

    >>> from types import SimpleNamespace as R
    >>> low_old, low_new, normal = R(rank=0, made_at=1.0, resources={"CPU": 1.0}), \\
    ...     R(rank=0, made_at=2.0, resources={"CPU": 1.0}), R(rank=1, made_at=3.0, resources={"CPU": 1.0})
    >>> to_take_back(2, {"CPU": 2.0}, [low_old, normal, low_new]) == [low_new, low_old]
    True
    >>> to_take_back(1, {"CPU": 2.0}, [low_old, normal, low_new]) == [low_new, low_old]  # not its own priority
    True
    >>> to_take_back(2, {}, [low_old])
    []
    """
    left = dict(over)
    chosen = []
    lower = [c for c in candidates if c.rank < waiting_rank]
    lower.reverse()  # candidates come in the order they were placed: of two made at once, the later first
    for reservation in sorted(lower, key=lambda c: (c.rank, -c.made_at)):
        if not left:
            break
        if not any(reservation.resources.get(name, 0.0) > EPSILON for name in left):
            continue
        chosen.append(reservation)
        for name, amount in reservation.resources.items():
            if name in left:
                left[name] -= amount
                if left[name] <= EPSILON:
                    del left[name]
    return chosen


def to_reclaim(waiting_rank: int, owed: Mapping[str, float], lent: Mapping[str, Mapping[str, float]],
               candidates: Iterable[L]) -> list[L]:
    """Of `candidates` (other queues' reservations their owners can stop and place again, on
    nodes that could run the waiting task, in the order they were placed), those to stop so
    that a queue reclaiming its quota (`reclaim: cancel_running`, `grid_serve.queues`) gets what
    it is `owed`: of priorities up to the waiting task's, only of queues holding more than their
    quota (`lent`), never taking one below it, the youngest first (the least work lost), until
    `owed` is covered. A task that uses none of what is owed stays.

    >>> from types import SimpleNamespace as R
    >>> old = R(rank=1, made_at=1.0, resources={"CPU": 1.0}, queue="a")
    >>> new = R(rank=1, made_at=2.0, resources={"CPU": 1.0}, queue="a")
    >>> other = R(rank=1, made_at=3.0, resources={"CPU": 1.0}, queue="c")
    >>> to_reclaim(1, {"CPU": 1.0}, {"a": {"CPU": 2.0}}, [old, new, other]) == [new]  # c lent nothing
    True
    >>> to_reclaim(1, {"CPU": 3.0}, {"a": {"CPU": 1.0}}, [old, new]) == [new]  # a keeps its quota
    True
    >>> to_reclaim(0, {"CPU": 1.0}, {"a": {"CPU": 2.0}}, [old, new])  # higher work than the waiting task's
    []
    """
    left = dict(owed)
    beyond = {queue: dict(amounts) for queue, amounts in lent.items()}
    chosen = []
    ordered = list(candidates)
    ordered.reverse()  # candidates come in the order they were placed: of two made at once, the later first
    for reservation in sorted(ordered, key=lambda c: (c.rank, -c.made_at)):
        if not left:
            break
        uses = {name: amount for name, amount in reservation.resources.items() if name in left and amount > EPSILON}
        spare = beyond.get(reservation.queue, {})
        if (reservation.rank > waiting_rank or not uses
                or any(spare.get(name, 0.0) < amount - EPSILON for name, amount in uses.items())):
            continue
        chosen.append(reservation)
        for name, amount in uses.items():
            spare[name] -= amount
            left[name] -= amount
            if left[name] <= EPSILON:
                del left[name]
    return chosen
