"""Pure tests of the shared models, the cluster config loader and the ledger."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from grid_serve.config import ConfigError, load_cluster_config, parse_cluster_config
from grid_serve.ledger import LEARNED_KEPT, Completion, Ledger
from grid_serve.models import (
    JobSubmission,
    ResourceRequirement,
    SchedulingDecision,
    SchedulingRequest,
    SchedulingStrategy,
)
from grid_serve.view import Running

REPO = Path(__file__).resolve().parent.parent
SHARED_EXAMPLE = REPO.parent / "shared" / "example-cluster.yaml"


@pytest.mark.parametrize("text", ["spread", "SPREAD", "Spread", " spread ", "load_balanced", "LOAD-BALANCED", "pack"])
def test_strategies_are_case_insensitive(text: str) -> None:
    assert SchedulingStrategy(text).value == text.strip().upper().replace("-", "_")


def test_unknown_strategy_is_a_validation_error_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="strategy"):
        JobSubmission(task="compute_task", strategy="fastest")


@pytest.mark.parametrize("bad", [{"cpu_count": -1}, {"gpu_count": 1.5}, {"memory_mb": 1e12},
                                 {"custom_resources": {"CPU": 1}}, {"cpu_count": 1e9}, {"cpus": 1}])
def test_absurd_resources_are_rejected(bad: dict) -> None:
    with pytest.raises(ValidationError):
        ResourceRequirement(**bad)


def test_resources_in_ray_units() -> None:
    needs = ResourceRequirement(cpu_count=2, memory_mb=4000, gpu_count=1, custom_resources={"accel": 1})
    assert needs.as_ray_resources() == {"CPU": 2, "GPU": 1, "memory": 4000 * 1024 * 1024, "accel": 1}
    assert ResourceRequirement(cpu_count=0).as_ray_resources() == {}


def test_node_specific_needs_a_node() -> None:
    with pytest.raises(ValidationError, match="node_specific needs"):
        JobSubmission(strategy="node_specific")
    with pytest.raises(ValidationError, match="node_specific needs target_node"):
        SchedulingRequest(strategy="node_specific")


def test_job_count_xor_args_and_call_args() -> None:
    with pytest.raises(ValidationError, match="either count or args"):
        JobSubmission(count=2, args=[[1]])
    assert JobSubmission(count=3).call_args(2) == ([2], {})
    job = JobSubmission(args=[[1, 2], {"seconds": 0.1}])
    assert job.task_count == 2 and job.call_args(0) == ([1, 2], {}) and job.call_args(1) == ([], {"seconds": 0.1})


def test_decision_ray_options_pin_hard_to_the_node() -> None:
    decision = SchedulingDecision(task_id="t", node_id="ab" * 28, node_name="gpu1", node_ip="127.0.0.1",
                                  strategy="spread", score=1.0,
                                  resources={"CPU": 2.0, "GPU": 1.0, "memory": 1024.0, "accel": 1.0})
    options = decision.ray_options()
    assert options["num_cpus"] == 2.0 and options["num_gpus"] == 1.0 and options["memory"] == 1024.0
    assert options["resources"] == {"accel": 1.0}
    strategy = options["scheduling_strategy"]
    assert strategy.node_id == "ab" * 28 and strategy.soft is False


def test_a_decision_to_run_keeps_where_and_how_and_drops_only_the_why() -> None:
    """What a job runner is sent: everything it runs the task by, without the explanation."""
    from grid_serve.strategies import place
    from grid_serve.view import ClusterView, make_node

    view = ClusterView.of([make_node("gpu1", cpus=2), make_node("gpu2", cpus=4)])
    decision = place(SchedulingRequest(task_id="j-0", job_id="j", strategy="load_balanced"), view)
    lean = decision.to_run()
    assert decision.explanation is not None and decision.reasons
    assert lean.explanation is None and lean.reasons == []
    kept = decision.model_dump(exclude={"explanation", "reasons"})
    assert lean.model_dump(exclude={"explanation", "reasons"}) == kept
    assert (lean.node_id, lean.resources, lean.waited_s) == (decision.node_id, decision.resources, decision.waited_s)


def test_repo_cluster_config_loads() -> None:
    config = load_cluster_config(REPO / "config" / "cluster.yaml")
    assert [node.name for node in config.nodes] == ["gpu-master", "gpu1", "gpu2"]
    assert config.head.name == "gpu-master"


@pytest.mark.parametrize("path", sorted((REPO / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_cluster_file_loads(path: Path) -> None:
    config = load_cluster_config(path)
    assert {"gpu-master", "gpu1", "gpu2"} <= {node.name for node in config.nodes}
    assert config.resource_sharing.enabled


@pytest.mark.skipif(not SHARED_EXAMPLE.exists(), reason="shared example cluster file not beside the repo")
def test_users_existing_cluster_files_load() -> None:
    assert load_cluster_config(SHARED_EXAMPLE).resource_sharing.policy == "balanced"


def test_unknown_keys_are_errors_not_dropped() -> None:
    data = {"nodes": [{"name": "a", "host": "a", "cpu_count": 2, "memory_gb": 4,
                       "resource_sharing": {"max_share_gpus": 1}}]}
    with pytest.raises(ConfigError, match=r"nodes\.0\.resource_sharing\.max_share_gpus: Extra inputs are not permitted"):
        parse_cluster_config(data, "cluster.yaml")


def test_duplicate_node_names_are_errors() -> None:
    node = {"name": "a", "host": "a", "cpu_count": 2, "memory_gb": 4}
    with pytest.raises(ConfigError, match="repeated: a"):
        parse_cluster_config({"nodes": [node, node]})


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such cluster config file"):
        load_cluster_config(tmp_path / "nope.yaml")


def test_ledger_reserves_releases_and_learns() -> None:
    ledger = Ledger(clock=lambda: 0.0)
    ledger.reserve("t1", "n1", {"CPU": 1.0}, task_type="job", group="g", strategy="SPREAD")
    ledger.reserve("t2", "n1", {"CPU": 2.0, "GPU": 1.0}, task_type="job", group="g", strategy="SPREAD")
    loads = ledger.loads()
    assert loads["n1"].reserved == {"CPU": 3.0, "GPU": 1.0} and loads["n1"].in_flight == 2
    ledger.release([Completion(task_id="t1", duration_s=2.0), Completion(task_id="t2", ok=False, duration_s=9.0)])
    assert ledger.loads() == {}
    assert ledger.durations == {("n1", "job"): 2.0}  # failures teach nothing about speed
    ledger.reserve("t3", "n1", {"CPU": 1.0}, task_type="job")
    ledger.release([Completion(task_id="t3", duration_s=1.0)])
    assert ledger.durations[("n1", "job")] == pytest.approx(0.7 * 2.0 + 0.3 * 1.0)


def test_run_times_learned_under_callers_names_stay_bounded_and_the_busiest_are_kept() -> None:
    """Task types and groups are names callers choose: a caller naming one per call must not
    grow the Scheduler (issue 20). Past LEARNED_KEPT, the least recently learned go first."""
    ledger = Ledger(clock=lambda: 0.0)
    for i in range(LEARNED_KEPT + 50):
        ledger.reserve(f"t{i}", "n1", {"CPU": 1.0}, task_type=f"type-{i}", group=f"job-{i}")
        ledger.release([Completion(task_id=f"t{i}", duration_s=1.0)])
        if i % 100 == 0:  # one type in steady use, learned again all along
            ledger.reserve(f"s{i}", "n1", {"CPU": 1.0}, task_type="steady", group="service")
            ledger.release([Completion(task_id=f"s{i}", duration_s=0.5)])
    assert len(ledger.durations) == len(ledger.group_run_s) == LEARNED_KEPT
    assert ("n1", "steady") in ledger.durations and ledger.group_run_s["service"] == pytest.approx(0.5)
    assert ("n1", "type-0") not in ledger.durations and ("n1", f"type-{LEARNED_KEPT + 49}") in ledger.durations
    assert len(ledger.snapshot().durations) == LEARNED_KEPT


def test_ledger_leases_expire() -> None:
    now = [0.0]
    ledger = Ledger(clock=lambda: now[0])
    ledger.reserve("ext", "n1", {"CPU": 1.0}, lease_s=10)
    ledger.reserve("job-task", "n1", {"CPU": 1.0})
    now[0] = 9.0
    assert ledger.expire() == []
    now[0] = 10.0
    assert [r.task_id for r in ledger.expire()] == ["ext"]
    assert list(ledger.reservations) == ["job-task"]


def test_ledger_lists_what_runs_on_a_node_with_its_age() -> None:
    """What a backfill decision reads: the node's own reservations, not those in a borrowed
    allocation (they are counted on the allocation)."""
    now = [5.0]
    ledger = Ledger(clock=lambda: now[0])
    ledger.reserve("t1", "n1", {"CPU": 1.0}, task_type="job")
    ledger.reserve("t2", "n2", {"CPU": 1.0}, task_type="job")
    ledger.reserve("t3", "n1", {"CPU": 1.0}, task_type="job", placement_group_id="pg")
    now[0] = 7.5
    assert ledger.running_on("n1") == [Running("job", {"CPU": 1.0}, 2.5)]


def test_ledger_release_of_unknown_task_is_harmless() -> None:
    ledger = Ledger()
    version = ledger.version
    assert ledger.release([Completion(task_id="nope")]) == []
    assert ledger.version == version


def test_ledger_tells_the_highest_and_lowest_priority_reserved_per_node() -> None:
    """What keeps each priority out of Ray's queue beside another (placement.framework.check_free_now)."""
    ledger = Ledger()
    ledger.reserve("a", "n1", {"CPU": 1}, rank=2)
    ledger.reserve("b", "n1", {"CPU": 1}, rank=0)
    ledger.reserve("c", "n2", {"CPU": 1})
    assert {node: (load.top_rank, load.low_rank) for node, load in ledger.loads().items()} == {"n1": (2, 0), "n2": (1, 1)}
    ledger.release([Completion(task_id="a")])
    assert (ledger.loads()["n1"].top_rank, ledger.loads()["n1"].low_rank) == (0, 0)
    ledger.release([Completion(task_id="b"), Completion(task_id="c")])
    assert ledger.loads() == {}


def test_ledger_learns_each_jobs_own_run_time_beside_its_task_types() -> None:
    """Two jobs of one function with other arguments: each keeps its own run time (what the
    lookahead trusts); a lone /v1/schedule decision keeps none; a finished job's is forgotten."""
    ledger = Ledger()
    ledger.reserve("a-0", "n1", {"CPU": 1}, task_type="sleep", group="a")
    ledger.reserve("b-0", "n1", {"CPU": 1}, task_type="sleep", group="b")
    ledger.reserve("lone", "n1", {"CPU": 1}, task_type="sleep")
    ledger.release([Completion(task_id="a-0", duration_s=0.02), Completion(task_id="b-0", duration_s=2.0),
                    Completion(task_id="lone", duration_s=1.0)])
    assert ledger.snapshot().group_run_s == {"a": 0.02, "b": 2.0}
    assert ledger.durations[("n1", "sleep")] == pytest.approx(0.7 * (0.7 * 0.02 + 0.3 * 2.0) + 0.3 * 1.0)
    ledger.release_group("a")
    assert ledger.group_run_s == {"b": 2.0}


MB = 1024 * 1024
CYCLED = [  # what tasks reserve while a long-held reservation keeps the node's books open
    {"GPU": 0.1}, {"GPU": 0.3, "CPU": 0.7}, {"GPU": 0.2, "memory": 100.1 * MB}, {"memory": 0.0001 * MB},
    {"CPU": 0.0001, "accel:x": 0.3333}, {"GPU": 0.5, "memory": 2.4e3 * MB, "CPU": 1.1},
]


@pytest.mark.parametrize("order", ["fifo", "lifo", "interleaved"])
def test_reserve_release_cycles_leave_the_books_exactly_as_they_were(order: str) -> None:
    """Ray keeps resources in fixed point (1/10,000 of a unit); float sums drifted instead, so
    idle nodes read `GPU: 1e-323` reserved. After any number of cycles, idle is exactly idle."""
    ledger = Ledger(clock=lambda: 0.0)
    ledger.reserve("held", "n1", {"CPU": 1.0})
    for cycle in range(300):
        ids = [f"{cycle}-{i}" for i in range(len(CYCLED))]
        for task_id, amounts in zip(ids, CYCLED):
            ledger.reserve(task_id, "n1", amounts)
        ended = {"fifo": ids, "lifo": ids[::-1], "interleaved": ids[::2] + ids[1::2]}[order]
        if cycle % 7 == 3:  # a reservation sometimes outlives its cycle
            ledger.reserve(f"late-{cycle}", "n1", CYCLED[cycle % len(CYCLED)])
            ended = ended + [f"late-{cycle - 7}"] if cycle >= 10 else ended
        ledger.release([Completion(task_id=task_id) for task_id in ended])
    ledger.release([Completion(task_id=task_id) for task_id in list(ledger.reservations) if task_id != "held"])
    assert ledger.loads()["n1"].reserved == {"CPU": 1.0}
    ledger.release([Completion(task_id="held")])
    assert ledger.loads() == {}


def test_a_view_s_reserve_and_release_leave_a_node_exactly_idle() -> None:
    """The Scheduler's working copy of a node adds and takes back the same amounts (a drain, a held node)."""
    from grid_serve.view import make_node

    node = make_node("n1", cpus=8, gpus=1)
    for _ in range(200):
        for amounts in CYCLED:
            node = node.reserve(amounts)
        for amounts in reversed(CYCLED):
            node = node.reserve(amounts, tasks=-1)
    assert all(amount == 0.0 for amount in node.reserved.values()), dict(node.reserved)
    assert node.in_flight == 0
