"""How much work to hand Ray ahead of free capacity: lookahead measured in time.

Ray reuses a leased worker only while its owner has another task queued for the same
scheduling key; when a task ends with nothing queued behind it, the lease goes back and the
next task pays for a new one (bench/dispatch_prototype.py: dispatching exactly each node's
capacity ran no-ops at 0.50x plain Ray and left 5-7 ms between tasks on a slot, against
2-3 ms). So each slot also gets queued work: enough to cover `lookahead_s` of expected run
time (the run time learned for the task type), and always at least one task. Very short
tasks then pipeline as deeply as plain Ray does; a long task has one successor waiting; and a
higher-priority task never waits behind more than one task, or `lookahead_s` of shorter ones,
per slot of lower-priority work already handed to Ray.

Pure: the Scheduler passes the result as the view's `admission` for that kind of request.
"""

from __future__ import annotations

from typing import Mapping

# Ray's own cost per task is about a millisecond here: planning deeper than one task per
# millisecond of lookahead gains nothing and only delays the next higher-priority task.
MIN_TASK_S = 0.001
UNKNOWN_EXTRA = 1.0  # a task type never measured gets one queued successor per slot


def lookahead_admission(task_type: str, durations: Mapping[tuple[str, str], float], lookahead_s: float) -> float:
    """Admission (times each node's resources) for tasks of `task_type`: 1 (what runs) plus
    the queued work per slot. `lookahead_s <= 0` is strict: nothing queued inside Ray."""
    if lookahead_s <= 0:
        return 1.0
    learned = [seconds for (_, kind), seconds in durations.items() if kind == task_type]
    if not learned:
        return 1.0 + UNKNOWN_EXTRA
    typical = max(MIN_TASK_S, sum(learned) / len(learned))
    return 1.0 + max(1.0, lookahead_s / typical)
