"""When will a queued job run, and why not yet: a replay, on a simulated clock, of what runs now
and what waits ahead of the job, from the run times the Scheduler learned.

Slurm's `squeue --start` predicts from limits users give; grid-serve has measured run times
instead (per node and task type, and per job). The replay takes the queue as the Scheduler
holds it (priority, then age) and starts each task, in that order, on the node where it can
start soonest beside what runs there, each running task ending at its learned run time less
its age. On each node a start is never earlier than the start before it there (the queue is
served in order, and a task that cannot start on one node does not hold back another node), so
what runs on a node at a moment is what started there and has not ended.

What it leaves out, so an estimate is a forecast, not a promise: strategy rules beyond the
node a task names (spread turns, labels, affinity), the lookahead queued inside Ray, work
submitted later at a higher priority, the order fair share and quotas serve queues in (a job
whose queue is at its quota plus borrowing limit gets no estimate, and the note says why), and
run times that change. Where a run time is not
learned (a task type never run on a node, a job none of whose tasks has ended) the estimate is
unknown and says which; it is never made up.

Pure: when a job is read, the Scheduler copies what the replay needs from its books
(`SchedulerBooks.pending_inputs`) and replays it off its lock (`PendingInputs.forecast`).
`when_fits` is the one rule both this replay and the starvation hold's expected start use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from .models import JobPending, SchedulingRequest, SchedulingStrategy
from .placement.framework import needs_of
from .view import NodeView, Running

REPLAY_LIMIT = 5_000  # queued tasks replayed at most (a read's cost stays in milliseconds): past it, "unknown"
EPS = 1e-9
QUOTA_LIMIT_NOTE = ("not replayed: its queue is at its quota plus borrowing limit, so it starts as its own "
                    "queue's tasks end, which the replay does not model")

RunTime = Callable[[SchedulingRequest, str], "float | None"]  # (task, node id) -> learned seconds


@dataclass(frozen=True)
class Forecast:
    """`start_s`, `end_s`: seconds from now until the job's next queued task starts and its last
    task ends (None: unknown, `unknown` says why)."""

    start_s: float | None
    end_s: float | None
    unknown: str | None = None


@dataclass(frozen=True)
class PendingInputs:
    """What a job's forecast reads, copied from the Scheduler's books (`SchedulerBooks.pending_inputs`)."""

    group: str
    queue: Sequence[SchedulingRequest]  # the first of the queue, in its order
    waiting: int  # the group's tasks queued, all of them
    held_back: int
    reason: str | None
    nodes: Sequence[NodeView]
    running: Mapping[str, Sequence[Running]]
    durations: Mapping[tuple[str, str], float]
    group_run_s: Mapping[str, float]
    fair_share: str | None = None  # where its queue stands, when queues share its priority (`SchedulerBooks`)
    at_quota_limit: bool = False  # its queue is at its quota plus borrowing limit (`grid_serve.queues`)

    def forecast(self) -> JobPending:
        """The job's `pending`: its place in the queue, what is ahead, why, and the replay."""
        own = [index for index, request in enumerate(self.queue) if request.group == self.group]
        ahead: dict[str, int] = {}
        for request in self.queue[:own[0] if own else len(self.queue)]:
            ahead[str(request.priority)] = ahead.get(str(request.priority), 0) + 1
        if not own:  # its tasks wait behind more than the replay reads
            return JobPending(position=len(self.queue), ahead=ahead, waiting=self.waiting, held_back=self.held_back,
                              reason=self.reason, note=f"more than {len(self.queue)} tasks wait ahead: not replayed",
                              fair_share=self.fair_share)
        if self.at_quota_limit:  # the replay frees slots for whoever is next, not only for its own queue
            return JobPending(position=own[0], ahead=ahead, waiting=self.waiting, held_back=self.held_back,
                              reason=self.reason, note=QUOTA_LIMIT_NOTE, fair_share=self.fair_share)
        extra = self.held_back + self.waiting - len(own)  # its tasks past the prefix read, and those held back

        def run_s_of(request: SchedulingRequest, node_id: str) -> float | None:
            learned = self.group_run_s.get(request.group)
            return learned if learned is not None else self.durations.get((node_id, request.task_type))

        result = replay(self.nodes, self.running, self.durations, self.queue[:own[-1] + 1], self.group, run_s_of,
                        extra=extra)
        return JobPending(position=own[0], ahead=ahead, waiting=self.waiting, held_back=self.held_back,
                          reason=self.reason, note=result.unknown, expected_start_s=_rounded(result.start_s),
                          expected_end_s=_rounded(result.end_s), fair_share=self.fair_share)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def when_fits(needs: Mapping[str, float], total: Mapping[str, float],
              busy: Iterable[tuple[float, Mapping[str, float]]], floor: float = 0.0) -> float | None:
    """The first moment at `floor` or later when `needs` fits in `total` beside what is `busy`
    ((ends at, what it holds), each started by `floor`); None when it never does (larger than
    `total`, or only once a task ends whose end is not known: `math.inf`).

    >>> when_fits({"CPU": 2.0}, {"CPU": 2.0}, [(1.5, {"CPU": 1.0}), (0.5, {"CPU": 1.0})])  # both must end
    1.5
    """
    if any(amount > total.get(name, 0.0) + EPS for name, amount in needs.items()):
        return None
    still = sorted((item for item in busy if item[0] > floor), key=lambda item: item[0])
    in_use: dict[str, float] = {}
    for _, holds in still:
        for name, amount in holds.items():
            in_use[name] = in_use.get(name, 0.0) + amount

    def fits() -> bool:
        return all(amount <= total.get(name, 0.0) - in_use.get(name, 0.0) + EPS for name, amount in needs.items())

    if fits():
        return floor
    for ends, holds in still:
        if math.isinf(ends):
            return None
        for name, amount in holds.items():
            in_use[name] -= amount
        if fits():
            return ends
    return None


@dataclass
class _Node:
    view: NodeView
    busy: list[tuple[float, Mapping[str, float]]]  # (ends at, what it holds), started at or before `floor`
    floor: float = 0.0  # the latest start here: the queue is served in order on each node

    def earliest_start(self, needs: Mapping[str, float]) -> float | None:
        """When `needs` fits here, at `floor` or later (None: never: larger than the node, or
        it waits for a task whose end is not known)."""
        return when_fits(needs, self.view.total, self.busy, self.floor)

    def start(self, at: float, run_s: float, needs: Mapping[str, float]) -> None:
        self.floor = at
        self.busy = [item for item in self.busy if item[0] > at]  # later starts here never see what ended
        self.busy.append((at + run_s, needs))


def replay(nodes: Iterable[NodeView], running: Mapping[str, Sequence[Running]],
           durations: Mapping[tuple[str, str], float], queue: Sequence[SchedulingRequest], group: str,
           run_s_of: RunTime, extra: int = 0, limit: int = REPLAY_LIMIT) -> Forecast:
    """Replay what runs (`running`, per node id) and `queue` (in the Scheduler's order) until
    every task of `group` has run; `extra` more of its tasks follow its queued ones (the part
    of a job its runner has not handed over yet). A running task with no learned run time is
    taken as never ending, and work ahead with none is left out: either way `unknown` says so.

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
    notes: list[str] = []
    for node_id, node in sim.items():  # in the nodes' order, so what is not learned is named alike each time
        for task in running.get(node_id, ()):
            run_s = durations.get((node_id, task.task_type))
            if run_s is None and not notes:
                notes.append(f"no run time learned yet for task type {task.task_type!r} running on {node.view.name}")
            node.busy.append((math.inf if run_s is None else max(0.0, run_s - task.age_s), dict(task.resources)))
    if len(queue) > limit:
        return Forecast(None, None, f"more than {limit} tasks wait ahead: too many to replay")
    last_own = _last_of(queue, group)
    held_back = min(extra, limit - len(queue)) if last_own is not None else 0
    first, last, left_out = None, None, 0
    for request in [*queue, *([last_own] * held_back if last_own is not None else [])]:
        placed = _start_soonest(sim, request, run_s_of)
        if isinstance(placed, str):
            if request.group == group:
                return Forecast(first, None, "; ".join(notes) if notes else placed)  # a task never ending: that first
            left_out += 1  # work ahead that cannot be forecast: left out, said below
            continue
        at, ends = placed
        if request.group == group:
            first = at if first is None else min(first, at)
            last = ends if last is None else max(last, ends)
    if left_out:
        notes.append(f"{left_out} task(s) ahead left out (no run time learned, or no node may take them)")
    if held_back < extra:
        notes.append(f"{extra - held_back} of its held-back tasks are past the {limit} replayed: its end is unknown")
        last = None
    return Forecast(first, last, "; ".join(notes) or None)


def _last_of(queue: Sequence[SchedulingRequest], group: str) -> SchedulingRequest | None:
    return next((request for request in reversed(queue) if request.group == group), None)


def _start_soonest(sim: Mapping[str, _Node], request: SchedulingRequest,
                   run_s_of: RunTime) -> tuple[float, float] | str:
    """Start `request` where it can start soonest (ties: the order of nodes); (start, end), or
    why it cannot be forecast."""
    needs = needs_of(request)
    best: tuple[float, str, float] | None = None
    unlearned = []
    for node_id, node in _candidates(sim, request):
        at = node.earliest_start(needs)
        if at is None:
            continue
        run_s = run_s_of(request, node_id)
        if run_s is None:
            unlearned.append(node.view.name)
            continue
        if best is None or at < best[0] - EPS:
            best = (at, node_id, run_s)
    if best is None:
        if unlearned:
            return f"no run time learned yet for {request.task_type!r} on {', '.join(unlearned[:3])}"
        return "no node it may run on frees in a time known (or it places no work there now)"
    at, node_id, run_s = best
    sim[node_id].start(at, run_s, needs)
    return at, at + run_s


def _candidates(sim: Mapping[str, _Node], request: SchedulingRequest) -> list[tuple[str, _Node]]:
    if request.strategy is SchedulingStrategy.NODE_SPECIFIC and request.target_node:
        return [(node_id, node) for node_id, node in sim.items() if node.view.answers_to(request.target_node)]
    return list(sim.items())
