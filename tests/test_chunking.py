"""Very short tasks share Ray tasks (chunks): each keeps its own decision, result and count,
spread stays exact, and a chunk whose tasks run far longer than learned hands its rest back."""

from __future__ import annotations

import time
from typing import Any

import pytest

from grid_serve.client import GridClient
from grid_serve.lookahead import MAX_CHUNK, chunk_sizes
from grid_serve.tasks import run_chunk


@pytest.mark.parametrize("count, run_s, budget_s, sizes", [
    (0, 0.0001, 0.002, []),
    (5, None, 0.002, [1] * 5),  # never measured: one Ray task each
    (5, 0.0001, 0.0, [1] * 5),  # chunking off
    (4, 0.001, 0.002, [2, 2]),  # two fit
    (5, 0.0011, 0.002, [1] * 5),  # more than half the budget: alone
    (7, 0.0005, 0.002, [4, 3]),  # sizes even, never over the budget
    (9, 0.0005, 0.002, [3, 3, 3]),
    (130, 1e-7, 0.002, [44, 43, 43]),  # a no-op: MAX_CHUNK at most (the floor keeps one task's envelope)
])
def test_chunk_sizes(count: int, run_s: float | None, budget_s: float, sizes: list[int]) -> None:
    assert chunk_sizes(count, run_s, budget_s) == sizes
    assert sum(sizes) == count and all(size <= MAX_CHUNK for size in sizes)


def in_a_ray_task(fn: Any, calls: list[tuple[list[Any], dict[str, Any]]], stop_after_s: float) -> list[dict[str, Any]]:
    """run_chunk where it runs in the app: inside a Ray worker (its envelopes ask Ray where they are)."""
    import ray

    return ray.get(ray.remote(run_chunk).remote(fn, calls, stop_after_s), timeout=60)


@pytest.mark.cluster
def test_a_chunk_that_overruns_hands_back_the_tasks_it_did_not_start(ray_cluster: object) -> None:
    def sleepy(i: int) -> int:
        time.sleep(0.02)  # ten times what the chunk may take
        return i

    envelopes = in_a_ray_task(sleepy, [([i], {}) for i in range(5)], stop_after_s=0.002)
    assert [e["result"] for e in envelopes] == [0]  # always runs one; the rest go back


@pytest.mark.cluster
def test_a_chunk_runs_each_task_in_order_with_its_own_envelope(ray_cluster: object) -> None:
    def sometimes_fails(i: int) -> int:
        if i == 2:
            raise ValueError("two")
        return i * 10

    envelopes = in_a_ray_task(sometimes_fails, [([i], {}) for i in range(4)], stop_after_s=60)
    assert [(e["ok"], e["result"], e["error"]) for e in envelopes] == [
        (True, 0, None), (True, 10, None), (False, None, "ValueError: two"), (True, 30, None)]


@pytest.mark.cluster
def test_short_tasks_share_ray_tasks_and_each_keeps_its_result(client: GridClient) -> None:
    warm = client.submit_job({"task": "noop", "count": 60, "strategy": "spread", "wait": True, "timeout_s": 120})
    assert warm.state == "succeeded"  # noop's run time is now learned: tiny
    status = client.submit_job({"task": "noop", "count": 300, "strategy": "spread", "wait": True,
                                "timeout_s": 120})
    assert status.state == "succeeded" and status.succeeded == 300
    assert status.per_node == {"gpu-master": 100, "gpu1": 100, "gpu2": 100}  # exact, chunks or not
    assert status.ray_tasks < 300 / 2, status.ray_tasks  # most of them shared Ray tasks
    outcomes = status.results or []
    assert [(o.index, o.result, o.task_id) for o in outcomes] == [(i, i, f"{status.job_id}-{i}") for i in range(300)]
    assert all(o.attempts == 1 and o.ok for o in outcomes)


@pytest.mark.cluster
def test_tasks_far_slower_than_learned_do_not_wait_behind_each_other(client: GridClient) -> None:
    """A task type learned as instant, then given work of 0.2 s: each chunk runs one task and
    hands the rest back, which then go to Ray one each (every task still runs once)."""
    from ray import serve

    def shifty(i: int, seconds: float) -> int:  # nested: pickled by value, as a caller's own function is
        time.sleep(seconds)
        return i

    handle = serve.get_app_handle("grid")
    job = {"task": "shifty", "strategy": "spread", "wait": True, "timeout_s": 120}
    quick = handle.submit_job.remote({**job, "args": [[i, 0.0] for i in range(60)]}, shifty).result()
    assert quick.state == "succeeded"
    slow = handle.submit_job.remote({**job, "args": [[i, 0.2] for i in range(24)]}, shifty).result()
    assert slow.state == "succeeded" and slow.succeeded == 24
    assert slow.per_node == {"gpu-master": 8, "gpu1": 8, "gpu2": 8}
    assert sorted(o.result for o in slow.results or []) == list(range(24))
    assert all(o.attempts == 1 for o in slow.results or [])
