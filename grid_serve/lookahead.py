"""How much work to hand Ray ahead of free capacity: lookahead measured in time.

Ray reuses a leased worker only while its owner has another task queued for the same
scheduling key; when a task ends with nothing queued behind it, the lease goes back and the
next task pays for a new one (bench/dispatch_prototype.py: dispatching exactly each node's
capacity ran no-ops far slower than plain Ray and left longer gaps between tasks on a slot;
the figures are in BENCHMARKS.md, "The prototype that chose the design"). So each slot also
gets queued work: enough to cover `lookahead_s` of expected run time, and always at least one
task. The expected run time is the one learned for the job's own tasks (its group), never the
task type's alone: another job may call the same function with other arguments (a sleep of
20 ms, then one of 2 s), and a type's history queued four of the long ones per slot, in front
of any higher-priority task that came next. Until a job's first tasks end it gets one queued
successor per slot, so a run time that changes costs at most one task per slot. Very short
tasks then pipeline as deeply as plain Ray does (from the job's first report on); a long task
has one successor waiting; and a higher-priority task never waits behind more than one task,
or `lookahead_s` of shorter ones, per slot of lower-priority work already handed to Ray.

Very short tasks are also run several to one Ray task (`chunk_sizes`): below a millisecond,
Ray's own cost per task (submission, lease, worker call) is what a job pays, and no placement
rule can win it back; sharing one Ray task between several can (bench/dispatch_prototype.py;
BENCHMARKS.md, "Chunks: what reached the no-op target"). Each task still gets its own decision, its own result and
its own place in the job's counts; a chunk only shares one Ray task between tasks already
placed on the same node with the same resources.

Pure: the Scheduler passes the admission as the view's `admission` for that kind of request;
the job runner asks `chunk_sizes` how to group what it dispatches and `interleave` in what order.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterator, Sequence

# Ray's own cost per task is about a millisecond here: planning deeper than one task per
# millisecond of lookahead gains nothing and only delays the next higher-priority task.
MIN_TASK_S = 0.001
UNKNOWN_EXTRA = 1.0  # a job none of whose tasks has ended yet gets one queued successor per slot
MAX_CHUNK = 64  # tasks per Ray task at most: past this, Ray's per-task cost is already under 2%
CHUNK_FLOOR_S = 0.00003  # what one task costs inside a chunk at least (its envelope), whatever it learned


def lookahead_admission(run_s: float | None, lookahead_s: float) -> float:
    """Admission (times each node's resources) for a job's tasks: 1 (what runs) plus the queued
    work per slot, from `run_s`, what the job's own tasks took (None: none has ended yet).
    `lookahead_s <= 0` is strict: nothing queued inside Ray.

    >>> lookahead_admission(None, 0.1), lookahead_admission(2.0, 0.1), lookahead_admission(0.01, 0.1)
    (2.0, 2.0, 11.0)
    """
    if lookahead_s <= 0:
        return 1.0
    if run_s is None:
        return 1.0 + UNKNOWN_EXTRA
    return 1.0 + max(1.0, lookahead_s / max(MIN_TASK_S, run_s))


def chunk_sizes(count: int, run_s: float | None, budget_s: float) -> list[int]:
    """How to group `count` tasks placed together on one node (same resources) into Ray tasks:
    as many per Ray task as fit `budget_s` of learned run time (`run_s` each), sizes as even
    as they can be. Unknown run times, tasks of half the budget or more and `budget_s <= 0`
    run one per Ray task. A chunk that runs past its time anyway hands its rest back
    (`grid_serve.tasks.run_chunk`), so a wrong guess costs one task's time, not the chunk's.

    >>> chunk_sizes(10, None, 0.002), chunk_sizes(3, 0.05, 0.002)
    ([1, 1, 1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1])
    >>> chunk_sizes(10, 0.0005, 0.002)  # 4 fit the budget: three chunks, even
    [4, 3, 3]
    >>> chunk_sizes(200, 0.000001, 0.002)  # no-ops: capped at MAX_CHUNK
    [50, 50, 50, 50]
    """
    per = 1 if run_s is None or budget_s <= 0 else min(MAX_CHUNK, int(budget_s / max(run_s, CHUNK_FLOOR_S)))
    if per <= 1 or count <= 1:
        return [1] * count
    chunks = -(-count // per)
    size, extra = divmod(count, chunks)
    return [size + 1] * extra + [size] * (chunks - extra)


def interleave(queues: Sequence[Sequence[Any]]) -> Iterator[Any]:
    """The first item of each queue, then the second of each, and so on: the order in which the
    runner hands Ray what one reply placed, so every node's first tasks are sent before any
    node's later ones (each submission takes a while; node by node, the last node's first task
    waited for every other node's: BENCHMARKS.md, "The 20 ms case: cause found and fixed").

    >>> list(interleave([[1, 2, 3], [4], [5, 6]]))
    [1, 4, 5, 2, 6, 3]
    """
    gap = object()
    for row in itertools.zip_longest(*queues, fillvalue=gap):
        yield from (item for item in row if item is not gap)
