"""A job runner's books for one job: what waits at the Scheduler, what runs, what ended and is
not yet told, and each task's outcome. The runner's side of `grid_serve.protocol`, opposite
`grid_serve.books.SchedulerBooks`.

Pure (no Ray, no asyncio): the runner (`deployments/runner.py`) is its shell. It makes the
Scheduler calls and hands Ray the tasks `on_placements` returns; its `RunnerJob`
(`deployments/runner_job.py`) adds the Ray handles and the events its callers wait on.
tests/test_books.py drives these books against the Scheduler's own, message by message.

Invariants (`check`): a task index is waiting, running or has an outcome, never two at once;
nothing is placed that was not asked for; `next_index` tasks have been handed to the
Scheduler (the window), the rest are `unsent`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import GoneError
from .ledger import Completion
from .models import (
    JobState,
    JobStatus,
    JobSubmission,
    ResourceRequirement,
    SchedulingDecision,
    SchedulingRequest,
    SchedulingStrategy,
)
from .outcomes import OutcomeTable
from .protocol import Adopt, Placements, Report

MAX_ATTEMPTS = 3  # runs of one task when its worker or node dies under it
MIN_WINDOW = 2048  # tasks of one job the Scheduler holds at most (or twice what runs, when more)

PlacedTask = tuple[int, SchedulingDecision]  # a task's index in its job, and where it goes


@dataclass
class JobBooks:
    id: str
    spec: JobSubmission
    task_name: str
    requirements: ResourceRequirement  # the task type's default, for requests made again
    sized_by: Callable[..., ResourceRequirement] | None = None  # what a task type asks for given its arguments
    owner: str | None = None  # who may cancel it (grid_serve.access)
    submitted_at: float = field(default_factory=time.time)
    waiting: dict[str, SchedulingRequest] = field(default_factory=dict)  # not yet placed, by task id
    running: dict[int, tuple[SchedulingDecision, Any]] = field(default_factory=dict)  # index -> (decision, Ray's ref)
    outcomes: OutcomeTable = field(default_factory=lambda: OutcomeTable("", 0))  # sized at submission
    unreported: list[Completion] = field(default_factory=list)  # ended, not yet told to the Scheduler
    requeue: list[SchedulingRequest] = field(default_factory=list)  # to place (again), not yet sent
    lost_nodes: set[str] = field(default_factory=set)  # node ids Ray said died, not yet told
    returned: list[str] = field(default_factory=list)  # placements taken back from Ray unstarted, not yet told
    asked_back: set[int] = field(default_factory=set)  # running tasks the Scheduler asked back (Ray asked to drop)
    reclaimed: set[int] = field(default_factory=set)  # of those, the ones stopped even if started (`to_reclaim`)
    attempts: dict[int, int] = field(default_factory=dict)  # task index -> runs started, when more than one
    placed_per_node: dict[str, int] = field(default_factory=dict)  # node id -> tasks placed there
    next_index: int = 0  # tasks 0..next_index-1 have been handed to the Scheduler (the window)
    run_s: dict[str, float] = field(default_factory=dict)  # node id -> learned run time (the Scheduler's)
    turns_given_up: dict[str, int] = field(default_factory=dict)  # node name -> spread turns it gave up
    taken_back: int = 0  # tasks taken back from Ray unstarted for higher-priority work (`on_taken_back`)
    ray_tasks: int = 0  # Ray tasks submitted for it (a chunk counts once)
    cancelled: bool = False
    ended: bool = False  # its end is recorded: every task has an outcome and nothing of it is held
    finished_at: float | None = None
    error: str | None = None
    result_bytes: int = 0  # pickled size of its results, once finished

    # ------------------------------------------------------------------ reading

    @staticmethod
    def index_of(task_id: str) -> int:
        return int(task_id.rsplit("-", 1)[1])

    @property
    def unsent(self) -> int:
        """Tasks not yet handed to the Scheduler (beyond its window)."""
        return self.spec.task_count - self.next_index

    @property
    def all_ended(self) -> bool:
        """Every task has an outcome."""
        return len(self.outcomes) >= self.spec.task_count

    @property
    def settled(self) -> bool:
        """Every task has an outcome, or the job was cancelled and nothing of it runs."""
        return self.all_ended or (self.cancelled and not self.running)

    @property
    def state(self) -> JobState:
        """A cancel that stopped nothing (it landed after every task ended on its own, before
        the end was recorded) leaves the job as its tasks made it."""
        if self.cancelled and not (self.all_ended and not self.outcomes.cancelled):
            return "cancelled"
        if self.ended:
            return "failed" if self.error or self.outcomes.failed or self.outcomes.cancelled else "succeeded"
        return "running" if self.running or len(self.outcomes) else "queued"

    def status(self, with_results: bool = False) -> JobStatus:
        """O(nodes), not O(tasks), unless `with_results`."""
        if with_results and self.outcomes.results_dropped:
            raise GoneError(f"the results of job {self.id} were dropped to keep finished jobs' results under "
                            "results_bytes_kept; its status remains", field="results")
        return JobStatus(
            job_id=self.id, task=self.task_name, strategy=self.spec.strategy, priority=self.spec.priority,
            queue=self.spec.queue,
            state=self.state, total=self.spec.task_count, queued=len(self.waiting) + self.unsent,
            running=len(self.running), succeeded=self.outcomes.succeeded, failed=self.outcomes.failed,
            cancelled=self.outcomes.cancelled, per_node=self.outcomes.per_node(), ray_tasks=self.ray_tasks,
            turns_given_up=dict(self.turns_given_up), taken_back=self.taken_back, submitted_at=self.submitted_at,
            finished_at=self.finished_at,
            error=self.error, results=self.outcomes.all() if with_results else None,
        )

    def requirements_of(self, index: int) -> ResourceRequirement:
        """What task `index` needs unless the job says (`resources`): what its task type asks for
        its arguments (memory_task reserves the block it allocates), else the type's default."""
        if self.spec.resources is not None or self.sized_by is None:
            return self.requirements
        return self.sized_by(*self.spec.call_args(index))

    # ------------------------------------------------------------------ transitions

    def next_requests(self, count: int) -> list[SchedulingRequest]:
        """The job's next `count` tasks as requests, waiting from now on."""
        end = min(self.spec.task_count, self.next_index + count)
        requests = [self.spec.scheduling_request(self.id, i, self.requirements_of(i))
                    for i in range(self.next_index, end)]
        self.next_index = end
        self.waiting.update((request.task_id, request) for request in requests)
        return requests

    def on_placements(self, placements: Placements) -> list[PlacedTask]:
        """The Scheduler's news: returns the placed tasks to hand Ray, in its order (then
        `top_up`). A placement that reaches a cancelled job never runs: it ends at once, reported
        back so its room frees; a duplicate (after a re-registration) is ignored; a rejection is
        the task's end."""
        self.run_s.update(placements.run_s)
        for name, turns in placements.turns_given_up.items():  # news since the last reply: add it up
            self.turns_given_up[name] = self.turns_given_up.get(name, 0) + turns
        to_run = []
        for decision in placements.placed:
            if self.waiting.pop(decision.task_id, None) is None:
                continue
            index = self.index_of(decision.task_id)
            self.placed_per_node[decision.node_id] = self.placed_per_node.get(decision.node_id, 0) + 1
            if self.cancelled:
                self._record(index, decision, ok=False, error="cancelled")
                self.unreported.append(Completion(task_id=decision.task_id, ok=False))
            else:
                to_run.append((index, decision))
        for rejection in placements.rejected:
            if self.waiting.pop(rejection.task_id, None) is not None:
                self._record(self.index_of(rejection.task_id), None, ok=False, error=rejection.reason)
        return to_run

    def top_up(self) -> None:
        """Hand the Scheduler more of the job once half its window was placed (after the placed
        tasks went to Ray): it keeps enough to fill the cluster (twice what runs), never the
        whole job."""
        window = max(MIN_WINDOW, 2 * len(self.running))
        if self.unsent and not self.cancelled and len(self.waiting) < window // 2:
            self.requeue.extend(self.next_requests(window - len(self.waiting)))

    def on_sent(self, chunk: list[PlacedTask], ref: Any) -> None:
        """Ray holds `chunk` as one Ray task (`ref`)."""
        self.ray_tasks += 1
        for index, decision in chunk:
            self.running[index] = (decision, ref)

    def on_task_ended(self, index: int, ok: bool, error: str | None, envelope: dict[str, Any] | None) -> bool:
        """A task ended (its envelope: what it returned and where and how long it ran); False
        when it was not running (already ended: a chunk's and a cancel's end crossing)."""
        entry = self.running.pop(index, None)
        if entry is None:
            return False
        self.asked_back.discard(index)  # asked back too late: it had started, and ran to its end
        self.reclaimed.discard(index)
        decision, _ = entry
        self._record(index, decision, ok, error, envelope)
        # model_construct: these values come from our own envelope, and validating two models per
        # task was a visible share of the runner's CPU on the no-op path (py-spy)
        self.unreported.append(Completion.model_construct(task_id=decision.task_id, ok=ok,
                                                          duration_s=envelope["duration_s"] if envelope else None))
        return True

    def on_lost(self, index: int, node_died: bool, what: str) -> str | None:
        """A task's worker or node died under it (`what` Ray said). Its strategy may move it and it
        has attempts left: its lost attempt is reported (the room frees) with the task, queued
        anew, and the node when Ray says it died, so the Scheduler stops using it before Ray's
        node table catches up; returns None. Else the task ends; returns why."""
        decision, _ = self.running[index]
        if node_died:
            self.lost_nodes.add(decision.node_id)
        attempts = self.attempts.get(index, 1)
        pinned = self.spec.strategy is SchedulingStrategy.NODE_SPECIFIC
        self.asked_back.discard(index)
        self.reclaimed.discard(index)
        if not (self.cancelled or pinned or attempts >= MAX_ATTEMPTS):
            del self.running[index]
            self.attempts[index] = attempts + 1
            self.unreported.append(Completion.model_construct(task_id=decision.task_id, ok=False, duration_s=None))
            request = self.spec.scheduling_request(self.id, index, self.requirements_of(index))
            self.waiting[request.task_id] = request
            self.requeue.append(request)
            return None
        reason = (f"node {decision.node_name} was lost ({what}); node_specific tasks are not moved" if pinned
                  else f"lost {attempts} time(s), the last: {what}")
        self.on_task_ended(index, False, reason, None)
        return reason

    def to_take_back(self, task_ids: list[str], again: bool = False) -> list[tuple[int, Any]]:
        """The Scheduler asks these tasks back (higher-priority work waits for their nodes,
        `grid_serve.take_back`): those still running here, each alone in its Ray task (a chunk
        is not split) and of a job not cancelled, as (index, Ray's ref) for the shell to ask Ray
        to drop; each is asked once."""
        if self.cancelled:
            return []
        shared: dict[int, int] = {}
        for _, ref in self.running.values():
            shared[id(ref)] = shared.get(id(ref), 0) + 1
        chosen = []
        for task_id in task_ids:
            index = self.index_of(task_id)
            entry = self.running.get(index)
            if (entry is None or (index in self.asked_back and not again) or entry[0].task_id != task_id
                    or shared[id(entry[1])] > 1):
                continue
            self.asked_back.add(index)
            chosen.append((index, entry[1]))
        return chosen

    def to_reclaim(self, task_ids: list[str]) -> list[tuple[int, Any]]:
        """The Scheduler asks these tasks back for a queue reclaiming its quota
        (`grid_serve.take_back.to_reclaim`): chosen as `to_take_back` chooses, but the shell stops
        them even if they have started, and each is placed again (`on_taken_back`); none of a
        node_specific job, which could not move."""
        if self.spec.strategy is SchedulingStrategy.NODE_SPECIFIC or self.cancelled:
            return []
        # a task asked back before (for higher work, or reclaimed and not stopped in the Scheduler's
        # patience) is stopped now all the same: the force reaches it
        chosen = self.to_take_back(task_ids, again=True)
        self.reclaimed.update(index for index, _ in chosen)
        return chosen

    def on_taken_back(self, index: int) -> None:
        """Ray dropped task `index` before it started (it was asked back): its placement is handed
        back (released and uncounted, so spread stays exact) and the task is queued again; the
        Scheduler gives it back the age it had."""
        self.asked_back.discard(index)
        self.reclaimed.discard(index)
        decision, _ = self.running.pop(index)
        self.placed_per_node[decision.node_id] -= 1
        self.returned.append(decision.task_id)
        self.taken_back += 1
        request = self.spec.scheduling_request(self.id, index, self.requirements_of(index))
        self.waiting[request.task_id] = request
        self.requeue.append(request)

    def begin_cancel(self) -> list[SchedulingRequest]:
        """No more window requests from now on; returns the requests never sent (the Scheduler
        must not queue them after the cancel)."""
        self.cancelled = True
        never_sent, self.requeue = self.requeue, []
        return never_sent

    def on_cancelled(self, task_ids: list[str]) -> None:
        """The Scheduler dropped these waiting tasks (and those never sent): they end cancelled, as
        does everything never handed to it."""
        for task_id in task_ids:
            if self.waiting.pop(task_id, None) is not None:
                self._record(self.index_of(task_id), None, ok=False, error="cancelled")
        self._record_unsent("cancelled")

    def take_report(self) -> Report | None:
        """What to tell the Scheduler now (ends, requests, lost nodes); None when nothing."""
        if not (self.unreported or self.requeue or self.returned) or self.settled:
            return None
        report = Report(group=self.id, ended=self.unreported, requeue=self.requeue, lost_nodes=sorted(self.lost_nodes),
                        unsent=self.unsent, returned=self.returned)
        self.unreported, self.requeue, self.lost_nodes, self.returned = [], [], set(), []
        return report

    def adoption(self, runner: str) -> Adopt:
        """The job registered again with a Scheduler that does not know it: what runs, what it
        placed per node, and what waits, requests not yet sent included (sent again with a later
        report, one that ended in between would be queued twice); a cancelled job queues nothing."""
        self.requeue = []
        return Adopt(runner=runner, group=self.id, running=[(d, self.task_name) for d, _ in self.running.values()],
                     waiting=[] if self.cancelled else list(self.waiting.values()),
                     placed_per_node=dict(self.placed_per_node), unsent=self.unsent, priority=self.spec.priority,
                     queue=self.spec.queue, takes_back=True)

    def on_end(self) -> list[Completion]:
        """The job is over: what still runs or waits ends (with its error, or cancelled), and the
        last ends not yet told are returned (they go with `finished`). Its arguments go: a
        finished job is kept for reads (`finished_jobs_kept` of them), and arguments are as
        large as callers make them, ObjectRefs among them keeping their objects alive."""
        reason = self.error or "cancelled"
        for index, (decision, _) in list(self.running.items()):
            self._record(index, decision, ok=False, error=reason)
        self.running.clear()
        self.asked_back.clear()
        self.reclaimed.clear()
        for task_id in list(self.waiting):
            self._record(self.index_of(task_id), None, ok=False, error=reason)
        self.waiting.clear()
        self._record_unsent(reason)
        self.finished_at = time.time()
        self.ended = True
        self.spec = self.spec.without_args()  # nothing runs again: a kept job holds no caller's arguments
        batch, self.unreported = self.unreported, []
        return batch

    def check(self) -> None:
        """The invariants every transition keeps (asserted by the table tests)."""
        waiting = {self.index_of(task_id) for task_id in self.waiting}
        assert not waiting & set(self.running), ("waiting and running at once", waiting & set(self.running))
        assert self.asked_back <= set(self.running), ("asked back but not running", self.asked_back - set(self.running))
        assert self.reclaimed <= self.asked_back, ("reclaimed but not asked back", self.reclaimed - self.asked_back)
        assert all(index < self.next_index for index in waiting | set(self.running)), "a task beyond the window"
        assert not (self.ended and (self.waiting or self.running or self.unsent)), "an ended job holds tasks"

    # ------------------------------------------------------------------ internals

    def _on_all_ended(self) -> None:
        """Every task has an outcome: the shell wakes whoever waits for it."""

    def _record_unsent(self, error: str) -> None:
        """Tasks never handed to the Scheduler end with `error` (the job was cancelled or failed)."""
        for index in range(self.next_index, self.spec.task_count):
            self._record(index, None, ok=False, error=error)
        self.next_index = self.spec.task_count

    def _record(self, index: int, decision: SchedulingDecision | None, ok: bool,
                error: str | None = None, envelope: dict[str, Any] | None = None) -> None:
        envelope = envelope or {}
        self.outcomes.record(
            index, node_id=envelope.get("node_id") or (decision.node_id if decision else ""),
            # the app's name for the node: a task sees only its labels and IP, not how the app named it
            node_name=decision.node_name if decision else envelope.get("node_name") or "(not placed)",
            ok=ok, result=envelope.get("result"), error=error,
            started_at=envelope.get("started_at", 0.0), duration_s=envelope.get("duration_s", 0.0),
            attempts=self.attempts.get(index, 1), task_id=decision.task_id if decision else None,
        )
        if self.all_ended:
            self._on_all_ended()
