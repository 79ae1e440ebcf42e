"""Pure tests of GPU-aware placement and of `performance_optimized`'s evidence: tables of
hand-made nodes (`make_node`), no Ray."""

from __future__ import annotations

from collections import Counter

import pytest

from grid_serve.models import GpuInfo, NodeStatus, ResourceRequirement, SchedulingDecision, SchedulingRequest
from grid_serve.scheduling import SchedulerCore
from grid_serve.strategies import NoFit, expected_finish_s, place
from grid_serve.view import ClusterView, GpuView, make_node, view_from


def request(strategy: str = "spread", cpus: float = 1, gpus: float = 0, gpu_memory_mb: float = 0,
            memory_mb: float = 0, **kwargs) -> SchedulingRequest:
    needs = ResourceRequirement(cpu_count=cpus, gpu_count=gpus, gpu_memory_mb=gpu_memory_mb, memory_mb=memory_mb)
    return SchedulingRequest(strategy=strategy, requirements=needs, **kwargs)


def gpus(*free_mb: float, total_mb: float = 16_000, name: str = "Tesla T4", util: float | None = None) -> tuple[GpuView, ...]:
    return tuple(GpuView(i, name, util, free, total_mb) for i, free in enumerate(free_mb))


def placed_batch(view: ClusterView, tasks: int, **kwargs) -> Counter:
    """One job's batch, drained against the same idle view until all are placed: what happens
    when completions free the room between drains. Spread counts carry over, as in the Scheduler."""
    core = SchedulerCore()
    core.enqueue([request(job_id="job", task_id=f"t{i}", **kwargs) for i in range(tasks)])
    placed: Counter = Counter()
    while len(core):
        result = core.drain(view)
        assert result.placed and not result.rejected, "a drain on an idle cluster must make progress"
        placed.update(decision.node_name for decision in result.placed)
    return placed


# ---------------------------------------------------------------- spread over GPUs, not nodes


@pytest.mark.parametrize("gpu_counts, tasks, expected", [
    ({"gpu1": 1, "gpu2": 1}, 6, {"gpu1": 3, "gpu2": 3}),
    ({"big": 2, "small": 1}, 6, {"big": 4, "small": 2}),
    ({"big": 2, "small": 1}, 3, {"big": 2, "small": 1}),
    ({"a": 4, "b": 2, "c": 2}, 8, {"a": 4, "b": 2, "c": 2}),
    ({"cpu-only": 0, "gpu1": 1, "gpu2": 1}, 4, {"gpu1": 2, "gpu2": 2}),  # the CPU node never gets one
])
def test_one_gpu_tasks_spread_per_gpu(gpu_counts: dict[str, int], tasks: int, expected: dict[str, int]) -> None:
    view = ClusterView.of([make_node(name, cpus=8, gpus=count) for name, count in gpu_counts.items()])
    assert placed_batch(view, tasks, gpus=1) == Counter(expected)


def test_spread_reason_says_per_gpu() -> None:
    view = ClusterView.of([make_node("big", cpus=8, gpus=2), make_node("small", cpus=8, gpus=1)])
    decision = place(request(gpus=1, job_id="job"), view, group_counts={"id-big": 2, "id-small": 0})
    assert isinstance(decision, SchedulingDecision) and decision.node_name == "small"
    assert "fewest per GPU" in decision.reasons[0]


def test_cpu_tasks_still_spread_per_node_on_gpu_nodes() -> None:
    view = ClusterView.of([make_node("big", cpus=8, gpus=2), make_node("small", cpus=8, gpus=1)])
    assert placed_batch(view, 6) == Counter({"big": 3, "small": 3})


# ---------------------------------------------------------------- gpu_memory_mb against NVML


@pytest.mark.parametrize("node_gpus, wanted_gpus, wanted_mb, check, reason", [
    # lasting: no GPU big enough, ever
    (gpus(16_000, total_mb=16_000), 1, 24_000, "insufficient GPU memory",
     "needs 1 GPU(s) with 24000 MB, 0 of 1 that large (largest 16000 MB)"),
    (gpus(40_000, 8_000, total_mb=40_000)[:1] + (GpuView(1, "Tesla T4", None, 8_000, 16_000),), 2, 20_000,
     "insufficient GPU memory", "needs 2 GPU(s) with 20000 MB, 1 of 2 that large (largest 40000 MB)"),
    # now: big enough, but NVML says the memory is in use
    (gpus(3_000, 5_000), 1, 8_000, "GPU memory busy", "needs 1 GPU(s) with 8000 MB free, 0 have it (most free 5000 MB)"),
    (gpus(9_000, 5_000), 2, 8_000, "GPU memory busy", "needs 2 GPU(s) with 8000 MB free, 1 have it (most free 9000 MB)"),
])
def test_gpu_memory_filters_by_nvml_figures(node_gpus: tuple[GpuView, ...], wanted_gpus: int, wanted_mb: float,
                                            check: str, reason: str) -> None:
    view = ClusterView.of([make_node("gpu1", cpus=4, gpus=len(node_gpus), gpu_views=node_gpus)])
    outcome = place(request("load_balanced", gpus=wanted_gpus, gpu_memory_mb=wanted_mb), view)
    assert isinstance(outcome, NoFit)
    assert [(r.check, r.reason) for r in outcome.rejections] == [(check, reason)]
    assert outcome.can_wait is (check == "GPU memory busy")


def test_gpu_memory_picks_the_node_whose_gpu_has_room() -> None:
    view = ClusterView.of([
        make_node("a-full", cpus=4, gpus=1, gpu_views=gpus(2_000)),
        make_node("b-roomy", cpus=4, gpus=1, gpu_views=gpus(12_000)),
        make_node("c-cpu", cpus=4),
    ])
    decision = place(request("spread", gpus=1, gpu_memory_mb=8_000), view)
    assert isinstance(decision, SchedulingDecision) and decision.node_name == "b-roomy"
    passed_over = decision.reasons[-1]
    assert "a-full (needs 1 GPU(s) with 8000 MB free, 0 have it (most free 2000 MB))" in passed_over
    assert "c-cpu (needs 1 GPU, has 0)" in passed_over


def test_gpu_memory_on_a_node_without_gpus_is_never_feasible() -> None:
    view = ClusterView.of([make_node("cpu-only", cpus=4)])
    outcome = place(request("spread", gpus=0, gpu_memory_mb=1_000), view)
    assert isinstance(outcome, NoFit) and not outcome.can_wait
    assert outcome.rejections[0].reason == "needs 1000 MB GPU memory, node has no GPU"


def test_gpu_memory_passes_when_nvml_cannot_see_the_gpus() -> None:
    """No NVML figures: Ray's GPU count is all there is, so the node is not ruled out."""
    view = ClusterView.of([make_node("gpu1", cpus=4, gpus=1)])
    assert isinstance(place(request("spread", gpus=1, gpu_memory_mb=8_000), view), SchedulingDecision)


def test_view_from_turns_nvml_used_and_total_into_free() -> None:
    status = NodeStatus(name="gpu1", node_id="n1", address="127.0.0.1", alive=True,
                        resources_total={"CPU": 4, "GPU": 1},
                        gpus=[GpuInfo(index=0, name="T4", utilization_pct=50, memory_used_mb=6_000, memory_total_mb=16_000)])
    gpu = view_from([status]).nodes["n1"].gpus[0]
    assert (gpu.memory_free_mb, gpu.memory_total_mb, gpu.utilization) == (10_000, 16_000, 0.5)


# ---------------------------------------------------------------- load_balanced: what it measures


@pytest.mark.parametrize("task, expected", [
    ({"gpus": 1}, "gpu-cool"),             # GPU task: GPU utilisation decides, CPU is ignored
    ({}, "cpu-cool"),                      # CPU task: CPU utilisation decides, GPU is ignored
    ({"memory_mb": 512}, "cpu-cool"),      # memory task: the busier of CPU and memory
])
def test_load_balanced_measures_gpu_for_gpu_tasks_and_cpu_for_others(task: dict, expected: str) -> None:
    view = ClusterView.of([
        make_node("cpu-cool", cpus=4, gpus=1, cpu_utilization=0.05, memory_utilization=0.10, gpu_views=gpus(16_000, util=0.95)),
        make_node("gpu-cool", cpus=4, gpus=1, cpu_utilization=0.95, memory_utilization=0.10, gpu_views=gpus(16_000, util=0.05)),
    ])
    decision = place(request("load_balanced", **task), view)
    assert isinstance(decision, SchedulingDecision) and decision.node_name == expected


def test_load_balanced_memory_tasks_avoid_a_node_short_of_memory() -> None:
    view = ClusterView.of([
        make_node("a-swapping", cpus=4, cpu_utilization=0.05, memory_utilization=0.97),
        make_node("b-roomy", cpus=4, cpu_utilization=0.30, memory_utilization=0.20),
    ])
    assert place(request("load_balanced", memory_mb=512), view).node_name == "b-roomy"
    assert place(request("load_balanced"), view).node_name == "a-swapping"  # CPU-only: memory not counted


# ---------------------------------------------------------------- performance_optimized evidence


def test_prior_prefers_the_faster_gpu_model_before_any_measurement() -> None:
    view = ClusterView.of([
        make_node("a-t4", cpus=8, gpus=1, gpu_views=gpus(16_000, name="Tesla T4")),
        make_node("b-a100", cpus=8, gpus=1, gpu_views=gpus(40_000, name="NVIDIA A100-SXM4-40GB")),
    ])
    decision = place(request("performance_optimized", gpus=1, task_type="train"), view)
    assert isinstance(decision, SchedulingDecision) and decision.node_name == "b-a100"
    assert "hardware prior (NVIDIA A100-SXM4-40GB ×4)" in decision.reasons[0]
    # the slower one is passed over with its own estimate (earliest finish: only the soonest is ready)
    assert "a-t4 (would finish in ~1.000s; another node would finish it in ~0.250s)" in decision.reasons[-1]


def test_prior_scales_other_nodes_measurements_by_hardware() -> None:
    view = ClusterView.of([
        make_node("t4", cpus=8, gpus=1, gpu_views=gpus(16_000, name="Tesla T4")),
        make_node("a100", cpus=8, gpus=1, gpu_views=gpus(40_000, name="NVIDIA A100-SXM4-40GB")),
    ], durations={("id-t4", "train"): 2.0})
    estimate = expected_finish_s(request("performance_optimized", gpus=1, task_type="train"), view.nodes["id-a100"], view)
    assert estimate.seconds == pytest.approx(0.5)  # 2.0 s on a T4, an A100 rated 4×
    assert estimate.evidence.startswith("prior from 1 measured node(s)")


def test_measurement_beats_the_prior_and_the_reason_names_it() -> None:
    view = ClusterView.of([
        make_node("a-a100", cpus=8, gpus=1, gpu_views=gpus(40_000, name="NVIDIA A100-SXM4-40GB")),
        make_node("b-t4", cpus=8, gpus=1, gpu_views=gpus(16_000, name="Tesla T4")),
    ], durations={("id-a-a100", "train"): 3.0, ("id-b-t4", "train"): 1.0})
    decision = place(request("performance_optimized", gpus=1, task_type="train"), view)
    assert isinstance(decision, SchedulingDecision) and decision.node_name == "b-t4"
    assert "b-t4 expected to finish soonest (~1.000s = wait 0.000s + run (measured 1.000s here)" in decision.reasons[0]
    assert "a-a100 (would finish in ~3.000s; another node would finish it in ~1.000s)" in decision.reasons[-1]


def test_slow_node_gets_work_only_when_fast_ones_are_deeply_queued() -> None:
    """A batch after learning: the 10× slower node waits until the fast ones are 18 deep."""
    nodes = [make_node(name, cpus=2) for name in ("gpu-master", "gpu1", "gpu2")]
    durations = {("id-gpu-master", "slow"): 0.05, ("id-gpu1", "slow"): 0.05, ("id-gpu2", "slow"): 0.5}
    view = ClusterView.of(nodes, durations=durations, admission=16.0)
    counts = placed_batch(view, 8, strategy="performance_optimized", task_type="slow")
    assert counts == Counter({"gpu-master": 4, "gpu1": 4})
