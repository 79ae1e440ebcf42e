"""Every task's outcome in one job, kept in columns.

A job of 100,000 tasks keeps 100,000 outcomes until it is dropped (`Limits`); as one pydantic
`TaskOutcome` each they were the most of what a job cost its runner (BENCHMARKS.md). Here a
task takes a state byte, a node index, two floats and a slot for its result (about 30 bytes
besides the result itself), the counts a status needs are kept as tasks end (a status is
O(nodes), not O(tasks)), and `TaskOutcome`s are built only for a caller who asks for results.

Pure: no Ray. The job runner records into it and reads statuses from it.
"""

from __future__ import annotations

from array import array
from collections import Counter
from typing import Any, Callable

from .models import TaskOutcome

UNSET, OK, FAILED, CANCELLED = 0, 1, 2, 3
CANCELLED_ERROR = "cancelled"


class OutcomeTable:
    """Outcomes of tasks 0..size-1 of job `job_id`.

    >>> table = OutcomeTable("job1", 3)
    >>> table.record(0, "n1", "gpu1", True, result=42, started_at=1.0, duration_s=0.5)
    >>> table.record(2, "", "(not placed)", False, error="cancelled")
    >>> (len(table), table.succeeded, table.failed, table.cancelled, table.per_node())
    (2, 1, 0, 1, {'(not placed)': 1, 'gpu1': 1})
    >>> [(o.task_id, o.ok, o.result, o.error) for o in table.all()]
    [('job1-0', True, 42, None), ('job1-2', False, None, 'cancelled')]
    """

    def __init__(self, job_id: str, size: int) -> None:
        self._job_id = job_id
        self._state = bytearray(size)
        self._node = array("I", bytes(4 * size))  # index into _nodes
        self._started = array("d", bytes(8 * size))
        self._duration = array("d", bytes(8 * size))
        self._results: list[Any] = [None] * size
        self._errors: dict[int, str] = {}  # failed and cancelled tasks only
        self._attempts: dict[int, int] = {}  # tasks that ran more than once only
        self._task_ids: dict[int, str] = {}  # tasks placed under an id not `<job id>-<index>` only
        self._nodes: list[tuple[str, str]] = []  # (node id, node name), each once
        self._node_index: dict[tuple[str, str], int] = {}
        self._counts: Counter[int] = Counter()  # by state
        self._per_node: Counter[int] = Counter()  # by node index
        self.results_dropped = False

    def __len__(self) -> int:
        """Tasks with an outcome."""
        return self._counts[OK] + self._counts[FAILED] + self._counts[CANCELLED]

    @property
    def succeeded(self) -> int:
        return self._counts[OK]

    @property
    def failed(self) -> int:
        return self._counts[FAILED]

    @property
    def cancelled(self) -> int:
        return self._counts[CANCELLED]

    def record(self, index: int, node_id: str, node_name: str, ok: bool, result: Any = None, error: str | None = None,
               started_at: float = 0.0, duration_s: float = 0.0, attempts: int = 1, task_id: str | None = None) -> None:
        """Task `index` ended (recording it again replaces what it had). `task_id`: the id it was
        placed under, when not `<job id>-<index>` (a job run from its caller's process takes
        placements its caller's stream asked for: `grid_serve.caller_jobs`)."""
        if task_id is not None and task_id != f"{self._job_id}-{index}":
            self._task_ids[index] = task_id
        if self._state[index] != UNSET:
            self._counts[self._state[index]] -= 1
            self._per_node[self._node[index]] -= 1
        state = OK if ok else CANCELLED if error == CANCELLED_ERROR else FAILED
        node = self._node_index.get((node_id, node_name))
        if node is None:
            node = self._node_index[(node_id, node_name)] = len(self._nodes)
            self._nodes.append((node_id, node_name))
        self._state[index] = state
        self._node[index] = node
        self._started[index] = started_at
        self._duration[index] = duration_s
        self._results[index] = result
        if error is not None:
            self._errors[index] = error
        else:
            self._errors.pop(index, None)
        if attempts > 1:
            self._attempts[index] = attempts
        self._counts[state] += 1
        self._per_node[node] += 1

    def has(self, index: int) -> bool:
        return self._state[index] != UNSET

    def ok(self, index: int) -> bool:
        return self._state[index] == OK

    def replace_results(self, convert: Callable[[Any], Any]) -> None:
        """Each result as `convert` makes it (a caller's ObjectRefs as their ids, before a copy of
        the job goes where it must not keep the objects alive)."""
        self._results = [convert(result) if result is not None else None for result in self._results]

    def per_node(self) -> dict[str, int]:
        """Ended tasks per node name, sorted by name."""
        counts: Counter[str] = Counter()
        for node, count in self._per_node.items():
            if count:
                counts[self._nodes[node][1]] += count
        return dict(sorted(counts.items()))

    def outcome(self, index: int) -> TaskOutcome:
        node_id, node_name = self._nodes[self._node[index]]
        # model_construct: built from what this table validated once; one per task asked for
        return TaskOutcome.model_construct(
            task_id=self._task_ids.get(index) or f"{self._job_id}-{index}", index=index, node_id=node_id,
            node_name=node_name,
            ok=self._state[index] == OK, result=self._results[index], error=self._errors.get(index),
            started_at=self._started[index], duration_s=self._duration[index], attempts=self._attempts.get(index, 1))

    def all(self) -> list[TaskOutcome]:
        """Every recorded outcome, by task index."""
        return [self.outcome(index) for index, state in enumerate(self._state) if state != UNSET]

    def result_bytes(self, size_of: Callable[[Any], int]) -> int:
        return sum(size_of(self._results[index]) for index, state in enumerate(self._state) if state != UNSET)

    def drop_results(self) -> None:
        """Free the results (a finished job kept past `results_bytes_kept`); counts stay."""
        self._results = [None] * len(self._state)
        self.results_dropped = True
