"""The strategies, one module each, and the one table that finds them.

A strategy module declares a single `STRATEGY` (a `grid_serve.placement.framework.Strategy`):
its current checks, its weighted scorers, an optional turn rule and the sentence that explains
its winner. `place()` and the fast path (`IncrementalPlacer`) run any of them the same way,
so adding a strategy is adding a module and a line here.
"""

from __future__ import annotations

from . import load_balanced, node_specific, pack, performance_optimized, spread
from .framework import Strategy

STRATEGIES: dict[str, Strategy] = {
    module.STRATEGY.name: module.STRATEGY
    for module in (spread, load_balanced, performance_optimized, node_specific, pack)
}


def strategy_named(name: str) -> Strategy:
    """The registered strategy called `name` (a SchedulingStrategy or its text)."""
    return STRATEGIES[str(name)]
