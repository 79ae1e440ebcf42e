"""Placement quality: makespan of mixed-duration tasks on heterogeneous nodes (1, 2, 4 CPUs).

    python -m bench.quality [--quick]

Two cases, each a fixed-seed list of task durations run through grid-serve `load_balanced` and
`performance_optimized` and through plain Ray DEFAULT and SPREAD, all held to the three `trio`
nodes. Makespan is submit to last result.
  equal speeds: sleeps; lower bound max(total work / total CPUs, longest task);
  mixed speeds: 60 tasks of 50-400 ms where the 1-CPU node n1 runs the same function three
                times slower (issue 13's case); lower bound total work / (CPUs weighted by
                speed: 2 + 4 + 1/3), or the longest task. Two warm-up jobs first, so run times
                are learned.
Target: grid-serve within 1.15x the bound and below plain Ray's.
"""

from __future__ import annotations

import random
import time

import ray

from . import plain_ray
from .harness import TRIO, TRIO_SHARE, Env, Report, bench_env, main_for, summarize

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
    return grid_job_makespan(env, "sleep_task", [[i, seconds] for i, seconds in enumerate(work)], strategy)


def grid_job_makespan(env: Env, task: str, args: list[list], strategy: str) -> float:
    """Seconds from submitting one grid job (a task per entry of `args`, held to the trio
    nodes) to its last result; every task must succeed."""
    spec = {"task": task, "args": args, "strategy": strategy, "wait": True, "timeout_s": 600,
            "resources": {"cpu_count": 1.0, "custom_resources": {TRIO: TRIO_SHARE}}}
    began = time.perf_counter()
    status = env.handle().submit_job.remote(spec).result(timeout_s=630)
    elapsed = time.perf_counter() - began
    if status.succeeded != len(args):
        raise RuntimeError(f"grid job: {status.succeeded}/{len(args)} succeeded ({status.state}, {status.error})")
    return elapsed


SLOW_NODE = "n1"
SLOWDOWN = 3.0


def mixed_speed_durations(count: int, seed: int = 13) -> list[float]:
    rng = random.Random(seed)
    return [round(rng.uniform(0.05, 0.4), 3) for _ in range(count)]


def mixed_speed_bound(work: list[float]) -> float:
    return max(sum(work) / (2 + 4 + 1 / SLOWDOWN), max(work))


def ray_mixed_makespan(work: list[float], strategy: str) -> float:
    remote = plain_ray.slow_on.options(**plain_ray.options(strategy, on_trio=True))
    began = time.perf_counter()
    ray.get([remote.remote(SLOW_NODE, seconds * SLOWDOWN, seconds) for seconds in work])
    return time.perf_counter() - began


def grid_mixed_makespan(env: Env, work: list[float], strategy: str) -> float:
    args = [[i, SLOW_NODE, seconds * SLOWDOWN, seconds] for i, seconds in enumerate(work)]
    return grid_job_makespan(env, "slow_on_node", args, strategy)


def run(env: Env) -> Report:
    equal = run_equal_speeds(env)
    mixed = run_mixed_speeds(env)
    equal.rows += [["", "", "", ""], [f"**{mixed.title}**", "", "", ""]] + mixed.rows
    equal.verdicts += mixed.verdicts
    equal.data = {"equal": equal.data, "mixed": mixed.data}
    return equal


def run_mixed_speeds(env: Env) -> Report:
    work = mixed_speed_durations(20 if env.quick else 60)
    bound = mixed_speed_bound(work)
    sides = {
        "grid load_balanced": lambda: grid_mixed_makespan(env, work, "load_balanced"),
        "grid performance_optimized": lambda: grid_mixed_makespan(env, work, "performance_optimized"),
        "Ray DEFAULT": lambda: ray_mixed_makespan(work, "DEFAULT"),
        "Ray SPREAD": lambda: ray_mixed_makespan(work, "SPREAD"),
    }
    for name in sides:  # two warm-up jobs per side: workers up, run times learned
        for _ in range(1 if env.quick else 2):
            sides[name]()
    return compare(f"mixed speeds: {len(work)} tasks of 50-400 ms, n1 {SLOWDOWN:g}x slower, makespan s "
                   f"(lower bound {bound:.2f}s)", sides, bound, 1 if env.quick else 3)


def compare(title: str, sides: dict, bound: float, runs: int) -> Report:
    """Interleaved runs of every side; each grid side against the bound and the best plain Ray."""
    report = Report(title, ["side", "makespan s", "vs lower bound", "vs best plain Ray"])
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
                      f"{title.split(':')[0]}, {name}: {median / bound:.2f}× the bound (target ≤ {TARGET}×), "
                      f"{median / best_ray:.2f}× the best plain Ray (target < 1×)")
    report.data = {"bound": bound, "samples": samples}
    return report


def run_equal_speeds(env: Env) -> Report:
    work = durations(12 if env.quick else 80)
    runs = 1 if env.quick else 3
    bound = lower_bound(work, env.trio_cpus)
    sides = {
        "grid load_balanced": lambda: grid_makespan(env, work, "load_balanced"),
        "grid performance_optimized": lambda: grid_makespan(env, work, "performance_optimized"),
        "Ray DEFAULT": lambda: ray_makespan(work, "DEFAULT"),
        "Ray SPREAD": lambda: ray_makespan(work, "SPREAD"),
    }
    warm = work[:4] if env.quick else work
    for name in sides:  # warm-up: workers up, and performance_optimized has measured durations
        if name.startswith("grid"):
            grid_makespan(env, warm, name.split()[1])
        elif not env.quick:  # the smoke run's Ray workers are already up from earlier benchmarks
            ray_makespan(warm, name.split()[1])
    return compare(f"Placement quality: {len(work)} tasks, {sum(work):.1f}s of work on 1+2+4 CPUs, "
                   f"makespan in s (lower bound {bound:.2f}s)", sides, bound, runs)


def main() -> None:
    """`--mixed-only`: just the mixed-speed case, at full size on the quick (3-node) cluster."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--mixed-only", action="store_true")
    args = parser.parse_args()
    if not args.mixed_only:
        main_for(run, __doc__)
        return
    with bench_env(True) as env:
        env.quick = False
        print(run_mixed_speeds(env).render())


if __name__ == "__main__":
    main()
