"""A caller's books for `grid.remote`: placements the Scheduler made ahead of the calls, the
calls running, and the ends not yet told. Pure (no Ray), so the rules are tested without a
cluster (tests/test_calls.py drives these books against a real `SchedulerCore`).

Why placements ahead of the calls: `f.remote(x)` must hand back Ray's own `ObjectRef` at once,
so the task's node must be known when it is called, and a Scheduler round trip per call would
cost more than Ray's whole task. So a `Stream` (one remote function with one set of options, in
one process) asks the Scheduler for placements a little ahead of its calls, like the job runner's
window: each call takes the oldest one (so the calls land in the Scheduler's order: exact
spread), and what a stream holds unused is bounded by its recent demand and handed back when it
goes idle. A placement held unused is a reservation like any other, so another caller's
higher-priority task can wait behind it: at most `AHEAD_S` of this stream's calls, the same
bound the lookahead puts on work handed to Ray ahead of free capacity.

The Scheduler sees a stream as a job: a group with an owner lease (the caller's process renews
it), its tasks reserved while they run, ends reported in batches with their run times.

Slots reused: a call that ends frees a slot the stream already holds (its node, its
resources). While the Scheduler says no other job's work waits at the stream's priority or
above (`Placements.reuse`), the stream runs its next call in that slot at once, with no round
trip, and tells the Scheduler afterwards (`Reuse`): a service calling one task at a time, or a
loop of short calls, then pays nothing per call for placement. Under SPREAD a slot is reused
only on a node that has no more of the stream's calls than any other, so spread stays exact.
How long another job can wait behind reuse: until the Scheduler's next reply says stop (one
report, about a tick).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from .ledger import Completion
from .models import SchedulingDecision, SchedulingRequest, SchedulingStrategy
from .protocol import Placements, Report, Reuse

AHEAD_S = 0.1  # a stream holds placements for about this long of its recent calls
DEMAND_WINDOW_S = 0.2  # recent calls are counted over this window
MAX_AHEAD = 256  # placements one stream holds or asks for at most, beyond what it runs
IDLE_S = 0.5  # a stream with no call for this long hands back what it holds unused
TURN_SCAN = 8  # a SPREAD call looks this far into what is held for a node whose turn it is


@dataclass
class Stream:
    """One remote function with one set of placement options, in one caller process.

    The named transitions below are the only way its state changes; each keeps the invariant
    that a task id is in at most one of `asked`, `stock` and `running`.
    """

    group: str
    template: SchedulingRequest  # what every call of the stream asks for; its task_id is replaced
    next_index: int = 0
    asked: dict[str, SchedulingRequest] = field(default_factory=dict)  # at the Scheduler, not yet placed
    stock: deque[SchedulingDecision] = field(default_factory=deque)  # placed, not yet taken by a call
    running: dict[str, SchedulingDecision] = field(default_factory=dict)  # taken by a call, not yet ended
    ended: list[Completion] = field(default_factory=list)  # not yet told
    given_back: list[str] = field(default_factory=list)  # handed back unused, not yet told
    unasked: list[SchedulingRequest] = field(default_factory=list)  # made, not yet sent
    refusal: str | None = None  # why the Scheduler refused the stream's tasks (they can never fit)
    reused: list[Reuse] = field(default_factory=list)  # slots ended calls freed and new ones took, not yet told
    counts: dict[str, int] = field(default_factory=dict)  # node id -> placements of this stream (the Scheduler's count)
    taken: dict[str, int] = field(default_factory=dict)  # node id -> calls this stream ran there
    may_reuse: bool = False  # the Scheduler's last word: no other job's work waits at this priority or above
    calls: deque[float] = field(default_factory=deque)  # when the recent calls came
    last_call: float = -math.inf
    burst: int = 1  # doubles each time a call finds nothing held (a loop of calls ramps up fast)
    expected: int = 0  # calls the caller said are coming (a job of its own, `expect`), not yet made

    # ------------------------------------------------------------------ transitions

    def expect(self, calls: int, now: float) -> None:
        """The caller will make `calls` more calls now (a job's tasks; negative: calls it said
        would come and will not, its job over early): hold placements for them from the
        first, rather than ramp up by doubling (each doubling a wait for the Scheduler: 19 of
        them, most of a 1,000-task job's time; BENCHMARKS.md). Jobs sharing the stream add up."""
        self.expected, self.last_call = max(0, self.expected + calls), now

    def on_call(self, now: float) -> SchedulingDecision | None:
        """A call wants a placement: the oldest one held, or None (ask, then wait for one)."""
        self.last_call = now
        self.expected = max(0, self.expected - 1)
        self.calls.append(now)
        while self.calls and self.calls[0] < now - DEMAND_WINDOW_S:
            self.calls.popleft()
        decision = self.take()
        if decision is None:
            self.burst = min(MAX_AHEAD, self.burst * 2)
        return decision

    def take(self) -> SchedulingDecision | None:
        """The oldest placement held, now running (under SPREAD, the oldest on a node that ran
        the fewest of this stream's calls, so reused slots keep the calls exactly even); None
        when none is held."""
        if not self.stock:
            return None
        index = self._in_turn() if self.template.strategy is SchedulingStrategy.SPREAD else 0
        decision = self.stock[index]
        del self.stock[index]
        self.running[decision.task_id] = decision
        self.taken[decision.node_id] = self.taken.get(decision.node_id, 0) + 1
        return decision

    def on_unused(self, task_id: str) -> None:
        """A call took a placement and never ran it (its caller gave up while it waited, or
        Ray refused the call): held again for the next call, first, as the oldest it is."""
        decision = self.running.pop(task_id, None)
        if decision is None:
            return
        self.taken[decision.node_id] -= 1
        self.stock.appendleft(decision)

    def ask(self, count: int) -> list[SchedulingRequest]:
        """Make `count` more requests; they go with the next report."""
        requests = []
        for _ in range(count):
            request = self.template.model_copy(update={"task_id": self._new_task_id()})
            self.asked[request.task_id] = request
            requests.append(request)
        self.unasked.extend(requests)
        return requests

    def on_reply(self, reply: Placements) -> None:
        """The Scheduler's answer to a report or a long-poll: what it placed or refused, and
        whether slots may be reused."""
        self.on_placed(reply.placed)
        if reply.rejected:
            self.on_refused([r.task_id for r in reply.rejected], reply.rejected[0].reason)
        if reply.reuse is not None:
            self.may_reuse = reply.reuse

    def on_placed(self, decisions: list[SchedulingDecision]) -> None:
        """The Scheduler placed some of what was asked: held, in the order it placed them."""
        for decision in decisions:
            if self.asked.pop(decision.task_id, None) is not None:
                self.stock.append(decision)
                self.counts[decision.node_id] = self.counts.get(decision.node_id, 0) + 1

    def on_refused(self, task_ids: list[str], reason: str) -> None:
        """The Scheduler refused requests (they can never fit): every waiting call fails."""
        for task_id in task_ids:
            self.asked.pop(task_id, None)
        self.refusal = reason

    def on_ended(self, task_id: str, ok: bool, duration_s: float | None, now: float) -> bool:
        """A call's task ended (Ray said so): its slot is held again for the next call when it
        may be reused (`reusable`), else released with the next report. Returns whether it
        is held again."""
        decision = self.running.pop(task_id, None)
        if decision is None:
            return False
        completion = Completion.model_construct(task_id=task_id, ok=ok, duration_s=duration_s)
        if not ok or not self.reusable(decision, now):  # a failed call's node may be dead: ask afresh
            self.ended.append(completion)
            return False
        slot = decision.model_copy(update={"task_id": self._new_task_id()})
        self.stock.append(slot)
        self.counts[slot.node_id] = self.counts.get(slot.node_id, 0) + 1
        self.reused.append(Reuse(ended=completion, task_id=slot.task_id, strategy=str(decision.strategy)))
        return True

    def on_idle(self, now: float) -> list[str]:
        """Hand back what is held beyond the recent demand (all of it once idle); returns the
        requests still waiting at the Scheduler that are no longer wanted (to cancel)."""
        keep = self.target(now)
        if not keep:
            self.burst, self.expected = 1, 0
        while len(self.stock) > keep:
            returned = self.stock.pop()  # the newest go first: the oldest stay in order
            self.given_back.append(returned.task_id)
            self.counts[returned.node_id] -= 1
        if now - self.last_call < IDLE_S or not self.asked:
            return []
        dropped = list(self.asked)
        self.asked.clear()
        self.unasked.clear()
        return dropped

    def take_report(self) -> Report:
        """What to tell the Scheduler now (the requests to queue as `requeue`, the placements
        handed back unused as `returned`); cleared once taken."""
        report = Report(group=self.group, ended=self.ended, requeue=self.unasked, returned=self.given_back, unsent=0,
                        reused=self.reused)
        self.ended, self.given_back, self.unasked, self.reused = [], [], [], []
        return report

    def on_report_failed(self, report: Report) -> None:
        """The report never reached the Scheduler (a timeout, a restart): send it again next time,
        before anything newer, so no end, hand-back or request is lost."""
        self.ended[:0] = report.ended
        self.reused[:0] = report.reused
        self.given_back[:0] = report.returned
        self.unasked[:0] = [request for request in report.requeue if request.task_id in self.asked]

    def on_scheduler_lost(self) -> tuple[list[SchedulingDecision], list[SchedulingRequest]]:
        """The Scheduler restarted (or forgot the stream): what it must be told again, as a
        registration: every placement held or running (their reservations, counted per node
        again), and what waits. Reuses not yet told are in the registration already."""
        self.unasked.clear()
        self.reused.clear()
        self._recount()
        return list(self.running.values()) + list(self.stock), list(self.asked.values())

    def on_forgotten(self) -> None:
        """The Scheduler forgot the stream while it was quiet (`finished`), its spread counts with
        it: the stream's mirror of them, and its calls taken per node, start from nothing too, so
        its next calls spread exactly on their own, as the Scheduler places them."""
        self._recount()

    def _recount(self) -> None:
        """The per-node books as a Scheduler that knows only what the stream holds counts them
        (a new one after `on_scheduler_lost`, the same one after `on_forgotten`): placements
        held or running per node, calls taken per node those running. A history kept from
        before would steer SPREAD's takes and reuses by counts no Scheduler has."""
        self.counts, self.taken = {}, {}
        for decision in self.stock:
            self.counts[decision.node_id] = self.counts.get(decision.node_id, 0) + 1
        for decision in self.running.values():
            self.counts[decision.node_id] = self.counts.get(decision.node_id, 0) + 1
            self.taken[decision.node_id] = self.taken.get(decision.node_id, 0) + 1
        self.may_reuse = False  # until that Scheduler's first reply says so

    # ------------------------------------------------------------------ reading

    def reusable(self, decision: SchedulingDecision, now: float) -> bool:
        """Whether the slot `decision`'s ended call frees is held again for the next call: the
        Scheduler allows reuse, the stream wants more than it holds, and under SPREAD the node
        has no more of this stream's calls than any other (spread stays exact)."""
        if not self.may_reuse or len(self.stock) >= self.target(now):
            return False
        if self.template.strategy is SchedulingStrategy.SPREAD:
            return self.counts.get(decision.node_id, 0) <= min(self.counts.values(), default=0)
        return True

    def target(self, now: float) -> int:
        """Placements to hold ahead: about `AHEAD_S` of recent calls (or the burst, while a loop
        of calls ramps up), at least one while calls come, none once idle."""
        if now - self.last_call >= IDLE_S:
            return 0
        recent = sum(1 for at in self.calls if at >= now - DEMAND_WINDOW_S)
        return max(1, self.burst, min(MAX_AHEAD, max(self.expected, math.ceil(recent * AHEAD_S / DEMAND_WINDOW_S))))

    def wanted(self, now: float, waiting_calls: int = 0) -> int:
        """How many more to ask for now: enough for the calls waiting and the target ahead."""
        have = len(self.stock) + len(self.asked)
        return max(0, min(MAX_AHEAD, waiting_calls + self.target(now)) - have)

    def quiet(self, now: float) -> bool:
        """Idle and holding nothing, with nothing left to tell: the Scheduler may forget it."""
        return (self.target(now) == 0 and not self.asked and not self.stock and not self.running
                and not self.ended and not self.given_back and not self.unasked and not self.reused)

    def _in_turn(self) -> int:
        """Where in the stock the next SPREAD call's placement is: the first of the oldest few
        on a node with the fewest calls taken. The Scheduler placed them in turn, but slots
        reused before it heard of them can put a node one ahead in what is held."""
        fewest = min((self.taken.get(node_id, 0) for node_id in self.counts), default=0)
        for index in range(min(TURN_SCAN, len(self.stock))):
            if self.taken.get(self.stock[index].node_id, 0) <= fewest:
                return index
        return 0

    def _new_task_id(self) -> str:
        self.next_index += 1
        return f"{self.group}-{self.next_index - 1}"

    @property
    def holds(self) -> int:
        """Placements held (stock) or running: what the Scheduler has reserved for this stream."""
        return len(self.stock) + len(self.running)
