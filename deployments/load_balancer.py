"""LoadBalancer: the live ledger of reservations per node, and learned run times."""

from __future__ import annotations

from ray import serve

from grid_serve.ledger import Completion, Ledger, LedgerSnapshot, Reservation
from grid_serve.models import SchedulingDecision

from ._common import INTERNAL_OPTIONS, every


@serve.deployment(**INTERNAL_OPTIONS)
class LoadBalancer:
    def __init__(self, lease_check_s: float = 1.0) -> None:
        self._ledger = Ledger()
        self._expiry = every(lease_check_s, self._expire, "lease-expiry")

    async def _expire(self) -> None:
        self._ledger.expire()

    async def reserve(self, reservations: list[tuple[SchedulingDecision, str, str, float | None]]) -> LedgerSnapshot:
        """Record placed tasks: (decision, task type, group, lease seconds or None)."""
        for decision, task_type, group, lease_s in reservations:
            self._ledger.reserve(decision.task_id, decision.node_id, decision.resources, task_type, group,
                                 str(decision.strategy), lease_s, decision.placement_group_id)
        return self._ledger.snapshot()

    async def release(self, completions: list[Completion]) -> tuple[list[Reservation], LedgerSnapshot]:
        released = self._ledger.release(completions)
        return released, self._ledger.snapshot()

    async def settle(self, completions: list[Completion],
                     reservations: list[tuple[SchedulingDecision, str, str, float | None]]
                     ) -> tuple[list[Reservation], LedgerSnapshot]:
        """`release()` then `reserve()` in one call: the Scheduler's completion path, one hop
        instead of two (each Serve call costs more CPU than the ledger work it carries)."""
        released = self._ledger.release(completions)
        return released, await self.reserve(reservations)

    async def snapshot(self) -> LedgerSnapshot:
        return self._ledger.snapshot()

    async def least_loaded(self, nodes: list[str]) -> str:
        """The node (id) among `nodes` with the fewest tasks in flight, for hand-rolled balancers."""
        loads = self._ledger.loads()
        return min(nodes, key=lambda node: (loads[node].in_flight if node in loads else 0, node))
