"""Where the CPU of one task goes, per process kind, plain Ray against grid-serve.

    python -m bench.cpu_per_task [--quick] [--sleep-ms MS]

On a 2-core machine no-op throughput is bound by CPU: every process that touches a task (the
submitter, raylets, GCS, workers, and grid-serve's replicas) shares the same cores. This
bench takes the CPU time of every process this run started (and of itself) before and after
one job of no-ops, for plain Ray (driver, SPREAD) and grid-serve (handle `submit_job` with
wait), and prints CPU milliseconds per task for each kind of process. The difference between
the two columns is what grid-serve costs per task and where. `--sleep-ms MS`: tasks that
sleep that long instead (1,000 of them, grid `load_balanced` as in `bench.dispatch`), where
what grid-serve costs competes with Ray's own processes for the same two cores.
"""

from __future__ import annotations

import collections
import os
import re
import sys
import time
from typing import Callable

import psutil
import ray

from . import dispatch, plain_ray
from .harness import Env, Report, main_for

KINDS = [("JobRunner", "ray::JobRunner"), ("Scheduler", "ServeReplica:grid:Scheduler"),
         ("LoadBalancer", "ServeReplica:grid:LoadBalancer"), ("Ingress", "ServeReplica:grid:Ingress"),
         ("other Serve", "ServeReplica|ServeController|ProxyActor"), ("raylet", "raylet"),
         ("gcs", "gcs_server"), ("task workers", r"ray::(IDLE|run_task|run_chunk|noop)"), ("dashboard/agents", "dashboard|agent|log_monitor|monitor.py")]


def kind_of(process: psutil.Process) -> str:
    if process.pid == os.getpid():
        return "this driver"
    try:
        command = " ".join(process.cmdline())
    except psutil.Error:
        return "other"
    for kind, pattern in KINDS:
        if re.search(pattern, command):
            return kind
    return "other"


def cpu_by_kind() -> dict[int, tuple[str, float]]:
    """pid -> (kind, user+system CPU seconds) for this process and everything it started."""
    out = {}
    me = psutil.Process()
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
            out[process.pid] = (kind_of(process), times.user + times.system)
        except psutil.Error:
            continue
    return out


def cost_per_task(job: Callable[[], object], tasks: int) -> tuple[float, dict[str, float], int]:
    """Tasks/s of one run of `job`, CPU ms per task by process kind during it, and how many
    task worker processes it started (a worker start costs more than many no-ops)."""
    before = cpu_by_kind()
    began = time.perf_counter()
    job()
    elapsed = time.perf_counter() - began
    after = cpu_by_kind()
    per_kind: dict[str, float] = collections.defaultdict(float)
    for pid, (kind, seconds) in after.items():
        per_kind[kind] += seconds - before.get(pid, (kind, 0.0))[1]
    started = sum(1 for pid, (kind, _) in after.items() if kind == "task workers" and pid not in before)
    return tasks / elapsed, {kind: 1000 * seconds / tasks for kind, seconds in per_kind.items()}, started


def sleep_seconds() -> float | None:
    """`--sleep-ms MS` on the command line, in seconds; None for no-ops."""
    if "--sleep-ms" not in sys.argv:
        return None
    return float(sys.argv[sys.argv.index("--sleep-ms") + 1]) / 1000.0


def run(env: Env) -> Report:
    seconds = sleep_seconds()
    tasks = 1000 if env.quick or seconds else 5000
    pinned = plain_ray.pinned([node["NodeID"] for node in ray.nodes() if node["Alive"]])
    sides = {"Ray SPREAD (driver)": lambda: dispatch.ray_run(tasks, seconds),
             "grid handle": lambda: dispatch.grid_handle(env, tasks, seconds)}
    if seconds is None:
        sides["Ray pinned per node (driver)"] = lambda: ray.get([pinned[i % len(pinned)].remote(i) for i in range(tasks)])
    results = {}
    for name, job in sides.items():
        job()  # warm-up
        results[name] = cost_per_task(job, tasks)
    work = f"tasks of {seconds * 1000:g} ms" if seconds else "no-ops"
    report = Report(f"CPU ms per task, {tasks} {work} in one job, by process kind",
                    ["process kind", *[f"{name} ms/task" for name in sides]])
    kinds = sorted({kind for _, costs, _ in results.values() for kind in costs},
                   key=lambda kind: -max(costs.get(kind, 0.0) for _, costs, _ in results.values()))
    for kind in kinds:
        report.add(kind, *[f"{results[name][1].get(kind, 0.0):.3f}" for name in sides])
    report.add("total", *[f"{sum(results[name][1].values()):.3f}" for name in sides])
    report.add("tasks/s", *[f"{results[name][0]:.0f}" for name in sides])
    report.add("task workers started", *[str(results[name][2]) for name in sides])
    report.data["results"] = results
    return report


if __name__ == "__main__":
    main_for(run, __doc__)
