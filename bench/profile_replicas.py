"""Where the throughput path spends its CPU: py-spy on the grid app's replicas during jobs.

    pip install py-spy
    python -m bench.profile_replicas [--seconds 8] [--tasks 1000] [--sleep-ms MS] [--out /tmp/grid-profile]

Starts the quick benchmark cluster, finds this cluster's `ServeReplica:grid:{Ingress,
Scheduler,LoadBalancer}` processes and the `JobRunner` actor (descendants of this process only: other clusters on the
machine are left alone), records each with py-spy while 1,000-no-op jobs run through the
handle (or `--sleep-ms`: jobs of tasks sleeping that long, load_balanced, as in
`bench.dispatch`), then prints each replica's on-CPU share and its most frequent frames.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import time
from pathlib import Path

import psutil

from . import dispatch
from .harness import bench_env
from .throughput import grid_handle

# process name -> what its command line shows (the JobRunner is a plain actor beside the Ingress)
PROCESSES = {"Ingress": "ServeReplica:grid:Ingress", "Scheduler": "ServeReplica:grid:Scheduler",
             "LoadBalancer": "ServeReplica:grid:LoadBalancer", "JobRunner": "ray::JobRunner"}
RATE_HZ = 100


def replica_pids() -> dict[str, int]:
    """This process's own grid replicas, by deployment name."""
    pids = {}
    for process in psutil.Process(os.getpid()).children(recursive=True):
        try:
            command = " ".join(process.cmdline())
        except psutil.Error:
            continue
        for name, marker in PROCESSES.items():
            if marker in command:
                pids[name] = process.pid
    return pids


def hottest(path: Path, top: int) -> tuple[int, list[tuple[float, str]]]:
    """Samples in a py-spy raw (collapsed) file, and the frames present in most of them."""
    inclusive: collections.Counter = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        total += int(count)
        for frame in set(stack.split(";")):
            inclusive[frame] += int(count)
    return total, [(100.0 * n / total, frame) for frame, n in inclusive.most_common(top)] if total else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--out", default="/tmp/grid-profile")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--sleep-ms", type=float, default=0.0)
    parser.add_argument("--gil", action="store_true", help="sample only the thread holding the GIL (Python CPU, "
                        "without event loops idling in C counted as busy)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with bench_env(quick=True) as env:
        def job() -> None:
            if args.sleep_ms:
                dispatch.grid_handle(env, args.tasks, args.sleep_ms / 1000.0)
            else:
                grid_handle(env, args.tasks)

        job()  # warm-up
        recorders = [subprocess.Popen(["py-spy", "record", "-p", str(pid), "-r", str(RATE_HZ), "--nonblocking",
                                       "-f", "raw", "-o", str(out / f"{name}.txt"), "-d", str(int(args.seconds)),
                                       *(["--gil"] if args.gil else [])],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for name, pid in replica_pids().items()]
        began, done = time.monotonic(), 0
        while time.monotonic() - began < args.seconds - 1:
            job()
            done += args.tasks
        print(f"{done / (time.monotonic() - began):.0f} tasks/s while profiled")
        for recorder in recorders:
            recorder.wait()
    for name in PROCESSES:
        path = out / f"{name}.txt"
        if not path.exists():
            continue
        total, frames = hottest(path, args.top)
        print(f"\n== {name}: {total} samples, {100.0 * total / (RATE_HZ * args.seconds):.0f}% of one core")
        for share, frame in frames:
            print(f"{share:5.1f}%  {frame}")


if __name__ == "__main__":
    main()
