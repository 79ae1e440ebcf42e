"""Fair share between queues: a second queue's work arriving while a first fills the cluster.

    python -m bench.fair_share [--quick]

Queue A submits N sleep tasks (0.2 s, one CPU each, on the three `trio` nodes); queue B submits
N/2 two seconds later. From B's first start until either job's last task starts, what share of
the task starts is B's, and how long after its submission does B's first task start? With equal
weights the target is 50% within 10 points and a first start within one task run time; with
weights 3:1 (A `bench-heavy`, weight 3 in the app's args) B's share should be 25%. Plain Ray gets
the same arrivals (no queues: it runs what came first).
"""

from __future__ import annotations

import time
from typing import Any

import ray

from . import plain_ray
from .harness import TRIO, TRIO_SHARE, Env, Report, main_for

TASK_S = 0.2
LATER_S = 2.0  # B arrives this long after A
HEAVY = "bench-heavy"  # weight 3 in harness.app_args


def b_share(a_starts: list[float], b_starts: list[float]) -> tuple[float, int]:
    """B's share of the starts from its first start until either job's last one, and how many
    starts that window holds."""
    began, ended = min(b_starts), min(max(a_starts), max(b_starts))
    a = sum(1 for at in a_starts if began <= at <= ended)
    b = sum(1 for at in b_starts if began <= at <= ended)
    return b / max(1, a + b), a + b


def grid_starts(env: Env, tasks: int, queues: tuple[str, str]) -> tuple[list[float], list[float], float]:
    """Both jobs through the handle, each in its queue: their tasks' start times, and how long
    after B's submission its first task started."""
    handle = env.handle()

    def submit(queue: str, count: int) -> tuple[str, float]:
        spec = {"task": "sleep_task", "args": [[i, TASK_S] for i in range(count)], "queue": queue,
                "strategy": "load_balanced", "resources": {"cpu_count": 1.0, "custom_resources": {TRIO: TRIO_SHARE}}}
        at = time.time()
        return handle.submit_job.remote(spec).result(timeout_s=60).job_id, at

    first, _ = submit(queues[0], tasks)
    time.sleep(LATER_S)
    second, b_at = submit(queues[1], tasks // 2)
    starts = []
    for job_id in (first, second):
        status = handle.wait_job.remote(job_id, 600.0, True).result(timeout_s=630)
        if status.succeeded != status.total:
            raise RuntimeError(f"grid job {job_id}: {status.state} {status.error}")
        starts.append([outcome.started_at for outcome in status.results or []])
    return starts[0], starts[1], min(starts[1]) - b_at


def ray_starts(tasks: int) -> tuple[list[float], list[float], float]:
    remote = plain_ray.sleep_for.options(**plain_ray.options("DEFAULT", on_trio=True))
    first = [remote.remote(TASK_S) for _ in range(tasks)]
    time.sleep(LATER_S)
    b_at = time.time()
    second = [remote.remote(TASK_S) for _ in range(tasks // 2)]

    def started(refs: list[Any]) -> list[float]:
        return [start for _, start, _ in ray.get(refs)]

    a, b = started(first), started(second)
    return a, b, min(b) - b_at


def run(env: Env) -> Report:
    tasks = 120 if env.quick else 600
    report = Report(f"Fair share: queue B ({tasks // 2} x {TASK_S} s) arrives {LATER_S:g} s after queue A "
                    f"({tasks} tasks) has filled {env.trio_cpus} CPUs", ["side", "B's share of starts",
                                                                        "starts in the window",
                                                                        "B's first start after submit, s"])
    grid_starts(env, 12, ("bench-warm-a", "bench-warm-b"))  # warm-up: the function's run time learned
    results: dict[str, tuple[float, int, float]] = {}
    for side, measure in (("grid-serve, weights 1:1", lambda: grid_starts(env, tasks, ("bench-a", "bench-b"))),
                          ("grid-serve, weights 3:1", lambda: grid_starts(env, tasks, (HEAVY, "bench-light"))),
                          ("plain Ray DEFAULT", lambda: ray_starts(tasks))):
        a, b, first_wait = measure()
        share, window = b_share(a, b)
        results[side] = (share, window, first_wait)
        report.add(side, f"{share:.0%}", window, f"{first_wait:.2f}")
    even, weighted = results["grid-serve, weights 1:1"], results["grid-serve, weights 3:1"]
    report.target(abs(even[0] - 0.5) <= 0.10, f"equal weights: B got {even[0]:.0%} of the starts (target 50% ± 10)")
    report.target(abs(weighted[0] - 0.25) <= 0.10, f"weights 3:1: B got {weighted[0]:.0%} (target 25% ± 10)")
    report.target(even[2] <= TASK_S, f"B's first task started {even[2]:.2f} s after its submission "
                                     f"(target ≤ one run time, {TASK_S} s)")
    report.data = {"results": results}
    return report


if __name__ == "__main__":
    main_for(run, __doc__)
