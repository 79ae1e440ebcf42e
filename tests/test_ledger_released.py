"""LedgerSnapshot.released: the Scheduler's local picture of room freed by ended tasks."""

from __future__ import annotations

from grid_serve.ledger import Completion, Ledger


def test_released_matches_what_the_ledger_reads_after_release() -> None:
    ledger = Ledger(clock=lambda: 0.0)
    ledger.reserve("a", "n1", {"CPU": 1.0, "memory": 100.0})
    ledger.reserve("b", "n1", {"CPU": 2.0})
    ledger.reserve("c", "n2", {"CPU": 1.0})
    before = ledger.snapshot()
    local = before.released([("n1", {"CPU": 2.0}), ("n2", {"CPU": 1.0})])
    ledger.release([Completion(task_id="b"), Completion(task_id="c")])
    after = ledger.snapshot()
    assert local.loads["n1"] == after.loads["n1"]
    assert local.loads["n2"].in_flight == 0 and local.loads["n2"].reserved == {"CPU": 0.0}
    assert "n2" not in after.loads  # the ledger drops empty nodes; zero reads the same in a view
    assert local.version == before.version < after.version  # the ledger's own answer supersedes it
    assert before.loads["n1"].reserved == {"CPU": 3.0, "memory": 100.0}  # the original is untouched


def test_released_ignores_unknown_nodes_and_never_goes_negative() -> None:
    ledger = Ledger(clock=lambda: 0.0)
    ledger.reserve("a", "n1", {"CPU": 1.0})
    local = ledger.snapshot().released([("gone", {"CPU": 1.0}), ("n1", {"CPU": 5.0}), ("n1", {"CPU": 1.0})])
    assert set(local.loads) == {"n1"}
    assert local.loads["n1"].reserved == {"CPU": 0.0} and local.loads["n1"].in_flight == 0
