"""The incremental placer must answer exactly what place() answers, decision after decision.

Pure: random heterogeneous views (fixed seeds), every strategy, requests that fit, wait and
never fit; each decision is compared field by field (node, score, reasons) with place() on
the view that has every earlier decision reserved.
"""

from __future__ import annotations

import random
from typing import Callable

import pytest

from grid_serve import scheduling
from grid_serve.models import ResourceRequirement, SchedulingDecision, SchedulingRequest
from grid_serve.placement import STRATEGIES
from grid_serve.placement_index import IncrementalPlacer
from grid_serve.scheduling import SchedulerCore
from grid_serve.strategies import NOT_NOW, NoFit, PlacementContext, PlacementError, Strategy, place, strategy_named
from grid_serve.view import ClusterView, GpuView, GroupCounts, NodeView, Running, make_node


def random_view(seed: int, size: int) -> ClusterView:
    rng = random.Random(seed)
    nodes = []
    for i in range(size):
        cpus = rng.choice([1, 2, 4])
        gpus = rng.choice([0, 0, 1, 2])
        nodes.append(make_node(
            f"n{i:02d}", cpus=cpus, gpus=gpus, alive=rng.random() > 0.1,
            reserved={"CPU": float(rng.randint(0, cpus))}, in_flight=rng.randint(0, 3),
            labels={"zone": rng.choice(["a", "b"])}, cpu_utilization=rng.choice([None, rng.random()]),
            gpu_views=tuple(GpuView(g, memory_total_mb=8000, memory_free_mb=rng.choice([1000, 7000]))
                            for g in range(gpus)),
        ))
    durations = {(node.node_id, "task"): rng.uniform(0.1, 2.0) for node in nodes if rng.random() < 0.5}
    return ClusterView.of(nodes, durations=durations, admission=rng.choice([1.0, 2.0]))


KINDS = [
    dict(strategy="spread"),
    dict(strategy="spread", requirements=ResourceRequirement(cpu_count=1, gpu_count=1)),
    dict(strategy="load_balanced", requirements=ResourceRequirement(cpu_count=2)),
    dict(strategy="load_balanced", label_selector={"zone": "a"}),
    dict(strategy="performance_optimized"),
    dict(strategy="pack", anti_affinity_nodes=("n01", "n03")),
    dict(strategy="node_specific", target_node="n02"),
    dict(strategy="spread", requirements=ResourceRequirement(cpu_count=64)),  # never fits
    dict(strategy="spread", requirements=ResourceRequirement(gpu_count=1, gpu_memory_mb=4000)),
]


def same(a: SchedulingDecision | NoFit, b: SchedulingDecision | NoFit) -> None:
    assert type(a) is type(b)
    if isinstance(a, NoFit):
        assert (a.can_wait, a.message, a.rejections) == (b.can_wait, b.message, b.rejections)
    else:
        assert a.model_dump() == b.model_dump()


def replay(view: ClusterView, make: Callable[[int], SchedulingRequest], strategy: Strategy | None = None,
           tasks: int = 25) -> list[str]:
    """Place `tasks` requests one by one with the placer and with place() on the view that has
    every earlier decision reserved; they must agree field by field. Returns the nodes chosen."""
    nodes = dict(view.nodes)
    counts = GroupCounts()
    placer = IncrementalPlacer(make(0), view, nodes, counts.live("job"), strategy)
    chosen = []
    for i in range(tasks):
        request = make(i)
        expected = place(request, ClusterView.of(nodes.values(), admission=view.admission,
                                                 durations=view.durations), strategy, counts.of("job"))
        got = placer.place(request)
        same(got, expected)
        if not isinstance(got, SchedulingDecision):
            break
        chosen.append(got.node_name)
        nodes[got.node_id] = nodes[got.node_id].reserve(got.resources)
        counts.add("job", got.node_id)
        placer.node_changed(got.node_id)
    return chosen


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("kind", range(len(KINDS)))
def test_incremental_placer_matches_place_decision_by_decision(seed: int, kind: int) -> None:
    replay(random_view(seed, size=3 + seed % 7),
           lambda i: SchedulingRequest(task_id=f"job-{i}", job_id="job", **KINDS[kind]))


REQUIREMENTS = [ResourceRequirement(), ResourceRequirement(cpu_count=2), ResourceRequirement(cpu_count=1, gpu_count=1)]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_registered_strategy_matches_place_by_itself(name: str, seed: int) -> None:
    """Whatever the table holds, passed as the strategy itself (the request names a node for
    any strategy that wants one)."""
    requirements = REQUIREMENTS[seed % len(REQUIREMENTS)]
    replay(random_view(100 + seed, size=4 + seed),
           lambda i: SchedulingRequest(task_id=f"job-{i}", job_id="job", target_node="n01", requirements=requirements),
           STRATEGIES[name])


def score_name_order(request: SchedulingRequest, node: NodeView, ctx: PlacementContext) -> float:
    """Later names first: a rule no built-in strategy has."""
    return sum(ord(char) for char in node.name) % 100 / 100


THROWAWAY = Strategy(
    "last_name_first",
    current_checks=NOT_NOW,
    scorers=(("name order", 1.0, score_name_order),),
    explain=lambda request, chosen, runner_up, ctx, ready: f"last_name_first: {chosen.name} sorts last",
)


def test_a_strategy_registered_in_one_place_runs_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(STRATEGIES, THROWAWAY.name, THROWAWAY)  # the one place a strategy is registered
    strategy = strategy_named("last_name_first")
    view = ClusterView.of([make_node(name, cpus=1) for name in ("a", "c", "b")], admission=1.0)
    decision = place(SchedulingRequest(job_id="job"), view, strategy)
    assert isinstance(decision, SchedulingDecision) and decision.node_name == "c"
    assert decision.explanation.summary == "last_name_first: c sorts last" and decision.reasons[0] == decision.explanation.summary
    assert decision.explanation.runner_up.node == "b"
    assert replay(view, lambda i: SchedulingRequest(task_id=f"job-{i}", job_id="job"), strategy) == ["c", "b", "a"]


def test_unknown_target_node_is_a_placement_error_like_place() -> None:
    view = random_view(1, 3)
    request = SchedulingRequest(strategy="node_specific", target_node="nope")
    with pytest.raises(PlacementError):
        IncrementalPlacer(request, view, dict(view.nodes), {})
    core = SchedulerCore()
    result = core.submit([request], view)
    assert [r.task_id for r in result.rejected] == [request.task_id] and "unknown node 'nope'" in result.rejected[0].reason


def test_drain_spreads_a_batch_exactly_and_chains_reservations() -> None:
    view = ClusterView.of([make_node(name, cpus=100) for name in ("a", "b", "c")])
    core = SchedulerCore()
    result = core.submit([SchedulingRequest(task_id=f"j-{i}", job_id="j") for i in range(100)], view)
    per_node = {name: sum(1 for d in result.placed if d.node_name == name) for name in "abc"}
    assert per_node == {"a": 34, "b": 33, "c": 33}
    assert {name: result.view.nodes[f"id-{name}"].reserved["CPU"] for name in "abc"} == {"a": 34, "b": 33, "c": 33}
    assert view.nodes["id-a"].reserved == {}  # the input view is never mutated


def test_two_kinds_in_one_drain_see_each_others_reservations() -> None:
    view = ClusterView.of([make_node("a", cpus=2), make_node("b", cpus=2)], admission=1.0)
    core = SchedulerCore()
    big = [SchedulingRequest(task_id=f"big-{i}", job_id="big", strategy="load_balanced",
                             requirements=ResourceRequirement(cpu_count=2)) for i in range(2)]
    small = [SchedulingRequest(task_id=f"small-{i}", job_id="small", strategy="load_balanced") for i in range(2)]
    result = core.submit(big + small, view)
    assert sorted(d.node_name for d in result.placed) == ["a", "b"]
    assert sorted(d.task_id for d in result.placed) == ["big-0", "big-1"]
    assert core.queued_by_group() == {"small": 2}


def one_by_one(view: ClusterView, requests: list[SchedulingRequest]) -> list[tuple[str, str]]:
    """What a drain must decide, the readable way: each request in turn placed by place() on the
    view with every earlier decision reserved and its own job's counts; a kind that waited once
    waits for the rest of the drain. (task id, node id) per placement, in order."""
    nodes, counts, waiting, placed = dict(view.nodes), GroupCounts(), set(), []
    for request in requests:
        kind = (request.group, request.strategy, repr(request.requirements), request.target_node,
                tuple(request.label_selector.items()), request.anti_affinity_nodes)
        if kind in waiting:
            continue
        got = place(request, ClusterView.of(nodes.values(), admission=view.admission, durations=view.durations),
                    None, counts.of(request.group))
        if isinstance(got, SchedulingDecision):
            placed.append((request.task_id, got.node_id))
            nodes[got.node_id] = nodes[got.node_id].reserve(got.resources)
            counts.add(request.group, got.node_id)
        elif got.can_wait:
            waiting.add(kind)
    return placed


def roomy_view(seed: int, size: int) -> ClusterView:
    """A random view with room for a few dozen tasks, so a drain places many before kinds wait."""
    rng = random.Random(seed)
    nodes = [make_node(f"n{i:02d}", cpus=(cpus := rng.choice([4, 8, 16])), gpus=rng.choice([0, 1, 2]),
                       reserved={"CPU": float(rng.randint(0, cpus // 2))}, labels={"zone": rng.choice(["a", "b"])},
                       cpu_utilization=rng.random(), alive=rng.random() > 0.05)
             for i in range(size)]
    durations = {(node.node_id, "task"): rng.uniform(0.1, 2.0) for node in nodes if rng.random() < 0.5}
    return ClusterView.of(nodes, durations=durations, admission=1.0)


@pytest.mark.parametrize("seed", range(10))
def test_a_drain_over_many_jobs_decides_what_place_decides_for_each_in_turn(seed: int) -> None:
    """The drain shares one placer among jobs whose strategy reads no job counts, copies a new
    job's placer from one built for a job that has placed nothing, and lets each placer re-read
    changed nodes only when next asked: none of that may change a single decision."""
    view = roomy_view(200 + seed, size=4 + seed % 6)
    jobs = [(f"job{j}", KINDS[(seed + j) % 6]) for j in range(12)]  # two jobs of each kind, or more
    requests = [SchedulingRequest(task_id=f"{job}-{i}", job_id=job, **kind) for i in range(4) for job, kind in jobs]
    result = SchedulerCore().submit(requests, view)
    expected = one_by_one(view, requests)
    assert len(expected) >= 20 and len(expected) < len(requests)  # many placed, and some kinds waited
    assert [(d.task_id, d.node_id) for d in result.placed] == expected


def test_kinds_no_node_can_take_now_wait_with_their_reason_without_a_placer_each(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a full cluster the first job's task finds every node busy: every other job's task of
    its kind waits with the same reason, and no placer is built for them (one pass over the
    nodes per kind, not per job)."""
    view = ClusterView.of([make_node(f"n{i}", cpus=2, reserved={"CPU": 2.0}) for i in range(4)], admission=1.0)
    built: list[str] = []
    original = IncrementalPlacer.__init__

    def counting(self: IncrementalPlacer, request: SchedulingRequest, *args: object, **kwargs: object) -> None:
        built.append(request.task_id)
        original(self, request, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(IncrementalPlacer, "__init__", counting)
    core = SchedulerCore()
    result = core.submit([SchedulingRequest(task_id=f"j{j}-{i}", job_id=f"j{j}", strategy=strategy)
                          for j, strategy in enumerate(["spread"] * 5 + ["load_balanced"] * 5) for i in range(2)], view)
    assert result.placed == [] and built == ["j0-0", "j5-0"]  # one placer per kind, the first job's
    for j in range(10):
        assert core.why_waiting(f"j{j}").startswith("0/4 nodes are available: 4 CPU busy"), core.why_waiting(f"j{j}")


def drains(seed: int) -> list[tuple]:
    """Eight drains of one scenario: jobs of mixed kinds and priorities arriving, tasks ending,
    the clock moving (starvation holds, backfill, spread turns given up, per-job lookahead).
    What each drain placed, rejected and gave up, and why each job waits."""
    rng = random.Random(seed)
    now = [0.0]
    core = SchedulerCore(clock=lambda: now[0], lookahead_s=rng.choice([None, 0.1]), starve_after_s=3.0)
    nodes = {node.node_id: node for node in (make_node(f"n{i}", cpus=rng.choice([2, 4]),
                                                        labels={"zone": rng.choice("ab")})
                                             for i in range(rng.randint(2, 6)))}
    durations = {(node_id, task_type): rng.uniform(0.1, 3.0) for node_id in nodes for task_type in ("task", "other")
                 if rng.random() < 0.7}
    two = ResourceRequirement(cpu_count=2)
    kinds = [dict(strategy="spread"), dict(strategy="spread", requirements=two), dict(strategy="performance_optimized"),
             dict(strategy="performance_optimized", requirements=two), dict(strategy="load_balanced"),
             dict(strategy="pack", requirements=two), dict(strategy="spread", label_selector={"zone": "a"})]
    running: dict[str, list[dict[str, float]]] = {node_id: [] for node_id in nodes}
    group_run_s: dict[str, float] = {}
    seen = []
    for step in range(8):
        for job in (f"s{step}j{j}" for j in range(rng.randint(0, 4))):
            kind, priority, task_type = rng.choice(kinds), rng.choice(["normal", "high", "low"]), rng.choice(["task", "other"])
            if rng.random() < 0.5:
                group_run_s[job] = rng.choice([0.05, 0.5, 3.0])
            core.enqueue([SchedulingRequest(task_id=f"{job}-{k}", job_id=job if rng.random() < 0.9 else None,
                                            priority=priority, task_type=task_type, **kind)
                          for k in range(rng.randint(1, 25))])  # a task without a job is a group of its own
        view = ClusterView.of(nodes.values(), admission=rng.choice([1.0, 1.5]), durations=durations,
                              group_run_s=dict(group_run_s),
                              running=lambda node_id: tuple(Running("task", used, 0.5) for used in running[node_id]))
        result = core.drain(view)
        seen.append(([(d.task_id, d.node_id, d.explanation.summary if d.explanation else "") for d in result.placed],
                     [r.task_id for r in result.rejected], result.turns_given_up, sorted(core._turn_blocked_since),
                     {group: (core.why_waiting(group) or "").split(". ")[0] for group in core.queued_by_group()}))
        nodes = dict(result.view.nodes) if result.view is not None else nodes
        for decision in result.placed:
            running[decision.node_id].append(dict(decision.resources))
        for node_id, used in running.items():  # some tasks end
            ended = [resources for resources in used if rng.random() < 0.4]
            for resources in ended:
                used.remove(resources)
                nodes[node_id] = nodes[node_id].reserve({name: -amount for name, amount in resources.items()}, tasks=-1)
        now[0] += rng.choice([0.5, 1.0, 2.0, 4.0])
    return seen


@pytest.mark.parametrize("seed", range(40))
def test_skipping_kinds_busy_everywhere_changes_no_decision(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Drain after drain, skipping the tasks of a kind that found every node busy decides what
    asking each of them would: placements, rejections, turns given up, turn timers and each
    job's reason (its per-node detail may be from earlier in the drain: its counts are not)."""
    skipping = drains(seed)
    monkeypatch.setattr(scheduling, "_same_for_every_job", lambda outcome: False)
    assert skipping == drains(seed)


def test_a_job_may_still_backfill_where_another_job_of_its_kind_could_not() -> None:
    """Whether a task may backfill onto a node held for a starving one depends on its job
    (performance_optimized explores a node by the job's counts): a kind turned away once while
    a hold stands is asked again for each job. Job b, with 20 tasks placed, explores h."""
    now = [0.0]
    core = SchedulerCore(clock=lambda: now[0])
    for _ in range(20):
        core.group_counts.add("b", "id-n1")
    view = ClusterView.of([make_node("h", cpus=2, reserved={"CPU": 1.0}, in_flight=1),
                           make_node("n1", cpus=1, reserved={"CPU": 1.0}, in_flight=1)], admission=1.0,
                          durations={("id-h", "task"): 1.0, ("id-n1", "task"): 0.1},
                          running=lambda node_id: [Running("task", {"CPU": 1.0}, 0.0)] if node_id == "id-h" else [])
    core.enqueue([SchedulingRequest(task_id="big", job_id="big", strategy="load_balanced", task_type="big",
                                    requirements=ResourceRequirement(cpu_count=2))])
    now[0] = 30.0  # big has starved: h is held for it
    core.enqueue([SchedulingRequest(task_id=f"{job}-0", job_id=job, strategy="performance_optimized") for job in "ab"])
    now[0] = 31.0
    placed = core.drain(view).placed
    assert [(d.task_id, d.node_name) for d in placed] == [("b-0", "h")]
    assert "backfilled" in placed[0].explanation.summary
