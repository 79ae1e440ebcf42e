"""`grid_serve.calls.Stream`, the books of `grid.remote` calls, driven against the Scheduler's
own books (`grid_serve.books.SchedulerBooks`) through the protocol's messages: no cluster, no Ray."""

from __future__ import annotations

from collections import Counter

from grid_serve.books import SchedulerBooks
from grid_serve.calls import IDLE_S, MAX_AHEAD, Stream
from grid_serve.models import NodeStatus, SchedulingDecision, SchedulingRequest
from grid_serve.protocol import Adopt, Submit

NODES = [NodeStatus(name=name, node_id=name, address="127.0.0.1", alive=True, resources_total={"CPU": 2.0})
         for name in ("a", "b", "c")]


class FakeScheduler:
    """The Scheduler deployment without its shell (its books), and the dispatcher's exchange:
    a stream's first report registers it (`Submit`), later ones are `Report`s."""

    def __init__(self, admission: float = 50.0) -> None:
        self.books = SchedulerBooks(epoch="e", lease_s=5.0, tick_s=1.0, lookahead_s=None, admission=admission,
                                    clock=lambda: 0.0, wall=lambda: 0.0)
        self.books.on_nodes(NODES, taken_at=0.0)
        self.ledger = self.books.ledger

    def exchange(self, stream: Stream) -> None:
        report = stream.take_report()
        if self.books.owners.knows(stream.group):
            reply = self.books.on_reported(report)
        elif report.requeue:  # nothing was placed before: the first report holds only requests
            reply = self.books.on_submitted(Submit(requests=report.requeue, runner="grid-caller-test"))
        else:
            return
        self.books.check()
        stream.on_reply(reply)

    def settle(self, stream: Stream, now: float) -> None:
        """The dispatcher's step after an exchange: a stream now quiet is forgotten by the
        Scheduler (`finished`) and forgets its own per-node books (`on_forgotten`)."""
        self.exchange(stream)
        if stream.quiet(now):
            self.books.on_finished(stream.group)
            stream.on_forgotten()


def stream_of(**template: object) -> Stream:
    return Stream(group="g", template=SchedulingRequest(job_id="g", task_type="f", **template))


def call_loop(stream: Stream, scheduler: FakeScheduler, calls: int, now: float = 0.0) -> list[str]:
    """`calls` calls in a tight loop, each waiting (one exchange) when nothing is held."""
    ran = []
    for _ in range(calls):
        decision = stream.on_call(now)
        while decision is None:
            stream.ask(stream.wanted(now, waiting_calls=1))
            scheduler.exchange(stream)
            assert stream.refusal is None
            decision = stream.take()
        ran.append(decision.node_name)
    return ran


def test_a_loop_of_calls_lands_in_the_schedulers_spread_order_and_ramps_up() -> None:
    stream, scheduler = stream_of(), FakeScheduler()
    ran = call_loop(stream, scheduler, 100)
    assert sorted(Counter(ran).values()) == [33, 33, 34]
    assert stream.burst > 8  # each miss doubled what the next ask takes: few round trips for 100 calls
    assert len(stream.running) == 100 and stream.holds >= 100


def test_a_job_that_says_how_many_calls_come_asks_for_them_in_one_round_trip() -> None:
    """`expect` (a job of the caller's own function, `grid_serve.caller_jobs`): the first ask
    covers the job's calls, up to MAX_AHEAD, instead of doubling from one; spread stays exact.
    What is expected and never called is not held once the stream is idle."""
    stream, scheduler = stream_of(), FakeScheduler()
    stream.expect(60, now=0.0)
    exchanges = 0
    ran = []
    for _ in range(60):
        decision = stream.on_call(0.0)
        while decision is None:
            stream.ask(stream.wanted(0.0, waiting_calls=1))
            scheduler.exchange(stream)
            exchanges += 1
            decision = stream.take()
        ran.append(decision.node_name)
    assert exchanges == 1 and sorted(Counter(ran).values()) == [20, 20, 20]
    assert stream.expected == 0
    stream.expect(MAX_AHEAD * 4, now=1.0)
    assert stream.wanted(1.0) == MAX_AHEAD - len(stream.stock)  # bounded as a burst is
    stream.on_idle(1.0 + IDLE_S)
    assert stream.expected == 0 and not stream.stock


def test_a_placement_taken_and_never_run_is_held_again_first_and_spread_stays_exact() -> None:
    """`on_unused`: a call whose caller gave up while it waited, or whose arguments Ray
    refused, gives its placement back; the next call takes it, and the counts stay even.
    `expect` adds up across jobs and takes back what an early end will not call."""
    stream, scheduler = stream_of(), FakeScheduler()
    stream.expect(30, now=0.0)
    stream.expect(30, now=0.0)
    assert stream.expected == 60
    ran = call_loop(stream, scheduler, 10)
    dropped = stream.on_call(0.0)
    assert dropped is not None
    stream.on_unused(dropped.task_id)
    assert stream.stock[0] is dropped and dropped.task_id not in stream.running
    again = stream.on_call(0.0)
    assert again is dropped
    ran += [again.node_name] + call_loop(stream, scheduler, 19)
    assert sorted(Counter(ran).values()) == [10, 10, 10]
    stream.expect(-1000, now=0.0)
    assert stream.expected == 0
    stream.on_unused("never-taken")  # not running: nothing to give back
    assert len(stream.running) == 30


def test_idle_streams_hand_back_what_they_hold_and_each_burst_spreads_exactly() -> None:
    """What an idle stream holds unused goes back; once it is quiet the Scheduler forgets it,
    so its next burst spreads exactly on its own (bursts apart by more than IDLE_S are not
    balanced against each other, as with Ray's SPREAD)."""
    stream, scheduler = stream_of(), FakeScheduler()
    first = call_loop(stream, scheduler, 10)
    held = len(stream.stock)
    assert held > 0
    assert stream.on_idle(IDLE_S + 1) == []  # nothing waits at the Scheduler
    assert stream.stock == type(stream.stock)() and len(stream.given_back) == held
    scheduler.settle(stream, IDLE_S + 1)
    assert len(scheduler.ledger.reservations) == 10  # only the calls that run stay reserved
    assert scheduler.books.owners.knows("g")  # calls still run: not forgotten
    for task_id in list(stream.running):
        stream.on_ended(task_id, True, 0.01, now=IDLE_S + 1)
    scheduler.settle(stream, IDLE_S + 1)
    assert scheduler.ledger.reservations == {} and not scheduler.books.owners.knows("g")
    second = call_loop(stream, scheduler, 20, now=IDLE_S + 2)
    assert sorted(Counter(first).values()) == [3, 3, 4]  # the handed-back ones were uncounted
    assert sorted(Counter(second).values()) == [6, 7, 7]


def test_what_a_stream_holds_ahead_follows_its_demand_and_is_bounded() -> None:
    stream = stream_of()
    assert stream.target(0.0) == 0  # never called: holds nothing
    for i in range(1000):
        stream.on_call(i * 0.0001)  # 10,000 calls/s, all finding nothing held
    assert stream.target(0.1) == MAX_AHEAD
    assert stream.wanted(0.1, waiting_calls=5) == MAX_AHEAD
    assert stream.target(0.1 + IDLE_S) == 0


def test_a_call_that_can_never_fit_is_refused_with_the_reason() -> None:
    stream, scheduler = stream_of(requirements={"gpu_count": 4}), FakeScheduler()
    assert stream.on_call(0.0) is None
    stream.ask(stream.wanted(0.0, waiting_calls=1))
    scheduler.exchange(stream)
    assert stream.refusal is not None and "insufficient GPU" in stream.refusal
    assert stream.asked == {}


def test_a_restarted_scheduler_is_told_what_runs_and_what_is_held() -> None:
    stream, scheduler = stream_of(), FakeScheduler()
    call_loop(stream, scheduler, 3)
    stream.ask(2)
    held, waiting = stream.on_scheduler_lost()
    assert {d.task_id for d in held} == set(stream.running) | {d.task_id for d in stream.stock}
    assert [r.task_id for r in waiting] == list(stream.asked)
    assert stream.take_report().requeue == []  # the registration carries them, not a later report


def test_a_report_that_never_arrived_is_sent_again_whole() -> None:
    stream, scheduler = stream_of(), FakeScheduler()
    call_loop(stream, scheduler, 2)
    done = next(iter(stream.running))
    stream.on_ended(done, True, 0.5, now=0.0)
    stream.ask(3)
    lost = stream.take_report()
    stream.on_report_failed(lost)  # the Scheduler call timed out
    again = stream.take_report()
    assert [c.task_id for c in again.ended] == [done]
    assert [r.task_id for r in again.requeue] == [r.task_id for r in lost.requeue]


def sequential_calls(stream: Stream, scheduler: FakeScheduler, calls: int, every: int = 10,
                     start: float = 0.0) -> tuple[list[str], int]:
    """A service's calls one at a time, each ending before the next; the dispatcher's tick
    (ask what is wanted, report) after every `every` calls. Returns the nodes and how many calls
    found nothing held and had to wait for the Scheduler."""
    ran, waited = [], 0
    for i in range(calls):
        now = start + i * 0.001
        decision = stream.on_call(now)
        if decision is None:
            waited += 1
            while decision is None:
                stream.ask(stream.wanted(now, waiting_calls=1))
                scheduler.exchange(stream)
                decision = stream.take()
        ran.append(decision.node_name)
        stream.on_ended(decision.task_id, True, 0.0005, now)
        if i % every == every - 1:
            stream.ask(stream.wanted(now))
            scheduler.exchange(stream)
    return ran, waited


def test_calls_one_at_a_time_reuse_their_slots_without_waiting_and_spread_stays_exact() -> None:
    stream, scheduler = stream_of(), FakeScheduler()
    warm, _ = sequential_calls(stream, scheduler, 20)  # the first report with an end allows reuse
    assert stream.may_reuse
    ran, waited = sequential_calls(stream, scheduler, 90)
    assert waited == 0  # no call paid a round trip
    assert sorted(Counter(warm + ran).values()) == [36, 37, 37]  # every call counted, the reused ones too
    reused = [d for *_, d in scheduler.books.log._recent if "ran in the slot" in d.reasons[0]]
    assert stream.reused == [] and reused and {d.node_ip for d in reused} == {"127.0.0.1"}
    books = scheduler.books
    assert set(scheduler.ledger.reservations) == {d.task_id for d in stream.stock}  # only what is held
    assert {n: c for n, c in books.core.group_counts.of("g").items() if c} == stream.counts
    books.check()


def test_no_slot_is_reused_while_another_jobs_work_waits_and_that_work_gets_the_room() -> None:
    stream, scheduler = stream_of(), FakeScheduler(admission=1.0)  # 6 CPUs, no lookahead
    ran = call_loop(stream, scheduler, 6)  # the cluster is full
    for task_id in list(stream.running)[:1]:
        stream.on_ended(task_id, True, 0.01, now=0.0)
    scheduler.exchange(stream)
    assert stream.may_reuse
    other = scheduler.books.on_submitted(Submit(requests=[SchedulingRequest(job_id="other", task_id="o-1")],
                                                runner="r"))
    assert len(ran) == 6 and other.placed == []  # the cluster is full: it waits
    done = next(iter(stream.running))
    held_again = stream.on_ended(done, True, 0.01, now=0.0)  # reuse was still allowed when it ended
    scheduler.exchange(stream)
    assert stream.may_reuse is False  # the other job's task waits: reuse stops
    assert held_again  # reuse lasts until the Scheduler's next reply says stop: one tick at most
    for task_id in list(stream.running):
        assert stream.on_ended(task_id, True, 0.01, now=0.0) is False
    stream.on_idle(IDLE_S + 1)
    scheduler.exchange(stream)
    books = scheduler.books
    assert "o-1" in books.ledger.reservations  # the waiting job got the room the calls freed
    books.check()


def test_a_reused_slot_and_its_calls_end_in_one_report_leave_nothing_reserved() -> None:
    stream, scheduler = stream_of(strategy="load_balanced"), FakeScheduler()
    sequential_calls(stream, scheduler, 5)
    assert stream.may_reuse
    chained = False
    for _ in range(20):  # until a call runs in a slot reused since the last report, and ends too
        decision = stream.on_call(1.0)
        assert decision is not None
        chained = decision.task_id in {reuse.task_id for reuse in stream.reused}
        stream.on_ended(decision.task_id, True, 0.01, now=1.0)
        if chained:
            break
    assert chained
    lost = stream.take_report()
    stream.on_report_failed(lost)  # lost once: sent again whole, freeing nothing twice
    scheduler.exchange(stream)
    stream.on_idle(IDLE_S + 2)
    scheduler.exchange(stream)
    assert scheduler.ledger.reservations == {} and stream.holds == 0
    scheduler.books.check()


def test_under_spread_a_slot_is_reused_only_where_the_stream_has_the_fewest_calls() -> None:
    stream = stream_of()
    stream.may_reuse = True
    stream.counts = {"a": 2, "b": 1, "c": 1}
    stream.on_call(0.0)
    decision_on = {node: SchedulingDecision(task_id=f"g-{node}", node_id=node, node_name=node, node_ip="",
                                            strategy="spread", score=0.0) for node in "ab"}
    for decision in decision_on.values():
        stream.running[decision.task_id] = decision
    assert stream.on_ended("g-a", True, 0.01, now=0.0) is False  # a is ahead: its slot goes back
    assert stream.on_ended("g-b", True, 0.01, now=0.0) is True
    assert stream.counts == {"a": 2, "b": 2, "c": 1}


def test_under_spread_a_call_takes_what_is_held_on_a_node_whose_turn_it_is() -> None:
    stream = stream_of()
    stream.counts, stream.taken = {"a": 3, "b": 3}, {"a": 2, "b": 1}
    stream.stock.extend(SchedulingDecision(task_id=f"g-{i}", node_id=node, node_name=node, node_ip="",
                                           strategy="spread", score=0.0) for i, node in enumerate("aab"))
    assert [stream.take().node_name for _ in range(3)] == ["b", "a", "a"]  # b was a call behind


def test_a_stream_the_scheduler_forgot_while_idle_spreads_its_next_calls_exactly_again() -> None:
    """The Scheduler forgets a quiet stream's spread counts (`finished`), so the stream forgets
    its mirror of them and its calls taken per node: kept, a 35/34/33 left by earlier bursts
    steered the next 30 calls to 9/10/11 (SPREAD takes and reuses by them)."""
    stream, scheduler = stream_of(), FakeScheduler()
    bursts = []
    for start, calls in enumerate((100, 2, 30)):
        now = start * (IDLE_S + 2)
        bursts.append(sorted(Counter(call_loop(stream, scheduler, calls, now=now)).values()))
        for task_id in list(stream.running):
            stream.on_ended(task_id, True, 0.01, now)
        stream.on_idle(now + IDLE_S + 1)
        scheduler.settle(stream, now + IDLE_S + 1)
        assert stream.quiet(now + IDLE_S + 1) and scheduler.ledger.reservations == {}
        assert stream.counts == {} == scheduler.books.core.group_counts.of("g") and stream.taken == {}
    assert bursts == [[33, 33, 34], [1, 1], [10, 10, 10]]


def test_after_a_scheduler_restart_a_stream_counts_only_what_it_holds_and_spreads_exactly_from_there() -> None:
    """A new Scheduler counts the stream's spread from what it is told runs and is held (the
    adoption), so the stream's own per-node books start there too: calls taken per node are
    those running, not the history the old Scheduler had counted."""
    stream, old = stream_of(), FakeScheduler()
    call_loop(stream, old, 100)  # 34/33/33 taken
    for task_id in list(stream.running)[:40]:
        stream.on_ended(task_id, True, 0.01, now=0.0)
    old.exchange(stream)
    new = FakeScheduler()
    held, waiting = stream.on_scheduler_lost()
    running = Counter(decision.node_id for decision in stream.running.values())
    assert stream.taken == dict(running)
    assert stream.counts == dict(running + Counter(decision.node_id for decision in stream.stock))
    stream.on_reply(new.books.on_adopted(Adopt(runner="grid-caller-test", group="g", waiting=waiting,
                                               running=[(decision, "f") for decision in held],
                                               placed_per_node=dict(stream.counts))))
    new.books.check()
    assert new.books.core.group_counts.of("g") == stream.counts
    ran = call_loop(stream, new, 30)
    taken = Counter(ran) + running
    assert max(taken.values()) - min(taken.values()) <= 1, taken  # even from what the new Scheduler counted
