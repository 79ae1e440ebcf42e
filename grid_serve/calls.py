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
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from .ledger import Completion
from .models import SchedulingDecision, SchedulingRequest
from .protocol import Report

AHEAD_S = 0.1  # a stream holds placements for about this long of its recent calls
DEMAND_WINDOW_S = 0.2  # recent calls are counted over this window
MAX_AHEAD = 256  # placements one stream holds or asks for at most, beyond what it runs
IDLE_S = 0.5  # a stream with no call for this long hands back what it holds unused


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
    calls: deque[float] = field(default_factory=deque)  # when the recent calls came
    last_call: float = -math.inf
    burst: int = 1  # doubles each time a call finds nothing held (a loop of calls ramps up fast)

    # ------------------------------------------------------------------ transitions

    def on_call(self, now: float) -> SchedulingDecision | None:
        """A call wants a placement: the oldest one held, or None (ask, then wait for one)."""
        self.last_call = now
        self.calls.append(now)
        while self.calls and self.calls[0] < now - DEMAND_WINDOW_S:
            self.calls.popleft()
        decision = self.take()
        if decision is None:
            self.burst = min(MAX_AHEAD, self.burst * 2)
        return decision

    def take(self) -> SchedulingDecision | None:
        """The oldest placement held, now running; None when none is held."""
        if not self.stock:
            return None
        decision = self.stock.popleft()
        self.running[decision.task_id] = decision
        return decision

    def ask(self, count: int) -> list[SchedulingRequest]:
        """Make `count` more requests; they go with the next report."""
        requests = []
        for _ in range(count):
            request = self.template.model_copy(update={"task_id": f"{self.group}-{self.next_index}"})
            self.next_index += 1
            self.asked[request.task_id] = request
            requests.append(request)
        self.unasked.extend(requests)
        return requests

    def on_placed(self, decisions: list[SchedulingDecision]) -> None:
        """The Scheduler placed some of what was asked: held, in the order it placed them."""
        for decision in decisions:
            if self.asked.pop(decision.task_id, None) is not None:
                self.stock.append(decision)

    def on_refused(self, task_ids: list[str], reason: str) -> None:
        """The Scheduler refused requests (they can never fit): every waiting call fails."""
        for task_id in task_ids:
            self.asked.pop(task_id, None)
        self.refusal = reason

    def on_ended(self, task_id: str, ok: bool, duration_s: float | None) -> None:
        """A call's task ended (Ray said so): its reservation is released with the next report."""
        if self.running.pop(task_id, None) is not None:
            self.ended.append(Completion.model_construct(task_id=task_id, ok=ok, duration_s=duration_s))

    def on_idle(self, now: float) -> list[str]:
        """Hand back what is held beyond the recent demand (all of it once idle); returns the
        requests still waiting at the Scheduler that are no longer wanted (to cancel)."""
        keep = self.target(now)
        if not keep:
            self.burst = 1
        while len(self.stock) > keep:
            self.given_back.append(self.stock.pop().task_id)  # the newest go first: the oldest stay in order
        if now - self.last_call < IDLE_S or not self.asked:
            return []
        dropped = list(self.asked)
        self.asked.clear()
        self.unasked.clear()
        return dropped

    def take_report(self) -> Report:
        """What to tell the Scheduler now (the requests to queue as `requeue`, the placements
        handed back unused as `returned`); cleared once taken."""
        report = Report(group=self.group, ended=self.ended, requeue=self.unasked, returned=self.given_back, unsent=0)
        self.ended, self.given_back, self.unasked = [], [], []
        return report

    def on_report_failed(self, report: Report) -> None:
        """The report never reached the Scheduler (a timeout, a restart): send it again next time,
        before anything newer, so no end, hand-back or request is lost."""
        self.ended[:0] = report.ended
        self.given_back[:0] = report.returned
        self.unasked[:0] = [request for request in report.requeue if request.task_id in self.asked]

    def on_scheduler_lost(self) -> tuple[list[SchedulingDecision], list[SchedulingRequest]]:
        """The Scheduler restarted (or forgot the stream): what it must be told again, as a
        registration: every placement held or running (their reservations), and what waits."""
        self.unasked.clear()
        return list(self.running.values()) + list(self.stock), list(self.asked.values())

    # ------------------------------------------------------------------ reading

    def target(self, now: float) -> int:
        """Placements to hold ahead: about `AHEAD_S` of recent calls (or the burst, while a loop
        of calls ramps up), at least one while calls come, none once idle."""
        if now - self.last_call >= IDLE_S:
            return 0
        recent = sum(1 for at in self.calls if at >= now - DEMAND_WINDOW_S)
        return max(1, self.burst, min(MAX_AHEAD, math.ceil(recent * AHEAD_S / DEMAND_WINDOW_S)))

    def wanted(self, now: float, waiting_calls: int = 0) -> int:
        """How many more to ask for now: enough for the calls waiting and the target ahead."""
        have = len(self.stock) + len(self.asked)
        return max(0, min(MAX_AHEAD, waiting_calls + self.target(now)) - have)

    def quiet(self, now: float) -> bool:
        """Idle and holding nothing, with nothing left to tell: the Scheduler may forget it."""
        return (self.target(now) == 0 and not self.asked and not self.stock and not self.running
                and not self.ended and not self.given_back and not self.unasked)

    @property
    def holds(self) -> int:
        """Placements held (stock) or running: what the Scheduler has reserved for this stream."""
        return len(self.stock) + len(self.running)
