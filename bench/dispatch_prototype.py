"""Prototype measurement that chose the dispatch design (issue 9): how fast can a dispatcher
inside an async actor (as an Ingress replica is) run a job when it refills a node itself the
moment a task ends, keeping `capacity x (1 + extra)` tasks in flight per node, against plain
Ray SPREAD from a driver, in one run?

    python -m bench.dispatch_prototype [rounds] [--noop-only]

No Serve call anywhere: this is the ceiling of each shape. Prints tasks/s and the median gap
between a task ending and the next starting on the same node (pairing the k-th start with the
(k - capacity)-th end), for no-ops, 20 ms and 200 ms tasks.
"""

from __future__ import annotations

import asyncio
import collections
import statistics
import sys
import time

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from grid_serve.local_cluster import LocalNode, start_cluster

from .harness import REPO  # noqa: F401  (puts the repo on sys.path)

CPUS = 2


@ray.remote(num_cpus=1)
def work(seconds: float) -> tuple[str, float, float]:
    started = time.time()
    if seconds:
        time.sleep(seconds)
    return ray.get_runtime_context().get_node_id(), started, time.time()


@ray.remote(num_cpus=1)
def work_chunk(seconds: float, count: int) -> list[tuple[str, float, float]]:
    """`count` tasks run back to back in one Ray task (a chunk): one submission, one lease."""
    return [work._function(seconds) for _ in range(count)]


@ray.remote(num_cpus=0)
class Dispatcher:
    def __init__(self, nodes: list[tuple[str, int]]) -> None:
        self.nodes = nodes
        self.pinned = {nid: work.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nid, soft=False))
                       for nid, _ in nodes}

    async def all_at_once(self, n: int, seconds: float, strategy: str) -> tuple[float, list]:
        began = time.perf_counter()
        if strategy == "SPREAD":
            refs = [work.options(scheduling_strategy="SPREAD").remote(seconds) for _ in range(n)]
        else:  # exact round-robin, pinned
            ids = [nid for nid, _ in self.nodes]
            refs = [self.pinned[ids[i % len(ids)]].remote(seconds) for i in range(n)]
        out = await asyncio.gather(*refs)
        return n / (time.perf_counter() - began), out

    async def chunked(self, n: int, seconds: float, size: int) -> tuple[float, list]:
        """Exact round-robin, pinned, `size` tasks per Ray task, all at once."""
        began = time.perf_counter()
        ids = [nid for nid, _ in self.nodes]
        pinned = {nid: work_chunk.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nid, soft=False))
                  for nid in ids}
        refs = [pinned[ids[c % len(ids)]].remote(seconds, min(size, n - start))
                for c, start in enumerate(range(0, n, size))]
        out = [span for chunk in await asyncio.gather(*refs) for span in chunk]
        return n / (time.perf_counter() - began), out

    async def refill(self, n: int, seconds: float, extra: int) -> tuple[float, list]:
        """Keep capacity x (1 + extra) in flight per node; a node's completion refills that node."""
        began = time.perf_counter()
        loop = asyncio.get_running_loop()
        left = n
        results: list = []
        done = asyncio.Event()
        outstanding = 0

        def submit(nid: str) -> None:
            nonlocal left, outstanding
            left -= 1
            outstanding += 1
            fut = self.pinned[nid].remote(seconds).future()
            fut.add_done_callback(lambda f, nid=nid: loop.call_soon_threadsafe(finished, nid, f))

        def finished(nid: str, fut) -> None:
            nonlocal outstanding
            outstanding -= 1
            results.append(fut.result())
            if left > 0:
                submit(nid)
            elif outstanding == 0:
                done.set()

        for nid, cap in self.nodes:
            for _ in range(cap * (1 + extra)):
                if left > 0:
                    submit(nid)
        await done.wait()
        return n / (time.perf_counter() - began), results


def median_gap_ms(results: list, capacity: dict[str, int]) -> float:
    by_node: dict[str, list] = collections.defaultdict(list)
    for nid, start, end in results:
        by_node[nid].append((start, end))
    gaps = []
    for nid, spans in by_node.items():
        starts = sorted(s for s, _ in spans)
        ends = sorted(e for _, e in spans)
        c = capacity[nid]
        gaps += [(starts[k] - ends[k - c]) * 1000 for k in range(c, len(starts))]
    return statistics.median(gaps) if gaps else float("nan")


def driver_spread(n: int, seconds: float) -> tuple[float, list]:
    began = time.perf_counter()
    out = ray.get([work.options(scheduling_strategy="SPREAD").remote(seconds) for _ in range(n)])
    return n / (time.perf_counter() - began), out


def main() -> None:
    numbers = [a for a in sys.argv[1:] if a.isdigit()]
    rounds = int(numbers[0]) if numbers else 3
    nodes = [LocalNode(f"n{i}", num_cpus=CPUS, num_gpus=0, memory_bytes=2 * 1024**3, head=i == 0) for i in range(3)]
    cluster = start_cluster(nodes)
    try:
        ids = [(n["NodeID"], int(n["Resources"]["CPU"])) for n in ray.nodes() if n["Alive"]]
        capacity = dict(ids)
        disp = Dispatcher.remote(ids)
        shapes = {
            "driver SPREAD all at once": lambda n, s: driver_spread(n, s),
            "actor SPREAD all at once": lambda n, s: ray.get(disp.all_at_once.remote(n, s, "SPREAD")),
            "actor pinned all at once": lambda n, s: ray.get(disp.all_at_once.remote(n, s, "pinned")),
            "actor refill, capacity": lambda n, s: ray.get(disp.refill.remote(n, s, 0)),
            "actor refill, capacity x2": lambda n, s: ray.get(disp.refill.remote(n, s, 1)),
            "actor refill, capacity x4": lambda n, s: ray.get(disp.refill.remote(n, s, 3)),
            "actor pinned, chunks of 8": lambda n, s: ray.get(disp.chunked.remote(n, s, 8)),
            "actor pinned, chunks of 32": lambda n, s: ray.get(disp.chunked.remote(n, s, 32)),
        }
        if "--noop-only" in sys.argv:
            shapes = {k: v for k, v in shapes.items() if "refill" not in k}
        works = [(1000, 0.0)] if "--noop-only" in sys.argv else [(1000, 0.0), (300, 0.02), (100, 0.2)]
        for n, seconds in works:
            rates: dict[str, list[float]] = collections.defaultdict(list)
            gaps: dict[str, list[float]] = collections.defaultdict(list)
            for shape in shapes.values():
                shape(min(n, 200), seconds)  # warm-up
            for _ in range(rounds):
                for name, shape in shapes.items():
                    rate, results = shape(n, seconds)
                    rates[name].append(rate)
                    gaps[name].append(median_gap_ms(results, capacity))
            base = statistics.median(rates["driver SPREAD all at once"])
            print(f"\n{n} tasks of {seconds * 1000:.0f} ms, {rounds} rounds interleaved")
            for name in shapes:
                m = statistics.median(rates[name])
                print(f"  {name:28s} {m:7.1f}/s {m / base:5.2f}x  ({min(rates[name]):.0f}-{max(rates[name]):.0f})"
                      f"  gap median {statistics.median(gaps[name]):6.2f} ms")
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
