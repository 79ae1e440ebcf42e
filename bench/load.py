"""A load test of the HTTP API: many clients at once, mixing status reads, submissions and job reads.

    python -m bench.load [--quick] [--clients 200] [--seconds 60]

Loopback only, bounded in time and in count (each client waits for each answer; a submission
is a 2-task no-op job that does not wait). Prints per route: requests, p50 and p99 latency, and
every status seen; then the resident memory of every grid replica and job runner before the
load, right after it, and once the app has settled (finished jobs are kept by count, so memory
must level off). Errors are any answer but 2xx and the documented 429s. No plain-Ray
counterpart: plain Ray has no HTTP API.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import statistics
import time

import httpx
import psutil

from .harness import Env, Report, bench_env
from .profile_replicas import PROCESSES

SETTLE_S = 20.0
MEMORY_SLACK = 0.10


async def client_loop(base_url: str, until: float, seed: int, log: dict[str, list[tuple[int, float]]]) -> None:
    """One client: status, submit or read its own latest job, at random, until `until`."""
    rng = random.Random(seed)
    job_id: str | None = None
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        while time.monotonic() < until:
            choice = rng.random()
            began = time.perf_counter()
            if choice < 0.5:
                route, response = "GET /v1/cluster", await http.get("/v1/cluster")
            elif choice < 0.75 or job_id is None:
                route, response = "POST /v1/jobs", await http.post("/v1/jobs", json={"task": "noop", "count": 2})
                if response.status_code in (200, 202):
                    job_id = response.json()["job_id"]
            else:
                route, response = "GET /v1/jobs/{id}", await http.get(f"/v1/jobs/{job_id}")
            log[route].append((response.status_code, time.perf_counter() - began))


def replica_memory() -> dict[str, int]:
    """RSS bytes per grid replica and job runner of this run's cluster (summed per kind)."""
    memory: dict[str, int] = collections.defaultdict(int)
    for process in psutil.Process().children(recursive=True):
        try:
            command = " ".join(process.cmdline())
            for name, marker in PROCESSES.items():
                if marker in command:
                    memory[name] += process.memory_info().rss
        except psutil.Error:
            continue
    return dict(memory)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def run_load(env: Env, clients: int, seconds: float) -> Report:
    before = replica_memory()
    log: dict[str, list[tuple[int, float]]] = collections.defaultdict(list)
    until = time.monotonic() + seconds

    async def everyone() -> None:
        await asyncio.gather(*(client_loop(env.base_url, until, seed, log) for seed in range(clients)))

    asyncio.run(everyone())
    after = replica_memory()
    time.sleep(SETTLE_S)
    settled = replica_memory()
    report = Report(f"Load: {clients} clients for {seconds:g} s over HTTP (loopback)",
                    ["route / process", "requests", "p50 ms", "p99 ms", "statuses", "memory before → after → settled"])
    errors = 0
    for route, entries in sorted(log.items()):
        codes = collections.Counter(code for code, _ in entries)
        errors += sum(count for code, count in codes.items() if not (200 <= code < 300 or code == 429))
        latencies = [seconds * 1000 for _, seconds in entries]
        report.add(route, len(entries), f"{statistics.median(latencies):.0f}", f"{percentile(latencies, 0.99):.0f}",
                   " ".join(f"{code}×{count}" for code, count in sorted(codes.items())), "")
    grew = []
    for name in sorted(before):
        mib = lambda value: f"{value / 2**20:.0f}"  # noqa: E731
        report.add(name, "", "", "", "", f"{mib(before[name])} → {mib(after.get(name, 0))} → "
                   f"{mib(settled.get(name, 0))} MiB")
        if settled.get(name, 0) > before[name] * (1 + MEMORY_SLACK):
            grew.append(name)
    report.target(errors == 0, f"errors other than documented 429s: {errors}")
    report.target(not grew, f"replica memory within {MEMORY_SLACK:.0%} of the start once settled"
                  + (f" (grew: {', '.join(grew)})" if grew else ""))
    report.data = {"log": {route: len(entries) for route, entries in log.items()}, "errors": errors}
    return report


def run(env: Env) -> Report:
    return run_load(env, 20 if env.quick else 200, 10.0 if env.quick else 60.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--clients", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    args = parser.parse_args()
    clients = args.clients or (20 if args.quick else 200)
    seconds = args.seconds or (10.0 if args.quick else 60.0)
    with bench_env(args.quick) as env:
        # The first round starts from a fresh app: its memory includes what this concurrency costs
        # once (Python keeps its high-water mark). The second starts from there: growth in it
        # would be per-request state that is never freed.
        print(run_load(env, clients, seconds).render().replace("## Load:", "## Load (first round, fresh app):"))
        print(run_load(env, clients, seconds).render().replace("## Load:", "## Load (second round):"))


if __name__ == "__main__":
    main()
