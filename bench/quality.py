"""Placement quality: makespan of mixed-duration tasks on heterogeneous nodes (1, 2, 4 CPUs).

    python -m bench.quality [--quick]

The same fixed-seed list of sleep durations runs through grid-serve `load_balanced` and
`performance_optimized` and through plain Ray DEFAULT and SPREAD, all held to the three
`trio` nodes. Makespan is submit to last result. The lower bound is
max(total work / total CPUs, longest task). Target: grid-serve within 1.15x the bound and
below plain Ray's.
"""

from __future__ import annotations

import random
import time

import ray

from . import plain_ray
from .harness import TRIO, TRIO_SHARE, Env, Report, main_for, summarize

TARGET = 1.15


def durations(count: int, seed: int = 42) -> list[float]:
    """Mostly short tasks with a few long ones, as real job mixes are."""
    rng = random.Random(seed)
    return [round(rng.choice([0.1, 0.1, 0.2, 0.3, 0.5, 1.0]) * rng.uniform(0.8, 1.2), 3) for _ in range(count)]


def lower_bound(work: list[float], cpus: int) -> float:
    return max(sum(work) / cpus, max(work))


def ray_makespan(work: list[float], strategy: str) -> float:
    remote = plain_ray.sleep_for.options(**plain_ray.options(strategy, on_trio=True))
    began = time.perf_counter()
    ray.get([remote.remote(seconds) for seconds in work])
    return time.perf_counter() - began


def grid_makespan(env: Env, work: list[float], strategy: str) -> float:
    spec = {"task": "sleep_task", "args": [[i, seconds] for i, seconds in enumerate(work)], "strategy": strategy,
            "resources": {"cpu_count": 1.0, "custom_resources": {TRIO: TRIO_SHARE}}, "wait": True,
            "timeout_s": 600}
    began = time.perf_counter()
    status = env.handle().submit_job.remote(spec).result(timeout_s=630)
    elapsed = time.perf_counter() - began
    if status.succeeded != len(work):
        raise RuntimeError(f"grid job: {status.succeeded}/{len(work)} succeeded ({status.state}, {status.error})")
    return elapsed


def run(env: Env) -> Report:
    work = durations(12 if env.quick else 80)
    runs = 1 if env.quick else 3
    bound = lower_bound(work, env.trio_cpus)
    sides = {
        "grid load_balanced": lambda: grid_makespan(env, work, "load_balanced"),
        "grid performance_optimized": lambda: grid_makespan(env, work, "performance_optimized"),
        "Ray DEFAULT": lambda: ray_makespan(work, "DEFAULT"),
        "Ray SPREAD": lambda: ray_makespan(work, "SPREAD"),
    }
    report = Report(f"Placement quality: {len(work)} tasks, {sum(work):.1f}s of work on 1+2+4 CPUs, "
                    f"makespan in s (lower bound {bound:.2f}s)",
                    ["side", "makespan s", "vs lower bound", "vs best plain Ray"])
    warm = work[:4] if env.quick else work
    for name in sides:  # warm-up: workers up, and performance_optimized has measured durations
        if name.startswith("grid"):
            grid_makespan(env, warm, name.split()[1])
        elif not env.quick:  # the smoke run's Ray workers are already up from earlier benchmarks
            ray_makespan(warm, name.split()[1])
    samples: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(runs):
        for name, measure in sides.items():
            samples[name].append(measure())
    summaries = {name: summarize(values) for name, values in samples.items()}
    best_ray = min(summaries["Ray DEFAULT"].median, summaries["Ray SPREAD"].median)
    for name, summary in summaries.items():
        report.add(name, summary.show(2), f"{summary.median / bound:.2f}×", f"{summary.median / best_ray:.2f}×")
    for name in ("grid load_balanced", "grid performance_optimized"):
        median = summaries[name].median
        report.target(median <= TARGET * bound and median < best_ray,
                      f"{name}: {median / bound:.2f}× the bound (target ≤ {TARGET}×), "
                      f"{median / best_ray:.2f}× the best plain Ray (target < 1×)")
    report.data = {"bound": bound, "samples": samples}
    return report


if __name__ == "__main__":
    main_for(run, __doc__)
