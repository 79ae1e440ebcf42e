"""The benchmark harness still works: the quick decision-speed measure on a small simulated
view returns one well-formed row per (strategy, measure) and a table that renders.

No timing assertions (the machine is shared); the real benchmarks never run in CI.
"""

from __future__ import annotations

from bench import decisions, mixed_sim
from bench.harness import summarize


def test_decision_speed_harness_returns_sane_structure() -> None:
    speeds = decisions.measure([5, 20], budget_s=0.01, batch=8)
    assert {(s.nodes, s.strategy, s.mode) for s in speeds} == {
        (nodes, str(strategy), mode)
        for nodes in (5, 20) for strategy in decisions.STRATEGIES for mode in ("place", "core", "queues", "full")
    }
    for speed in speeds:
        assert speed.seconds > 0 and speed.per_second > 0
        if speed.mode == "place":
            assert speed.decisions >= 3
        elif speed.mode == "full":  # every task waits: each one counts as decided
            assert speed.decisions == 8
        elif speed.strategy == "performance_optimized":  # may hold tasks for a busy node that finishes sooner
            assert 1 <= speed.decisions <= 8
        else:
            assert speed.decisions == 8
    table = decisions.report(speeds)
    assert table.columns == ["strategy", "measure", "5 nodes", "20 nodes"]
    assert len(table.rows) == 4 * len(decisions.STRATEGIES)
    assert "| spread" in table.render()


def test_summary_is_median_and_spread() -> None:
    summary = summarize([3.0, 1.0, 2.0, 10.0])
    assert (summary.median, summary.low, summary.high, summary.runs) == (2.5, 1.0, 10.0, 4)
    assert summary.show(1) == "2.5 (1.0–10.0)"


def test_mixed_speed_simulation_is_above_the_bound_and_longest_first_is_best() -> None:
    """Simulated clock, so the numbers are deterministic: every placement is at or above the
    lower bound, and knowing each task's length (longest first) beats placing in task order."""
    report = mixed_sim.run(quick=True)
    ratios = report.data
    assert all(ratio >= 1.0 for values in ratios.values() for ratio in values)
    assert max(ratios["known, LPT"]) <= min(max(ratios["known, task order"]), max(ratios["grid performance_optimized"]))
    assert "| grid performance_optimized" in report.render()
