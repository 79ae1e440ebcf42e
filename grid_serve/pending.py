"""When will a queued job run, and why not yet: a replay, on a simulated clock, of what runs now
and what waits ahead of the job, from the run times the Scheduler learned.

Slurm's `squeue --start` predicts from limits users give; grid-serve has measured run times
instead (per node and task type, and per job). The replay takes the queue as the Scheduler
holds it (priority, then age) and starts each task, in that order, on the node where it can
start soonest beside what runs there, each running task ending at its learned run time less
its age. A start is never earlier than the start before it (the queue is served in order),
so what runs on a node at a moment is what started there and has not ended.

What it leaves out, so an estimate is a forecast, not a promise: strategy rules beyond the
node a task names (spread turns, labels, affinity), the lookahead queued inside Ray, work
submitted later at a higher priority, and run times that change. Where a run time is not
learned (a task type never run on a node, a job none of whose tasks has ended) the estimate is
unknown and says which; it is never made up.

Pure: the Scheduler's books call `replay` with their queue and ledger when a job is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from .models import SchedulingRequest, SchedulingStrategy
from .placement.framework import needs_of
from .view import NodeView, Running

REPLAY_LIMIT = 20_000  # tasks replayed at most (running ones included): past it, "unknown"
EPS = 1e-9

RunTime = Callable[[SchedulingRequest, str], "float | None"]  # (task, node id) -> learned seconds


@dataclass(frozen=True)
class Forecast:
    """`start_s`, `end_s`: seconds from now until the job's next queued task starts and its last
    task ends (None: unknown, `unknown` says why)."""

    start_s: float | None
    end_s: float | None
    unknown: str | None = None


@dataclass
class _Node:
    view: NodeView
    busy: list[tuple[float, Mapping[str, float]]]  # (ends at, what it holds), started at or before `now`

    def earliest_start(self, needs: Mapping[str, float], now: float) -> float | None:
        """When `needs` fits here, at `now` or later (None: never, it is larger than the node)."""
        if any(amount > self.view.total.get(name, 0.0) + EPS for name, amount in needs.items()):
            return None
        in_use: dict[str, float] = {}
        for ends, holds in self.busy:
            if ends > now:
                for name, amount in holds.items():
                    in_use[name] = in_use.get(name, 0.0) + amount

        def fits() -> bool:
            return all(amount <= self.view.total.get(name, 0.0) - in_use.get(name, 0.0) + EPS
                       for name, amount in needs.items())

        if fits():
            return now
        for ends, holds in sorted((item for item in self.busy if item[0] > now), key=lambda item: item[0]):
            for name, amount in holds.items():
                in_use[name] -= amount
            if fits():
                return ends
        return None  # unreachable: everything here ends, and the task fits the node's total

    def start(self, at: float, run_s: float, needs: Mapping[str, float]) -> None:
        self.busy = [item for item in self.busy if item[0] > at]  # later starts never see what ended
        self.busy.append((at + run_s, needs))


def replay(nodes: Iterable[NodeView], running: Mapping[str, Sequence[Running]],
           durations: Mapping[tuple[str, str], float], queue: Sequence[SchedulingRequest], group: str,
           run_s_of: RunTime, extra: int = 0, limit: int = REPLAY_LIMIT) -> Forecast:
    """Replay what runs (`running`, per node id) and `queue` (in the Scheduler's order) until
    every task of `group` has run; `extra` more of its tasks follow its queued ones (the part
    of a job its runner has not handed over yet).

    >>> from grid_serve.view import make_node
    >>> a = make_node("a", cpus=1)
    >>> busy = {a.node_id: [Running("t", {"CPU": 1.0}, age_s=1.0)]}
    >>> mine = [SchedulingRequest(task_id=f"j-{i}", job_id="j", task_type="t") for i in range(2)]
    >>> replay([a], busy, {(a.node_id, "t"): 3.0}, mine, "j", lambda r, n: 3.0)  # 2 s left, then 3 + 3
    Forecast(start_s=2.0, end_s=8.0, unknown=None)
    >>> replay([a], busy, {}, mine, "j", lambda r, n: 3.0).unknown
    "no run time learned yet for task type 't' running on a"
    """
    sim = {node.node_id: _Node(node, []) for node in nodes if node.alive and not node.stale}
    count = sum(len(on_node) for on_node in running.values())  # on nodes left out too: they free nothing that counts
    for node_id, node in sim.items():  # in the nodes' order, so what is not learned is named alike each time
        for task in running.get(node_id, ()):
            run_s = durations.get((node_id, task.task_type))
            if run_s is None:
                return Forecast(None, None, f"no run time learned yet for task type {task.task_type!r} "
                                            f"running on {node.view.name}")
            node.busy.append((max(0.0, run_s - task.age_s), dict(task.resources)))
    last_own = _last_of(queue, group)
    tasks = [*queue, *([last_own] * extra if last_own is not None else [])]
    if count + len(tasks) > limit:
        return Forecast(None, None, f"more than {limit} tasks run or wait ahead: too many to replay")
    now, first, last = 0.0, None, None
    for request in tasks:
        placed = _start_soonest(sim, request, now, run_s_of)
        if isinstance(placed, str):
            if request.group == group:
                return Forecast(first, None, placed)
            continue  # work ahead that cannot be forecast: left out, the job's own estimate is kept
        now, ends = placed
        if request.group == group:
            first = now if first is None else first
            last = ends if last is None else max(last, ends)
    return Forecast(first, last)


def _last_of(queue: Sequence[SchedulingRequest], group: str) -> SchedulingRequest | None:
    return next((request for request in reversed(queue) if request.group == group), None)


def _start_soonest(sim: Mapping[str, _Node], request: SchedulingRequest, now: float,
                   run_s_of: RunTime) -> tuple[float, float] | str:
    """Start `request` where it can start soonest (ties: the node that frees soonest after,
    then the order of nodes); (start, end), or why it cannot be forecast."""
    needs = needs_of(request)
    best: tuple[float, str] | None = None
    unlearned = []
    for node_id, node in _candidates(sim, request):
        at = node.earliest_start(needs, now)
        if at is None:
            continue
        if run_s_of(request, node_id) is None:
            unlearned.append(node.view.name)
            continue
        if best is None or at < best[0] - EPS:
            best = (at, node_id)
    if best is None:
        if unlearned:
            return f"no run time learned yet for {request.task_type!r} on {', '.join(unlearned[:3])}"
        return "no node it may run on is placing work now"
    at, node_id = best
    run_s = run_s_of(request, node_id)
    assert run_s is not None
    sim[node_id].start(at, run_s, needs)
    return at, at + run_s


def _candidates(sim: Mapping[str, _Node], request: SchedulingRequest) -> list[tuple[str, _Node]]:
    if request.strategy is SchedulingStrategy.NODE_SPECIFIC and request.target_node:
        return [(node_id, node) for node_id, node in sim.items() if node.view.answers_to(request.target_node)]
    return list(sim.items())
