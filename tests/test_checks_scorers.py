"""Each check and each scorer by itself: one table of cases per function, no pipeline.

A check answers None (the node passes) or the reason with numbers; a scorer answers a
number in [0, 1], higher is better. The pipeline tests (test_strategies.py) compose them.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from grid_serve.models import ResourceRequirement, SchedulingRequest
from grid_serve.placement import load_balanced, node_specific, pack, performance_optimized, spread
from grid_serve.strategies import (
    PlacementContext,
    check_affinity,
    check_alive,
    check_capacity,
    check_free_now,
    check_fresh,
    check_gpu_memory_free,
    check_labels,
    score_idle,
)
from grid_serve.view import ClusterView, GpuView, NodeView, make_node


def req(cpus: float = 1, gpus: float = 0, gpu_memory_mb: float = 0.0, **kwargs: Any) -> SchedulingRequest:
    return SchedulingRequest(requirements=ResourceRequirement(cpu_count=cpus, gpu_count=gpus, gpu_memory_mb=gpu_memory_mb),
                             **kwargs)


def ctx(node: NodeView, admission: float = 1.0, counts: dict[str, int] | None = None, floor: float = math.inf,
        durations: dict | None = None) -> PlacementContext:
    view = ClusterView.of([node], admission=admission, durations=durations or {})
    return PlacementContext(view=view, group_counts=counts or {}, turn_floor=floor)


def run(check: Any, request: SchedulingRequest, node: NodeView, **context: Any) -> Any:
    return check(request, node, ctx(node, **context))


# ---------------------------------------------------------------- lasting checks


@pytest.mark.parametrize("alive, expected", [(True, None), (False, "node is dead")])
def test_check_alive(alive: bool, expected: str | None) -> None:
    assert run(check_alive, req(), make_node("n", alive=alive)) == expected


@pytest.mark.parametrize("selector, expected", [
    ({}, None),
    ({"zone": "a"}, None),
    ({"zone": "b"}, "label zone='a', wanted 'b'"),
    ({"rack": "7"}, "label rack=None, wanted '7'"),
])
def test_check_labels(selector: dict[str, str], expected: str | None) -> None:
    assert run(check_labels, req(label_selector=selector), make_node("n", labels={"zone": "a"})) == expected


@pytest.mark.parametrize("affinity, anti, expected", [
    ((), (), None),
    (("n",), (), None),
    (("127.0.0.1",), (), None),  # by IP
    (("other",), (), "not among affinity nodes ['other']"),
    ((), ("id-n",), "excluded by anti-affinity"),  # by Ray node id
])
def test_check_affinity(affinity: tuple[str, ...], anti: tuple[str, ...], expected: str | None) -> None:
    assert run(check_affinity, req(affinity_nodes=affinity, anti_affinity_nodes=anti), make_node("n")) == expected


@pytest.mark.parametrize("cpus, gpus, expected", [
    (2, 0, None),
    (4, 0, "needs 4 CPU, has 2"),
    (1, 1, "needs 1 GPU, has 0"),
])
def test_check_capacity_ignores_what_is_reserved(cpus: float, gpus: float, expected: str | None) -> None:
    assert run(check_capacity, req(cpus, gpus), make_node("n", cpus=2, reserved={"CPU": 2})) == expected


# ---------------------------------------------------------------- current checks


@pytest.mark.parametrize("stale, expected", [(False, None), (True, "node is stale: no fresh measurements")])
def test_check_fresh(stale: bool, expected: str | None) -> None:
    assert run(check_fresh, req(), replace(make_node("n"), stale=stale)) == expected


@pytest.mark.parametrize("cpus, reserved, admission, expected", [
    (1, 1, 1.0, None),
    (2, 1, 1.0, "needs 2 CPU, 1 free"),
    (2, 1, 2.0, None),  # admission lets reservations run ahead of the CPUs
    (1, 3, 1.0, "needs 1 CPU, 0 free"),  # over-reserved reads as none free, not negative
])
def test_check_free_now(cpus: float, reserved: float, admission: float, expected: str | None) -> None:
    node = make_node("n", cpus=2, reserved={"CPU": reserved})
    assert run(check_free_now, req(cpus), node, admission=admission) == expected


@pytest.mark.parametrize("held, priority, expected", [
    (-1, "low", None),  # nothing reserved: the lookahead is open to any priority
    (1, "normal", None),  # the same priority as what the node holds
    (1, "high", "needs 1 CPU, 0 free"),  # a higher one: free capacity only (it would wait behind lower work)
    (1, "low", "needs 1 CPU, 0 free"),  # lower than what it holds: free capacity only, none left
    (2, "normal", "needs 1 CPU, 0 free"),
])
def test_check_free_now_keeps_the_lookahead_from_lower_priorities(held: int, priority: str, expected: str | None) -> None:
    """2 CPUs, 2 reserved, admission 2: the room beyond the CPUs (queued inside Ray) is only for
    tasks of the priority the node already holds: Ray may start a queued task before one sent
    earlier, and a higher task queued behind lower work waits for it to end."""
    node = replace(make_node("n", cpus=2, reserved={"CPU": 2}), top_rank=held, low_rank=held)
    assert run(check_free_now, req(1, priority=priority), node, admission=2.0) == expected


@pytest.mark.parametrize("free_mb, wanted_mb, expected", [
    ((8000,), 0.0, None),
    ((8000,), 4000, None),
    ((1000,), 4000, "needs 1 GPU(s) with 4000 MB free, 0 have it (most free 1000 MB)"),
    ((), 4000, None),  # NVML sees nothing: Ray's GPU count is all there is to go on
])
def test_check_gpu_memory_free(free_mb: tuple[float, ...], wanted_mb: float, expected: str | None) -> None:
    gpus = tuple(GpuView(i, memory_total_mb=8000, memory_free_mb=mb) for i, mb in enumerate(free_mb))
    node = make_node("n", gpus=1, gpu_views=gpus)
    assert run(check_gpu_memory_free, req(1, 1, gpu_memory_mb=wanted_mb), node) == expected


# ---------------------------------------------------------------- turn rules


@pytest.mark.parametrize("have, floor, expected", [
    (0, 1.0, None),
    (1, 2.0, None),
    (1, 1.0, "has 1 of this job's tasks; nodes with fewer go first"),
])
def test_spread_turn(have: int, floor: float, expected: str | None) -> None:
    node = make_node("n")
    assert run(spread.TURN.check, req(), node, counts={node.node_id: have}, floor=floor) == expected


@pytest.mark.parametrize("floor, expected", [
    (1.0, None),
    (0.96, None),  # within 5% of the soonest: not worth holding for
    (0.5, "would finish in ~1.000s; another node would finish it in ~0.500s"),
    (math.inf, None),  # no fresh node sets a floor
])
def test_performance_optimized_turn(floor: float, expected: str | None) -> None:
    node = make_node("n")
    durations = {(node.node_id, "task"): 1.0}
    assert run(performance_optimized.TURN.check, req(), node, floor=floor, durations=durations) == expected


# ---------------------------------------------------------------- scorers


@pytest.mark.parametrize("in_flight, expected", [(0, 1.0), (2, 0.5), (4, 1 / 3)])
def test_score_idle(in_flight: int, expected: float) -> None:
    assert run(score_idle, req(), make_node("n", cpus=2, in_flight=in_flight)) == pytest.approx(expected)


@pytest.mark.parametrize("reserved, utilization, expected", [
    (0, None, 1.0),
    (1, None, 0.5),
    (2, None, 0.0),
    (0, 1.0, 0.7),  # measured load counts for 30%
])
def test_score_least_loaded(reserved: float, utilization: float | None, expected: float) -> None:
    node = make_node("n", cpus=2, reserved={"CPU": reserved}, cpu_utilization=utilization)
    assert run(load_balanced.score_least_loaded, req(), node) == pytest.approx(expected)


@pytest.mark.parametrize("cpus, reserved, expected", [(2, 0, 0.5), (2, 1, 1.0), (4, 0, 0.25)])
def test_score_fullest_counts_the_task_itself(cpus: float, reserved: float, expected: float) -> None:
    node = make_node("n", cpus=cpus, reserved={"CPU": reserved})
    assert run(pack.score_fullest, req(), node) == pytest.approx(expected)


@pytest.mark.parametrize("gpus_wanted, node_gpus, have, expected", [
    (0, 0, 0, 1.0),
    (0, 0, 1, 0.5),
    (0, 0, 3, 0.25),
    (1, 2, 2, 0.5),  # GPU tasks count per GPU
])
def test_score_job_share(gpus_wanted: float, node_gpus: float, have: int, expected: float) -> None:
    node = make_node("n", gpus=node_gpus)
    result = run(spread.score_job_share, req(1, gpus_wanted), node, counts={node.node_id: have})
    assert result == pytest.approx(expected)


@pytest.mark.parametrize("measured_s, in_flight, expected", [
    (1.0, 0, 0.5),
    (0.25, 0, 0.8),
    (1.0, 2, 0.4),  # both slots busy: half a run to wait, then the run
])
def test_score_fastest(measured_s: float, in_flight: int, expected: float) -> None:
    node = make_node("n", cpus=2, in_flight=in_flight)
    durations = {(node.node_id, "task"): measured_s}
    assert run(performance_optimized.score_fastest, req(), node, durations=durations) == pytest.approx(expected)


@pytest.mark.parametrize("node", [make_node("a"), make_node("b", cpus=64, reserved={"CPU": 64})])
def test_score_target_is_flat(node: NodeView) -> None:
    assert run(node_specific.score_target, req(), node) == 1.0


@pytest.mark.parametrize("measured, placed, have, expected", [
    (False, 40, 0, 0.0),  # never measured: the prior and the idle tie-break already try it
    (True, 19, 0, 0.0),
    (True, 20, 0, 1.0),   # one trial per 20 of the job's tasks
    (True, 20, 1, 0.0),   # it had its trial
    (True, 40, 1, 1.0),
    (True, 40, 5, 0.0),   # a node the job uses is never due
])
def test_score_explore(measured: bool, placed: int, have: int, expected: float) -> None:
    node = make_node("n")
    durations = {(node.node_id, "task"): 3.0} if measured else {}
    counts = {node.node_id: have, "id-other": placed - have}
    assert run(performance_optimized.score_explore, req(), node, counts=counts, durations=durations) == expected
