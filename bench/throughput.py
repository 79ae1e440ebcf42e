"""Throughput and overhead: a job of no-op tasks, tasks/s from submit to the last result.

    python -m bench.throughput [--quick]

grid-serve through one handle call (`submit_job` with wait), one `HandleClient.submit_job`
of the caller's own function with wait and its results (a job its own process runs,
`grid_serve.caller_jobs`) and one HTTP POST /v1/jobs with wait, against plain Ray submitting the same tasks with SPREAD and with a per-task
NodeAffinitySchedulingStrategy (round-robin over the nodes). Target: the handle path reaches
at least 0.9x plain Ray SPREAD's tasks/s (bench/dispatch.py adds 10,000 no-ops,
20 ms and 200 ms tasks and the gap between tasks).
"""

from __future__ import annotations

import asyncio
import time

import httpx
import ray

from grid_serve.client import HandleClient

from . import plain_ray
from .harness import Env, Report, main_for, ratio, summarize

TARGET = 0.9  # issue 9


def ray_spread(tasks: int) -> float:
    remote = plain_ray.noop.options(scheduling_strategy="SPREAD")
    began = time.perf_counter()
    ray.get([remote.remote(i) for i in range(tasks)])
    return tasks / (time.perf_counter() - began)


def ray_affinity(env: Env, tasks: int) -> float:
    remotes = plain_ray.pinned(sorted(env.node_names))
    began = time.perf_counter()
    ray.get([remotes[i % len(remotes)].remote(i) for i in range(tasks)])
    return tasks / (time.perf_counter() - began)


def _job(tasks: int) -> dict:
    return {"task": "noop", "count": tasks, "strategy": "spread", "wait": True, "timeout_s": 600}


def grid_handle(env: Env, tasks: int) -> float:
    handle = env.handle()
    began = time.perf_counter()
    status = handle.submit_job.remote(_job(tasks)).result(timeout_s=630)
    elapsed = time.perf_counter() - began
    if status.succeeded != tasks:
        raise RuntimeError(f"grid job: {status.succeeded}/{tasks} succeeded ({status.state}, {status.error})")
    return tasks / elapsed


def grid_own_function(client: HandleClient, loop: asyncio.AbstractEventLoop, tasks: int) -> float:
    """The caller's own function, its results back in the caller's hands (issue 19's case)."""
    spec = {"args": [[i] for i in range(tasks)], "strategy": "spread", "wait": True, "timeout_s": 600}
    began = time.perf_counter()
    status = loop.run_until_complete(client.submit_job(spec, fn=plain_ray.noop))
    elapsed = time.perf_counter() - began
    results = [outcome.result for outcome in status.results or []]
    if status.succeeded != tasks or sorted(results) != list(range(tasks)):
        raise RuntimeError(f"own-function job: {status.succeeded}/{tasks} succeeded ({status.state}, {status.error})")
    return tasks / elapsed


def grid_http(env: Env, tasks: int) -> float:
    began = time.perf_counter()
    response = httpx.post(f"{env.base_url}/v1/jobs", json=_job(tasks), timeout=630)
    elapsed = time.perf_counter() - began
    body = response.json()
    if response.status_code != 200 or body.get("succeeded") != tasks:
        raise RuntimeError(f"grid job over HTTP: {response.status_code} {str(body)[:300]}")
    return tasks / elapsed


def run(env: Env) -> Report:
    tasks = 200 if env.quick else 1000
    runs = 1 if env.quick else 5
    report = Report(f"Throughput: {tasks:,} no-op tasks, tasks/s (median, min–max of {runs})",
                    ["path", "tasks/s", "vs Ray SPREAD"])
    client, loop = HandleClient(env.handle()), asyncio.new_event_loop()
    # Interleave the sides round by round, so machine noise hits both alike.
    sides = {
        "Ray SPREAD (driver)": lambda: ray_spread(tasks),
        "Ray NodeAffinity per task (driver)": lambda: ray_affinity(env, tasks),
        "grid handle submit_job(wait)": lambda: grid_handle(env, tasks),
        "grid HandleClient, the caller's function, results": lambda: grid_own_function(client, loop, tasks),
        "grid HTTP POST /v1/jobs (wait)": lambda: grid_http(env, tasks),
    }
    for measure in sides.values():
        measure()  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(runs):
        for name, measure in sides.items():
            samples[name].append(measure())
    loop.close()
    summaries = {name: summarize(values) for name, values in samples.items()}
    base = summaries["Ray SPREAD (driver)"].median
    for name, summary in summaries.items():
        report.add(name, summary.show(), ratio(summary.median, base))
    handle_ratio = summaries["grid handle submit_job(wait)"].median / base
    report.data = {name: values for name, values in samples.items()}
    report.data["handle_ratio"] = handle_ratio
    report.target(handle_ratio >= TARGET, f"handle path {handle_ratio:.2f}× Ray SPREAD (target ≥ {TARGET}×)")
    return report


if __name__ == "__main__":
    main_for(run, __doc__)
