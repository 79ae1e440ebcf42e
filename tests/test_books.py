"""The Scheduler's books (`grid_serve.books.SchedulerBooks`) driven by a fake job runner through
the protocol's messages: no cluster, no Ray. Each table row is a sequence of what an owner and
the Scheduler do, including the races the notes found (cancel during the window, a report that
crosses an adopt, a restart between reports, a lease that lapses while its runner lives); after
every step the books' invariants hold, and at the end spread is exact and nothing is left held."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest

from grid_serve.books import SchedulerBooks
from grid_serve.errors import TooBusyError
from grid_serve.ledger import Completion
from grid_serve.limits import Limits
from grid_serve.models import NodeStatus, ResourceRequirement, SchedulingDecision, SchedulingRequest
from grid_serve.protocol import Adopt, Placements, Report, Submit

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


def books_at(clock: Clock, **limits: int) -> SchedulerBooks:
    books = SchedulerBooks(epoch=f"e{clock.now:g}", lease_s=5.0, tick_s=1.0, lookahead_s=None, admission=1.0,
                           limits=Limits(**limits), clock=clock, wall=clock)
    books.on_nodes(NODES, taken_at=clock.now)
    return books


@dataclass
class FakeRunner:
    """What a job runner does with one job, reduced to its messages: a window of `window`
    requests at the Scheduler, the rest held back (`unsent`), ends reported in batches, and an
    `Adopt` of everything it holds when a reply says the Scheduler does not know the job."""

    books: SchedulerBooks
    job: str
    tasks: int
    window: int = 4
    sent: int = 0
    running: dict[str, SchedulingDecision] = field(default_factory=dict)
    waiting: dict[str, SchedulingRequest] = field(default_factory=dict)
    placed_on: Counter[str] = field(default_factory=Counter)  # node name -> tasks placed there
    placed_per_node: Counter[str] = field(default_factory=Counter)  # node id -> the same, as adopt tells it
    unreported: list[Completion] = field(default_factory=list)  # placements of a cancelled job, handed back
    cancelled: bool = False

    def _next(self, count: int) -> list[SchedulingRequest]:
        count = 0 if self.cancelled else min(count, self.tasks - self.sent)
        requests = [SchedulingRequest(task_id=f"{self.job}-{self.sent + i}", job_id=self.job, task_type="sleep",
                                      requirements=ResourceRequirement(cpu_count=1)) for i in range(count)]
        self.sent += count
        self.waiting.update({r.task_id: r for r in requests})
        return requests

    @property
    def unsent(self) -> int:
        return 0 if self.cancelled else self.tasks - self.sent

    def submit(self) -> None:
        requests = self._next(self.window)
        self.take(self.books.on_submitted(Submit(requests=requests, runner=RUNNER, unsent=self.tasks - self.sent)))

    def take(self, reply: Placements) -> None:
        if not reply.known:
            self.adopt()
            return
        for decision in reply.placed:
            self.waiting.pop(decision.task_id, None)
            self.placed_on[decision.node_name] += 1
            self.placed_per_node[decision.node_id] += 1
            if self.cancelled:  # placed as the cancel crossed: released at once, as the runner does
                self.unreported.append(Completion(task_id=decision.task_id, ok=False))
            else:
                self.running[decision.task_id] = decision

    def report(self, ended: int) -> Report:
        """Ends `ended` running tasks (oldest first); the report that tells it, not yet sent."""
        done = list(self.running)[:ended]
        completions = [Completion(task_id=task_id, ok=True, duration_s=0.5) for task_id in done] + self.unreported
        self.unreported = []
        for task_id in done:
            del self.running[task_id]
        return Report(group=self.job, ended=completions, requeue=self._next(len(done)), unsent=self.unsent)

    def send(self, report: Report) -> None:
        self.take(self.books.on_reported(report))

    def adopt(self) -> None:
        running = [(decision, "sleep") for decision in self.running.values()]
        self.take(self.books.on_adopted(Adopt(runner=RUNNER, group=self.job, running=running,
                                              waiting=list(self.waiting.values()),
                                              placed_per_node=dict(self.placed_per_node), unsent=self.unsent)))

    def run_to_end(self, batch: int = 2) -> None:
        for _ in range(self.tasks + 2):
            if not (self.running or self.waiting or self.unreported):
                break
            self.send(self.report(batch))
            self.books.check()
        assert not (self.running or self.waiting), "the job stopped moving"
        self.books.on_finished(self.job)


def assert_empty(books: SchedulerBooks) -> None:
    books.check()
    assert books.meta == {} and books.ledger.reservations == {} and len(books.core) == 0
    assert books.queued_total() == 0 and books.outbox == {}


def test_a_job_runs_through_its_window_with_exact_spread_and_leaves_nothing_held() -> None:
    books = books_at(Clock())
    runner = FakeRunner(books, "job1", tasks=30)
    runner.submit()
    books.check()
    assert len(runner.running) == 4 and books.queued_total() == 26  # the window placed, the rest held back
    runner.run_to_end()
    assert runner.placed_on == {"gpu-master": 10, "gpu1": 10, "gpu2": 10}
    assert_empty(books)


def test_a_report_sent_twice_frees_nothing_twice() -> None:
    books = books_at(Clock())
    first, second = FakeRunner(books, "a", tasks=6, window=6), FakeRunner(books, "b", tasks=3, window=3)
    first.submit()
    second.submit()
    assert len(first.running) == 6 and second.running == {}  # the cluster's 6 CPUs are first's
    report = first.report(1)
    first.send(report)
    first.send(Report(group="a", ended=report.ended))  # a retried call: the same end again
    books.check()
    assert len(books.ledger.reservations) == 6  # first's 5 and one of second's, not two of second's


@pytest.mark.parametrize("crossing", [True, False], ids=["report-crosses-cancel", "cancel-alone"])
def test_cancel_during_the_window_drops_what_waits_and_what_a_crossing_report_asked_for(crossing: bool) -> None:
    books = books_at(Clock())
    filler = FakeRunner(books, "filler", tasks=6, window=6)
    filler.submit()
    runner = FakeRunner(books, "job", tasks=20)
    runner.submit()
    assert runner.running == {} and books.queued_total() == 20
    in_flight = runner.report(0)
    runner.cancelled = True
    assert sorted(books.on_cancelled("job")) == sorted(runner.waiting)
    runner.waiting.clear()
    books.check()
    assert books.queued_total() == 0
    if crossing:  # sent before the runner heard of its cancel: its requeue is empty, its unsent says 16
        runner.send(in_flight)
        books.check()
    books.on_finished("job")
    filler.run_to_end()
    assert_empty(books)


@pytest.mark.parametrize("order", ["report-then-adopt", "adopt-then-report"])
def test_a_restart_between_reports_is_adopted_with_spread_kept_exact(order: str) -> None:
    clock = Clock()
    books = books_at(clock)
    runner = FakeRunner(books, "job", tasks=30)
    runner.submit()
    runner.send(runner.report(2))
    before = Counter(runner.placed_on)
    clock.now += 1
    runner.books = books = books_at(clock)  # the Scheduler restarted: a new epoch knows nothing
    in_flight = runner.report(2)
    if order == "report-then-adopt":
        runner.send(in_flight)  # unknown: nothing placed, the runner adopts with all it holds
        assert books.owners.knows("job")
    else:  # the heartbeat saw the new epoch first; the report crossed the adopt
        runner.adopt()
        runner.send(in_flight)
    books.check()
    assert dict(books.core.group_counts.live("job")) == dict(runner.placed_per_node)  # what it placed, counted again
    assert set(books.ledger.reservations) == set(runner.running) and sum(before.values()) == 6
    runner.run_to_end()
    assert runner.placed_on == {"gpu-master": 10, "gpu1": 10, "gpu2": 10}
    assert_empty(books)


def test_a_lapsed_lease_is_kept_while_its_runner_answers_and_reclaimed_when_it_does_not() -> None:
    clock = Clock()
    books = books_at(clock)
    runner = FakeRunner(books, "job", tasks=12)
    runner.submit()
    overdue = clock.tick(books, 6)  # past the 5 s lease with no renewal
    assert overdue == ["job"]
    assert books.on_leases_checked(overdue, held={"job"}) == []  # the runner answered: kept
    books.check()
    assert len(books.ledger.reservations) == 4
    assert books.on_leases_checked(clock.tick(books, 6), held=set()) == ["job"]
    assert_empty(books)
    assert "stopped renewing" in (books.owners.gone.get("job") or "")
    runner.send(runner.report(1))  # it was alive after all: its next report is answered "unknown"; it adopts
    books.check()
    assert books.owners.knows("job") and len(books.ledger.reservations) == len(runner.running)
    runner.run_to_end()
    assert_empty(books)


def test_the_queue_cap_counts_what_runners_hold_back() -> None:
    books = books_at(Clock(), max_queued_tasks=50)
    FakeRunner(books, "filler", tasks=6, window=6).submit()
    FakeRunner(books, "big", tasks=40).submit()
    with pytest.raises(TooBusyError):
        FakeRunner(books, "late", tasks=20).submit()
    books.check()
    assert books.queued_total() == 40 and "late" not in {m.group for m in books.meta.values()}


def test_a_live_task_id_is_refused_and_the_first_stays_reserved() -> None:
    books = books_at(Clock())
    runner = FakeRunner(books, "job", tasks=2, window=2)
    runner.submit()
    again = SchedulingRequest(task_id="job-0", job_id="other", task_type="sleep")
    reply = books.on_submitted(Submit(requests=[again], runner=RUNNER))
    assert [r.task_id for r in reply.rejected] == ["job-0"] and "already reserved" in reply.rejected[0].reason
    books.check()
    assert books.ledger.reservations["job-0"].group == "job"


def test_returned_placements_are_released_and_uncounted() -> None:
    books = books_at(Clock())
    runner = FakeRunner(books, "job", tasks=3, window=3)
    runner.submit()
    back = list(runner.running)[:2]
    for task_id in back:
        runner.placed_on[runner.running.pop(task_id).node_name] -= 1
    books.on_reported(Report(group="job", returned=back))
    books.check()
    assert sum(books.core.group_counts.live("job").values()) == 1 and len(books.ledger.reservations) == 1


def test_news_wakes_only_the_groups_it_is_for() -> None:
    books = books_at(Clock())
    filler = FakeRunner(books, "filler", tasks=6, window=6)
    filler.submit()
    waiting = FakeRunner(books, "waiting", tasks=2, window=2)
    waiting.submit()
    books.take_woken()
    filler.send(filler.report(1))  # one slot frees: the waiting job's first task is placed
    assert books.take_woken() == {"waiting"} and books.has_news("waiting")
    assert [d.task_id for d in books.collect("waiting").placed] == ["waiting-0"]
    assert not books.has_news("waiting")
