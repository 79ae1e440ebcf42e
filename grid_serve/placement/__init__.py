"""The strategies, one module each, and the one table that finds them.

A strategy module declares a single `STRATEGY` (a `grid_serve.placement.framework.Strategy`):
its current checks, its weighted scorers, an optional turn rule and the sentence that explains
its winner. `place()` and the fast path (`IncrementalPlacer`) run any of them the same way,
so adding a strategy is adding a module and a line here.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from . import load_balanced, node_specific, pack, performance_optimized, spread
from .framework import Strategy

_MODULES: tuple[ModuleType, ...] = (spread, load_balanced, performance_optimized, node_specific, pack)
STRATEGIES: dict[str, Strategy] = {module.STRATEGY.name: module.STRATEGY for module in _MODULES}


def _summary(module: ModuleType) -> str:
    """What the strategy chooses: its module docstring's first paragraph, after "name: "."""
    first = " ".join((module.__doc__ or "").split("\n\n")[0].split())
    return first.split(": ", 1)[-1]


SUMMARIES: dict[str, str] = {module.STRATEGY.name: _summary(module) for module in _MODULES}


def describe_strategies() -> list[dict[str, Any]]:
    """What `/v1/strategies` shows of each strategy, read from its module: its name, what it
    chooses, the checks that make a task wait rather than go elsewhere, its scorers and their
    weights, and whether a turn rule keeps it exact."""
    return [{"name": strategy.name, "summary": SUMMARIES[strategy.name],
             "waits_for": [name for name, _ in strategy.current_checks],
             "scorers": [{"name": name, "weight": weight} for name, weight, _ in strategy.scorers],
             "turns": strategy.turn is not None}
            for strategy in STRATEGIES.values()]


def strategy_named(name: str) -> Strategy:
    """The registered strategy called `name` (a SchedulingStrategy or its text)."""
    return STRATEGIES[str(name)]
