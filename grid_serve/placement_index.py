"""Many decisions against one evolving view, without rescanning every node per decision.

`place()` is the definition: it filters and scores every node, which is clear and O(nodes)
per task. A job of N tasks drained against a view of K nodes then costs O(N x K) Python
filter calls. `IncrementalPlacer` gives, task after task, exactly the decision `place()`
would give on the view with the earlier decisions reserved (same node, same score, same
explanation), but keeps what it learned between tasks:

  - lasting checks ("never") run once per node: nothing a decision does can change them;
  - current checks and scores are kept per node, and recomputed only for a node a decision
    changed (`node_changed`), or for every node when spread's floor rises (once per round
    of a spread job: amortised O(1) per task);
  - ready nodes sit in a heap keyed like place()'s tie-break `(-score, name, node_id)`;
    entries made stale by a change are skipped when popped;
  - rejections are kept in place()'s order (lasting ones in candidate order, then current
    ones in candidate order), so explanations and no-fit messages read the same.

Pure, like the strategies: no Ray. Tests check it against `place()` decision by decision.
"""

from __future__ import annotations

import bisect
import heapq
import math
from typing import Mapping, MutableMapping

from .models import SchedulingDecision, SchedulingRequest, SchedulingStrategy
from .strategies import (
    LASTING_CHECKS,
    STRATEGIES,
    NoFit,
    PlacementContext,
    Rejection,
    candidates_for,
    decision_for,
    finish_floor,
    first_failure,
    score_node,
    spread_level,
)
from .view import ClusterView, NodeView

EXPLAINED_REJECTIONS = 5  # how many "passed over" nodes an explanation names


class IncrementalPlacer:
    """Decisions for one kind of request (same needs, strategy, job and task type) in a drain.

    `nodes` and `group_counts` are the caller's live state: after reserving a decision on a
    node, the caller updates both and calls `node_changed(node_id)` on every placer.
    """

    def __init__(self, request: SchedulingRequest, view: ClusterView, nodes: Mapping[str, NodeView],
                 group_counts: Mapping[str, int]) -> None:
        self._request = request
        self._strategy = STRATEGIES[request.strategy]
        self._view = view
        self._nodes = nodes
        self._counts = group_counts
        self._spread = request.strategy is SchedulingStrategy.SPREAD
        self._earliest_finish = request.strategy is SchedulingStrategy.PERFORMANCE_OPTIMIZED
        self._finish_floor = math.inf
        ctx = PlacementContext(view=view, group_counts=group_counts)
        self._lasting: list[Rejection] = []
        self._possible: list[str] = []  # node ids that could ever fit, in candidate order
        for node in candidates_for(request, view):  # raises PlacementError like place() does
            rejection = first_failure(LASTING_CHECKS, request, nodes[node.node_id], ctx)
            if rejection:
                self._lasting.append(rejection)
            else:
                self._possible.append(node.node_id)
        self._position = {node_id: i for i, node_id in enumerate(self._possible)}
        self._stamp = [0] * len(self._possible)
        self._failing: MutableMapping[int, Rejection] = {}
        self._failing_order: list[int] = []  # positions of current rejections, ascending
        self._parts: dict[int, tuple[float, dict[str, float]]] = {}
        self._heap: list[tuple[float, str, str, int, int]] = []
        self._levels: list[float] = []
        self._floor = 0.0
        self._at_floor = 0  # possible nodes whose level is the floor: spread's turn is theirs
        if self._possible:
            self._refresh_all()

    # ------------------------------------------------------------------ state upkeep

    def _context(self) -> PlacementContext:
        return PlacementContext(view=self._view, group_counts=self._counts, spread_floor=self._floor,
                                finish_floor=self._finish_floor)

    def _current_finish_floor(self) -> float:
        if not self._earliest_finish:
            return math.inf
        return finish_floor(self._request, (self._nodes[node_id] for node_id in self._possible), self._view)

    def _refresh_all(self) -> None:
        """Levels, floor, checks and scores of every possible node (start, or the floor rose)."""
        ctx = PlacementContext(view=self._view, group_counts=self._counts)
        self._levels = [spread_level(self._request, self._nodes[node_id], ctx) for node_id in self._possible]
        self._floor = min(self._levels)
        self._at_floor = sum(1 for level in self._levels if level <= self._floor + 1e-9)
        self._finish_floor = self._current_finish_floor()
        self._failing, self._failing_order, self._heap, self._parts = {}, [], [], {}
        ctx = self._context()
        for position in range(len(self._possible)):
            self._stamp[position] += 1
            self._evaluate(position, ctx)

    def _evaluate(self, position: int, ctx: PlacementContext) -> None:
        node = self._nodes[self._possible[position]]
        rejection = first_failure(self._strategy.current_checks, self._request, node, ctx)
        if rejection:
            self._failing[position] = rejection
            bisect.insort(self._failing_order, position)
            return
        total, parts = score_node(self._strategy, self._request, node, ctx)
        self._parts[position] = (total, parts)
        heapq.heappush(self._heap, (-total, node.name, node.node_id, self._stamp[position], position))

    def node_changed(self, node_id: str) -> None:
        """A decision reserved on `node_id` (or its job count grew): re-read that node."""
        position = self._position.get(node_id)
        if position is None:
            return  # it can never fit this request, whatever its load
        self._stamp[position] += 1
        self._parts.pop(position, None)
        if self._failing.pop(position, None) is not None:
            del self._failing_order[bisect.bisect_left(self._failing_order, position)]
        if self._spread and self._floor_rose(position):
            self._refresh_all()
            return
        if self._earliest_finish and self._current_finish_floor() != self._finish_floor:
            self._refresh_all()  # every node's "a busy node finishes sooner" check reads the floor
            return
        self._evaluate(position, self._context())

    def _floor_rose(self, position: int) -> bool:
        """Update this node's spread level; True when no node is left at the floor."""
        was_at_floor = self._levels[position] <= self._floor + 1e-9
        self._levels[position] = spread_level(self._request, self._nodes[self._possible[position]],
                                              PlacementContext(view=self._view, group_counts=self._counts))
        is_at_floor = self._levels[position] <= self._floor + 1e-9
        self._at_floor += int(is_at_floor) - int(was_at_floor)
        return self._at_floor == 0

    # ------------------------------------------------------------------ deciding

    def _rejections(self, limit: int | None = None) -> list[Rejection]:
        """place()'s rejection list (or its first `limit`): lasting ones, then current ones."""
        order = self._failing_order if limit is None else self._failing_order[:limit]
        rejections = self._lasting + [self._failing[position] for position in order]
        return rejections if limit is None else rejections[:limit]

    def _best(self) -> int | None:
        while self._heap:
            _, _, _, stamp, position = self._heap[0]
            if stamp == self._stamp[position] and position in self._parts:
                return position
            heapq.heappop(self._heap)
        return None

    def place(self, request: SchedulingRequest, waited_s: float = 0.0) -> SchedulingDecision | NoFit:
        """What `place(request, current view, group counts)` answers; `request` must be of
        this placer's kind (only its task id may differ). Reserves nothing itself."""
        if not self._possible:
            return NoFit(request.task_id, can_wait=False, rejections=tuple(self._lasting),
                         total_nodes=len(self._view.nodes))
        position = self._best()
        if position is None:
            return NoFit(request.task_id, can_wait=True, rejections=tuple(self._rejections()),
                         total_nodes=len(self._view.nodes))
        total, parts = self._parts[position]
        chosen = self._nodes[self._possible[position]]
        ready_count = len(self._possible) - len(self._failing_order)
        runner_up = self._runner_up() if self._strategy.name is SchedulingStrategy.PERFORMANCE_OPTIMIZED else None
        return decision_for(request, chosen, total, parts, ready_count, self._rejections(EXPLAINED_REJECTIONS),
                            self._context(), waited_s, runner_up)

    def _runner_up(self) -> NodeView | None:
        """The next best ready node after the heap's top (stale entries on the way are dropped)."""
        top = heapq.heappop(self._heap)
        second = self._best()
        heapq.heappush(self._heap, top)
        return None if second is None else self._nodes[self._possible[second]]
