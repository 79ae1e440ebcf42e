"""Priority: mean queue wait of `low` and `high` tasks on a saturated cluster.

    python -m bench.priority [--quick]

A stream of `low` jobs (sleep tasks) keeps the three `trio` nodes (7 CPUs) saturated; a third
of the way in, a burst of `high` tasks arrives. Queue wait = task start - its job's submit
time. Plain Ray gets the same arrivals (it has no priorities). Target: grid-serve's `high`
mean wait at most 0.25x its `low` mean wait.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import ray

from . import plain_ray
from .harness import TRIO, TRIO_SHARE, Env, Report, main_for, summarize

TARGET = 0.25
TASK_S = 0.2


def arrivals(quick: bool) -> list[tuple[float, str, int]]:
    """(offset seconds, priority, tasks): low jobs every 0.1 s, the high burst a third in."""
    low_jobs = 8 if quick else 30
    plan = [(0.1 * i, "low", 6) for i in range(low_jobs)]
    plan.append((0.1 * low_jobs / 3, "high", 6 if quick else 10))
    return sorted(plan)


def grid_waits(env: Env, plan: list[tuple[float, str, int]]) -> dict[str, list[float]]:
    handle = env.handle()
    jobs: list[tuple[str, str]] = []
    began = time.monotonic()
    for offset, priority, tasks in plan:
        time.sleep(max(0.0, began + offset - time.monotonic()))
        spec = {"task": "sleep_task", "args": [[i, TASK_S] for i in range(tasks)], "priority": priority,
                "strategy": "load_balanced", "resources": {"cpu_count": 1.0, "custom_resources": {TRIO: TRIO_SHARE}}}
        jobs.append((priority, handle.submit_job.remote(spec).result(timeout_s=60).job_id))
    waits: dict[str, list[float]] = {"low": [], "high": []}
    for priority, job_id in jobs:
        status = handle.wait_job.remote(job_id, 300.0, True).result(timeout_s=330)
        if status.succeeded != status.total:
            raise RuntimeError(f"grid job {job_id}: {status.state} {status.error}")
        waits[priority] += [outcome.started_at - status.submitted_at for outcome in status.results or []]
    return waits


def ray_waits(plan: list[tuple[float, str, int]]) -> dict[str, list[float]]:
    remote = plain_ray.sleep_for.options(**plain_ray.options("DEFAULT", on_trio=True))
    submitted: list[tuple[str, float, Any]] = []
    began = time.monotonic()
    for offset, priority, tasks in plan:
        time.sleep(max(0.0, began + offset - time.monotonic()))
        at = time.time()
        submitted += [(priority, at, remote.remote(TASK_S)) for _ in range(tasks)]
    waits: dict[str, list[float]] = {"low": [], "high": []}
    for priority, at, ref in submitted:
        _, started, _ = ray.get(ref)
        waits[priority].append(started - at)
    return waits


def run(env: Env) -> Report:
    plan = arrivals(env.quick)
    runs = 1 if env.quick else 3
    report = Report("Priority: mean queue wait per class on a saturated cluster, s (median, min–max)",
                    ["side", "low wait s", "high wait s", "high / low"])
    grid_waits(env, plan[:4])  # warm-up
    if not env.quick:
        ray_waits(plan[:4])
    results: dict[str, list[dict[str, list[float]]]] = {"grid-serve (priorities)": [], "plain Ray DEFAULT": []}
    for _ in range(runs):
        results["grid-serve (priorities)"].append(grid_waits(env, plan))
        results["plain Ray DEFAULT"].append(ray_waits(plan))
    ratios = {}
    for side, rounds in results.items():
        low = summarize([statistics.mean(r["low"]) for r in rounds])
        high = summarize([statistics.mean(r["high"]) for r in rounds])
        ratios[side] = summarize([statistics.mean(r["high"]) / statistics.mean(r["low"]) for r in rounds])
        report.add(side, low.show(2), high.show(2), ratios[side].show(2))
    grid = ratios["grid-serve (priorities)"].median
    report.target(grid <= TARGET, f"grid-serve high waits {grid:.2f}× low (target ≤ {TARGET}×)")
    report.data = {"results": results}
    return report


if __name__ == "__main__":
    main_for(run, __doc__)
