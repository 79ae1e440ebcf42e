"""The decision log behind /v1/decisions and /v1/placements, and the queue per priority
behind /v1/cluster's `queue`: pure, with a fake clock."""

from __future__ import annotations

import pytest

from grid_serve.decision_log import DecisionLog
from grid_serve.models import SchedulingDecision, SchedulingRequest, SchedulingStrategy, TaskPriority
from grid_serve.scheduling import SchedulerCore


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def decision(task_id: str, node: str = "gpu1", reasons: tuple[str, ...] = ("spread: because",)) -> SchedulingDecision:
    return SchedulingDecision(task_id=task_id, node_id=f"id-{node}", node_name=node, node_ip="10.0.0.1",
                              strategy=SchedulingStrategy.SPREAD, score=0.5, reasons=list(reasons))


def test_recent_is_newest_first_with_reasons_and_priority() -> None:
    log = DecisionLog(clock=Clock())
    log.record(decision("j-0", "gpu1"), "j", "compute_task", TaskPriority.NORMAL)
    log.record(decision("j-1", "gpu2", ("spread: gpu2 had 0", "scores: x=1")), "j", "compute_task", TaskPriority.HIGH)
    records = log.recent(10)
    assert [(r.task_id, r.node, r.priority, r.job_id) for r in records] == [
        ("j-1", "gpu2", TaskPriority.HIGH, "j"), ("j-0", "gpu1", TaskPriority.NORMAL, "j")]
    assert records[0].reasons == ["spread: gpu2 had 0", "scores: x=1"]
    assert log.recent(1)[0].task_id == "j-1"


def test_a_jobs_decisions_outlive_the_shared_tail() -> None:
    log = DecisionLog(recent=3, per_job=5, clock=Clock())
    for i in range(4):
        log.record(decision(f"a-{i}"), "a", "t", TaskPriority.NORMAL)
    for i in range(10):
        log.record(decision(f"b-{i}"), "b", "t", TaskPriority.NORMAL)
    assert [r.task_id for r in log.recent(10)] == ["b-9", "b-8", "b-7"]
    assert [r.task_id for r in log.recent(10, job_id="a")] == ["a-3", "a-2", "a-1", "a-0"]
    assert [r.task_id for r in log.recent(10, job_id="b")] == ["b-9", "b-8", "b-7", "b-6", "b-5"]
    assert log.placed_in_job("b") == 10  # the tail keeps 5; the count says how many there were
    assert log.recent(10, job_id="nope") == [] and log.placed_in_job("nope") == 0


def test_the_least_recently_placed_job_is_forgotten_first() -> None:
    log = DecisionLog(jobs=2, clock=Clock())
    log.record(decision("a-0"), "a", "t", TaskPriority.NORMAL)
    log.record(decision("b-0"), "b", "t", TaskPriority.NORMAL)
    log.record(decision("a-1"), "a", "t", TaskPriority.NORMAL)  # a is the more recent now
    log.record(decision("c-0"), "c", "t", TaskPriority.NORMAL)
    assert log.recent(5, job_id="b") == []
    assert [r.task_id for r in log.recent(5, job_id="a")] == ["a-1", "a-0"]


def test_placements_are_counted_per_node_per_bucket_with_zeros_between() -> None:
    clock = Clock(1000.0)
    log = DecisionLog(bucket_s=10, history_s=60, clock=clock)
    log.record(decision("x-0", "gpu1"), "x", "t", TaskPriority.NORMAL)  # bucket 100
    log.record(decision("x-1", "gpu2"), "x", "t", TaskPriority.NORMAL)
    clock.now = 1025.0  # bucket 102
    log.record(decision("x-2", "gpu1"), "x", "t", TaskPriority.NORMAL)
    history = log.placements(window_s=30)
    assert history.bucket_s == 10 and history.start == 1000.0
    assert history.per_node == {"gpu1": [1, 0, 1], "gpu2": [1, 0, 0]}


def test_placements_older_than_the_history_are_dropped() -> None:
    clock = Clock(1000.0)
    log = DecisionLog(bucket_s=10, history_s=30, clock=clock)
    log.record(decision("x-0", "gpu1"), "x", "t", TaskPriority.NORMAL)
    clock.now = 1100.0
    log.record(decision("x-1", "gpu2"), "x", "t", TaskPriority.NORMAL)
    history = log.placements(window_s=600)  # asks for more than is kept: gets what is kept
    assert history.per_node == {"gpu2": [0, 0, 1]}
    assert history.start == 1080.0


@pytest.mark.parametrize("priorities, expected", [
    ([], []),
    (["low", "high", "low"], [("high", 1), ("low", 2)]),
    (["critical", "normal", "normal", "high", "low"], [("critical", 1), ("high", 1), ("normal", 2), ("low", 1)]),
])
def test_waiting_by_priority_counts_each_level(priorities: list[str], expected: list[tuple[str, int]]) -> None:
    clock = Clock(50.0)
    core = SchedulerCore(clock=clock)
    for i, priority in enumerate(priorities):
        core.enqueue([SchedulingRequest(task_id=f"t{i}", priority=priority)])
        clock.now += 1.0
    levels = core.waiting_by_priority()
    assert [(str(priority), tasks) for priority, tasks, _ in levels] == expected


def test_waiting_by_priority_reports_the_oldest_wait_of_each_level() -> None:
    clock = Clock(0.0)
    core = SchedulerCore(clock=clock)
    core.enqueue([SchedulingRequest(task_id="old-low", priority="low")])
    clock.now = 5.0
    core.enqueue([SchedulingRequest(task_id="high", priority="high"), SchedulingRequest(task_id="new-low", priority="low")])
    clock.now = 12.0
    assert core.waiting_by_priority() == [(TaskPriority.HIGH, 1, 7.0), (TaskPriority.LOW, 2, 12.0)]
