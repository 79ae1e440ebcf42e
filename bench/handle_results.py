"""Large results through the handle: a job of 24 tasks returning 8 MB each, its results
returned as values or kept in Ray's object store (`result_refs`: the caller gets ObjectRefs),
against plain Ray's `ray.get([f.remote() ...])`.

    python -m bench.handle_results [--quick]

Both sides in one run, each warmed on the same function just before it is timed. The
function is the caller's own (`bench.remote.array_of`, numpy arrays), and every side ends
with the arrays in the caller's hands. A job of the caller's own function with `wait` runs in
the caller's process (`grid_serve.caller_jobs`), so either way the arrays go from Ray to the
caller with no grid-serve process in between (until session 33 the values were copied through
the job runner). The figure is results per second, so higher is better. Target (issue 19):
at least 0.9x plain Ray with `result_refs`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import ray

from grid_serve.client import HandleClient

from .harness import Env, Report, interleaved, main_for, summarize
from .remote import array_of

TARGET = 0.9
MEGABYTES = 8


def plain_rate(calls: int) -> float:
    began = time.perf_counter()
    arrays = ray.get([array_of.options(scheduling_strategy="SPREAD").remote(MEGABYTES) for _ in range(calls)])
    assert len(arrays) == calls and arrays[0].nbytes == MEGABYTES * 1024 * 1024
    return calls / (time.perf_counter() - began)


async def handle_rate(client: HandleClient, calls: int, keep_in_store: bool) -> float:
    began = time.perf_counter()
    spec = {"args": [[MEGABYTES]] * calls, "wait": True, "result_refs": keep_in_store}
    status = await client.submit_job(spec, fn=array_of)
    assert status.succeeded == calls, status
    results = [outcome.result for outcome in status.results]
    arrays = ray.get(results) if keep_in_store else results
    assert arrays[0].nbytes == MEGABYTES * 1024 * 1024
    return calls / (time.perf_counter() - began)


def run(env: Env) -> Report:
    runs, calls = (2, 12) if env.quick else (3, 24)
    client = HandleClient(env.handle())
    loop = asyncio.new_event_loop()
    sides: dict[str, Callable[[int], float]] = {
        "plain Ray SPREAD, ray.get of the refs": plain_rate,
        "handle job, results as values": lambda n: loop.run_until_complete(handle_rate(client, n, False)),
        "handle job, result_refs, then ray.get": lambda n: loop.run_until_complete(handle_rate(client, n, True)),
    }
    results = interleaved(sides, runs, calls)
    loop.close()
    report = Report(f"{calls} tasks returning {MEGABYTES} MB each, one job: results/s (median, min–max of {runs})",
                    ["side", "results/s", "vs plain Ray", "target"])
    base = summarize(results["plain Ray SPREAD, ray.get of the refs"]).median
    for name, values in results.items():
        ratio = summarize(values).median / base
        keeps = "result_refs" in name
        report.add(name, summarize(values).show(1), f"{ratio:.2f}×", f"≥ {TARGET}×" if keeps else "")
        if keeps:
            report.target(ratio >= TARGET, f"{name}: {ratio:.2f}× plain Ray's rate (target ≥ {TARGET}×)")
    report.data["results_per_s"] = results
    return report


if __name__ == "__main__":
    main_for(run, __doc__)
