"""The Scheduler's books (`grid_serve.books.SchedulerBooks`) and a job runner's books for one job
(`grid_serve.job_books.JobBooks`) driven against each other through the protocol's messages,
with a shell as thin as the runner's: no cluster, no Ray. Each test is a sequence of what a
runner and the Scheduler do, including the races the notes found (cancel during the window, a
report that crosses an adopt, a restart between reports, a lease that lapses while its runner
lives, a node lost under a task); after every step both books' invariants hold, and at the end
spread is exact and nothing is left held."""

from __future__ import annotations

import pickle
from collections import Counter

import pytest

from grid_serve.books import SchedulerBooks
from grid_serve.errors import TooBusyError
from grid_serve.job_books import JobBooks
from grid_serve.ledger import Completion
from grid_serve.limits import Limits
from grid_serve.models import JobSubmission, NodeStatus, ResourceRequirement, SchedulingRequest
from grid_serve.outcomes import OutcomeTable
from grid_serve.pending import Forecast, replay
from grid_serve.protocol import Finished, Placements, Report, Submit
from grid_serve.view import Running, make_node

NODES = [NodeStatus(name=name, node_id=f"id-{name}", address="127.0.0.1", alive=True,
                    resources_total={"CPU": 2.0}, resources_available={"CPU": 2.0})
         for name in ("gpu-master", "gpu1", "gpu2")]
RUNNER = "grid-runner-grid-test"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def tick(self, books: SchedulerBooks, seconds: float) -> list[str]:
        """`seconds` pass with the Scheduler's tick running each second (fresh node snapshots);
        no owner renews. Returns the overdue groups the last tick found."""
        overdue: list[str] = []
        for _ in range(int(seconds)):
            self.now += 1.0
            books.on_nodes(NODES, taken_at=self.now)
            overdue = books.owners.overdue()
        return overdue


def books_at(clock: Clock, admission: float = 1.0, **limits: int) -> SchedulerBooks:
    """`admission` 2: each node takes twice its CPUs, half of them queued inside Ray."""
    books = SchedulerBooks(epoch=f"e{clock.now:g}", lease_s=5.0, tick_s=1.0, lookahead_s=None, admission=admission,
                           limits=Limits(**limits), clock=clock, wall=clock)
    books.on_nodes(NODES, taken_at=clock.now)
    return books


class Runner:
    """A job runner's shell reduced to its messages, around the runner's real books (`JobBooks`):
    what `deployments/runner.py` does with one job, with Ray's task ends played by the test."""

    def __init__(self, books: SchedulerBooks, job: str, tasks: int, first_window: int = 4,
                 strategy: str = "spread", task: str = "sleep", priority: str = "normal",
                 takes_back: bool = False) -> None:
        self.books = books
        self.job = JobBooks(id=job, spec=JobSubmission(task=task, count=tasks, strategy=strategy, priority=priority),
                            task_name=task, requirements=ResourceRequirement(cpu_count=1),
                            outcomes=OutcomeTable(job, tasks))
        self.first_window = first_window
        self.takes_back = takes_back
        self.asked_back: list[str] = []  # what the Scheduler asked back, in order
        self.placed_on: Counter[str] = Counter()  # node name -> tasks placed there

    def submit(self) -> None:
        requests = self.job.next_requests(self.first_window)
        self.take(self.books.on_submitted(Submit(requests=requests, runner=RUNNER, unsent=self.job.unsent,
                                                 takes_back=self.takes_back)))

    def over(self) -> Finished:
        """Every task ended and reported: the job's end, as the runner tells it."""
        self.end(len(self.job.running))
        assert self.job.settled
        return Finished(group=self.job.id, completions=self.job.on_end())

    def take(self, reply: Placements) -> None:
        for index, decision in self.job.on_placements(reply):
            self.job.on_sent([(index, decision)], ref=object())  # one Ray task each
            self.placed_on[decision.node_name] += 1
        self.asked_back += reply.take_back
        self.job.top_up()
        self.job.check()
        if not reply.known:
            self.adopt()

    def end(self, count: int, ok: bool = True) -> None:
        """`count` running tasks end (oldest first)."""
        for index in list(self.job.running)[:count]:
            decision, _ = self.job.running[index]
            self.job.on_task_ended(index, ok, None if ok else "failed", {
                "ok": ok, "error": None, "duration_s": 0.5, "node_id": decision.node_id, "result": index,
                "started_at": 0.0})

    def drop_asked_back(self, started: set[str] = frozenset()) -> list[str]:
        """Ray drops what the Scheduler asked back, except the tasks that had `started` (they run
        on); returns the ids dropped."""
        asked, self.asked_back = self.asked_back, []
        dropped = []
        for index, _ in self.job.to_take_back(asked):
            task_id = f"{self.job.id}-{index}"
            if task_id not in started:
                self.placed_on[self.job.running[index][0].node_name] -= 1
                self.job.on_taken_back(index)
                dropped.append(task_id)
        self.job.check()
        return dropped

    def report(self) -> Report | None:
        return self.job.take_report()

    def send(self, report: Report | None) -> None:
        if report is not None:
            self.take(self.books.on_reported(report))

    def adopt(self) -> None:
        self.take(self.books.on_adopted(self.job.adoption(RUNNER)))

    def run_to_end(self, batch: int = 2) -> None:
        for _ in range(self.job.spec.task_count + 2):
            if self.job.settled:
                break
            self.end(batch)
            self.send(self.report())
            self.books.check()
        assert self.job.settled, "the job stopped moving"
        self.books.on_finished(self.job.id, completions=self.job.on_end())
        self.job.check()


def assert_empty(books: SchedulerBooks) -> None:
    books.check()
    assert books.meta == {} and books.ledger.reservations == {} and len(books.core) == 0
    assert books.queued_total() == 0 and books.outbox == {}


def test_a_job_runs_through_its_window_with_exact_spread_and_leaves_nothing_held() -> None:
    books = books_at(Clock())
    runner = Runner(books, "job1", tasks=30)
    runner.submit()
    books.check()
    assert len(runner.job.running) == 4 and books.queued_total() == 26  # the window placed, the rest held back
    runner.run_to_end()
    assert runner.placed_on == {"gpu-master": 10, "gpu1": 10, "gpu2": 10}
    assert runner.job.status().state == "succeeded" and runner.job.outcomes.succeeded == 30
    assert_empty(books)


def test_a_report_sent_twice_frees_nothing_twice() -> None:
    books = books_at(Clock())
    first, second = Runner(books, "a", tasks=6, first_window=6), Runner(books, "b", tasks=3, first_window=3)
    first.submit()
    second.submit()
    assert len(first.job.running) == 6 and second.job.running == {}  # the cluster's 6 CPUs are first's
    first.end(1)
    report = first.report()
    assert report is not None
    first.send(report)
    first.send(Report(group="a", ended=report.ended))  # a retried call: the same end again
    books.check()
    assert len(books.ledger.reservations) == 6  # first's 5 and one of second's, not two of second's


@pytest.mark.parametrize("report_first", [True, False], ids=["report-lands-before-cancel", "cancel-alone"])
def test_cancel_during_the_window_drops_what_waits_and_what_a_report_in_flight_asked_for(report_first: bool) -> None:
    books = books_at(Clock())
    filler = Runner(books, "filler", tasks=6, first_window=6)
    filler.submit()
    runner = Runner(books, "job", tasks=20)
    runner.submit()
    assert runner.job.running == {} and books.queued_total() == 20 and len(runner.job.requeue) == 16
    if report_first:  # the window's next 16 went with a report just before the cancel (the runner's lock orders them)
        runner.send(runner.report())
        assert books.core.queued_by_group()["job"] == 20
    never_sent = runner.job.begin_cancel()
    assert len(never_sent) == (0 if report_first else 16)
    dropped = books.on_cancelled("job")
    runner.job.on_cancelled([request.task_id for request in never_sent] + dropped)
    books.check()
    runner.job.check()
    assert books.queued_total() == 0 and runner.job.settled and runner.job.outcomes.cancelled == 20
    books.on_finished("job", completions=runner.job.on_end())
    filler.run_to_end()
    assert runner.job.status().state == "cancelled"
    assert_empty(books)


@pytest.mark.parametrize("order", ["report-then-adopt", "adopt-then-report"])
def test_a_restart_between_reports_is_adopted_with_spread_kept_exact(order: str) -> None:
    clock = Clock()
    books = books_at(clock)
    runner = Runner(books, "job", tasks=30)
    runner.submit()
    runner.end(2)
    runner.send(runner.report())
    clock.now += 1
    runner.books = books = books_at(clock)  # the Scheduler restarted: a new epoch knows nothing
    runner.end(2)
    in_flight = runner.report()
    if order == "report-then-adopt":
        runner.send(in_flight)  # unknown: nothing placed; the runner adopts with all it holds
    else:  # the heartbeat saw the new epoch first; the report crossed the adopt
        runner.adopt()
        runner.send(in_flight)  # its ends name tasks the adopt did not hold: nothing freed twice
    books.check()
    assert books.owners.knows("job")
    assert dict(books.core.group_counts.live("job")) == runner.job.placed_per_node  # what it placed, counted again
    assert set(books.ledger.reservations) == {d.task_id for d, _ in runner.job.running.values()}
    runner.run_to_end()
    assert runner.placed_on == {"gpu-master": 10, "gpu1": 10, "gpu2": 10}
    assert_empty(books)


def test_a_lapsed_lease_is_kept_while_its_runner_answers_and_reclaimed_when_it_does_not() -> None:
    clock = Clock()
    books = books_at(clock)
    runner = Runner(books, "job", tasks=12)
    runner.submit()
    overdue = clock.tick(books, 6)  # past the 5 s lease with no renewal
    assert overdue == ["job"]
    assert books.on_leases_checked(overdue, held={"job"}) == []  # the runner answered: kept
    books.check()
    assert len(books.ledger.reservations) == 4
    assert books.on_leases_checked(clock.tick(books, 6), held=set()) == ["job"]
    assert_empty(books)
    assert "stopped renewing" in (books.owners.gone.get("job") or "")
    runner.end(1)
    runner.send(runner.report())  # it was alive after all: its report is answered "unknown"; it adopts
    books.check()
    assert books.owners.knows("job")
    assert set(books.ledger.reservations) == {d.task_id for d, _ in runner.job.running.values()}
    runner.run_to_end()
    assert runner.job.outcomes.succeeded == 12
    assert_empty(books)


def test_a_task_lost_with_its_node_is_placed_again_elsewhere() -> None:
    books = books_at(Clock())
    runner = Runner(books, "job", tasks=4, first_window=4)  # 2/1/1 on three 2-CPU nodes: room beside gpu2
    runner.submit()
    index = next(i for i, (d, _) in runner.job.running.items() if d.node_name == "gpu2")
    assert runner.job.on_lost(index, node_died=True, what="NodeDiedError") is None  # moved, not ended
    report = runner.report()
    assert report is not None and report.lost_nodes == ["id-gpu2"] and [r.task_id for r in report.requeue] == [
        f"job-{index}"]
    runner.send(report)
    books.check()
    again, _ = runner.job.running[index]
    assert again.node_name != "gpu2" and runner.job.attempts[index] == 2
    runner.run_to_end()
    assert runner.job.outcomes.succeeded == 4
    assert_empty(books)


def test_the_queue_cap_counts_what_runners_hold_back() -> None:
    books = books_at(Clock(), max_queued_tasks=50)
    Runner(books, "filler", tasks=6, first_window=6).submit()
    Runner(books, "big", tasks=40).submit()
    with pytest.raises(TooBusyError):
        Runner(books, "late", tasks=20).submit()
    books.check()
    assert books.queued_total() == 40 and "late" not in {m.group for m in books.meta.values()}


def test_a_live_task_id_is_refused_and_the_first_stays_reserved() -> None:
    books = books_at(Clock())
    Runner(books, "job", tasks=2, first_window=2).submit()
    again = SchedulingRequest(task_id="job-0", job_id="other", task_type="sleep")
    reply = books.on_submitted(Submit(requests=[again], runner=RUNNER))
    assert [r.task_id for r in reply.rejected] == ["job-0"] and "already reserved" in reply.rejected[0].reason
    books.check()
    assert books.ledger.reservations["job-0"].group == "job"


def test_returned_placements_are_released_and_uncounted() -> None:
    """A grid.remote stream hands back placements it did not use: no longer counted for spread."""
    books = books_at(Clock())
    Runner(books, "job", tasks=3, first_window=3).submit()
    books.on_reported(Report(group="job", returned=["job-0", "job-1"]))
    books.check()
    assert sum(books.core.group_counts.live("job").values()) == 1 and list(books.ledger.reservations) == ["job-2"]


def test_news_wakes_only_the_groups_it_is_for() -> None:
    books = books_at(Clock())
    filler = Runner(books, "filler", tasks=8, first_window=8)  # 6 run, 2 wait: older than the other job's
    filler.submit()
    Runner(books, "waiting", tasks=2, first_window=2).submit()
    books.take_woken()
    filler.end(1)
    filler.send(filler.report())  # its own 7th task takes the slot, and goes with the reply
    assert books.take_woken() == set()  # so no long-poll of it is woken to find nothing
    filler.end(2)
    filler.send(filler.report())  # its 8th, then the other job's first
    assert books.take_woken() == {"waiting"} and books.has_news("waiting")
    assert [d.task_id for d in books.collect("waiting").placed] == ["waiting-0"]
    assert not books.has_news("waiting")


def test_reservations_kept_for_callers_come_back_with_what_is_left_of_their_lease() -> None:
    clock = Clock()
    books = books_at(clock)
    request = SchedulingRequest(task_id="schedule:mine", task_type="external",
                                requirements=ResourceRequirement(cpu_count=2))
    placed = books.on_submitted(Submit(requests=[request], lease_s=60.0, owner="alice")).placed
    Runner(books, "job", tasks=2, first_window=2).submit()  # a runner's: never kept (its runner re-registers it)
    kept = books.held_for_callers()
    assert [record["task_id"] for record in kept] == ["schedule:mine"] and books.callers_version > 0
    clock.now += 20
    restarted = books_at(clock)
    assert restarted.on_restored(kept) == 1
    restarted.check()
    reservation = restarted.ledger.reservations["schedule:mine"]
    assert reservation.node_id == placed[0].node_id and reservation.lease_until == pytest.approx(clock.now + 40)
    version = restarted.callers_version
    assert restarted.on_completed([Completion(task_id="schedule:mine")]) == 1
    assert restarted.held_for_callers() == [] and restarted.callers_version > version  # the release is kept too
    clock.now += 60
    assert books_at(clock).on_restored(kept) == 0  # its lease ran out meanwhile: not taken back


def test_a_request_whose_caller_left_releases_only_what_it_made() -> None:
    books = books_at(Clock())
    mine = SchedulingRequest(task_id="schedule:x", task_type="external", requirements=ResourceRequirement(cpu_count=1))
    assert books.on_submitted(Submit(requests=[mine], lease_s=60.0, owner="alice", request_key="alice-key")).placed
    refused = books.on_submitted(Submit(requests=[mine], lease_s=60.0, owner="mallory", request_key="mallory-key"))
    assert refused.rejected  # the same task id: refused, and its caller then hangs up
    assert books.on_abandoned("schedule:x", "mallory-key") is False
    assert "schedule:x" in books.ledger.reservations  # alice's stays
    assert books.on_abandoned("schedule:x", "alice-key") is True
    books.check()
    assert books.ledger.reservations == {} and books.held_for_callers() == []


def test_jobs_told_over_twice_or_unknown_change_nothing() -> None:
    books = books_at(Clock())
    job = Runner(books, "job", tasks=2, first_window=2)
    job.submit()
    told = job.over()
    books.on_groups_ended([told])
    books.on_groups_ended([told, Finished(group="never-seen")])  # a retried call; a restarted Scheduler's
    assert_empty(books)


def test_one_schedule_caller_holds_at_most_its_cap_and_others_are_not_held_back() -> None:
    """`max_schedule_held` per caller: placed and waiting reservations both count, callers
    without a token share one count, handle calls (the cluster) and job runners none; a
    completed reservation makes room again, and so does one restored after a restart."""
    clock = Clock()
    books = books_at(clock, max_schedule_held=3)

    def reserve(task_id: str, owner: str | None) -> Placements:
        request = SchedulingRequest(task_id=f"schedule:{task_id}", task_type="external",
                                    requirements=ResourceRequirement(cpu_count=0.5))
        return books.on_submitted(Submit(requests=[request], lease_s=60.0, owner=owner))

    for i in range(3):
        reserve(f"ana-{i}", "id:ana")
    with pytest.raises(TooBusyError, match="of ana: 3 placed or waiting, at most 3 .max_schedule_held") as refused:
        reserve("ana-3", "id:ana")
    assert refused.value.field == "task_id"
    restarted = books_at(clock, max_schedule_held=3)
    restarted.on_restored(books.held_for_callers())
    with pytest.raises(TooBusyError):  # what a predecessor granted still counts
        restarted.on_submitted(Submit(requests=[SchedulingRequest(task_id="schedule:ana-9", task_type="external")],
                                      lease_s=60.0, owner="id:ana"))
    for i in range(3):
        reserve(f"bo-{i}", "id:bo")  # another identity has a count of its own
        reserve(f"anon-{i}", f"key:{i}")  # callers without a token: each request its own key, one count
    with pytest.raises(TooBusyError, match="of callers without a token: 3 placed"):
        reserve("anon-3", "key:3")
    for i in range(5):
        reserve(f"handle-{i}", "cluster")  # handle calls: not counted
    Runner(books, "job", tasks=8, first_window=8).submit()  # nor a runner's tasks
    books.on_completed([Completion(task_id="schedule:ana-0", ok=True, duration_s=None)])
    reserve("ana-3", "id:ana")  # room again
    books.check()


def test_the_metrics_hear_each_placement_with_its_priority_and_the_queue_per_priority() -> None:
    """What the Scheduler exports (`deployments/telemetry.py`): the drain observer gets every
    placement with its task's priority and what waits afterwards, per priority."""
    heard: list[tuple[list[tuple[str, str]], list[tuple[str, int]]]] = []

    def observe(placed, decided, seconds, queue) -> None:
        heard.append(([(d.task_id, str(p)) for d, p in placed], [(str(p), n) for p, n, _ in queue]))

    clock = Clock()
    books = SchedulerBooks(epoch="e", lease_s=5.0, tick_s=1.0, lookahead_s=None, admission=1.0, limits=Limits(),
                           clock=clock, wall=clock, on_drain=observe)
    books.on_nodes(NODES, taken_at=clock.now)
    low = [SchedulingRequest(task_id=f"low-{i}", job_id="low", task_type="t", priority="low") for i in range(8)]
    books.on_submitted(Submit(requests=low, runner=RUNNER))  # 6 CPUs: 6 placed, 2 wait
    high = [SchedulingRequest(task_id="high-0", job_id="high", task_type="t", priority="high")]
    books.on_submitted(Submit(requests=high, runner=RUNNER))  # waits too: nothing is free
    assert heard[0] == ([(f"low-{i}", "low") for i in range(6)], [("low", 2)])
    assert heard[-1][1] == [("high", 1), ("low", 2)]


def test_a_finished_job_keeps_its_counts_but_not_its_arguments() -> None:
    """A finished job is kept for reads, up to `finished_jobs_kept` of them per runner: its
    arguments (as large as callers make them, ObjectRefs among them pinning their objects)
    must not be kept with it (issue 20)."""
    blob = "x" * 1_000_000
    job = JobBooks(id="job", spec=JobSubmission(task="sleep", args=[[blob, i] for i in range(3)]), task_name="sleep",
                   requirements=ResourceRequirement(cpu_count=1), outcomes=OutcomeTable("job", 3))
    assert job.spec.call_args(2) == ([blob, 2], {})
    job.on_end()
    assert (job.spec.args, job.spec.task_count, job.status().total, job.status().cancelled) == (None, 3, 3, 3)
    assert len(pickle.dumps(job)) < 10_000  # what goes to a runner's keep_finished and stays there


def test_a_queued_job_says_why_it_waits_what_is_ahead_and_when_it_should_run() -> None:
    """Issue 23: from the books alone, with the run times they learned. 6 slots, all busy with
    tasks learned at 0.5 s and 0.2 s old; 3 high tasks queued ahead of the job's 6 (its runner
    holds 2 more back): the slots free in 0.3 s, the high tasks take 3 and the job 3, and its
    other 5 start as those end, at 0.8 s."""
    clock = Clock()
    books = books_at(clock)
    first = Runner(books, "first", tasks=12, first_window=12)
    first.submit()
    first.end(6)  # each took 0.5 s: learned for "sleep" on every node
    first.send(first.report())
    assert books.pending("first") is None and len(first.job.running) == 6  # nothing of it waits
    second = Runner(books, "second", tasks=8, first_window=6)
    second.submit()
    urgent = Runner(books, "urgent", tasks=3, first_window=3, priority="high")
    urgent.submit()
    clock.now += 0.2
    pending = books.pending("second")
    assert pending is not None and pending.note is None
    assert (pending.position, pending.ahead, pending.waiting, pending.held_back) == (3, {"high": 3}, 6, 2)
    assert pending.reason is not None and pending.reason.startswith("0/3 nodes are available: 3 CPU busy")
    assert (pending.expected_start_s, pending.expected_end_s) == (0.3, 1.3)
    urgent_pending = books.pending("urgent")
    assert urgent_pending is not None and (urgent_pending.position, urgent_pending.ahead) == (0, {})
    assert (urgent_pending.expected_start_s, urgent_pending.expected_end_s) == (0.3, 0.8)


def test_a_forecast_never_makes_up_a_run_time_it_has_not_learned() -> None:
    clock = Clock()
    books = books_at(clock)
    first = Runner(books, "first", tasks=6, first_window=6)
    first.submit()  # running, none ended: nothing learned
    later = Runner(books, "later", tasks=2, first_window=2, task="other")
    later.submit()
    pending = books.pending("later")
    assert pending is not None and (pending.expected_start_s, pending.expected_end_s) == (None, None)
    assert pending.note == "no run time learned yet for task type 'sleep' running on gpu-master"
    books.on_cancelled("later")
    books.on_finished("later")
    first.end(6)
    books.on_finished("first", completions=first.job.on_end())  # "sleep" learned; "other" is not
    another = Runner(books, "another", tasks=6, first_window=6)
    another.submit()
    again = Runner(books, "again", tasks=2, first_window=2, task="other")
    again.submit()
    pending = books.pending("again")
    assert pending is not None and pending.expected_start_s is None
    assert pending.note == "no run time learned yet for 'other' on gpu-master, gpu1, gpu2"


def test_a_forecast_does_not_hold_one_node_back_for_another_and_says_what_it_left_out() -> None:
    """The review's cases (grid_serve.pending.replay, pure): a task pinned to a node busy for
    100 s does not delay a job another node can take now; a running task whose run time is not
    learned is taken as never ending, and said; work ahead with no run time is left out, and said."""
    a, b = make_node("a", cpus=1), make_node("b", cpus=1)
    busy_a = {a.node_id: [Running("long", {"CPU": 1.0}, age_s=0.0)]}
    pinned = SchedulingRequest(task_id="p-0", job_id="p", task_type="short", strategy="node_specific", target_node="a")
    mine = [SchedulingRequest(task_id=f"j-{i}", job_id="j", task_type="short") for i in range(2)]
    learned = {(a.node_id, "long"): 100.0}
    forecast = replay([a, b], busy_a, learned, [pinned, *mine], "j", lambda r, n: 1.0)
    assert forecast == Forecast(start_s=0.0, end_s=2.0, unknown=None)  # both on b, one after the other
    unlearned = replay([a, b], busy_a, {}, mine, "j", lambda r, n: 1.0)
    assert (unlearned.start_s, unlearned.end_s) == (0.0, 2.0)
    assert unlearned.unknown == "no run time learned yet for task type 'long' running on a"
    new_ahead = SchedulingRequest(task_id="n-0", job_id="n", task_type="new")
    left = replay([b], {}, {}, [new_ahead, *mine], "j", lambda r, n: None if r.task_type == "new" else 1.0)
    assert (left.start_s, left.end_s, left.unknown) == (0.0, 2.0, "1 task(s) ahead left out (no run time "
                                                                   "learned, or no node may take them)")


def test_higher_work_takes_back_lower_work_queued_beyond_capacity_which_keeps_its_age() -> None:
    """Issue 22: each node (2 CPUs) took 4 low tasks at admission 2 (2 run, 2 queued in Ray).
    A high job arrives: the Scheduler asks back the 2 youngest low tasks per node (what is
    reserved beyond each node's total), the runner hands back what Ray dropped unstarted, and
    those wait again with their first age; each slot that frees goes to a high task first."""
    clock = Clock()
    books = books_at(clock, admission=2.0)
    low = Runner(books, "low", tasks=14, first_window=14, priority="low", takes_back=True)
    low.submit()
    assert len(low.job.running) == 12 and low.asked_back == []  # 2 queued in Ray per node; nothing waits above
    first_age = books.meta["low-12"].queued_at
    clock.now += 1.0
    high = Runner(books, "high", tasks=3, first_window=3, priority="high")
    high.submit()
    books.check()
    assert high.job.running == {}  # every node is busy (for a high task, only free capacity counts)
    assert books.take_woken() >= {"low"}  # its long-poll wakes with the news
    low.take(books.collect("low"))
    placed_on = {f"low-{index}": decision.node_name for index, (decision, _) in low.job.running.items()}
    asked = sorted(low.asked_back)
    assert [placed_on[task_id] for task_id in asked].count("gpu1") == 2 and len(asked) == 6  # 2 per node
    assert set(asked) == {f"low-{index}" for index in range(6, 12)}  # the youngest: placed last
    started = {asked[0]}  # Ray had already started one (in the slot of a task that had just ended): it runs on
    freed = next(index for index, (decision, _) in low.job.running.items()
                 if decision.node_name == placed_on[asked[0]] and f"low-{index}" not in asked)
    low.job.on_task_ended(freed, True, None, {"ok": True, "error": None, "duration_s": 0.5, "result": freed,
                                              "node_id": placed_on[asked[0]], "started_at": 0.0})
    dropped = low.drop_asked_back(started)
    assert len(dropped) == 5 and asked[0] in {f"low-{i}" for i in low.job.running}
    low.send(low.report())  # handed back: released, uncounted, queued again
    books.check()
    assert {books.meta[task_id].queued_at for task_id in dropped} == {first_age}  # their first age, not now's
    assert all(task_id in books.core.task_ids() for task_id in dropped)  # waiting again
    assert sum(books.core.group_counts.live("low").values()) == 12 - 5
    assert low.asked_back == []  # asked once each
    high.take(books.collect("high"))
    assert len(high.job.running) == 0  # the slot that freed went to the task that had started
    for node in ("gpu-master", "gpu1", "gpu2"):  # a low task ends on each node: its slot goes to a high task
        index = next(i for i, (decision, _) in low.job.running.items() if decision.node_name == node)
        low.job.on_task_ended(index, True, None, {"ok": True, "error": None, "duration_s": 0.5, "result": index,
                                                  "node_id": low.job.running[index][0].node_id, "started_at": 0.0})
        low.send(low.report())
        high.take(books.collect("high"))  # its long-poll's answer
        books.check()
    assert len(high.job.running) == 3 and len(low.job.running) == 12 - 1 - 5 - 3
    high.run_to_end()
    low.run_to_end()
    assert low.job.outcomes.succeeded == 14 and high.job.outcomes.succeeded == 3
    assert_empty(books)


def test_nothing_is_asked_back_for_work_of_the_same_priority_or_from_owners_that_cannot() -> None:
    books = books_at(Clock(), admission=2.0)
    first = Runner(books, "first", tasks=12, first_window=12, takes_back=True)
    first.submit()
    second = Runner(books, "second", tasks=3, first_window=3)
    second.submit()
    first.take(books.collect("first"))
    assert first.asked_back == []  # the same priority: age decides, nothing is taken back
    old = Runner(books, "old-runner", tasks=12, first_window=12, priority="low")  # a runner that cannot
    books.on_finished("first", completions=first.job.on_end())
    books.on_finished("second", completions=second.job.on_end())
    old.submit()
    high = Runner(books, "high", tasks=3, first_window=3, priority="high")
    high.submit()
    old.take(books.collect("old-runner"))
    assert old.asked_back == [] and high.job.running == {}
    books.check()


def test_an_ask_the_owner_did_not_act_on_is_made_again_after_its_next_report() -> None:
    """An ask counts as leaving only until the owner's next report: one it refused (a chunk's)
    or one that came too late must not hide, for good, what the node holds beyond its total."""
    clock = Clock()
    books = books_at(clock, admission=2.0)
    low = Runner(books, "low", tasks=12, first_window=12, priority="low", takes_back=True)
    low.submit()
    high = Runner(books, "high", tasks=3, first_window=3, priority="high")
    high.submit()
    low.take(books.collect("low"))
    first_ask, low.asked_back = sorted(low.asked_back), []  # the owner refused them all
    assert len(first_ask) == 6
    books.on_completed([])  # a drain with no news from the owner
    low.take(books.collect("low"))
    assert low.asked_back == []  # asked once until the owner reports
    low.end(1)  # its oldest task ends (a slot on gpu-master), and it reports
    low.send(low.report())
    high.take(books.collect("high"))
    assert low.asked_back and set(low.asked_back) <= set(first_ask)  # asked again: nodes still reserved beyond their total
    books.check()
