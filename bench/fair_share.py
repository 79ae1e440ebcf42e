"""Fair share between queues: a second queue's work arriving while a first fills the cluster.

    python -m bench.fair_share [--quick]

Queue A submits N sleep tasks (0.2 s, one CPU each, on the three `trio` nodes); queue B submits
N/2 two seconds later. From B's first start until either job's last task starts, what share of
the task starts is B's, and how long after its submission does B's first task start? With equal
weights the target is 50% within 10 points and a first start within one task run time; with
weights 3:1 (A `bench-heavy`, weight 3 in the app's args) B's share should be 25%. Plain Ray gets
the same arrivals (no queues: it runs what came first).

Quotas: queue A (`bench-quota-a`, a 2-CPU quota) submits 0.5 s tasks and borrows every trio CPU;
queue B (`bench-quota-b`, a 4-CPU quota) submits 12 two seconds later. Target: B runs 4 tasks
within one run time of its submission (what it lent comes back at A's task boundaries). Plain
Ray runs B's after every A task queued before them.

Reclaim: A fills the trio CPUs with 6 s tasks; B (`bench-reclaim-b`, a 4-CPU quota with `reclaim:
cancel_running`) submits 4 x 0.5 s two seconds later. Target: B holds its 4 CPUs in under half
the 4 s A's tasks have left (A's 4 youngest running tasks are stopped, forced after 0.25 s, and
run again); plain Ray waits for A's to end.
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


def submit_sleeps(handle: Any, queue: str, count: int, run_s: float) -> tuple[str, float]:
    """A job of `count` sleeps in `queue` through the handle, on the trio nodes: its id, and when
    it was submitted (wall time)."""
    spec = {"task": "sleep_task", "args": [[i, run_s] for i in range(count)], "queue": queue,
            "strategy": "load_balanced", "resources": {"cpu_count": 1.0, "custom_resources": {TRIO: TRIO_SHARE}}}
    at = time.time()
    return handle.submit_job.remote(spec).result(timeout_s=60).job_id, at


def grid_starts(env: Env, tasks: int, queues: tuple[str, str]) -> tuple[list[float], list[float], float]:
    """Both jobs through the handle, each in its queue: their tasks' start times, and how long
    after B's submission its first task started."""
    handle = env.handle()
    first, _ = submit_sleeps(handle, queues[0], tasks, TASK_S)
    time.sleep(LATER_S)
    second, b_at = submit_sleeps(handle, queues[1], tasks // 2, TASK_S)
    starts = []
    for job_id in (first, second):
        status = handle.wait_job.remote(job_id, 600.0, True).result(timeout_s=630)
        if status.succeeded != status.total:
            raise RuntimeError(f"grid job {job_id}: {status.state} {status.error}")
        starts.append([outcome.started_at for outcome in status.results or []])
    return starts[0], starts[1], min(starts[1]) - b_at


QUOTA_TASK_S = 0.5
QUOTA_A, QUOTA_B = "bench-quota-a", "bench-quota-b"  # CPU quotas 2 and 4 in harness.app_args
RECLAIM_B, RECLAIM_A_S = "bench-reclaim-b", 6.0  # quota 4, `reclaim: cancel_running`; A's tasks' run time


def running_at(outcomes: list[Any], at: float) -> int:
    """How many of the tasks (`TaskOutcome`s) ran at wall time `at`."""
    return sum(1 for o in outcomes if o.started_at <= at < o.started_at + o.duration_s)


def fourth_start_after(starts: list[float], at: float) -> float:
    """How long after `at` the fourth of `starts` began (B holds its 4 CPUs from then)."""
    return sorted(starts)[3] - at


def grid_quota(env: Env, a_tasks: int, a_run_s: float = QUOTA_TASK_S, b_queue: str = QUOTA_B,
               b_tasks: int = 12) -> tuple[int, float]:
    """A borrows, B submits: how many of A's ran as B submitted, and how long B took to run 4."""
    handle = env.handle()
    first, _ = submit_sleeps(handle, QUOTA_A, a_tasks, a_run_s)
    time.sleep(LATER_S)
    second, b_at = submit_sleeps(handle, b_queue, b_tasks, QUOTA_TASK_S)
    done = [handle.wait_job.remote(job_id, 600.0, True).result(timeout_s=630) for job_id in (first, second)]
    if any(status.succeeded != status.total for status in done):
        raise RuntimeError(f"grid quota jobs: {[(s.state, s.error) for s in done]}")
    a, b = (status.results or [] for status in done)
    return running_at(a, b_at), fourth_start_after([o.started_at for o in b], b_at)


def ray_quota(a_tasks: int, a_run_s: float = QUOTA_TASK_S, b_tasks: int = 12) -> tuple[int, float]:
    remote = plain_ray.sleep_for.options(**plain_ray.options("DEFAULT", on_trio=True))
    first = [remote.remote(a_run_s) for _ in range(a_tasks)]
    time.sleep(LATER_S)
    b_at = time.time()
    second = [remote.remote(QUOTA_TASK_S) for _ in range(b_tasks)]
    a, b = ray.get(first), ray.get(second)
    return sum(1 for _, start, _ in a if start <= b_at < start + a_run_s), fourth_start_after(
        [start for _, start, _ in b], b_at)


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
    a_tasks = 36 if env.quick else 72
    quota = {"grid-serve": grid_quota(env, a_tasks), "plain Ray DEFAULT": ray_quota(a_tasks)}
    for side, (running, wait) in quota.items():  # A's tasks running as B submits; B's fourth start after it
        report.add(f"quotas 2 + 4 CPUs, {side}: A running as B submits {running}, B's 4th start after", "-", "-",
                   f"{wait:.2f}")
    report.target(quota["grid-serve"][0] == env.trio_cpus,
                  f"A borrowed the whole cluster while B was idle: {quota['grid-serve'][0]} of {env.trio_cpus} CPUs")
    report.target(quota["grid-serve"][1] <= QUOTA_TASK_S,
                  f"B held its 4 CPUs {quota['grid-serve'][1]:.2f} s after its submission "
                  f"(target ≤ one run time, {QUOTA_TASK_S} s)")
    reclaim = {"grid-serve": grid_quota(env, env.trio_cpus, RECLAIM_A_S, RECLAIM_B, 4),
               "plain Ray DEFAULT": ray_quota(env.trio_cpus, RECLAIM_A_S, 4)}
    for side, (running, wait) in reclaim.items():
        report.add(f"reclaim: cancel_running, A's {RECLAIM_A_S:g} s tasks, {side}: A running as B submits "
                   f"{running}, B's 4th start after", "-", "-", f"{wait:.2f}")
    a_left_s = RECLAIM_A_S - LATER_S  # when A's tasks end, counted from B's submission
    report.target(reclaim["grid-serve"][1] < a_left_s / 2,
                  f"reclaiming, B held its 4 CPUs {reclaim['grid-serve'][1]:.2f} s after its submission; A's tasks "
                  f"would have ended {a_left_s:g} s after it (target: under half that; the stopped tasks' workers "
                  f"are killed, and Ray starts new ones for B)")
    report.data = {"results": results, "quota": quota, "reclaim": reclaim}
    return report


if __name__ == "__main__":
    main_for(run, __doc__)
