"""Plain Ray and grid-serve alternating in one driver: what a switch costs grid-serve.

    python -m bench.alternating [--quick]

Issue 19 measured grid-serve at about 0.24x its warm speed right after plain Ray tasks: its
tasks ran in the app's Ray job, so the two jobs' worker pools evicted each other and every
switch started workers again. `grid.remote` calls and handle jobs of the caller's own function
(with `wait`) now run in the caller's own Ray job, sharing its workers with its plain Ray tasks.

Each round, for each grid-serve side: warm (the side run twice in a row, the second timed),
then switched (300 x 20 ms through plain Ray, then the side timed at once). The tasks return
their process id, so the table also counts the worker processes the switched run used that
the plain run just before had not (each a worker Ray had to start, or one kept from before).
Target (issue 19): switched at least 0.9x warm.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from typing import Callable

import ray

import grid_serve as grid
from grid_serve.client import HandleClient

from .harness import Env, Report, main_for, summarize

TARGET = 0.9
SLEEP_S = 0.02


def napping_pid(seconds: float) -> int:
    """A 20 ms task that says which worker process ran it."""
    time.sleep(seconds)
    return os.getpid()


plain_napping_pid = ray.remote(napping_pid)


def plain_run(calls: int) -> tuple[float, set[int]]:
    began = time.perf_counter()
    pids = ray.get([plain_napping_pid.options(scheduling_strategy="SPREAD").remote(SLEEP_S) for _ in range(calls)])
    return calls / (time.perf_counter() - began), set(pids)


def remote_run(calls: int) -> tuple[float, set[int]]:
    placed = grid.remote(napping_pid).options(scheduling_strategy="SPREAD")
    began = time.perf_counter()
    pids = ray.get([placed.remote(SLEEP_S) for _ in range(calls)])
    return calls / (time.perf_counter() - began), set(pids)


def handle_run(client: HandleClient, loop: asyncio.AbstractEventLoop, calls: int) -> tuple[float, set[int]]:
    spec = {"args": [[SLEEP_S]] * calls, "strategy": "spread", "wait": True, "timeout_s": 300}
    began = time.perf_counter()
    status = loop.run_until_complete(client.submit_job(spec, fn=napping_pid))
    elapsed = time.perf_counter() - began
    if status.succeeded != calls:
        raise RuntimeError(f"handle job: {status.succeeded}/{calls} succeeded ({status.state}, {status.error})")
    return calls / elapsed, {outcome.result for outcome in status.results or []}


def run(env: Env) -> Report:
    runs, calls = (1, 100) if env.quick else (3, 300)
    client, loop = HandleClient(env.handle()), asyncio.new_event_loop()
    sides: dict[str, Callable[[int], tuple[float, set[int]]]] = {
        "grid.remote SPREAD": remote_run,
        "HandleClient job, the caller's function": lambda n: handle_run(client, loop, n),
    }
    warm: dict[str, list[float]] = {name: [] for name in sides}
    switched: dict[str, list[float]] = {name: [] for name in sides}
    new_workers: dict[str, list[int]] = {name: [] for name in sides}
    for _ in range(runs):
        for name, measure in sides.items():
            measure(calls)
            warm[name].append(measure(calls)[0])
            _, plain_pids = plain_run(calls)
            rate, pids = measure(calls)
            switched[name].append(rate)
            new_workers[name].append(len(pids - plain_pids))
    loop.close()
    report = Report(f"{calls} x {SLEEP_S * 1000:.0f} ms right after {calls} through plain Ray, against the same "
                    f"warm: tasks/s (median, min–max of {runs})",
                    ["side", "warm", "right after plain Ray", "ratio", "workers not in plain Ray's run", "target"])
    for name in sides:
        ratio = statistics.median(switched[name]) / statistics.median(warm[name])
        report.add(name, summarize(warm[name]).show(), summarize(switched[name]).show(), f"{ratio:.2f}×",
                   "/".join(str(count) for count in new_workers[name]), f"≥ {TARGET}×")
        report.target(ratio >= TARGET, f"{name}: {ratio:.2f}× its warm speed right after plain Ray (target ≥ {TARGET}×)")
    report.data.update(warm=warm, switched=switched, new_workers=new_workers)
    return report


if __name__ == "__main__":
    main_for(run, __doc__)
