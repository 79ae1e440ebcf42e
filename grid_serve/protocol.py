"""The messages between a job's owner and the Scheduler, as data.

A job's owner is a job runner (`deployments/runner.py`), a `grid.remote` caller's dispatcher
(`grid_serve/dispatch.py`) or a `/v1/schedule` request (the Ingress). Each message is
keyword-only and frozen: it crosses a process boundary as one named value rather than a row of
positional arguments, and its receiver reads it without changing it.

    owner                                        Scheduler
    Submit(requests, runner, unsent)   ---->     queue; place what fits; the group's lease starts
                                       <----     Placements (placed, rejected, queued, epoch, known)
    Report(group, ended, reused, ...)  ---->     release what ended, move each reused slot to its
                                                 new task, place in the room; renews
                                       <----     Placements (with `reuse`: may the owner reuse slots)
                                       <----     Placements.take_back: tasks to take back from
                                                 Ray if not started (higher work waits there)
    Report(returned, requeue)          ---->     those Ray dropped unstarted: released, uncounted,
                                                 queued again with their first age
    wait_placed(group, timeout_s)      ---->     long-poll: Placements once there is news
    renew(groups)                      ---->     (epoch, the groups it does not know)
    Adopt(group, running, waiting, ...) --->     a group it does not know (it restarted, or the
                                                 lease lapsed) registered again with all it holds
                                       <----     Placements
    finished(group, reason, ended)     ---->     everything of the group released
    end_groups([Finished])             ---->     the same for several groups (a runner's jobs that
                                                 ended together)

A reply whose `known` is False says the Scheduler does not know the group: nothing of it was
queued or placed, and its owner must `Adopt` it. A new `epoch` says the Scheduler restarted.
Pure: no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .ledger import Completion
from .models import SchedulingDecision, SchedulingRequest, TaskPriority
from .scheduling import Rejected


@dataclass(frozen=True, kw_only=True)
class Finished:
    """A group's job is over: its last ends (their run times are worth learning) released with
    everything else it still held, its counts and lease forgotten."""

    group: str
    completions: list[Completion] = field(default_factory=list)
    reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class Submit:
    """A new group's first requests (every request of one group)."""

    requests: list[SchedulingRequest]
    runner: str | None = None  # the owner that renews the group's lease; None: a /v1/schedule request
    lease_s: float | None = None  # a /v1/schedule reservation's own lease (no runner renews it)
    owner: str | None = None  # who may complete a /v1/schedule reservation (grid_serve.access)
    request_key: str | None = None  # a /v1/schedule request's own secret: it alone may `abandon` it
    unsent: int = 0  # tasks of the group its owner holds back beyond the window: they count in the queue
    takes_back: bool = False  # the owner takes back unstarted tasks when asked (`Placements.take_back`)
    publish: bool = True  # publish the ledger before replying, so a status read next shows the placements


@dataclass(frozen=True, kw_only=True)
class Reuse:
    """A call ended and its owner ran a new one in the slot it freed (same node, same
    resources) without a round trip: the reservation moves from `ended` to `task_id`."""

    ended: Completion
    task_id: str
    strategy: str


@dataclass(frozen=True, kw_only=True)
class Report:
    """What changed for a group since its owner last said: sent in batches, never per task."""

    group: str
    ended: list[Completion] = field(default_factory=list)  # with run times; lost attempts among them
    requeue: list[SchedulingRequest] = field(default_factory=list)  # to place (again): lost ones, the window's next
    lost_nodes: list[str] = field(default_factory=list)  # nodes Ray said died under a task
    unsent: int | None = None  # tasks still held back; None: no news
    # placements handed back unused: a grid.remote stream's, and tasks taken back from Ray unstarted
    # (`Placements.take_back`), which come again in `requeue` and keep their age
    returned: list[str] = field(default_factory=list)
    reused: list[Reuse] = field(default_factory=list)  # slots a grid.remote stream ran its next calls in, in order

    def __bool__(self) -> bool:
        """Whether there is anything to tell."""
        return bool(self.ended or self.requeue or self.lost_nodes or self.returned or self.reused)


@dataclass(frozen=True, kw_only=True)
class Adopt:
    """A group registered again with a Scheduler that does not know it: what runs (decision and
    task type) is reserved where it runs, what it placed per node counted (spread stays exact),
    and what waits queued."""

    runner: str
    group: str
    running: list[tuple[SchedulingDecision, str]] = field(default_factory=list)
    waiting: list[SchedulingRequest] = field(default_factory=list)
    placed_per_node: dict[str, int] = field(default_factory=dict)
    unsent: int = 0
    priority: TaskPriority | None = None  # None: the waiting requests' (a job's priority never changes)
    queue: str | None = None  # None: the waiting requests' (a job's queue never changes either)
    takes_back: bool = False  # as in `Submit`


@dataclass(frozen=True, kw_only=True)
class Placements:
    """A group's news since it last asked, and which Scheduler instance answered."""

    placed: list[SchedulingDecision] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    queued: int = 0
    epoch: str = ""
    known: bool = True  # False: this Scheduler does not know the group (restarted, or lease lapsed)
    run_s: dict[str, float] = field(default_factory=dict)  # node id -> learned run time of the placed tasks' type
    turns_given_up: dict[str, int] = field(default_factory=dict)  # node name -> spread turns it gave up lately
    # whether the owner may run its next calls in the slots its ended calls free (`Reuse`): no
    # other job's work waits at its priority or above; None: no news (a reply to no ends)
    reuse: bool | None = None
    # tasks of the group to take back from Ray if they have not started (`grid_serve.take_back`):
    # higher-priority work waits for their nodes
    take_back: list[str] = field(default_factory=list)
    # running tasks of the group to stop and place again (`grid_serve.take_back.to_reclaim`): a
    # queue that reclaims its quota (`reclaim: cancel_running`) waits for what its group borrowed
    reclaim: list[str] = field(default_factory=list)
