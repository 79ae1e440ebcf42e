"""Pure tests of the placement pipeline: tables of hand-made nodes, no Ray."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from grid_serve.models import (
    ZERO_RESOURCE_SLOT,
    ResourceRequirement,
    SchedulingDecision,
    SchedulingRequest,
    SchedulingStrategy,
    TaskPriority,
    count_text,
)
from grid_serve.scheduling import SchedulerCore
from grid_serve.strategies import NoFit, PlacementError, count_causes, place
from grid_serve.view import ClusterView, make_node

MB = 1024 * 1024


def request(strategy: str = "spread", cpus: float = 1, gpus: float = 0, **kwargs) -> SchedulingRequest:
    return SchedulingRequest(strategy=strategy, requirements=ResourceRequirement(cpu_count=cpus, gpu_count=gpus),
                             **kwargs)


def three_nodes(**overrides) -> ClusterView:
    nodes = {name: make_node(name, cpus=2, gpus=0 if name == "gpu-master" else 1) for name in ("gpu-master", "gpu1", "gpu2")}
    nodes.update(overrides)
    return ClusterView.of(nodes.values())


def run_batch(view: ClusterView, requests: list[SchedulingRequest]) -> Counter:
    """Place a whole batch, releasing everything between drains, as completions would."""
    core = SchedulerCore()
    core.enqueue(requests)
    placed: Counter = Counter()
    while len(core):
        result = core.drain(view)
        assert result.placed or result.rejected, "a drain on an idle cluster must make progress"
        placed.update(d.node_name for d in result.placed)
    return placed


# ---------------------------------------------------------------- spread


@pytest.mark.parametrize("tasks, expected", [
    (100, [34, 33, 33]),
    (30, [10, 10, 10]),
    (1, [1]),
    (7, [3, 2, 2]),
    (1000, [334, 333, 333]),
])
def test_spread_batch_lands_floor_or_ceil_per_node(tasks: int, expected: list[int]) -> None:
    requests = [request(job_id="job", task_id=f"t{i}") for i in range(tasks)]
    counts = run_batch(three_nodes(), requests)
    assert sorted(counts.values(), reverse=True) == expected


def test_spread_is_deterministic() -> None:
    requests = [request(job_id="job", task_id=f"t{i}") for i in range(10)]
    assert run_batch(three_nodes(), requests) == run_batch(three_nodes(), requests)


def test_spread_gpu_tasks_spread_over_gpus_not_nodes() -> None:
    view = ClusterView.of([make_node("big", cpus=8, gpus=2), make_node("small", cpus=8, gpus=1),
                           make_node("cpu-only", cpus=8)])
    requests = [request(gpus=1, job_id="job", task_id=f"t{i}") for i in range(6)]
    assert run_batch(view, requests) == Counter({"big": 4, "small": 2})


def test_spread_waits_for_the_node_furthest_behind() -> None:
    counts = {"id-gpu-master": 2, "id-gpu1": 1, "id-gpu2": 1}
    view = three_nodes(gpu1=make_node("gpu1", cpus=2, gpus=1, reserved={"CPU": 4}))  # gpu1 full (admission 2x)
    decision = place(request(job_id="j"), view, group_counts=counts)
    assert isinstance(decision, SchedulingDecision) and decision.node_name == "gpu2"
    full = three_nodes(gpu1=make_node("gpu1", cpus=2, gpus=1, reserved={"CPU": 4}),
                       gpu2=make_node("gpu2", cpus=2, gpus=1, reserved={"CPU": 4}))
    waiting = place(request(job_id="j"), full, group_counts=counts)
    assert isinstance(waiting, NoFit) and waiting.can_wait
    assert {r.check for r in waiting.rejections} == {"spread turn", "busy"}


# ---------------------------------------------------------------- load_balanced and pack


def test_load_balanced_prefers_the_node_with_free_capacity() -> None:
    view = three_nodes(**{"gpu-master": make_node("gpu-master", cpus=2, reserved={"CPU": 2}),
                          "gpu1": make_node("gpu1", cpus=2, gpus=1, reserved={"CPU": 1})})
    decision = place(request("load_balanced"), view)
    assert isinstance(decision, SchedulingDecision) and decision.node_name == "gpu2"
    assert "lowest load" in decision.reasons[0]


def test_load_balanced_weighs_capacity_not_task_count() -> None:
    view = ClusterView.of([make_node("small", cpus=1, reserved={"CPU": 1}), make_node("large", cpus=4, reserved={"CPU": 2})])
    decision = place(request("load_balanced"), view)
    assert decision.node_name == "large"  # 2/4 busy beats 1/1 busy


def test_load_balanced_counts_measured_utilisation() -> None:
    view = ClusterView.of([make_node("hot", cpus=2, cpu_utilization=0.95), make_node("cool", cpus=2, cpu_utilization=0.05)])
    assert place(request("load_balanced"), view).node_name == "cool"


def test_pack_fills_the_fullest_node_that_fits() -> None:
    view = three_nodes(gpu1=make_node("gpu1", cpus=2, gpus=1, reserved={"CPU": 1}))
    assert place(request("pack"), view).node_name == "gpu1"


# ---------------------------------------------------------------- performance_optimized


def test_performance_optimized_uses_measured_durations() -> None:
    nodes = [make_node("fast", cpus=2), make_node("slow", cpus=2)]
    view = ClusterView.of(nodes, durations={("id-fast", "job"): 0.1, ("id-slow", "job"): 2.0})
    decision = place(request("performance_optimized", task_type="job"), view)
    assert decision.node_name == "fast"
    assert "measured" in decision.reasons[0]


def test_performance_optimized_prior_prefers_more_cores_without_data() -> None:
    view = ClusterView.of([make_node("a", cpus=1), make_node("b", cpus=8)])
    decision = place(request("performance_optimized", task_type="new"), view)
    assert decision.node_name == "b" and "hardware prior" in decision.reasons[0]


def test_performance_optimized_counts_queue_length() -> None:
    view = ClusterView.of([make_node("fast", cpus=1, in_flight=10), make_node("slow", cpus=1)],
                          durations={("id-fast", "job"): 0.5, ("id-slow", "job"): 1.0})
    assert place(request("performance_optimized", task_type="job"), view).node_name == "slow"


# ---------------------------------------------------------------- node_specific and feasibility


@pytest.mark.parametrize("reference", ["gpu1", "id-gpu1", "id-gpu"])
def test_node_specific_accepts_name_id_and_id_prefix(reference: str) -> None:
    view = three_nodes()
    if reference == "id-gpu":  # ambiguous prefix: matches id-gpu1 and id-gpu2
        with pytest.raises(PlacementError, match="unknown node"):
            place(request("node_specific", target_node=reference), view)
        return
    assert place(request("node_specific", target_node=reference), view).node_name == "gpu1"


def test_node_specific_by_shared_ip_is_an_error_not_a_guess() -> None:
    with pytest.raises(PlacementError, match="shared by nodes"):
        place(request("node_specific", target_node="127.0.0.1"), three_nodes())


def test_node_specific_by_unique_ip() -> None:
    view = three_nodes(gpu2=make_node("gpu2", cpus=2, gpus=1, ip="10.0.0.2"))
    assert place(request("node_specific", target_node="10.0.0.2"), view).node_name == "gpu2"


def test_node_specific_unknown_node_names_the_known_ones() -> None:
    with pytest.raises(PlacementError, match="unknown node 'gpu9'; known nodes: gpu-master, gpu1, gpu2"):
        place(request("node_specific", target_node="gpu9"), three_nodes())


def test_node_specific_dead_node_is_never_a_silent_fallback() -> None:
    view = three_nodes(gpu1=make_node("gpu1", cpus=2, gpus=1, alive=False))
    outcome = place(request("node_specific", target_node="gpu1"), view)
    assert isinstance(outcome, NoFit) and not outcome.can_wait
    assert "gpu1: node is dead" in outcome.message


def test_node_specific_name_means_the_live_node_after_a_restart() -> None:
    dead = make_node("gpu1", cpus=2, gpus=1, alive=False, node_id="aaa")
    live = make_node("gpu1", cpus=2, gpus=1, node_id="zzz")
    decision = place(request("node_specific", target_node="gpu1"), ClusterView.of([dead, live, make_node("gpu2")]))
    assert isinstance(decision, SchedulingDecision) and decision.node_id == "zzz"


def test_node_specific_too_small_node_says_why() -> None:
    outcome = place(request("node_specific", target_node="gpu1", gpus=2), three_nodes())
    assert isinstance(outcome, NoFit) and not outcome.can_wait
    assert "needs 2 GPU, has 1" in outcome.message


def test_node_specific_busy_node_waits() -> None:
    view = three_nodes(gpu1=make_node("gpu1", cpus=2, gpus=1, reserved={"CPU": 4}))
    outcome = place(request("node_specific", target_node="gpu1"), view)
    assert isinstance(outcome, NoFit) and outcome.can_wait
    assert "needs 1 CPU, 0 free" in outcome.message


def test_no_fit_message_counts_reasons_like_kube() -> None:
    view = ClusterView.of([make_node("a", cpus=2), make_node("b", cpus=2, gpus=1), make_node("c", cpus=2, labels={"zone": "x"})])
    outcome = place(request(gpus=1, label_selector={"zone": "y"}), view)
    assert isinstance(outcome, NoFit) and not outcome.can_wait
    assert outcome.message.startswith("0/3 nodes are available: 3 label mismatch (it can never fit)")


def test_gpu_task_never_fits_cpu_only_cluster() -> None:
    view = ClusterView.of([make_node("a", cpus=2), make_node("b", cpus=2)])
    outcome = place(request(gpus=1), view)
    assert outcome.message.startswith("0/2 nodes are available: 2 insufficient GPU (it can never fit)")


def _needs(cpus: float = 1, gpus: float = 0, memory_mb: float = 0, anti: tuple[str, ...] = (),
           **custom: float) -> SchedulingRequest:
    return SchedulingRequest(strategy="load_balanced", anti_affinity_nodes=anti, requirements=ResourceRequirement(
        cpu_count=cpus, gpu_count=gpus, memory_mb=memory_mb, custom_resources=custom))


# kube-scheduler's "0/N nodes are available: 2 insufficient GPU, 1 node is stale": nodes short
# of a resource are counted per resource (the first one they are short of), the rest per check
@pytest.mark.parametrize("nodes, needs, can_wait, counts", [
    ([make_node("a"), make_node("b", cpus=4), make_node("c", cpus=1, gpus=1)], _needs(cpus=2, gpus=1), False,
     {"insufficient GPU": 2, "insufficient CPU": 1}),
    ([make_node("a", memory_mb=1024), make_node("b", custom={"tpu": 1}), make_node("c", alive=False)],
     _needs(memory_mb=2048, tpu=2), False, {"insufficient memory": 1, "insufficient tpu": 1, "dead": 1}),
    ([make_node("a", reserved={"CPU": 2}), make_node("b", reserved={"memory": 3000 * MB}), make_node("c"),
      replace(make_node("d"), stale=True)], _needs(memory_mb=2048, anti=("c",)), True,
     {"CPU busy": 1, "memory busy": 1, "affinity": 1, "stale": 1}),
    ([make_node("a", cpus=0, reserved={ZERO_RESOURCE_SLOT: 4})], _needs(cpus=0), True, {"worker slots busy": 1}),
    # a decision counts the nodes it passed over the same way
    ([make_node("a", reserved={"CPU": 2}), make_node("b", reserved={"CPU": 2}), make_node("c"), make_node("d", cpus=1)],
     _needs(cpus=2), None, {"CPU busy": 2, "insufficient CPU": 1}),
])
def test_nodes_passed_over_are_counted_per_cause(nodes: list, needs: SchedulingRequest, can_wait: bool | None,
                                                 counts: dict[str, int]) -> None:
    outcome = place(needs, ClusterView.of(nodes))
    if can_wait is None:
        assert isinstance(outcome, SchedulingDecision) and outcome.explanation is not None
        assert outcome.explanation.passed_over_counts == counts
        assert f"passed over 3/4 nodes ({count_text(counts)})" in outcome.reasons[-1]
        return
    assert isinstance(outcome, NoFit) and outcome.can_wait == can_wait
    assert count_causes(outcome.rejections) == counts
    assert outcome.message.startswith(f"0/{len(nodes)} nodes are available: {count_text(counts)} (")
    assert all(r.reason in outcome.message for r in outcome.rejections)  # the reasons' texts are unchanged


def test_affinity_and_anti_affinity() -> None:
    view = three_nodes()
    assert place(request("load_balanced", affinity_nodes=("gpu2",)), view).node_name == "gpu2"
    decision = place(request("spread", anti_affinity_nodes=("gpu-master", "gpu1")), view)
    assert decision.node_name == "gpu2"


def test_label_selector_picks_matching_nodes() -> None:
    view = three_nodes()
    assert place(request("spread", label_selector={"grid.io/node": "gpu2"}), view).node_name == "gpu2"


def test_memory_request_in_mb() -> None:
    view = ClusterView.of([make_node("small", cpus=2, memory_mb=1024), make_node("large", cpus=2, memory_mb=8192)])
    req = SchedulingRequest(requirements=ResourceRequirement(memory_mb=4096), strategy="spread")
    assert place(req, view).node_name == "large"


def test_performance_optimized_tries_a_node_measured_slow_once_per_20_tasks() -> None:
    view = ClusterView.of([make_node("fast", cpus=100), make_node("slow", cpus=100)],
                          durations={("id-fast", "job"): 0.1, ("id-slow", "job"): 1.0})
    result = SchedulerCore().submit([request("performance_optimized", job_id="j", task_id=f"j-{i}", task_type="job")
                                     for i in range(60)], view)
    trials = [(d.task_id, d.node_name) for d in result.placed if d.node_name == "slow"]
    assert trials == [("j-20", "slow"), ("j-40", "slow")] and len(result.placed) == 60
    trial = next(d for d in result.placed if d.task_id == "j-20")
    assert trial.reasons[0].startswith("performance_optimized: trying slow again (~1.000s = wait 0.000s + run (measured")
    assert trial.explanation.winner.scores["explore"] == 1.0 and trial.explanation.runner_up.node == "fast"


def test_decision_reasons_and_resources() -> None:
    decision = place(request("spread", cpus=2), three_nodes())
    assert decision.resources == {"CPU": 2.0}
    assert any(r.startswith("scores:") for r in decision.reasons)


# ---------------------------------------------------------------- the queue


def test_queue_places_higher_priority_first_when_capacity_frees() -> None:
    core = SchedulerCore(clock=iter(range(1000)).__next__)
    full = ClusterView.of([make_node("only", cpus=1, reserved={"CPU": 2})])
    core.enqueue([request(job_id="low", task_id=f"low{i}", priority="low") for i in range(3)])
    core.enqueue([request(job_id="high", task_id=f"high{i}", priority="high") for i in range(2)])
    assert core.drain(full).placed == []
    freed = ClusterView.of([make_node("only", cpus=2, reserved={"CPU": 0})])
    order = [d.task_id for d in core.drain(freed).placed]
    assert order == ["high0", "high1"]  # two free CPUs, both to high though low waited longer
    later = [d.task_id for d in core.drain(freed).placed]
    assert later == ["low0", "low1"]


def test_queue_keeps_each_priority_out_of_ray_queue_beside_another() -> None:
    """The lookahead (admission 2: one task queued inside Ray per slot) takes a task only on a
    node that holds nothing of another priority. Ray may start a task queued beside an earlier
    one first, so a low one placed there could overtake a high one; and a high one queued
    behind normal work waits for it to end while a slot freeing elsewhere goes to low work."""
    core = SchedulerCore(clock=iter(range(1000)).__next__)
    node = lambda reserved, rank, low=None: replace(  # noqa: E731
        make_node("only", cpus=2, reserved={"CPU": reserved}), top_rank=rank, low_rank=rank if low is None else low)
    core.enqueue([request(job_id="high", task_id=f"high{i}", priority="high") for i in range(3)])
    core.enqueue([request(job_id="low", task_id=f"low{i}", priority="low") for i in range(2)])
    # two normal tasks run: no high one queues behind them inside Ray, and no low one
    assert core.drain(ClusterView.of([node(2, 1)], admission=2.0)).placed == []
    # one normal task ended: the high one takes the free CPU (it starts now), not a queued spot
    assert [d.task_id for d in core.drain(ClusterView.of([node(1, 1)], admission=2.0)).placed] == ["high0"]
    # only high work on the node: its lookahead is open to high tasks
    assert [d.task_id for d in core.drain(ClusterView.of([node(2, 2)], admission=2.0)).placed] == ["high1", "high2"]
    # high and low work on it: closed to both; one ended: a low one takes the free CPU
    assert core.drain(ClusterView.of([node(2, 2, low=0)], admission=2.0)).placed == []
    assert [d.task_id for d in core.drain(ClusterView.of([node(1, 2, low=0)], admission=2.0)).placed] == ["low0"]
    # only low work left on the node: the lookahead is open to low tasks again
    assert [d.task_id for d in core.drain(ClusterView.of([node(2, 0)], admission=2.0)).placed] == ["low1"]


def test_a_waiting_high_task_keeps_lower_work_from_refilling_the_lookahead() -> None:
    """A node saturated by a long normal job (2 CPUs, 2 running and 2 queued inside Ray): as its
    slots free, the normal job would refill its lookahead each time and a waiting high task,
    which takes only free capacity there, would wait for the whole job. While the high task
    waits, the node takes no work into its lookahead; the first slot that is free goes to it."""
    core = SchedulerCore(clock=iter(range(1000)).__next__)
    core.enqueue([request(job_id="high", task_id="high0", priority="high")])
    core.enqueue([request(job_id="normal", task_id=f"n{i}") for i in range(10)])
    node = lambda reserved: replace(make_node("only", cpus=2, reserved={"CPU": reserved}),  # noqa: E731
                                    top_rank=1, low_rank=1)
    assert core.drain(ClusterView.of([node(3)], admission=2.0)).placed == []  # one queued normal task started
    assert core.drain(ClusterView.of([node(2)], admission=2.0)).placed == []  # both running, none queued
    assert [d.task_id for d in core.drain(ClusterView.of([node(1)], admission=2.0)).placed] == ["high0"]


def test_lookahead_trusts_only_the_jobs_own_run_time() -> None:
    """A function learned at 20 ms, called by a new job with 2 s arguments: the new job gets one
    queued successor per slot until its own tasks end (the type's history would have queued six
    of the long ones per slot, in front of any higher-priority task that came next); a job
    whose own tasks run in 20 ms pipelines deeply (lookahead 100 ms)."""
    core = SchedulerCore(lookahead_s=0.1)
    core.enqueue([request(job_id="new", task_id=f"new{i}", task_type="sleep") for i in range(20)])
    core.enqueue([request(job_id="old", task_id=f"old{i}", task_type="sleep") for i in range(20)])
    learned = {("n", "sleep"): 0.02}
    view = ClusterView.of([make_node("n", cpus=2)], durations=learned, group_run_s={"old": 0.02})
    placed = Counter(d.task_id.rstrip("0123456789") for d in core.drain(view).placed)
    assert placed == {"new": 4, "old": 8}  # 2 slots x (1 + 1); then 2 x (1 + 0.1 / 0.02) in all
    # everything but two of the new job's tasks ended; they took 2 s: still one successor per slot
    ended = ClusterView.of([make_node("n", cpus=2, reserved={"CPU": 2})], durations=learned,
                           group_run_s={"old": 0.02, "new": 2.0})
    placed = Counter(d.task_id.rstrip("0123456789") for d in core.drain(ended).placed)
    assert placed == {"new": 2, "old": 8}


def test_queue_rejects_never_fitting_requests_at_once() -> None:
    core = SchedulerCore()
    result = core.submit([request(cpus=64, task_id="huge")], three_nodes())
    assert [r.task_id for r in result.rejected] == ["huge"]
    assert "needs 64 CPU, has 2" in result.rejected[0].reason
    assert len(core) == 0


def test_queue_rejects_node_specific_when_target_dies_while_waiting() -> None:
    core = SchedulerCore()
    busy = three_nodes(gpu1=make_node("gpu1", cpus=2, gpus=1, reserved={"CPU": 4}))
    assert core.submit([request("node_specific", target_node="gpu1", task_id="t")], busy).placed == []
    dead = three_nodes(gpu1=make_node("gpu1", cpus=2, gpus=1, alive=False))
    result = core.drain(dead)
    assert [r.task_id for r in result.rejected] == ["t"] and "dead" in result.rejected[0].reason


def test_queue_cancel_drops_waiting_tasks_of_a_group() -> None:
    core = SchedulerCore()
    full = ClusterView.of([make_node("only", cpus=1, reserved={"CPU": 2})])
    core.submit([request(job_id="a", task_id=f"a{i}") for i in range(3)], full)
    core.submit([request(job_id="b", task_id="b0")], full)
    assert sorted(core.cancel(group="a")) == ["a0", "a1", "a2"]
    assert len(core) == 1


def test_waited_time_is_reported() -> None:
    now = [100.0]
    core = SchedulerCore(clock=lambda: now[0])
    full = ClusterView.of([make_node("only", cpus=1, reserved={"CPU": 2})])
    core.submit([request(task_id="t")], full)
    now[0] = 105.0
    decision = core.drain(ClusterView.of([make_node("only", cpus=1)])).placed[0]
    assert decision.waited_s == 5.0


def test_priority_enum_rank_order() -> None:
    assert [p.rank for p in (TaskPriority.LOW, TaskPriority.NORMAL, TaskPriority.HIGH, TaskPriority.CRITICAL)] == [0, 1, 2, 3]
    assert SchedulingStrategy("load-balanced") is SchedulingStrategy.LOAD_BALANCED


# ---------------------------------------------------------------- nodes named otherwise (KubeRay pods)


def pods() -> ClusterView:
    """A head and a worker group of three pods with no grid.io/node label: named by hostname."""
    group = {"ray.io/node-group": "gpu-workers"}
    return ClusterView.of([make_node("head-pod", cpus=2, labelled=False, hostname="head-pod", ip="10.1.0.1"),
                           *(make_node(f"workers-{i}", cpus=2, gpus=1, labelled=False, hostname=f"workers-{i}",
                                       ip=f"10.1.0.{i + 2}", labels=group) for i in range(3))])


@pytest.mark.parametrize("reference", ["workers-1", "id-workers-1", "10.1.0.3"])
def test_node_specific_by_hostname_id_or_ip_of_an_unlabelled_node(reference: str) -> None:
    assert place(request("node_specific", target_node=reference), pods()).node_name == "workers-1"


def test_node_specific_by_a_hostname_several_nodes_share_is_an_error() -> None:
    view = ClusterView.of([make_node("a", hostname="vm"), make_node("b", hostname="vm")])
    with pytest.raises(PlacementError, match="hostname vm is shared by nodes a, b"):
        place(request("node_specific", target_node="vm"), view)


def test_a_group_label_spreads_a_job_exactly_over_the_group() -> None:
    jobs = [request("spread", job_id="j", label_selector={"ray.io/node-group": "gpu-workers"}) for _ in range(10)]
    assert sorted(run_batch(pods(), jobs).items()) == [("workers-0", 4), ("workers-1", 3), ("workers-2", 3)]
    gpu_jobs = [request("spread", gpus=1, job_id="g", label_selector={"ray.io/node-group": "gpu-workers"})
                for _ in range(6)]
    assert sorted(run_batch(pods(), gpu_jobs).values()) == [2, 2, 2]


def test_a_group_label_no_node_carries_can_never_fit() -> None:
    outcome = place(request("spread", label_selector={"ray.io/node-group": "tpu-workers"}), pods())
    assert isinstance(outcome, NoFit) and not outcome.can_wait
    assert outcome.message.startswith("0/4 nodes are available: 4 label mismatch (it can never fit)")


def test_the_registry_and_the_strategy_names_requests_take_agree() -> None:
    """One strategy module per name `SchedulingStrategy` accepts, each saying what it chooses."""
    from grid_serve.models import SchedulingStrategy
    from grid_serve.placement import STRATEGIES, describe_strategies

    assert set(STRATEGIES) == {strategy.value.lower() for strategy in SchedulingStrategy}
    described = describe_strategies()
    assert [one["name"] for one in described] == list(STRATEGIES)
    assert all(one["summary"] and not one["summary"].startswith(one["name"]) and one["scorers"] for one in described)


def test_a_task_not_known_to_be_short_is_not_queued_inside_ray_while_lower_work_waits() -> None:
    """Node a freed its two CPUs, b and c run low work, and low work waits. Of four high tasks
    (their job's run time not learned), two take a's CPUs; the other two wait here, not in a's
    lookahead, and nothing low is placed; when b frees, they take it. (Queued on a, they would wait
    for a's tasks to end while b's CPUs went to the low work: the CI flake of session 37.)"""
    low = TaskPriority.LOW.rank
    busy = {name: replace(make_node(name, cpus=2, reserved={"CPU": 2}), top_rank=low, low_rank=low)
            for name in ("b", "c")}
    core = SchedulerCore(lookahead_s=0.1)
    core.enqueue([request("load_balanced", job_id="low", task_id=f"low{i}", priority="low") for i in range(6)])
    core.enqueue([request("load_balanced", job_id="high", task_id=f"high{i}", priority="high") for i in range(4)])
    placed = core.drain(ClusterView.of([make_node("a", cpus=2), *busy.values()])).placed
    assert sorted((d.task_id, d.node_name) for d in placed) == [("high0", "a"), ("high1", "a")]
    a = replace(make_node("a", cpus=2, reserved={"CPU": 2}), top_rank=TaskPriority.HIGH.rank,
                low_rank=TaskPriority.HIGH.rank)
    placed = core.drain(ClusterView.of([a, make_node("b", cpus=2), busy["c"]])).placed
    # no high task waits now: low work may queue behind low work (c's lookahead), as before
    assert sorted((d.task_id, d.node_name) for d in placed) == [("high2", "b"), ("high3", "b"),
                                                                ("low0", "c"), ("low1", "c")]
