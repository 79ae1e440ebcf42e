"""What every benchmark shares: the cluster, repeats with medians, and the side-by-side table.

Each benchmark runs plain Ray and grid-serve on the same work in the same run, so the
ratio between them means something even on a busy shared machine where absolute numbers
drift. `bench_env()` starts the one local multi-node cluster they all use:

    quick: 3 nodes n1..n3 with 1, 2 and 4 CPUs (all carry the custom resource `trio`)
    full:  those 3 plus n4..n6 with 1, 2 and 4 CPUs (no `trio`), so "3 nodes" and
           "6 nodes" are the same cluster, selected by asking for `trio` or not.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from grid_serve.local_cluster import LocalNode  # noqa: E402

GiB = 1024**3
TRIO = "trio"  # custom resource on the first three nodes: "run on 3 nodes" for both sides
TRIO_AMOUNT = 1000.0
TRIO_SHARE = 0.001  # what one task asks of it: never the limiting resource


def cluster_nodes(quick: bool) -> list[LocalNode]:
    """The benchmark cluster: heterogeneous CPU counts, GPUs left out (CPU work only)."""
    cpus = [1, 2, 4] if quick else [1, 2, 4, 1, 2, 4]
    return [
        LocalNode(f"n{i + 1}", num_cpus=count, num_gpus=0, memory_bytes=2 * GiB, head=(i == 0),
                  resources={TRIO: TRIO_AMOUNT} if i < 3 else {})
        for i, count in enumerate(cpus)
    ]


@dataclass
class Env:
    """A running cluster with the grid app on it, shared by the benchmarks of one run."""

    quick: bool
    nodes: list[LocalNode]
    base_url: str = ""
    node_names: dict[str, str] = field(default_factory=dict)  # Ray node id -> grid name

    @property
    def trio_cpus(self) -> int:
        return sum(node.num_cpus for node in self.nodes if TRIO in node.resources)

    def handle(self) -> Any:
        from ray import serve

        return serve.get_app_handle("grid")


@contextlib.contextmanager
def bench_env(quick: bool, with_app: bool = True) -> Iterator[Env]:
    """Start the cluster (and the grid app), yield it, and stop exactly what was started."""
    import ray

    from grid_serve.local_cluster import deploy_app, free_port, start_cluster

    # Ray workers and Serve replicas must import `bench` (plain-Ray task bodies, the bare app).
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    nodes = cluster_nodes(quick)
    cluster = start_cluster(nodes)
    env = Env(quick=quick, nodes=nodes)
    try:
        env.node_names = {node["NodeID"]: node.get("Labels", {}).get("grid.io/node", node["NodeID"][:6])
                          for node in ray.nodes() if node["Alive"]}
        if with_app:
            env.base_url = deploy_app(free_port(), app_args())
            wait_for_app(env.base_url)
        yield env
    finally:
        if with_app:
            from ray import serve

            with contextlib.suppress(Exception):
                serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def app_args() -> dict[str, Any]:
    """The grid app's args; GRID_BENCH_ADMISSION, GRID_BENCH_LOOKAHEAD_MS and
    GRID_BENCH_CHUNK_MS override `admission`, `lookahead_ms` and `chunk_ms` (to show their effect)."""
    args: dict[str, Any] = {"metrics_interval_s": 1.0, "queues": {  # bench.fair_share
        "bench-heavy": {"weight": 3}, "bench-quota-a": {"quota": {"CPU": 2}}, "bench-quota-b": {"quota": {"CPU": 4}},
        "bench-reclaim-b": {"quota": {"CPU": 4}, "reclaim": "cancel_running"}}}
    if os.environ.get("GRID_BENCH_ADMISSION"):
        args["admission"] = float(os.environ["GRID_BENCH_ADMISSION"])
    if os.environ.get("GRID_BENCH_LOOKAHEAD_MS"):
        args["lookahead_ms"] = float(os.environ["GRID_BENCH_LOOKAHEAD_MS"])
    if os.environ.get("GRID_BENCH_CHUNK_MS"):
        args["chunk_ms"] = float(os.environ["GRID_BENCH_CHUNK_MS"])
    return args


def wait_for_app(base_url: str, timeout_s: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/v1/health", timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"grid app did not answer at {base_url} within {timeout_s:.0f}s")


# ---------------------------------------------------------------- numbers


@dataclass(frozen=True)
class Summary:
    """Median of the repeats, and their spread (min..max)."""

    median: float
    low: float
    high: float
    runs: int

    def show(self, digits: int = 0) -> str:
        if self.runs == 1:
            return f"{self.median:,.{digits}f}"
        return f"{self.median:,.{digits}f} ({self.low:,.{digits}f}–{self.high:,.{digits}f})"


def summarize(values: Sequence[float]) -> Summary:
    return Summary(statistics.median(values), min(values), max(values), len(values))


def repeat(measure: Callable[[], float], runs: int, warmup: int = 1) -> Summary:
    """Run `measure` `warmup` times unrecorded (workers started, caches hot), then `runs` times."""
    for _ in range(warmup):
        measure()
    return summarize([measure() for _ in range(runs)])


def interleaved(sides: Mapping[str, Callable[[int], float]], runs: int, calls: int,
                warm_calls: int | None = None) -> dict[str, list[float]]:
    """Each side's figure `runs` times, the rounds interleaved (every side once, then every side
    again), each side warmed on `warm_calls` (default `calls`) just before it is timed on `calls`:
    plain Ray and grid-serve on the same function, in one run."""
    results: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(runs):
        for name, measure in sides.items():
            measure(calls if warm_calls is None else warm_calls)
            results[name].append(measure(calls))
    return results


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}×" if theirs else "n/a"


# ---------------------------------------------------------------- reports


@dataclass
class Report:
    """One benchmark's table: rows of cells under `columns`, plus verdicts on its targets."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # raw numbers, for tests and JSON

    def add(self, *cells: object) -> None:
        self.rows.append([str(cell) for cell in cells])

    def target(self, met: bool, text: str) -> None:
        self.verdicts.append(f"{'MET   ' if met else 'MISSED'} {text}")

    def render(self) -> str:
        widths = [max(len(column), *(len(row[i]) for row in self.rows)) if self.rows else len(column)
                  for i, column in enumerate(self.columns)]
        line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
        out = [f"\n## {self.title}\n", line(self.columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        out += [line(row) for row in self.rows]
        if self.verdicts:
            out.append("")
            out += [f"- {verdict}" for verdict in self.verdicts]
        return "\n".join(out)


def command_line(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (the smoke run)")
    return parser.parse_known_args()[0]  # a benchmark's own flags (e.g. dispatch's --sleep-only) pass through


def main_for(run: Callable[[Env], Report], description: str, with_app: bool = True) -> None:
    """`python -m bench.<name> [--quick]`: start the cluster, run one benchmark, print its table."""
    args = command_line(description)
    with bench_env(args.quick, with_app=with_app) as env:
        print(run(env).render(), flush=True)
