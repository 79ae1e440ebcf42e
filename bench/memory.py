"""Memory a job's bookkeeping takes per task, in the process that keeps it (the JobRunner).

    python -m bench.memory [--quick] [--tasks 100000] [--no-results]

A job of no-op tasks (each result a small int) runs to the end through the handle; the
runner's resident memory (RSS) is read before and after, while the finished job and its
results are still kept. (RSS after - RSS before) / tasks is what one task's status, decision
bookkeeping and outcome cost beyond its result (an int: 16 bytes of it). Allocators keep freed
memory, so this is an upper bound on what the job holds; the job's own results are the same
whoever keeps them. Target (issue 10): under 300 bytes per task beyond its result.
`--no-results`: the job is submitted without `wait` and waited for without its results, so
the runner never builds the answer that carries all of them (one TaskOutcome model per
task, pickled): what it keeps, without that passing peak.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time

import psutil

from .harness import Env, Report, main_for

TARGET_BYTES = 300


def runner_rss() -> tuple[int, int]:
    """(pid, RSS bytes) of the JobRunner this benchmark's app started (the quick app has one)."""
    me = psutil.Process()
    for process in me.children(recursive=True):
        try:
            if "ray::JobRunner" in " ".join(process.cmdline()):
                return process.pid, process.memory_info().rss
        except psutil.Error:
            continue
    raise RuntimeError("no JobRunner process among this run's children")


def run(env: Env) -> Report:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=10_000 if env.quick else 100_000)
    tasks = parser.parse_known_args()[0].tasks
    handle = env.handle()
    spec = {"task": "noop", "count": 2000, "strategy": "spread", "wait": True, "timeout_s": 600}
    handle.submit_job.remote(spec).result(timeout_s=630)  # warm-up: workers, run times, caches
    gc.collect()
    time.sleep(2)
    pid, before = runner_rss()
    began = time.perf_counter()
    if "--no-results" in sys.argv:  # what the runner keeps, without the answer that carries every result
        job = handle.submit_job.remote({**spec, "count": tasks, "wait": False}).result(timeout_s=60)
        status = handle.wait_job.remote(job.job_id, 1800, False).result(timeout_s=1830)
    else:
        status = handle.submit_job.remote({**spec, "count": tasks, "wait": True}).result(timeout_s=1800)
    elapsed = time.perf_counter() - began
    time.sleep(2)
    pid_after, after = runner_rss()
    if status.succeeded != tasks or pid_after != pid:
        raise RuntimeError(f"job: {status.succeeded}/{tasks} succeeded ({status.state}); runner pid {pid}->{pid_after}")
    per_task = (after - before) / tasks
    report = Report(f"JobRunner memory per task, one job of {tasks:,} no-ops (results kept)",
                    ["tasks", "runner RSS before", "after", "bytes per task", "tasks/s", "Ray tasks"])
    report.add(f"{tasks:,}", f"{before / 2**20:.0f} MiB", f"{after / 2**20:.0f} MiB", f"{per_task:.0f}",
               f"{tasks / elapsed:.0f}", f"{status.ray_tasks:,}")
    report.target(per_task < TARGET_BYTES, f"{per_task:.0f} bytes per task (target < {TARGET_BYTES})")
    return report


if __name__ == "__main__":
    main_for(run, __doc__)
