"""LoadBalancer: the published copy of the live ledger (loads per node, learned run times).

The Scheduler owns the ledger (reserving is on its decision path, where no call to another
process may sit) and publishes it here each tick, off that path. Readers that are not on the
decision path (resource sharing, hand-rolled balancers) read this copy; a restarted Scheduler
takes its learned run times back from it. If this replica restarts, the Scheduler's next
publish (within an interval) restores the copy whole.
"""

from __future__ import annotations

from ray import serve

from grid_serve.ledger import LedgerSnapshot

from ._common import INTERNAL_OPTIONS


@serve.deployment(**INTERNAL_OPTIONS)
class LoadBalancer:
    def __init__(self) -> None:
        self._copy = LedgerSnapshot(version=0, loads={}, durations={}, placements={})

    async def publish(self, snapshot: LedgerSnapshot) -> None:
        """The Scheduler's ledger as it stands; a newer one (or another ledger's) replaces it."""
        if snapshot.epoch != self._copy.epoch or snapshot.version >= self._copy.version:
            self._copy = snapshot

    async def snapshot(self) -> LedgerSnapshot:
        return self._copy

    async def least_loaded(self, nodes: list[str]) -> str:
        """The node (id) among `nodes` with the fewest tasks in flight, for hand-rolled balancers."""
        loads = self._copy.loads
        return min(nodes, key=lambda node: (loads[node].in_flight if node in loads else 0, node))
