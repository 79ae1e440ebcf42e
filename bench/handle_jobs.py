"""A service answering requests through the handle: one-task jobs one after another, each
awaited (`HandleClient.submit_job(spec, wait)`), against plain Ray's `ray.get(f.remote(i))`.

    python -m bench.handle_jobs [--quick]

Both sides in one run, each warmed on the same function just before it is timed, rounds
interleaved. The caller's own function is `bench.plain_ray.noop` (a module of the caller's,
passed as `fn`): with `wait` its job runs in this process (`grid_serve.caller_jobs`), each task
a `grid.remote` stream call, so the side measures the Scheduler's placement and the books
kept for later reads. The built-in is grid-serve's registered `noop`, whose jobs still go
through a job runner (two actor hops and the runner's books per job). The figure is the time
per job, so lower is better. Target (issue 19): within 2x plain Ray's time.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any, Callable

import ray

from grid_serve.client import HandleClient

from . import plain_ray
from .harness import Env, Report, interleaved, main_for, summarize

TARGET = 2.0


def plain_ms(calls: int) -> float:
    began = time.perf_counter()
    for i in range(calls):
        ray.get(plain_ray.noop.options(scheduling_strategy="SPREAD").remote(i))
    return (time.perf_counter() - began) / calls * 1000


async def handle_ms(client: HandleClient, calls: int, fn: Any) -> float:
    began = time.perf_counter()
    for i in range(calls):
        status = await client.submit_job({"task": "noop", "args": [[i]], "wait": True}, fn=fn)
        assert status.succeeded == 1, status
    return (time.perf_counter() - began) / calls * 1000


def run(env: Env) -> Report:
    runs, calls = (1, 30) if env.quick else (3, 100)
    client = HandleClient(env.handle())
    loop = asyncio.new_event_loop()
    sides: dict[str, Callable[[int], float]] = {
        "plain Ray ray.get(f.remote(i))": plain_ms,
        "handle, the caller's function": lambda n: loop.run_until_complete(handle_ms(client, n, plain_ray.noop)),
        "handle, a registered task": lambda n: loop.run_until_complete(handle_ms(client, n, None)),
    }
    results = interleaved(sides, runs, calls, warm_calls=max(5, calls // 5))
    loop.close()
    report = Report(f"{calls} one-task jobs one after another, each awaited: ms per job (median, min–max of {runs})",
                    ["side", "ms per job", "vs plain Ray", "target"])
    base = statistics.median(results["plain Ray ray.get(f.remote(i))"])
    for name, values in results.items():
        summary = summarize(values)
        ratio = summary.median / base
        is_grid = name.startswith("handle")
        report.add(name, summary.show(2), f"{ratio:.2f}×", f"≤ {TARGET}×" if is_grid else "")
        if is_grid:
            report.target(ratio <= TARGET, f"{name}: {ratio:.2f}× plain Ray's time per job (target ≤ {TARGET}×)")
    report.data["ms_per_job"] = results
    return report


if __name__ == "__main__":
    main_for(run, __doc__)
