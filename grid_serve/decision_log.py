"""The recent past of the Scheduler's decisions, kept small enough to hold forever.

The web page (and anyone curious) asks what was decided lately and why, what one job's tasks
were told, and how many tasks each node got over the last minutes. The Scheduler sees every
decision once, in `_commit`; this log keeps references to them (no copies, no formatting) so
recording costs a few dictionary operations per decision, and everything else is done when
someone reads.

    log = DecisionLog(clock=lambda: 1000.0)
    log.record(decision, job_id="ab12", task_type="compute_task", priority=TaskPriority.NORMAL)
    log.recent(limit=20)                     # newest first, as DecisionRecord
    log.recent(limit=20, job_id="ab12")      # one job's, even after others pushed it out of the shared tail
    log.placements(window_s=600)             # PlacementHistory: tasks per node per bucket
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from typing import Callable

from .models import DecisionRecord, PlacementHistory, SchedulingDecision, TaskPriority

RECENT_KEPT = 500  # decisions of every job, newest last
PER_JOB_KEPT = 100  # decisions kept per job (its latest)
JOBS_KEPT = 50  # jobs whose decisions are kept; the least recently placed one goes first
BUCKET_S = 10.0
HISTORY_S = 900.0  # placements per node are kept this far back


# (when, job id, task type, priority, decision): a plain tuple, since building a frozen dataclass
# per decision cost several times more on the commit path
_Entry = tuple[float, str, str, TaskPriority, SchedulingDecision]


def _to_record(entry: _Entry) -> DecisionRecord:
    at, job_id, task_type, priority, d = entry
    return DecisionRecord(at=at, task_id=d.task_id, job_id=job_id, task_type=task_type, node=d.node_name,
                          node_id=d.node_id, strategy=d.strategy, priority=priority, score=d.score,
                          waited_s=d.waited_s, borrowed=d.placement_group_id is not None, reasons=list(d.reasons),
                          explanation=d.explanation)


class DecisionLog:
    """Bounded memory of decisions: a shared tail, a tail per job, and counts per time bucket.

    `record` runs for every decision the Scheduler commits (tens of thousands a second at
    best), so it remembers the last job's tail and the current bucket instead of looking them
    up again: a job's decisions come in runs."""

    def __init__(self, recent: int = RECENT_KEPT, per_job: int = PER_JOB_KEPT, jobs: int = JOBS_KEPT,
                 bucket_s: float = BUCKET_S, history_s: float = HISTORY_S,
                 clock: Callable[[], float] = time.time) -> None:
        self._recent: deque[_Entry] = deque(maxlen=recent)
        self._per_job_kept = per_job
        self._jobs_kept = jobs
        self._by_job: OrderedDict[str, deque[_Entry]] = OrderedDict()  # least recently placed first
        self._placed_in_job: dict[str, int] = {}  # every decision a kept job got, not only its tail
        self._last_job: str | None = None
        self._last_tail: deque[_Entry] = deque()
        self._bucket_s = bucket_s
        self._buckets_kept = max(1, math.ceil(history_s / bucket_s))
        self._buckets: OrderedDict[int, dict[str, int]] = OrderedDict()  # bucket number -> node name -> tasks
        self._bucket_number = -1
        self._bucket_counts: dict[str, int] = {}
        self._clock = clock

    def record(self, decision: SchedulingDecision, job_id: str, task_type: str, priority: TaskPriority) -> None:
        """Remember one decision: a few dictionary operations, no copies, no formatting."""
        now = self._clock()
        entry = (now, job_id, task_type, priority, decision)
        self._recent.append(entry)
        if job_id != self._last_job:
            self._last_tail, self._last_job = self._job_tail(job_id), job_id
        self._last_tail.append(entry)
        self._placed_in_job[job_id] = self._placed_in_job.get(job_id, 0) + 1
        if now // self._bucket_s != self._bucket_number:
            self._start_bucket(now)
        counts = self._bucket_counts
        counts[decision.node_name] = counts.get(decision.node_name, 0) + 1

    def _job_tail(self, job_id: str) -> deque[_Entry]:
        """The job's tail, made the most recent one; the least recent job is forgotten past `jobs`."""
        tail = self._by_job.get(job_id)
        if tail is not None:
            self._by_job.move_to_end(job_id)
            return tail
        tail = self._by_job[job_id] = deque(maxlen=self._per_job_kept)
        if len(self._by_job) > self._jobs_kept:
            forgotten, _ = self._by_job.popitem(last=False)
            self._placed_in_job.pop(forgotten, None)
        return tail

    def _start_bucket(self, now: float) -> None:
        self._bucket_number = int(now // self._bucket_s)
        self._bucket_counts = self._buckets.setdefault(self._bucket_number, {})
        while len(self._buckets) > self._buckets_kept:
            self._buckets.popitem(last=False)

    # ------------------------------------------------------------------ reading

    def recent(self, limit: int = 50, job_id: str | None = None) -> list[DecisionRecord]:
        """The newest `limit` decisions, newest first; only `job_id`'s when given."""
        source = self._recent if job_id is None else self._by_job.get(job_id, ())
        newest = list(reversed(source))[:max(0, limit)]
        return [_to_record(entry) for entry in newest]

    def placed_in_job(self, job_id: str) -> int:
        """How many decisions the job got in all (its kept tail may be shorter)."""
        return self._placed_in_job.get(job_id, 0)

    def placements(self, window_s: float = 600.0) -> PlacementHistory:
        """Tasks placed per node in each bucket of the last `window_s`, oldest bucket first,
        with empty buckets as zeros so a chart's x axis is plain time."""
        now = self._clock()
        last = int(now // self._bucket_s)
        count = max(1, min(self._buckets_kept, math.ceil(window_s / self._bucket_s)))
        numbers = range(last - count + 1, last + 1)
        nodes = sorted({node for number in numbers for node in self._buckets.get(number, ())})
        per_node = {node: [self._buckets.get(number, {}).get(node, 0) for number in numbers] for node in nodes}
        return PlacementHistory(now=now, bucket_s=self._bucket_s, start=numbers[0] * self._bucket_s,
                                per_node=per_node)
