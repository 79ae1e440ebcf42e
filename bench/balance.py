"""Balance: how evenly N trivial tasks land on k nodes (max / mean tasks per node).

    python -m bench.balance [--quick]

grid-serve `spread` against Ray's SPREAD and DEFAULT, jobs of 30, 100 and 1,000 tasks on 3
and on 6 nodes. Target: grid-serve never puts more than ceil(N/k) on a node.
"""

from __future__ import annotations

import math
from collections import Counter

import ray

from . import plain_ray
from .harness import TRIO, TRIO_SHARE, Env, Report, main_for, summarize


def ray_counts(env: Env, tasks: int, strategy: str, on_trio: bool) -> Counter:
    remote = plain_ray.node_of.options(**plain_ray.options(strategy, on_trio))
    return Counter(env.node_names.get(node, node) for node in ray.get([remote.remote(i) for i in range(tasks)]))


def grid_counts(env: Env, tasks: int, on_trio: bool) -> Counter:
    spec: dict = {"task": "noop", "count": tasks, "strategy": "spread", "wait": True, "timeout_s": 300}
    if on_trio:
        spec["resources"] = {"cpu_count": 1.0, "custom_resources": {TRIO: TRIO_SHARE}}
    status = env.handle().submit_job.remote(spec).result(timeout_s=330)
    if status.state != "succeeded":
        raise RuntimeError(f"grid job ended {status.state}: {status.error}")
    return Counter(status.per_node)


def max_over_mean(counts: Counter, nodes: int, tasks: int) -> float:
    return max(counts.values()) / (tasks / nodes)


def run(env: Env) -> Report:
    sizes = [30, 100] if env.quick else [30, 100, 1000]
    layouts = [(3, True)] if env.quick else [(3, True), (6, False)]
    runs = 1 if env.quick else 3
    report = Report("Balance: max/mean tasks per node (1.00 is perfect)",
                    ["nodes", "tasks", "grid spread", "Ray SPREAD", "Ray DEFAULT", "grid max (ceil N/k)",
                     "Ray SPREAD worst split"])
    grid_counts(env, 6, True)  # warm-up: workers started on every node, app paths hot
    ray.get([plain_ray.node_of.remote(i) for i in range(20)])
    all_even = True
    for nodes, on_trio in layouts:
        for tasks in sizes:
            grid = [grid_counts(env, tasks, on_trio) for _ in range(runs)]
            spread = [ray_counts(env, tasks, "SPREAD", on_trio) for _ in range(runs)]
            default = [ray_counts(env, tasks, "DEFAULT", on_trio) for _ in range(runs)]
            ceiling = math.ceil(tasks / nodes)
            grid_max = max(max(c.values()) for c in grid)
            all_even &= grid_max <= ceiling and all(len(c) == nodes for c in grid)
            worst = max(spread, key=lambda c: max(c.values()))
            cell = lambda samples: summarize([max_over_mean(c, nodes, tasks) for c in samples]).show(2)  # noqa: B023, E731
            report.add(nodes, tasks, cell(grid), cell(spread), cell(default), f"{grid_max} ({ceiling})",
                       "/".join(str(v) for v in sorted(worst.values(), reverse=True)))
            report.data[f"{nodes}x{tasks}"] = {"grid": [dict(c) for c in grid], "spread": [dict(c) for c in spread],
                                               "default": [dict(c) for c in default]}
    report.target(all_even, "grid spread put at most ceil(N/k) tasks on every node, in every run")
    return report


if __name__ == "__main__":
    main_for(run, __doc__)
