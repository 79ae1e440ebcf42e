"""The dispatch path against plain Ray: tasks/s and the gap between a task ending and the next
starting on the same node, for no-ops and for 20 ms and 200 ms tasks.

    python -m bench.dispatch [--quick] [--sleep-only]

`--sleep-only`: only the 20 ms and 200 ms cases (where the gap between tasks matters).

Both sides in one run, rounds interleaved. grid-serve: one job through the handle
(`submit_job` with wait) and, for no-ops, through HTTP `POST /v1/jobs` with wait; no-ops with
`spread`, sleeping tasks with `load_balanced` (the work-conserving strategy: `spread` keeps a
job exactly even, so on nodes of 1, 2 and 4 CPUs it waits for the small ones by design).
Plain Ray: the same tasks from the driver, all submitted at once with SPREAD.

The gap is taken from timestamps inside the tasks: on a node with c slots, the k-th task start
is paired with the (k - c)-th task end. `start ms`: from the call to the job's first task
starting; `tail ms`: from its last task ending to the answer (medians). Targets (issue 9): no-ops >= 0.9x, 20 ms and 200 ms
>= 0.95x, gap median within 2 ms of plain Ray's.
"""

from __future__ import annotations

import collections
import statistics
import sys
import time
from typing import Any

import httpx
import ray

from . import plain_ray
from .harness import Env, Report, main_for, summarize

NOOP_TARGET = 0.9
SLEEP_TARGET = 0.95
GAP_SLACK_MS = 2.0


def gap_ms(spans: list[tuple[str, float, float]], capacity: dict[str, int]) -> float:
    """Median ms between a slot's task ending and its next task starting, per node pooled."""
    by_node: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for node, start, end in spans:
        by_node[node].append((start, end))
    gaps: list[float] = []
    for node, pairs in by_node.items():
        slots = capacity.get(node, 1)
        starts = sorted(start for start, _ in pairs)
        ends = sorted(end for _, end in pairs)
        gaps += [(starts[k] - ends[k - slots]) * 1000 for k in range(slots, len(starts))]
    return statistics.median(gaps) if gaps else float("nan")


def start_and_tail_ms(spans: list[tuple[str, float, float]], began: float, answered: float) -> tuple[float, float]:
    """What a job pays outside its tasks: ms from the call to its first task starting, and
    from its last task ending to the answer (epoch clocks, one machine)."""
    return (min(start for _, start, _ in spans) - began) * 1000, (answered - max(end for _, _, end in spans)) * 1000


def ray_run(tasks: int, seconds: float | None) -> tuple[float, list[tuple[str, float, float]]]:
    began = time.perf_counter()
    if seconds is None:
        ray.get([plain_ray.noop.options(scheduling_strategy="SPREAD").remote(i) for i in range(tasks)])
        return tasks / (time.perf_counter() - began), []
    out = ray.get([plain_ray.sleep_for.options(scheduling_strategy="SPREAD").remote(seconds) for _ in range(tasks)])
    return tasks / (time.perf_counter() - began), list(out)


def _spec(tasks: int, seconds: float | None) -> dict[str, Any]:
    if seconds is None:
        return {"task": "noop", "count": tasks, "strategy": "spread", "wait": True, "timeout_s": 900}
    return {"task": "sleep_task", "args": [[i, seconds] for i in range(tasks)], "strategy": "load_balanced",
            "wait": True, "timeout_s": 900}


def _spans(status: Any) -> list[tuple[str, float, float]]:
    return [(o.node_id, o.started_at, o.started_at + o.duration_s) for o in status.results or []]


def grid_handle(env: Env, tasks: int, seconds: float | None) -> tuple[float, list[tuple[str, float, float]]]:
    began = time.perf_counter()
    status = env.handle().submit_job.remote(_spec(tasks, seconds)).result(timeout_s=930)
    rate = tasks / (time.perf_counter() - began)
    if status.succeeded != tasks:
        raise RuntimeError(f"grid job: {status.succeeded}/{tasks} succeeded ({status.state}, {status.error})")
    return rate, _spans(status) if seconds is not None else []


def grid_http(env: Env, tasks: int, seconds: float | None) -> tuple[float, list[tuple[str, float, float]]]:
    began = time.perf_counter()
    response = httpx.post(f"{env.base_url}/v1/jobs", json=_spec(tasks, seconds), timeout=930)
    rate = tasks / (time.perf_counter() - began)
    body = response.json()
    if response.status_code != 200 or body.get("succeeded") != tasks:
        raise RuntimeError(f"grid job over HTTP: {response.status_code} {str(body)[:300]}")
    return rate, []


def run(env: Env) -> Report:
    runs = 1 if env.quick else 3
    capacity = {node["NodeID"]: int(node["Resources"].get("CPU", 1)) for node in ray.nodes() if node["Alive"]}
    cases = [("1,000 no-ops", 200 if env.quick else 1000, None, True),
             ("300 x 20 ms", 60 if env.quick else 300, 0.02, False),
             ("100 x 200 ms", 20 if env.quick else 100, 0.2, False)]
    if not env.quick:
        cases.insert(1, ("10,000 no-ops", 10_000, None, True))
    if "--sleep-only" in sys.argv:
        cases = [case for case in cases if case[2] is not None]
    report = Report(f"Dispatch: tasks/s (median, min–max of {runs}) and median gap between tasks on a slot",
                    ["work", "side", "tasks/s", "vs Ray SPREAD", "gap ms", "start ms", "tail ms"])
    verdicts: list[tuple[bool, str]] = []
    for label, tasks, seconds, with_http in cases:
        sides = {"Ray SPREAD (driver)": lambda: ray_run(tasks, seconds),  # noqa: B023
                 "grid handle submit_job(wait)": lambda: grid_handle(env, tasks, seconds)}  # noqa: B023
        if with_http:
            sides["grid HTTP POST /v1/jobs (wait)"] = lambda: grid_http(env, tasks, seconds)  # noqa: B023
        for measure in sides.values():  # warm-up: workers started, run times learned
            measure()
        rates: dict[str, list[float]] = {name: [] for name in sides}
        gaps: dict[str, list[float]] = {name: [] for name in sides}
        edges: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
        for _ in range(runs):
            for name, measure in sides.items():
                began = time.time()
                rate, spans = measure()
                rates[name].append(rate)
                if spans:
                    gaps[name].append(gap_ms(spans, capacity))
                    edges[name].append(start_and_tail_ms(spans, began, time.time()))
        base = statistics.median(rates["Ray SPREAD (driver)"])
        base_gap = statistics.median(gaps["Ray SPREAD (driver)"]) if gaps["Ray SPREAD (driver)"] else None
        for name in sides:
            summary = summarize(rates[name])
            gap = f"{statistics.median(gaps[name]):.2f}" if gaps[name] else "-"
            start, tail = (f"{statistics.median(edge[i] for edge in edges[name]):.1f}" if edges[name] else "-"
                           for i in (0, 1))
            report.add(label, name, summary.show(), f"{summary.median / base:.2f}×", gap, start, tail)
            if name != "Ray SPREAD (driver)":
                target = NOOP_TARGET if seconds is None else SLEEP_TARGET
                verdicts.append((summary.median / base >= target,
                                 f"{label}, {name}: {summary.median / base:.2f}× (target ≥ {target}×)"))
                if gaps[name] and base_gap is not None:
                    ours = statistics.median(gaps[name])
                    verdicts.append((ours <= base_gap + GAP_SLACK_MS,
                                     f"{label}, {name}: gap {ours:.2f} ms vs Ray {base_gap:.2f} ms "
                                     f"(target ≤ Ray + {GAP_SLACK_MS:g} ms)"))
        report.data[label] = {"rates": rates, "gaps": gaps}
    for met, text in verdicts:
        report.target(met, text)
    return report


if __name__ == "__main__":
    main_for(run, __doc__)
