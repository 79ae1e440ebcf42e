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
    """What reclaiming reads besides: the reservation's queue and node."""

    @property
    def queue(self) -> str: ...

    @property
    def node_id(self) -> str: ...


Q = TypeVar("Q", bound=Queued)
L = TypeVar("L", bound=Lent)


def shift(into: dict[str, float], resources: Mapping[str, float], sign: float) -> None:
    """Add `resources` (`sign` 1) to the amounts `into`, or take them away (-1).

    >>> room = {"CPU": 1.0}; shift(room, {"CPU": 2.0, "GPU": 1.0}, -1); room
    {'CPU': -1.0, 'GPU': -1.0}
    """
    for name, amount in resources.items():
        into[name] = into.get(name, 0.0) + sign * amount


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


def to_reclaim(waiting_rank: int, needs: Mapping[str, float], tasks: int, free: Mapping[str, dict[str, float]],
               lent: Mapping[str, dict[str, float]], candidates: Iterable[L]) -> list[L]:
    """Of `candidates` (other queues' running reservations their owners can stop and place
    again, in the order they were placed), those to stop so that `tasks` tasks needing `needs`
    of a queue reclaiming its quota (`reclaim: cancel_running`, `grid_serve.queues`) can start:
    task by task, on the node where the fewest stops make room (`free`: what is free on each
    node the task may run on, negative where work is queued inside Ray beyond its total), of
    priorities up to the waiting task's, only of queues holding more than their quota (`lent`),
    never taking one below it in any resource, the youngest first (the least work lost). Stops
    that would not make room on one node are not made. `free` and `lent` are updated in place
    (the stops' room made, and taken by the owed tasks; what the stopped tasks' queues no longer
    lend), so a second owed queue reads what the first left.

    >>> from types import SimpleNamespace as R
    >>> old = R(rank=1, made_at=1.0, resources={"CPU": 1.0}, queue="a", node_id="n1")
    >>> new = R(rank=1, made_at=2.0, resources={"CPU": 1.0}, queue="a", node_id="n1")
    >>> other = R(rank=1, made_at=3.0, resources={"CPU": 1.0}, queue="c", node_id="n1")
    >>> full = {"n1": {"CPU": 0.0}}
    >>> to_reclaim(1, {"CPU": 1.0}, 1, full, {"a": {"CPU": 2.0}}, [old, new, other]) == [new]  # c lent nothing
    True
    >>> to_reclaim(1, {"CPU": 1.0}, 3, full, {"a": {"CPU": 1.0}}, [old, new]) == [new]  # a keeps its quota
    True
    >>> elsewhere = R(rank=1, made_at=0.5, resources={"CPU": 1.0}, queue="a", node_id="n2")
    >>> two_cpus, two_nodes = {"CPU": 2.0}, {"n1": {"CPU": 0.0}, "n2": {"CPU": 1.0}}
    >>> to_reclaim(1, two_cpus, 1, two_nodes, {"a": {"CPU": 3.0}}, [old, new, elsewhere]) == [elsewhere]  # one stop
    True
    >>> to_reclaim(1, {"CPU": 3.0}, 1, full, {"a": {"CPU": 2.0}}, [old, new])  # two stops cannot make room for 3
    []
    >>> to_reclaim(0, {"CPU": 1.0}, 1, full, {"a": {"CPU": 2.0}}, [old, new])  # higher work than the waiting task's
    []
    """
    pools: dict[str, list[L]] = {}
    ordered = [c for c in candidates if c.rank <= waiting_rank and c.node_id in free]
    ordered.reverse()  # candidates come in the order they were placed: of two made at once, the later first
    youngest_first = sorted(ordered, key=lambda c: (c.rank, -c.made_at))
    place = {id(reservation): index for index, reservation in enumerate(youngest_first)}
    for reservation in youngest_first:
        pools.setdefault(reservation.node_id, []).append(reservation)
    chosen: list[L] = []
    for _ in range(tasks):
        options = [(stops, node_id) for node_id in free
                   if (stops := _stops_making_room(free[node_id], needs, pools.get(node_id, []), lent)) is not None]
        if not options:
            break  # no node can be made room on
        # the fewest stops (none: room already coming there), then the youngest ones
        stops, node_id = min(options, key=lambda option: (len(option[0]), [place[id(r)] for r in option[0]]))
        for reservation in stops:
            pools[node_id].remove(reservation)
            chosen.append(reservation)
            shift(lent[reservation.queue], reservation.resources, -1)
            shift(free[node_id], reservation.resources, 1)
        shift(free[node_id], needs, -1)  # the owed task takes the room made
    return chosen


def _stops_making_room(room: Mapping[str, float], needs: Mapping[str, float], pool: list[L],
                       beyond: Mapping[str, Mapping[str, float]]) -> list[L] | None:
    """The fewest of `pool` (youngest first) whose stopping leaves `needs` room on their node,
    each of a queue with that much beyond its quota in everything it holds; None: none do."""
    left = {name: amount - room.get(name, 0.0) for name, amount in needs.items() if amount > EPSILON}
    left = {name: amount for name, amount in left.items() if amount > EPSILON}
    spare = {queue: dict(amounts) for queue, amounts in beyond.items()}
    stops = []
    for reservation in pool:
        if not left:
            break
        held = {name: amount for name, amount in reservation.resources.items() if amount > EPSILON}
        mine = spare.get(reservation.queue, {})
        if not any(name in left for name in held) or any(mine.get(name, 0.0) < amount - EPSILON
                                                        for name, amount in held.items()):
            continue
        stops.append(reservation)
        for name, amount in held.items():
            mine[name] -= amount
            if name in left:
                left[name] -= amount
                if left[name] <= EPSILON:
                    del left[name]
    return None if left else stops
