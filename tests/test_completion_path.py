"""The completion path on the real cluster: a runner's batched reports (Scheduler.report) free
room and carry the next placements back, and the ledger ends empty, for jobs and for external
decisions."""

from __future__ import annotations

import pytest

from grid_serve.client import GridClient
from grid_serve.errors import NotFoundError
from grid_serve.models import SchedulingRequest

pytestmark = pytest.mark.cluster


def in_flight(client: GridClient) -> dict[str, tuple[int, float]]:
    return {node.name: (node.in_flight, node.reserved.get("CPU", 0.0)) for node in client.cluster_status().nodes}


def test_a_job_larger_than_the_admission_spreads_exactly_and_releases_everything(client: GridClient) -> None:
    # compute_task's lookahead admits a few tasks per slot at a time: 60 tasks need several
    # reports, each placing the next tasks in the room the last ones freed.
    status = client.submit_job({"task": "compute_task", "count": 60, "strategy": "spread", "wait": True,
                                "timeout_s": 300})
    assert status.state == "succeeded" and status.succeeded == 60
    assert status.per_node == {"gpu-master": 20, "gpu1": 20, "gpu2": 20}
    assert sorted({r.result["node"] for r in status.results or []}) == ["gpu-master", "gpu1", "gpu2"]
    assert in_flight(client) == {"gpu-master": (0, 0.0), "gpu1": (0, 0.0), "gpu2": (0, 0.0)}
    assert client.cluster_status().queued == 0


def test_an_external_decision_is_released_once(client: GridClient) -> None:
    decision = client.schedule(SchedulingRequest(task_id="ext-completion-1", strategy="node_specific",
                                                 target_node="gpu1"), lease_s=120)
    assert decision.node_name == "gpu1"
    assert in_flight(client)["gpu1"] == (1, 1.0)
    assert client.complete("ext-completion-1", duration_s=0.2) == {"task_id": "ext-completion-1", "released": True}
    assert in_flight(client)["gpu1"] == (0, 0.0)
    with pytest.raises(NotFoundError):
        client.complete("ext-completion-1")


def test_health_reports_the_cluster(client: GridClient) -> None:
    health = client.health()
    assert health["status"] == "ok" and health["nodes"] == 3 and health["nodes_alive"] == 3


def test_a_job_larger_than_the_schedulers_window_is_handed_over_in_windows(client: GridClient) -> None:
    """The Scheduler holds 2,048 of a job's tasks at a time; the rest follow as room frees,
    spread stays exact, and the queue counts what is held back."""
    status = client.submit_job({"task": "noop", "count": 4500, "strategy": "spread", "wait": True, "timeout_s": 300})
    assert status.state == "succeeded" and status.succeeded == 4500, status.error
    assert status.per_node == {"gpu-master": 1500, "gpu1": 1500, "gpu2": 1500}
    assert [o.result for o in status.results or []] == list(range(4500))
    slow = client.submit_job({"task": "sleep_task", "args": [[i, 0.3] for i in range(4000)], "priority": "low"})
    cluster = client.cluster_status()
    assert cluster.queued >= 4000 - 12 - 4 and [str(level.priority) for level in cluster.queue] == ["low"]  # held back too
    cancelled = client.cancel_job(slow.job_id)
    assert cancelled.state == "cancelled" and cancelled.queued == 0
    # the runner's window requests not yet sent must not reach the Scheduler after the cancel
    # (they would be queued for a cancelled job): its reports go on while the sleeps end
    assert all(client.cluster_status().queued == 0 for _ in range(5))
    final = client.wait_job(slow.job_id, timeout_s=60, results=False)
    assert final.cancelled + final.succeeded + final.failed == 4000 and final.cancelled >= 4000 - 30
    assert client.cluster_status().queued == 0
