"""No starvation: a large task is not passed forever by smaller lower-priority ones.

Pure, on a simulated clock: a 2-CPU node and a 1-CPU node, kept full by 1-CPU low-priority
tasks that arrive faster than they finish and end one at a time, so a CPU frees every half
second but never two at once. A 2-CPU critical task then fits nowhere; without a hold the
lows take every freed CPU forever. With `starve_after_s`, once it has waited that long the
2-CPU node is held for it, and it starts when the lows already running there end.
"""

from __future__ import annotations

import math

import pytest

from grid_serve.models import ResourceRequirement, SchedulingRequest
from grid_serve.scheduling import SchedulerCore
from grid_serve.view import ClusterView, Running, make_node

TICK_S = 0.5
CAPACITY = {"id-big": 2.0, "id-small": 1.0}


def low(i: int, kind: str = "task") -> SchedulingRequest:
    name = "low" if kind == "task" else kind
    return SchedulingRequest(task_id=f"{name}-{i}", job_id=f"{name}-{i}", task_type=kind, priority="low",
                             strategy="load_balanced")


def critical() -> SchedulingRequest:
    return SchedulingRequest(task_id="critical", priority="critical", strategy="load_balanced",
                             requirements=ResourceRequirement(cpu_count=2))


def start_of_critical(starve_after_s: float | None, low_run_s: float, horizon_s: float = 30.0) -> float | None:
    """When the critical task is placed (simulated seconds), or None if not within `horizon_s`."""
    now = [0.0]
    core = SchedulerCore(clock=lambda: now[0], starve_after_s=starve_after_s)
    # (ends at, node id, CPUs): full at the start, the big node's two lows staggered by a tick
    running = [(TICK_S, "id-big", 1.0), (2 * TICK_S, "id-big", 1.0), (TICK_S, "id-small", 1.0)]
    core.enqueue([critical()])
    arrived = 0
    while now[0] <= horizon_s:
        running = [task for task in running if task[0] > now[0] + 1e-9]
        core.enqueue([low(arrived), low(arrived + 1)])  # 4 a second; the cluster finishes at most 3/low_run_s
        arrived += 2
        nodes = [make_node(node_id[3:], cpus=int(cpus), reserved={"CPU": sum(c for _, n, c in running if n == node_id)},
                           in_flight=sum(1 for _, n, _ in running if n == node_id))
                 for node_id, cpus in CAPACITY.items()]
        for decision in core.drain(ClusterView.of(nodes, admission=1.0)).placed:
            if decision.task_id == "critical":
                return now[0]
            running.append((now[0] + low_run_s, decision.node_id, 1.0))
        now[0] += TICK_S
    return None


@pytest.mark.parametrize("starve_after_s, low_run_s, starts_at", [
    (None, 1.0, None),  # no hold: passed by the lows for the whole 30 s
    (2.0, 1.0, 2.5),    # held at 2.0 as one CPU frees there; the other low ends at 2.5
    (2.0, 2.5, 3.5),    # longer lows: the one still running at 2.0 ends at 3.5
    (5.0, 1.0, 5.5),
    (0.0, 1.0, 1.0),    # held at once: it starts when the lows it found there end
    (2.0, 0.5, 1.0),    # lows that end together free both CPUs at once: no hold needed
])
def test_a_large_critical_task_starts_within_the_bound(starve_after_s: float | None, low_run_s: float,
                                                       starts_at: float | None) -> None:
    start = start_of_critical(starve_after_s, low_run_s)
    assert start == starts_at
    if starve_after_s is not None:
        assert start <= starve_after_s + low_run_s  # the bound: the wait, then the longest run already there


# ---------------------------------------------------------------- backfill on a held node


def backfill_while_held(filler_run_s: float, learned: bool = True, horizon_s: float = 10.0) -> tuple[float | None, list[float]]:
    """The critical task is held on the big node at once (`starve_after_s` 0): one CPU there
    runs a low task until 3.0 s, the other is free; the small node stays full. One low
    "filler" task arrives a tick, running `filler_run_s`. Returns when the critical task
    starts and when fillers started on the big node before it (backfill).

    `learned`: the view knows the run times and what runs where, as the Scheduler's ledger
    tells it; without them nobody knows when the big node frees, and the hold stays strict."""
    now = [0.0]
    core = SchedulerCore(clock=lambda: now[0], starve_after_s=0.0)
    run_s = {"task": 3.0, "filler": filler_run_s}
    running = [(3.0, "id-big", "task", 0.0), (math.inf, "id-small", "task", 0.0)]  # (ends at, node id, type, started at)
    durations = {(node_id, kind): seconds for node_id in CAPACITY for kind, seconds in run_s.items()} if learned else {}
    core.enqueue([critical()])
    backfilled: list[float] = []
    for tick in range(int(horizon_s / TICK_S)):
        running = [task for task in running if task[0] > now[0] + 1e-9]
        core.enqueue([low(tick, "filler")])
        nodes = [make_node(node_id[3:], cpus=int(cpus), reserved={"CPU": sum(1.0 for task in running if task[1] == node_id)},
                           in_flight=sum(1 for task in running if task[1] == node_id))
                 for node_id, cpus in CAPACITY.items()]
        on = lambda node_id: [Running(task[2], {"CPU": 1.0}, now[0] - task[3])  # noqa: E731
                              for task in running if task[1] == node_id] if learned else []  # noqa: B023
        for decision in core.drain(ClusterView.of(nodes, admission=1.0, durations=durations, running=on)).placed:
            if decision.task_id == "critical":
                return now[0], backfilled
            assert decision.node_name == "big" and "backfilled" in decision.reasons[0]  # the small node stays full
            backfilled.append(now[0])
            running.append((now[0] + filler_run_s, decision.node_id, "filler", now[0]))
        now[0] += TICK_S
    return None, backfilled


@pytest.mark.parametrize("filler_run_s, learned, backfilled", [
    (0.5, True, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]),  # each ends before 3.0 (the last just as the critical starts)
    (1.0, True, [0.0, 1.0, 2.0]),  # the free CPU is busy at 0.5, 1.5 and 2.5
    (2.0, True, [0.0]),  # one started at 2.0 would end at 4.0: after the critical task's start
    (4.0, True, []),  # longer than the wait: nothing backfills
    (0.5, False, []),  # run times unknown: strict
])
def test_only_work_expected_to_end_before_the_held_task_starts_backfills(filler_run_s: float, learned: bool,
                                                                         backfilled: list[float]) -> None:
    start, started = backfill_while_held(filler_run_s, learned)
    assert started == backfilled
    assert start == 3.0  # the critical task starts when the low it found there ends, backfill or not


def test_the_hold_leaves_the_node_it_cannot_use_to_the_lows() -> None:
    """The 1-CPU node can never take the critical task: lows keep running there while it waits."""
    now = [10.0]
    core = SchedulerCore(clock=lambda: now[0], starve_after_s=0.0)
    core.enqueue([critical(), low(0), low(1)])
    view = ClusterView.of([make_node("big", cpus=2, reserved={"CPU": 1.0}, in_flight=1), make_node("small", cpus=1)],
                          admission=1.0)
    result = core.drain(view)
    assert [(d.task_id, d.node_name) for d in result.placed] == [("low-0", "small")]
    assert result.view.nodes["id-big"].reserved == {"CPU": 1.0}  # the hold lasts the drain, never leaks out
    assert len(core) == 2


# ---------------------------------------------------------------- spread's turn wait is bounded


def spread_with_a_stuck_node(run_s: float, horizon_s: float = 20.0) -> tuple[dict[str, int], dict[str, int]]:
    """A 30-task spread job on three 1-CPU nodes whose tasks take `run_s`, except that node c's
    first task never ends. Returns (tasks placed per node, turns given up per node, summed over
    the drains as the job's counts sum them)."""
    now = [0.0]
    core = SchedulerCore(clock=lambda: now[0])
    core.enqueue([SchedulingRequest(task_id=f"job-{i}", job_id="job") for i in range(30)])
    running: list[tuple[float, str]] = []  # (ends at, node id)
    placed = {"a": 0, "b": 0, "c": 0}
    given_up: dict[str, int] = {}
    while now[0] <= horizon_s:
        running = [task for task in running if task[0] > now[0] + 1e-9]
        nodes = [make_node(name, cpus=1, reserved={"CPU": sum(1.0 for _, n in running if n == f"id-{name}")},
                           in_flight=sum(1 for _, n in running if n == f"id-{name}")) for name in placed]
        durations = {(f"id-{name}", "task"): run_s for name in placed}
        result = core.drain(ClusterView.of(nodes, admission=1.0, durations=durations))
        for name, turns in result.turns_given_up.get("job", {}).items():
            given_up[name] = given_up.get(name, 0) + turns
        for decision in result.placed:
            placed[decision.node_name] += 1
            stuck = decision.node_name == "c"
            running.append((math.inf if stuck else now[0] + run_s, decision.node_id))
        now[0] += TICK_S
    return placed, given_up


@pytest.mark.parametrize("run_s, placed, given_up", [
    # patience is 3 runs, at least 5 s. 1 s tasks: a and b take a round at 0 and 1 s; from 2 s
    # the turn is c's, which it gives up at 7, 13 and 19 s, a round for a and b each time
    (1.0, {"a": 5, "b": 5, "c": 1}, {"c": 3}),
    # 2 s tasks, 6 s of patience: rounds at 0, 2, then c gives up at 10 and 18 s
    (2.0, {"a": 4, "b": 4, "c": 1}, {"c": 2}),
    # 10 s tasks, 30 s of patience, past the 20 s simulated: c keeps its turn and the job waits
    (10.0, {"a": 2, "b": 2, "c": 1}, {}),
])
def test_a_stuck_node_gives_up_its_spread_turn(run_s: float, placed: dict[str, int], given_up: dict[str, int]) -> None:
    assert spread_with_a_stuck_node(run_s) == (placed, given_up)
