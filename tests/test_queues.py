"""Fair share between queues (`grid_serve.queues`, `SchedulerCore`), on the simulated clock: at
one priority the queue furthest under its weighted dominant share is served next, priorities stay
strict across queues, and one queue alone is served by age exactly as before. Placements are
asserted exactly: the order is deterministic (share, then the age of each queue's oldest)."""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError

from grid_serve.books import SchedulerBooks
from grid_serve.job_books import JobBooks
from grid_serve.ledger import Completion
from grid_serve.models import JobSubmission, NodeStatus, ResourceRequirement, SchedulingRequest
from grid_serve.outcomes import OutcomeTable
from grid_serve.protocol import Placements, Report, Submit
from grid_serve.queues import AT_LIMIT, BORROWS, QueueSettings, standing
from grid_serve.scheduling import SchedulerCore
from grid_serve.view import ClusterView, make_node


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tasks(queue: str, count: int, *, cpus: float = 1.0, gpus: float = 0.0, priority: str = "normal",
          job: str | None = None) -> list[SchedulingRequest]:
    job = job or f"job-{queue}"
    return [SchedulingRequest(task_id=f"{job}-{i}", job_id=job, queue=queue, priority=priority,
                              strategy="load_balanced", requirements=ResourceRequirement(cpu_count=cpus, gpu_count=gpus))
            for i in range(count)]


def placed_per_queue(placed: list, requests: list[SchedulingRequest]) -> Counter[str]:
    queue_of = {request.task_id: request.queue for request in requests}
    return Counter(queue_of[decision.task_id] for decision in placed)


def drained(core: SchedulerCore, clock: Clock, batches: list[list[SchedulingRequest]], view: ClusterView) -> list:
    """Each batch enqueued one second after the last, then one drain; the decisions in order."""
    for batch in batches:
        core.enqueue(batch)
        clock.now += 1.0
    return core.drain(view).placed


SIX_CPUS = ClusterView.of([make_node("a", cpus=4), make_node("b", cpus=2)])


@pytest.mark.parametrize(("case", "batches", "view", "weights", "expected"), [
    ("one queue: age order, as before",
     [tasks("alice", 4), tasks("alice", 4, job="second")], SIX_CPUS, {}, {"alice": 6}),
    ("two queues, equal weights: half each, though alice came first",
     [tasks("alice", 12), tasks("bob", 6)], SIX_CPUS, {}, {"alice": 3, "bob": 3}),
    ("weights 3:1 over 12 CPUs: 9 and 3",
     [tasks("alice", 20), tasks("bob", 20)], ClusterView.of([make_node("a", cpus=8), make_node("b", cpus=4)]),
     {"alice": 3.0}, {"alice": 9, "bob": 3}),
    ("what a queue already runs counts: alice holds 4 of 6, bob gets the 2 left",
     [tasks("alice", 6), tasks("bob", 6)],
     ClusterView.of([make_node("a", cpus=4, reserved={"CPU": 4.0}), make_node("b", cpus=2)],
                    queue_usage={"alice": {"CPU": 4.0}}),
     {}, {"bob": 2}),
    ("DRF: a GPU task's share is its GPU fraction, so the CPU queue gets 4 of 6 CPUs, not 3",
     [tasks("vision", 3, gpus=1.0), tasks("etl", 6)],
     ClusterView.of([make_node("a", cpus=4, gpus=3), make_node("b", cpus=2)]), {}, {"vision": 2, "etl": 4}),
])
def test_queues_share_one_priority_by_weighted_dominant_share(case: str, batches: list, view: ClusterView,
                                                              weights: dict, expected: dict) -> None:
    clock = Clock()
    core = SchedulerCore(clock=clock, weights=weights)
    placed = drained(core, clock, batches, view)
    assert placed_per_queue(placed, [r for batch in batches for r in batch]) == Counter(expected), case


def test_priorities_stay_strict_across_queues() -> None:
    """bob's high tasks go first, though alice holds nothing and bob's queue would be over its share."""
    clock = Clock()
    core = SchedulerCore(clock=clock)
    batches = [tasks("alice", 6), tasks("bob", 5, priority="high")]
    placed = drained(core, clock, batches, SIX_CPUS)
    assert [d.task_id for d in placed][:5] == [f"job-bob-{i}" for i in range(5)]
    assert placed_per_queue(placed, [r for batch in batches for r in batch]) == Counter({"bob": 5, "alice": 1})


def test_within_a_queue_age_decides_and_the_queue_stays_sorted() -> None:
    """Served queue by queue, each queue oldest first; what waits is back in (priority, age) order,
    which the next drain and the status counts read."""
    clock = Clock()
    core = SchedulerCore(clock=clock)
    batches = [tasks("alice", 5), tasks("bob", 5)]
    placed = drained(core, clock, batches, SIX_CPUS)
    assert [d.task_id for d in placed] == ["job-alice-0", "job-bob-0", "job-alice-1", "job-bob-1",
                                           "job-alice-2", "job-bob-2"]
    assert core.waiting_prefix(10) == [*batches[0][3:], *batches[1][3:]]
    assert dict(core.queued_per_queue()) == {"alice": 2, "bob": 2}


def test_a_decision_fair_share_chose_says_where_its_queue_stood() -> None:
    clock = Clock()
    core = SchedulerCore(clock=clock)
    placed = drained(core, clock, [tasks("alice", 12), tasks("bob", 6)], SIX_CPUS)
    bob_first = next(d for d in placed if d.task_id == "job-bob-0")
    assert bob_first.explanation is not None
    assert bob_first.explanation.summary.endswith(
        "fair share chose it: queue bob: holds nothing yet, weight 1 of 2")
    bob_second = next(d for d in placed if d.task_id == "job-bob-1")
    assert "queue bob: 1 of 6 CPU (its dominant resource), weight 1 of 2" in bob_second.explanation.summary
    alone = drained(SchedulerCore(clock=clock), clock, [tasks("alice", 2)], SIX_CPUS)
    assert all("fair share" not in d.explanation.summary for d in alone)  # one queue: nothing to say


def test_freed_slots_go_to_the_queue_under_its_share_through_the_books() -> None:
    """The books count what each queue holds from the ledger: alice fills the cluster, bob waits;
    as alice's tasks end, bob gets every freed slot until the two hold as much."""
    clock = Clock()
    books = SchedulerBooks(epoch="e", lease_s=60.0, tick_s=1.0, lookahead_s=None, clock=clock, wall=clock)
    books.on_nodes([NodeStatus(name=name, node_id=f"id-{name}", address="127.0.0.1", alive=True,
                               resources_total={"CPU": 3.0}, resources_available={"CPU": 3.0})
                    for name in ("n1", "n2")], taken_at=clock.now)
    alice = books.on_submitted(Submit(requests=tasks("alice", 10), runner="r-alice"))
    assert len(alice.placed) == 6
    clock.now += 1.0
    assert books.on_submitted(Submit(requests=tasks("bob", 10), runner="r-bob")).placed == []
    starts: list[str] = []
    for decision in alice.placed[:4]:  # four of alice's end, one report each
        clock.now += 1.0
        reply = books.on_reported(Report(group="job-alice", ended=[Completion(task_id=decision.task_id,
                                                                              duration_s=1.0)]))
        starts += ["bob" for _ in books.collect("job-bob").placed] + ["alice" for _ in reply.placed]
    assert starts == ["bob", "bob", "bob", "alice"]  # bob to 3 of 6, then the tie goes to the older queue
    books.check()


def test_queue_names_are_checked() -> None:
    with pytest.raises(ValidationError, match="queue"):
        JobSubmission(queue="has spaces")
    with pytest.raises(ValidationError, match="weight"):
        QueueSettings(weight=0)
    assert JobSubmission(queue="team-a.ml@gpu").queue == "team-a.ml@gpu"


def test_each_queue_says_what_waits_what_runs_and_its_share() -> None:
    """What `/v1/cluster` and `grid queue` show: a configured queue with no work is listed too."""
    clock = Clock()
    books = SchedulerBooks(epoch="e", lease_s=60.0, tick_s=1.0, lookahead_s=None, clock=clock, wall=clock,
                           queues={"alice": QueueSettings(), "bob": QueueSettings(weight=3.0),
                                   "carol": QueueSettings(weight=2.0)})
    books.on_nodes([NodeStatus(name="n1", node_id="id-n1", address="127.0.0.1", alive=True,
                               resources_total={"CPU": 6.0, "GPU": 2.0}, resources_available={"CPU": 6.0})],
                   taken_at=clock.now)
    books.on_submitted(Submit(requests=tasks("alice", 8), runner="r-alice"))
    clock.now += 2.0
    books.on_submitted(Submit(requests=tasks("bob", 2, gpus=1.0, priority="high"), runner="r-bob"))
    clock.now += 1.0
    statuses = {status.name: status for status in books.status().queues}
    assert list(statuses) == ["alice", "bob", "carol"]
    alice, bob, carol = statuses["alice"], statuses["bob"], statuses["carol"]
    assert (alice.running, alice.waiting, alice.oldest_wait_s) == (6, {"NORMAL": 2}, 3.0)
    assert (alice.dominant, alice.share, alice.holds) == ("CPU", 1.0, {"CPU": 6.0})
    assert (bob.running, bob.waiting, bob.dominant, bob.share) == (0, {"HIGH": 2}, None, 0.0)
    assert (alice.fair_share, bob.fair_share, carol.fair_share) == (0.25, 0.75, 0.0)  # carol has no work
    assert (carol.weight, carol.running, carol.waiting) == (2.0, 0, {})


def test_the_first_drain_with_a_second_queue_counts_what_the_first_runs() -> None:
    """bob's job arrives after a node joined: alice already holds 6 of 9 CPUs, so bob gets all 3
    new slots (a drain that read each queue's usage before bob's tasks were queued saw one
    queue, and gave alice two of them)."""
    clock = Clock()
    books = SchedulerBooks(epoch="e", lease_s=60.0, tick_s=1.0, lookahead_s=None, clock=clock, wall=clock)

    def nodes(*names: str) -> list[NodeStatus]:
        return [NodeStatus(name=name, node_id=f"id-{name}", address="127.0.0.1", alive=True,
                           resources_total={"CPU": 3.0}, resources_available={"CPU": 3.0}) for name in names]

    books.on_nodes(nodes("n1", "n2"), taken_at=clock.now)
    assert len(books.on_submitted(Submit(requests=tasks("alice", 10), runner="r-alice")).placed) == 6
    clock.now += 1.0
    books.on_nodes(nodes("n1", "n2", "n3"), taken_at=clock.now)  # no drain until the next message
    assert len(books.on_submitted(Submit(requests=tasks("bob", 10), runner="r-bob")).placed) == 3
    assert books.collect("job-alice").placed == []


def test_a_queue_s_counts_follow_cancels_and_restarts() -> None:
    """Cancelling a job lowers its queue's waiting count and oldest wait; a /v1/schedule
    reservation kept across a Scheduler restart keeps its queue."""
    clock = Clock()
    books = SchedulerBooks(epoch="e", lease_s=60.0, tick_s=1.0, lookahead_s=None, clock=clock, wall=clock)
    books.on_nodes([NodeStatus(name="n1", node_id="id-n1", address="127.0.0.1", alive=True,
                               resources_total={"CPU": 1.0}, resources_available={"CPU": 1.0})], taken_at=clock.now)
    books.on_submitted(Submit(requests=tasks("alice", 3, job="old"), runner="r1"))
    clock.now += 5.0
    books.on_submitted(Submit(requests=tasks("alice", 2, job="new"), runner="r2"))
    clock.now += 1.0
    alice = {q.name: q for q in books.status().queues}["alice"]
    assert (alice.running, alice.waiting, alice.oldest_wait_s) == (1, {"NORMAL": 4}, 6.0)
    books.on_cancelled("old")
    alice = {q.name: q for q in books.status().queues}["alice"]
    assert (alice.waiting, alice.oldest_wait_s) == ({"NORMAL": 2}, 1.0)
    held = SchedulerBooks(epoch="e", lease_s=60.0, tick_s=1.0, lookahead_s=None, clock=clock, wall=clock)
    held.on_nodes(books.nodes, taken_at=clock.now)
    books.on_finished("old")
    books.on_cancelled("new")
    books.on_finished("new")
    placed = books.on_submitted(Submit(requests=[SchedulingRequest(task_id="schedule:t", queue="carol")], lease_s=30.0,
                                       owner="id:carol"))
    assert placed.placed
    assert held.on_restored(books.held_for_callers()) == 1
    assert [(q.name, q.running) for q in held.status().queues] == [("carol", 1)]


def test_a_waiting_job_says_where_its_queue_stands_in_fair_share() -> None:
    """`pending.fair_share`: alice holds the cluster, so bob's tasks go first; bob's job says it is
    under its share; a job alone at its priority says nothing of fair share."""
    clock = Clock()
    books = SchedulerBooks(epoch="e", lease_s=60.0, tick_s=1.0, lookahead_s=None, clock=clock, wall=clock)
    books.on_nodes([NodeStatus(name="n1", node_id="id-n1", address="127.0.0.1", alive=True,
                               resources_total={"CPU": 4.0}, resources_available={"CPU": 4.0})], taken_at=clock.now)
    books.on_submitted(Submit(requests=tasks("alice", 6), runner="r-alice"))
    assert books.pending("job-alice").fair_share is None  # alone at its priority
    clock.now += 1.0
    books.on_submitted(Submit(requests=tasks("bob", 3), runner="r-bob"))
    alice, bob = books.pending("job-alice"), books.pending("job-bob")
    assert alice.fair_share == ("queue alice holds 100% of the CPU against a fair share of 50% (weight 1 of 2): "
                                "the other queues' tasks at its priority go first")
    assert bob.fair_share == ("queue bob holds nothing against a fair share of 50% (weight 1 of 2): "
                              "its tasks go before older ones of queues holding more")


QUOTAS = {"A": QueueSettings(quota={"CPU": 2.0}), "B": QueueSettings(quota={"CPU": 4.0})}


def reserved_per_node(placed: list) -> Counter[str]:
    return Counter(decision.node_name for decision in placed)


def test_a_queue_borrows_idle_quota_but_only_into_capacity_free_now() -> None:
    """Issue 22's quotas: A (quota 2 CPUs) takes the whole 6-CPU cluster while B (quota 4) is
    idle, but nothing beyond what is free: borrowed work is never queued inside Ray, where it
    would start before what B is owed. Without quotas the lookahead queues 6 more."""
    for quotas, expected in ((QUOTAS, 6), (None, 12)):
        clock = Clock()
        core = SchedulerCore(clock=clock, lookahead_s=0.1, quotas=quotas)
        placed = drained(core, clock, [tasks("A", 20)], SIX_CPUS)
        assert len(placed) == expected
    summaries = [decision.explanation.summary for decision in placed_with_quotas(tasks("A", 3))]
    assert "queue A is within its quota: 0 of 2 CPU" in summaries[0]
    assert "queue A is within its quota: 1 of 2 CPU" in summaries[1]
    assert "queue A borrows beyond its quota (holds 2 of 2 CPU): placed only into capacity free now" in summaries[2]


def placed_with_quotas(requests: list[SchedulingRequest]) -> list:
    clock = Clock()
    core = SchedulerCore(clock=clock, lookahead_s=0.1, quotas=QUOTAS)
    return drained(core, clock, [requests], SIX_CPUS)


def test_what_a_queue_lent_comes_back_at_task_boundaries_before_any_borrowed_work() -> None:
    """A borrows all 6 CPUs; B (quota 4) submits while more of A's work waits. B's tasks wait
    here, not inside Ray behind A's running tasks on one node: each slot that frees, on whichever
    node, is B's until B holds its 4, and A, borrowing, gets none of them; once A's tasks have
    ended, A is owed its 2 before B borrows."""
    clock = Clock()
    core = SchedulerCore(clock=clock, lookahead_s=0.1, quotas=QUOTAS)
    requests = tasks("A", 10) + tasks("B", 8)
    full = ClusterView.of([make_node("a", cpus=4, reserved={"CPU": 4.0}), make_node("b", cpus=2, reserved={"CPU": 2.0})],
                          queue_usage={"A": {"CPU": 6.0}})
    assert drained(core, clock, [tasks("A", 10), tasks("B", 8)], full) == []
    # one of A's tasks on b ended: B's first, though queued inside Ray it would have waited on a
    freed = ClusterView.of([make_node("a", cpus=4, reserved={"CPU": 4.0}), make_node("b", cpus=2, reserved={"CPU": 1.0})],
                           queue_usage={"A": {"CPU": 5.0}})
    placed = core.drain(freed).placed
    assert [(decision.task_id, decision.node_name) for decision in placed] == [("job-B-0", "b")]
    assert "queue B is within its quota: 0 of 4 CPU" in placed[0].explanation.summary
    # three of A's on a ended: B's three more, A (at its quota of 2) would borrow and gets none
    more = ClusterView.of([make_node("a", cpus=4, reserved={"CPU": 1.0}), make_node("b", cpus=2, reserved={"CPU": 2.0})],
                          queue_usage={"A": {"CPU": 2.0}, "B": {"CPU": 1.0}})
    assert placed_per_queue(core.drain(more).placed, requests) == Counter({"B": 3})
    # A's tasks have all ended and B's 4 run, 2 CPUs free: A is within its quota again, B at its
    # quota would borrow, so A gets both
    later = ClusterView.of([make_node("a", cpus=4, reserved={"CPU": 3.0}), make_node("b", cpus=2, reserved={"CPU": 1.0})],
                           queue_usage={"A": {"CPU": 0.0}, "B": {"CPU": 4.0}})
    assert placed_per_queue(core.drain(later).placed, requests) == Counter({"A": 2})


def test_a_quota_s_work_uses_the_lookahead_when_no_other_queue_waits_at_its_priority() -> None:
    """B alone, within its quota of 4 on a full cluster (A's tasks run, none waits): B's tasks
    are queued inside Ray behind the running ones, one per slot (a run time not yet learned), as
    without quotas: nothing else could take a slot before them."""
    clock = Clock()
    core = SchedulerCore(clock=clock, lookahead_s=0.1, quotas=QUOTAS)
    full = ClusterView.of([make_node("a", cpus=4, reserved={"CPU": 4.0}), make_node("b", cpus=2, reserved={"CPU": 2.0})],
                          queue_usage={"A": {"CPU": 6.0}})
    assert placed_per_queue(drained(core, clock, [tasks("B", 8)], full), tasks("B", 8)) == Counter({"B": 4})


def test_a_borrowing_limit_holds_a_queue_and_says_so_and_a_task_it_can_never_fit_is_refused() -> None:
    clock = Clock()
    quotas = {"A": QueueSettings(quota={"CPU": 2.0}, borrowing_limit={"CPU": 1.0})}
    core = SchedulerCore(clock=clock, lookahead_s=0.1, quotas=quotas)
    big = tasks("A", 1, cpus=4.0, job="big")
    result = core.submit(tasks("A", 6) + big, SIX_CPUS)
    assert len(result.placed) == 3  # 2 within its quota, 1 borrowed: 3 of 6 CPUs while 3 are idle
    assert core.why_waiting("job-A") == ("queue A is at its quota plus borrowing limit (holds 3 of 2 CPU): "
                                         "it waits for its own tasks to end")
    assert [(r.task_id, r.reason) for r in result.rejected] == [
        ("big-0", "its queue may hold at most 3 CPU (quota 2 plus borrowing limit 1); the task needs 4")]


def test_a_job_held_by_its_queue_s_limit_gets_no_forecast_and_is_told_why() -> None:
    """The replay frees slots for whoever is next, not for the limited queue alone: its estimate
    would be wrong, so there is none, and the note says why (the reason too)."""
    clock = Clock()
    books = SchedulerBooks(epoch="e", lease_s=60.0, tick_s=1.0, lookahead_s=0.1, clock=clock, wall=clock,
                           queues={"A": QueueSettings(quota={"CPU": 2.0}, borrowing_limit={"CPU": 1.0})})
    books.on_nodes([NodeStatus(name="n1", node_id="id-n1", address="127.0.0.1", alive=True,
                               resources_total={"CPU": 6.0}, resources_available={"CPU": 6.0})], taken_at=clock.now)
    assert len(books.on_submitted(Submit(requests=tasks("A", 6), runner="r-a")).placed) == 3
    inputs = books.pending_inputs("job-A")
    assert inputs is not None
    pending = inputs.forecast()
    assert (pending.expected_start_s, pending.waiting) == (None, 3)
    assert pending.note is not None and "its queue is at its quota plus borrowing limit" in pending.note
    assert pending.reason is not None and "at its quota plus borrowing limit" in pending.reason


def test_quota_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="borrowing_limit names GPU, which quota does not"):
        QueueSettings(quota={"CPU": 2}, borrowing_limit={"GPU": 1})
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        QueueSettings(quota={"CPU": -1})
    with pytest.raises(ValidationError, match="cpu: Ray's resource is 'CPU'"):
        QueueSettings(quota={"cpu": 2})
    with pytest.raises(ValidationError, match="quota: memory is in bytes, as Ray counts it"):
        QueueSettings(quota={"memory": 4096})


def test_a_resource_with_no_borrowing_limit_may_borrow_whatever_is_idle() -> None:
    """As in Kueue: team's CPU is capped at 4 + 2, its GPU, named in no limit, is not."""
    team = QueueSettings(quota={"CPU": 4, "GPU": 1}, borrowing_limit={"CPU": 2})
    assert (team.cap("CPU"), team.cap("GPU"), team.cap("memory")) == (6.0, None, None)
    assert standing(team, {"CPU": 1.0, "GPU": 3.0}, {"CPU": 1.0, "GPU": 1.0}) == BORROWS
    assert standing(team, {"CPU": 6.0}, {"CPU": 1.0}) == AT_LIMIT


def test_each_queue_shows_its_quota_and_what_it_borrows() -> None:
    """What `/v1/cluster`, `grid queue` and the web page show of quotas, through the books: A
    borrows 4 CPUs beyond its 2 while B is idle (B is listed, with its quota); when B submits
    while A's work waits too, B's waits for the slots that free, and A gets nothing more."""
    clock = Clock()
    books = SchedulerBooks(epoch="e", lease_s=60.0, tick_s=1.0, lookahead_s=0.1, clock=clock, wall=clock,
                           queues=QUOTAS)
    books.on_nodes([NodeStatus(name=name, node_id=f"id-{name}", address="127.0.0.1", alive=True,
                               resources_total={"CPU": 3.0}, resources_available={"CPU": 3.0})
                    for name in ("n1", "n2")], taken_at=clock.now)
    assert len(books.on_submitted(Submit(requests=tasks("A", 10), runner="r-a")).placed) == 6
    statuses = {status.name: status for status in books.status().queues}
    assert (statuses["A"].quota, statuses["A"].borrowed) == ({"CPU": 2.0}, {"CPU": 4.0})
    assert (statuses["B"].quota, statuses["B"].borrowed, statuses["B"].running) == ({"CPU": 4.0}, {}, 0)
    clock.now += 1.0
    assert books.on_submitted(Submit(requests=tasks("B", 8), runner="r-b")).placed == []
    assert books.collect("job-A").placed == []
    statuses = {status.name: status for status in books.status().queues}
    assert (statuses["B"].waiting, statuses["B"].borrowed, statuses["A"].waiting) == ({"NORMAL": 8}, {}, {"NORMAL": 4})


def test_work_a_quota_covers_goes_before_borrowed_work_though_fair_share_would_choose_the_borrower() -> None:
    """B (quota 5) holds 3 of 6 CPUs, A (quota 1) holds 2, one borrowed; one CPU frees. Fair
    share alone serves A (2 of 6 against 3 of 6); B is owed it, so B gets it."""
    clock = Clock()
    core = SchedulerCore(clock=clock, quotas={"A": QueueSettings(quota={"CPU": 1.0}),
                                              "B": QueueSettings(quota={"CPU": 5.0})})
    view = ClusterView.of([make_node("a", cpus=4, reserved={"CPU": 3.0}), make_node("b", cpus=2, reserved={"CPU": 2.0})],
                          queue_usage={"A": {"CPU": 2.0}, "B": {"CPU": 3.0}})
    placed = drained(core, clock, [tasks("A", 2), tasks("B", 2)], view)
    assert placed_per_queue(placed, tasks("A", 2) + tasks("B", 2)) == Counter({"B": 1})
    assert "queue B is within its quota: 3 of 5 CPU" in placed[0].explanation.summary
    fair_only = SchedulerCore(clock=clock)
    placed = drained(fair_only, clock, [tasks("A", 2), tasks("B", 2)], view)
    assert placed_per_queue(placed, tasks("A", 2) + tasks("B", 2)) == Counter({"A": 1})


def reclaiming_books(clock: Clock) -> SchedulerBooks:
    queues = {"A": QueueSettings(quota={"CPU": 2.0}),
              "B": QueueSettings(quota={"CPU": 4.0}, reclaim="cancel_running")}
    books = SchedulerBooks(epoch="e", lease_s=60.0, tick_s=1.0, lookahead_s=0.1, clock=clock, wall=clock,
                           queues=queues)
    books.on_nodes([NodeStatus(name=name, node_id=f"id-{name}", address="127.0.0.1", alive=True,
                               resources_total={"CPU": 3.0}, resources_available={"CPU": 3.0})
                    for name in ("n1", "n2")], taken_at=clock.now)
    return books


def job_in(queue: str, tasks: int, strategy: str = "load_balanced", node: str | None = None) -> JobBooks:
    spec = JobSubmission(task="sleep", count=tasks, strategy=strategy, queue=queue, node=node)
    return JobBooks(id=f"job-{queue}", spec=spec, task_name="sleep", requirements=ResourceRequirement(cpu_count=1),
                    outcomes=OutcomeTable(f"job-{queue}", tasks))


def submitted(books: SchedulerBooks, job: JobBooks) -> Placements:
    return books.on_submitted(Submit(requests=job.next_requests(job.spec.task_count), runner=f"r-{job.id}",
                                     unsent=job.unsent, takes_back=True))


def sent(job: JobBooks, reply: Placements) -> list[str]:
    """What the job's runner hands Ray of `reply`; the ids, in order."""
    placed = list(job.on_placements(reply))
    for index, decision in placed:
        job.on_sent([(index, decision)], ref=object())
    return [decision.task_id for _, decision in placed]


@pytest.mark.parametrize("strategy", ["load_balanced", "node_specific"])
def test_a_queue_that_reclaims_stops_borrowed_running_tasks_youngest_first_and_each_runs_again(strategy: str) -> None:
    """B (`reclaim: cancel_running`, quota 4) submits while A (quota 2) runs on all 6 CPUs: the
    Scheduler asks A's runner to stop A's 4 youngest tasks, only the 4 A borrowed (A keeps its
    2), once; stopped, they are queued again with their age, and B's 4 are placed in the slots
    they free before A borrows again. A node_specific job could not move: it is never asked."""
    clock = Clock()
    books = reclaiming_books(clock)
    a = job_in("A", 6, strategy, node="n1" if strategy == "node_specific" else None)  # none of A's waits
    if strategy == "node_specific":
        books.on_nodes([NodeStatus(name="n1", node_id="id-n1", address="127.0.0.1", alive=True,
                                   resources_total={"CPU": 6.0}, resources_available={"CPU": 6.0})],
                       taken_at=clock.now)
    first = sent(a, submitted(books, a))
    assert len(first) == 6
    clock.now += 1.0
    b = job_in("B", 8)
    assert submitted(books, b).placed == []
    asked = books.collect(a.id).reclaim
    if strategy == "node_specific":
        assert asked == []
        return
    assert asked == list(reversed(first))[:4]  # the youngest: of tasks placed together, the last placed
    books.on_leases_checked([], set())  # the tick drains again
    assert books.collect(a.id).reclaim == []  # asked once: what is coming back counts
    books.on_reported(Report(group=a.id))  # A's runner says something else meanwhile: still coming
    books.on_leases_checked([], set())
    assert books.collect(a.id).reclaim == []
    stopped = a.to_reclaim(asked)
    assert [f"{a.id}-{index}" for index, _ in stopped] == asked
    for index, _ in stopped:  # Ray stopped them (TaskCancelledError): `record_ray_end` hands each back
        a.on_taken_back(index)
    a.check()
    report = a.take_report()
    assert report is not None and sorted(report.returned) == sorted(asked)
    books.on_reported(report)
    assert len(sent(b, books.collect(b.id))) == 4
    assert books.collect(a.id).placed == []  # A's stopped tasks wait: borrowing, behind B's quota
    assert {status.name: status.running for status in books.status().queues} == {"A": 2, "B": 4}
    books.check()


def test_reclaim_needs_a_quota() -> None:
    with pytest.raises(ValidationError, match="reclaim: a queue reclaims only what its quota owes it"):
        QueueSettings(reclaim="cancel_running")


def test_reclaim_makes_room_on_one_node_for_a_larger_task_and_that_room_is_the_owed_queue_s() -> None:
    """B's task needs 3 CPUs: stops spread over both nodes (2 and 2) would free 4 CPUs and room
    for nothing. All 3 are stopped on one node; handed back, the room is B's, not A's again."""
    clock = Clock()
    books = reclaiming_books(clock)
    a = job_in("A", 6)
    first = sent(a, submitted(books, a))
    clock.now += 1.0
    b = job_in("B", 1)
    b.requirements = ResourceRequirement(cpu_count=3)
    assert submitted(books, b).placed == []
    asked = books.collect(a.id).reclaim
    nodes = {a.running[a.index_of(task_id)][0].node_name for task_id in asked}
    assert len(asked) == 3 and len(nodes) == 1, (asked, nodes)
    assert set(asked) <= set(first)
    for index, _ in a.to_reclaim(asked):
        a.on_taken_back(index)
    books.on_reported(a.take_report())
    placed = sent(b, books.collect(b.id))
    assert len(placed) == 1 and books.collect(a.id).placed == []
    books.check()


def test_a_task_asked_back_earlier_that_had_started_is_stopped_when_reclaimed() -> None:
    """Asked back for higher work and already running (it runs on), then reclaimed: the runner
    stops it all the same (forced, the name that guards it notwithstanding)."""
    books = reclaiming_books(Clock())
    a = job_in("A", 2)
    first = sent(a, submitted(books, a))
    assert [index for index, _ in a.to_take_back(first[:1])] == [0]
    assert [index for index, _ in a.to_reclaim(first)] == [0, 1]
    # the Scheduler asks again only past its patience (the stops did not land): stopped again
    assert [index for index, _ in a.to_reclaim(first)] == [0, 1]
    a.check()


def test_room_already_coming_is_used_before_more_tasks_are_stopped_and_is_held_for_the_owed_task() -> None:
    """Three 3-CPU nodes full of A's tasks; B owes one 3-CPU task. The first drain stops 3 on one
    node; the drains after it, before they are handed back, stop nothing more. Handed back one
    at a time, the room is held for B's task: A's stopped tasks, placed again, do not fill it."""
    clock = Clock()
    books = reclaiming_books(clock)
    books.on_nodes([NodeStatus(name=name, node_id=f"id-{name}", address="127.0.0.1", alive=True,
                               resources_total={"CPU": 3.0}, resources_available={"CPU": 3.0})
                    for name in ("n1", "n2", "n3")], taken_at=clock.now)
    a = job_in("A", 9)
    sent(a, submitted(books, a))
    clock.now += 1.0
    b = job_in("B", 1)
    b.requirements = ResourceRequirement(cpu_count=3)
    assert submitted(books, b).placed == []
    asked = books.collect(a.id).reclaim
    assert len(asked) == 3
    for _ in range(3):
        clock.now += 0.5
        books.on_leases_checked([], set())
        assert books.collect(a.id).reclaim == []
    for task_id in asked:  # handed back one report at a time
        a.on_taken_back(a.index_of(task_id))
        books.on_reported(a.take_report())
        sent(a, books.collect(a.id))
    assert len(sent(b, books.collect(b.id))) == 1
    books.check()
