"""Many decisions against one evolving view, without rescanning every node per decision.

`place()` is the definition: it filters and scores every node, which is clear and O(nodes)
per task. A job of N tasks drained against a view of K nodes then costs O(N x K) Python
filter calls. `IncrementalPlacer` gives, task after task, exactly the decision `place()`
would give on the view with the earlier decisions reserved (same node, same score, same
explanation), but keeps what it learned between tasks:

  - lasting checks ("never") run once per node: nothing a decision does can change them;
  - current checks and scores are kept per node, and recomputed only for a node a decision
    changed (`node_changed`), or for every node when the strategy's turn floor moves (once per
    round of a spread job: amortised O(1) per task);
  - ready nodes sit in a heap keyed like place()'s tie-break `(-score, name, node_id)`;
    entries made stale by a change are skipped when popped;
  - rejections are kept in place()'s order (lasting ones in candidate order, then current
    ones in candidate order), and counted per cause as they come and go, so explanations
    and no-fit messages read the same without a pass over every node.

Any registered strategy runs here unchanged: the placer knows only the `Strategy` shape.

Pure, like the strategies: no Ray. Tests check it against `place()` decision by decision.
"""

from __future__ import annotations

import bisect
import copy
import heapq
import math
from collections import Counter
from typing import Mapping, MutableMapping

from .models import EXPLAINED_NODES, NodeScores, PassedOver, SchedulingDecision, SchedulingRequest
from .strategies import (
    LASTING_CHECKS,
    PATIENCE_MIN_S,
    NoFit,
    PlacementContext,
    Strategy,
    decision_for,
    expected_finish_s,
    first_failure,
    node_scores,
    score_node,
    strategy_named,
)
from .view import ClusterView, NodeView


class NodeChanges:
    """The nodes a drain changed, in order, shared by its placers: each placer re-reads them
    when it is next asked (`IncrementalPlacer.place`), so a drain over many kinds of request
    costs each decision one re-read per placer still in use, not one per placer ever built."""

    def __init__(self) -> None:
        self.changed: list[str] = []

    def add(self, node_id: str) -> None:
        self.changed.append(node_id)


class IncrementalPlacer:
    """Decisions for one kind of request (same needs, strategy, job and task type) in a drain.

    `nodes` and `group_counts` are the caller's live state: after reserving a decision on a
    node, the caller updates both and says so: `node_changed(node_id)` on every placer, or once
    to the `changes` they share. `strategy` is the request's own (from the table) unless given.
    """

    def __init__(self, request: SchedulingRequest, view: ClusterView, nodes: Mapping[str, NodeView],
                 group_counts: Mapping[str, int], strategy: Strategy | None = None,
                 changes: NodeChanges | None = None) -> None:
        self._changes = changes
        self._seen = len(changes.changed) if changes is not None else 0  # changes already read
        self._request = request
        self._strategy = strategy or strategy_named(request.strategy)
        self._turn = self._strategy.turn
        self._view = view
        self._nodes = nodes
        self._counts = group_counts
        ctx = PlacementContext(view=view, group_counts=group_counts)
        self._lasting: list[PassedOver] = []
        self._possible: list[str] = []  # node ids that could ever fit, in candidate order
        for node in self._strategy.candidates(request, view):  # raises PlacementError like place() does
            rejection = first_failure(LASTING_CHECKS, request, nodes[node.node_id], ctx)
            if rejection:
                self._lasting.append(rejection)
            else:
                self._possible.append(node.node_id)
        self._lasting_counts = Counter(rejection.cause for rejection in self._lasting)
        self._position = {node_id: i for i, node_id in enumerate(self._possible)}
        self._stamp = [0] * len(self._possible)
        self._failing: MutableMapping[int, PassedOver] = {}
        self._failing_order: list[int] = []  # positions of current rejections, ascending
        self._failing_counts: Counter[str] = Counter()
        self._parts: dict[int, tuple[float, dict[str, float]]] = {}  # ready nodes' (total, named scores)
        self._explained: dict[int, NodeScores] = {}  # the same as the explanation shows them, once asked
        self._heap: list[tuple[float, str, str, int, int]] = []
        self._levels: list[float] = []  # each possible node's turn level toward the floor
        self._floor = math.inf
        self._at_floor = 0  # possible nodes whose level is the floor: the turn is theirs
        self._epoch = self._current_epoch()
        if self._possible:
            self._refresh_all()

    def for_job(self, group_counts: Mapping[str, int]) -> IncrementalPlacer:
        """A placer for another job of this kind whose counts equal this one's now (a job that
        has placed nothing, cloned from a placer whose job has placed nothing): exactly what
        building one would give, for the cost of copying this one's state instead of checking
        and scoring every node again. What a drain over many new jobs of one kind does."""
        self._catch_up()  # the copy starts from what the nodes are now
        clone = copy.copy(self)
        clone._counts = group_counts
        clone._stamp = list(self._stamp)
        clone._failing = dict(self._failing)
        clone._failing_order = list(self._failing_order)
        clone._failing_counts = Counter(self._failing_counts)
        clone._parts = dict(self._parts)
        clone._explained = dict(self._explained)
        clone._heap = list(self._heap)
        clone._levels = list(self._levels)
        return clone

    # ------------------------------------------------------------------ state upkeep

    def _context(self) -> PlacementContext:
        return PlacementContext(view=self._view, group_counts=self._counts, turn_floor=self._floor)

    def _refresh_all(self) -> None:
        """Levels, floor, checks and scores of every possible node (at start, or the floor moved)."""
        if self._turn is not None:
            ctx = self._context()
            self._levels = [self._turn.floor_level(self._request, self._nodes[node_id], ctx)
                            for node_id in self._possible]
            self._floor = min(self._levels)
            self._at_floor = sum(1 for level in self._levels if level <= self._floor + 1e-9)
        self._failing, self._failing_order, self._failing_counts = {}, [], Counter()
        self._heap, self._parts, self._explained = [], {}, {}
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
            self._failing_counts[rejection.cause] += 1
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
        self._explained.pop(position, None)
        gone = self._failing.pop(position, None)
        if gone is not None:
            del self._failing_order[bisect.bisect_left(self._failing_order, position)]
            self._failing_counts[gone.cause] -= 1
            if not self._failing_counts[gone.cause]:
                del self._failing_counts[gone.cause]
        ctx = self._context()
        if self._turn is not None and self._floor_moved(position, ctx):
            self._refresh_all()  # every node's turn check reads the floor
            return
        if self._strategy.epoch is not None and self._strategy.epoch(ctx) != self._epoch:
            self._epoch = self._strategy.epoch(ctx)
            self._refresh_all()
            return
        self._evaluate(position, ctx)

    def _current_epoch(self) -> int:
        return 0 if self._strategy.epoch is None else self._strategy.epoch(self._context())

    def _floor_moved(self, position: int, ctx: PlacementContext) -> bool:
        """Update this node's turn level; True when the floor is no longer the lowest level
        (no node is left at it, or this node fell below it)."""
        assert self._turn is not None
        old = self._levels[position]
        new = self._levels[position] = self._turn.floor_level(self._request, self._nodes[self._possible[position]], ctx)
        if new < self._floor - 1e-9:
            return True
        self._at_floor += int(new <= self._floor + 1e-9) - int(old <= self._floor + 1e-9)
        return self._at_floor == 0

    # ------------------------------------------------------------------ deciding

    def _rejections(self, limit: int | None = None) -> list[PassedOver]:
        """place()'s rejection list (or its first `limit`): lasting ones, then current ones."""
        order = self._failing_order if limit is None else self._failing_order[:limit]
        rejections = self._lasting + [self._failing[position] for position in order]
        return rejections if limit is None else rejections[:limit]

    def _rejection_counts(self) -> dict[str, int]:
        if not self._lasting_counts:
            return dict(self._failing_counts)
        counts = dict(self._lasting_counts)
        for check, count in self._failing_counts.items():
            counts[check] = counts.get(check, 0) + count
        return counts

    def _current(self, entry: tuple[float, str, str, int, int]) -> bool:
        """Whether a heap entry still describes its node (no change since it was pushed)."""
        return entry[3] == self._stamp[entry[4]] and entry[4] in self._parts

    def _best(self) -> int | None:
        while self._heap:
            if self._current(self._heap[0]):
                return self._heap[0][4]
            heapq.heappop(self._heap)
        return None

    def _catch_up(self) -> None:
        """Re-read the nodes the drain changed since this placer last looked."""
        changes = self._changes
        if changes is not None and self._seen < len(changes.changed):
            pending = dict.fromkeys(changes.changed[self._seen:])
            self._seen = len(changes.changed)
            for node_id in pending:
                self.node_changed(node_id)

    def place(self, request: SchedulingRequest, waited_s: float = 0.0,
              note: str | None = None) -> SchedulingDecision | NoFit:
        """What `place(request, current view, strategy, group counts)` answers; `request` must
        be of this placer's kind (only its task id may differ). Reserves nothing itself.
        `note` is added to a decision's summary (`decision_for`)."""
        self._catch_up()
        if not self._possible:
            return NoFit(request.task_id, can_wait=False, rejections=tuple(self._lasting),
                         total_nodes=len(self._view.nodes))
        position = self._best()
        if position is None:
            return NoFit(request.task_id, can_wait=True, rejections=tuple(self._rejections()),
                         total_nodes=len(self._view.nodes))
        chosen = self._nodes[self._possible[position]]
        ready_count = len(self._possible) - len(self._failing_order)
        second = self._runner_up()
        runner_up = None if second is None else (self._nodes[self._possible[second]], self._node_scores(second))
        return decision_for(request, self._strategy, chosen, self._node_scores(position), ready_count,
                            self._rejections(EXPLAINED_NODES), self._rejection_counts(), self._context(),
                            waited_s, runner_up, note)

    def turn_holders(self) -> list[str]:
        """The nodes holding the turn while they cannot take the task, when some node passed
        over only for its turn could take it now; else none. What `SchedulerCore` asks when a
        task has waited long enough for the holders to give their turn up."""
        self._catch_up()
        if self._turn is None or self._best() is not None:
            return []
        others = tuple(entry for entry in self._strategy.current_checks if entry[0] != self._turn.name)
        ctx = self._context()
        waiting = [position for position, rejection in self._failing.items() if rejection.check == self._turn.name]
        if not any(first_failure(others, self._request, self._nodes[self._possible[p]], ctx) is None for p in waiting):
            return []
        return [self._possible[p] for p in self._failing_order if self._failing[p].check != self._turn.name]

    def patience_s(self, node_ids: list[str]) -> float:
        """How long those nodes may hold the turn: `patience_runs` of the longest expected run
        there, at least PATIENCE_MIN_S (infinite when the turn is never given up)."""
        if self._turn is None or self._turn.patience_runs is None or not node_ids:
            return math.inf
        runs = max(expected_finish_s(self._request, self._nodes[node_id], self._view).run_s for node_id in node_ids)
        return max(self._turn.patience_runs * runs, PATIENCE_MIN_S)

    def _node_scores(self, position: int) -> NodeScores:
        """The node's scores for an explanation, made once per evaluation: the runner-up of one
        decision is often the next one's winner."""
        made = self._explained.get(position)
        if made is None:
            made = self._explained[position] = node_scores(self._nodes[self._possible[position]],
                                                           *self._parts[position])
        return made

    def _runner_up(self) -> int | None:
        """The next best ready node after the heap's top (which `_best` just found current).

        It is the smaller of the top's two children when that one is current (every other
        entry sorts after it); otherwise pop the top, find the best, and push the top back,
        dropping the stale entries on the way."""
        heap = self._heap
        if len(heap) > 1:
            second = heap[1] if len(heap) == 2 or heap[1] < heap[2] else heap[2]
            if self._current(second):
                return second[4]
        top = heapq.heappop(heap)
        second_position = self._best()
        heapq.heappush(heap, top)
        return second_position
