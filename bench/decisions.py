"""Decision speed of the pure strategies on simulated views of 10 to 10,000 nodes.

    python -m bench.decisions [--quick]

Two measures per strategy and view size, no Ray involved, timed in CPU seconds of this
process (time.process_time) so other work on a shared machine does not count against it:
  place()        one decision on a fixed view (a job part-way through, so spread has turns)
  SchedulerCore  a batch of tasks of one job drained against the view, each decision
                 reserving on the view the next one reads: what the Scheduler deployment does
  ... 100 queues the same batch as 100 jobs in 100 queues (grid_serve.queues), half of them
                 already holding some CPUs: every decision picks the queue furthest under its
                 fair share first
  ... full       the same 100 jobs drained against the view with every node full: each task
                 waits, and what is measured is tasks decided per second (a drain on a busy
                 cluster, after each task end, must not cost a pass over every node per job)
The target applies to SchedulerCore, the path every decision of the running app takes;
place() alone (one decision on a view it has never seen) must look at every node and is shown
for reference. Plain Ray has no counterpart here (its scheduler is C++ inside each raylet), so the table
compares against the target instead: >= 20,000 decisions/s at 1,000 nodes for spread and
load_balanced, with one queue and with 100.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace
from types import MappingProxyType

from grid_serve.models import ResourceRequirement, SchedulingRequest, SchedulingStrategy
from grid_serve.scheduling import SchedulerCore
from grid_serve.strategies import place
from grid_serve.view import ClusterView, make_node

from .harness import Report, command_line

TARGET = 20_000
TARGET_NODES = 1000
TARGET_STRATEGIES = (SchedulingStrategy.SPREAD, SchedulingStrategy.LOAD_BALANCED)
STRATEGIES = (SchedulingStrategy.SPREAD, SchedulingStrategy.LOAD_BALANCED,
              SchedulingStrategy.PERFORMANCE_OPTIMIZED, SchedulingStrategy.PACK)


def simulated_view(nodes: int, seed: int = 7) -> ClusterView:
    """`nodes` nodes of 1-16 CPUs, some already loaded, some with measured run times."""
    rng = random.Random(seed)
    views = []
    for i in range(nodes):
        cpus = rng.choice([1, 2, 4, 8, 16])
        busy = rng.randint(0, cpus)
        views.append(make_node(f"node{i:05d}", cpus=cpus, reserved={"CPU": float(busy)}, in_flight=busy,
                               cpu_utilization=rng.random()))
    durations = {(view.node_id, "task"): rng.uniform(0.05, 2.0) for view in views[: nodes // 2]}
    return ClusterView.of(views, durations=durations, admission=2.0)  # as measured in BENCHMARKS.md


QUEUES = 100


def request(strategy: SchedulingStrategy, job: str, index: int, queue: str | None = None) -> SchedulingRequest:
    return SchedulingRequest(task_id=f"{job}-{index}", job_id=job, strategy=strategy,
                             requirements=ResourceRequirement(cpu_count=1.0), queue=queue)


@dataclass(frozen=True)
class Speed:
    nodes: int
    strategy: str
    mode: str  # "place" or "core"
    decisions: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.decisions / self.seconds if self.seconds else 0.0


def place_speed(view: ClusterView, strategy: SchedulingStrategy, budget_s: float) -> Speed:
    """Repeated single decisions on one view until `budget_s` has passed (at least 3)."""
    rng = random.Random(1)
    counts = {node_id: rng.randint(0, 1) for node_id in view.nodes}  # a spread job part-way through
    task = request(strategy, "job", 0)
    done, began = 0, time.process_time()
    while done < 3 or time.process_time() - began < budget_s:
        place(task, view, group_counts=counts)
        done += 1
    return Speed(len(view.nodes), str(strategy), "place", done, time.process_time() - began)


def full(view: ClusterView) -> ClusterView:
    """The view with every node's CPUs reserved."""
    return replace(view, nodes=MappingProxyType({node_id: node.reserve({"CPU": node.free("CPU", view.admission)})
                                                 for node_id, node in view.nodes.items()}))


def core_speed(view: ClusterView, strategy: SchedulingStrategy, batch: int, queues: int = 1,
               mode: str | None = None) -> Speed:
    """`batch` tasks submitted to a fresh SchedulerCore and drained against `view`: one job, or
    (`queues` > 1) one job per queue, half the queues holding some CPUs already. Counts the
    tasks placed, or (`mode` "full") the tasks decided, all of which wait."""
    core = SchedulerCore()
    if queues > 1:
        tasks = [request(strategy, f"job{i % queues}", i, queue=f"q{i % queues}") for i in range(batch)]
        view = replace(view, queue_usage={f"q{q}": {"CPU": float(q % 7)} for q in range(0, queues, 2)})
    else:
        tasks = [request(strategy, "job", i) for i in range(batch)]
    began = time.process_time()
    result = core.submit(tasks, view)
    elapsed = time.process_time() - began
    decided = len(result.placed) if mode is None else len(result.placed) + len(core)
    return Speed(len(view.nodes), str(strategy), mode or ("core" if queues == 1 else "queues"), decided, elapsed)


def measure(sizes: list[int], strategies: tuple[SchedulingStrategy, ...] = STRATEGIES,
            budget_s: float = 0.3, batch: int = 200, repeats: int = 1) -> list[Speed]:
    """Both measures for every (size, strategy), the median of `repeats` runs each; the
    harness function the smoke test runs."""
    speeds = []
    median = lambda runs: sorted(runs, key=lambda s: s.per_second)[len(runs) // 2]  # noqa: E731
    for nodes in sizes:
        view = simulated_view(nodes)
        for strategy in strategies:
            place(request(strategy, "warm", 0), view)  # warm-up: memos, caches
            speeds.append(median([place_speed(view, strategy, budget_s) for _ in range(repeats)]))
            speeds.append(median([core_speed(view, strategy, batch) for _ in range(repeats)]))
            speeds.append(median([core_speed(view, strategy, batch, QUEUES) for _ in range(repeats)]))
            speeds.append(median([core_speed(full(view), strategy, batch, QUEUES, "full") for _ in range(repeats)]))
    return speeds


def report(speeds: list[Speed]) -> Report:
    sizes = sorted({s.nodes for s in speeds})
    table = Report("Decision speed (pure core, decisions per CPU-second, median of repeats; "
                   "no plain-Ray counterpart)",
                   ["strategy", "measure", *[f"{n:,} nodes" for n in sizes]])
    by_key = {(s.strategy, s.mode, s.nodes): s for s in speeds}
    for strategy in dict.fromkeys(s.strategy for s in speeds):
        for mode, label in (("place", "place()"), ("core", "SchedulerCore batch"),
                            ("queues", f"SchedulerCore batch, {QUEUES} queues"),
                            ("full", f"... every node full ({QUEUES} jobs wait)")):
            table.add(strategy, label, *[f"{by_key[(strategy, mode, n)].per_second:,.0f}" for n in sizes])
    for strategy in TARGET_STRATEGIES:  # the target is on the path the Scheduler decides by
        for mode, queues in (("core", "1 queue"), ("queues", f"{QUEUES} queues")):
            speed = by_key.get((str(strategy), mode, TARGET_NODES))
            if speed:
                table.target(speed.per_second >= TARGET,
                             f"{strategy} SchedulerCore at {TARGET_NODES:,} nodes, {queues}: "
                             f"{speed.per_second:,.0f}/s ({speed.per_second / TARGET:.2f}× the {TARGET:,}/s target)")
    table.data = {"speeds": [s.__dict__ | {"per_second": s.per_second} for s in speeds]}
    return table


def run(quick: bool) -> Report:
    sizes = [10, 100, 1000] if quick else [10, 100, 1000, 10_000]
    return report(measure(sizes, budget_s=0.05 if quick else 0.3, batch=100 if quick else 500,
                          repeats=1 if quick else 3))


if __name__ == "__main__":
    print(run(command_line(__doc__).quick).render())
