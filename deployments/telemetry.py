"""The figures grid-serve exports through `ray.util.metrics`, so Ray's Prometheus endpoint
carries them (prefixed `ray_`): node load from the probes, and the Scheduler's placements,
queue and decision latency.

The metric objects live here, in the Serve layer: the pure core only produces the numbers.
Each deployment makes its own instance in its replica (metric objects are per process).
"""

from __future__ import annotations

import collections

from ray.util.metrics import Counter, Gauge, Histogram

from grid_serve.models import NodeStatus, QueueStatus, SchedulingDecision, TaskPriority

_SECONDS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300]


class NodeMetrics:
    """Per-node gauges, set by the MetricsCollector at every refresh."""

    def __init__(self) -> None:
        node = ("node",)
        gpu = ("node", "gpu")
        self.alive = Gauge("grid_node_alive", "1 if Ray reports the node alive and its probe answers", node)
        self.cpu = Gauge("grid_node_cpu_percent", "node CPU utilisation, mean over cores (0-100)", node)
        self.memory = Gauge("grid_node_memory_percent", "node memory in use (0-100)", node)
        self.swap = Gauge("grid_node_swap_percent", "node swap in use (0-100)", node)
        self.load1 = Gauge("grid_node_load1", "node 1-minute load average", node)
        self.gpu_util = Gauge("grid_gpu_utilization_percent", "GPU utilisation from NVML (0-100)", gpu)
        self.gpu_memory_used = Gauge("grid_gpu_memory_used_mb", "GPU memory in use from NVML, MB", gpu)
        self.gpu_memory_total = Gauge("grid_gpu_memory_total_mb", "GPU memory from NVML, MB", gpu)
        self.gpu_temperature = Gauge("grid_gpu_temperature_c", "GPU temperature from NVML, Celsius", gpu)
        self.gpu_power = Gauge("grid_gpu_power_w", "GPU power draw from NVML, watts", gpu)

    def record(self, nodes: list[NodeStatus]) -> None:
        for node in nodes:
            tags = {"node": node.name}
            self.alive.set(1.0 if node.alive and not node.stale else 0.0, tags)
            _set(self.cpu, node.cpu_percent, tags)
            _set(self.memory, node.memory_percent, tags)
            _set(self.swap, node.swap_percent, tags)
            _set(self.load1, node.load_avg[0] if node.load_avg else None, tags)
            for gpu in node.gpus:
                gpu_tags = {"node": node.name, "gpu": str(gpu.index)}
                _set(self.gpu_util, gpu.utilization_pct, gpu_tags)
                _set(self.gpu_memory_used, gpu.memory_used_mb, gpu_tags)
                _set(self.gpu_memory_total, gpu.memory_total_mb, gpu_tags)
                _set(self.gpu_temperature, gpu.temperature_c, gpu_tags)
                _set(self.gpu_power, gpu.power_w, gpu_tags)


class SchedulerMetrics:
    """Placements, queue and decision latency, recorded by the Scheduler."""

    def __init__(self) -> None:
        self.placements = Counter("grid_placements_total", "tasks placed, per node, strategy and priority",
                                  ("node", "strategy", "priority"))
        self.queue_length = Gauge("grid_queue_length", "tasks waiting in the Scheduler's queue for capacity, "
                                  "per priority", ("priority",))
        self.queue_wait = Histogram("grid_queue_wait_seconds", "time a task waited in the queue before placement",
                                    _SECONDS, ("strategy", "priority"))
        queue = ("queue",)
        self.queue_waiting = Gauge("grid_queue_waiting", "tasks waiting per queue (grid_serve.queues), all "
                                   "priorities", queue)
        self.queue_running = Gauge("grid_queue_running", "tasks of the queue placed and not yet ended", queue)
        self.queue_share = Gauge("grid_queue_share", "the queue's dominant share: the largest fraction of any "
                                 "resource its running tasks hold (0-1)", queue)
        self.queue_fair_share = Gauge("grid_queue_fair_share", "what the queue's weight entitles it to among the "
                                      "queues with work (0-1)", queue)
        self.queue_oldest_wait = Gauge("grid_queue_oldest_wait_seconds", "how long the queue's oldest waiting "
                                       "task has waited", queue)
        self.queue_borrowed = Gauge("grid_queue_borrowed", "what a queue with a quota holds beyond it, per resource "
                                    "(Ray's names and units): capacity other queues lent", ("queue", "resource"))
        self._queues_shown: set[str] = set()  # queues with series: set to 0 once when their work ends
        self.decision_latency = Histogram("grid_decision_latency_seconds",
                                          "time to decide one task's placement (a drain pass over its tasks)",
                                          _SECONDS)

    def record_drain(self, placed: list[tuple[SchedulingDecision, TaskPriority]], decided: int, elapsed_s: float,
                     queue: list[tuple[TaskPriority, int, float]]) -> None:
        """One drain pass: what it placed (with each task's priority), how many tasks it decided
        on, how long it took, and what waits after it (`SchedulerCore.waiting_by_priority`)."""
        counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        for decision, priority in placed:
            strategy = str(decision.strategy)
            counts[decision.node_name, strategy, str(priority)] += 1
            self.queue_wait.observe(decision.waited_s, {"strategy": strategy, "priority": str(priority)})
        for (node, strategy, priority), count in counts.items():  # one call per kind: each crosses into Ray's metrics
            self.placements.inc(float(count), {"node": node, "strategy": strategy, "priority": priority})
        if decided:
            self.decision_latency.observe(elapsed_s / decided)
        self.record_queue(queue)

    def record_queue(self, queue: list[tuple[TaskPriority, int, float]]) -> None:
        """Tasks waiting per priority, every priority (0 when none waits), so a sum is always whole."""
        waiting = {priority: count for priority, count, _ in queue}
        for priority in TaskPriority:
            self.queue_length.set(float(waiting.get(priority, 0)), {"priority": str(priority)})


    def record_queues(self, queues: list[QueueStatus]) -> None:
        """Each queue's figures; a queue whose work ended reads 0 once, then is left alone (a
        caller's queue is named after its Ray job: they come and go)."""
        shown = set()
        for queue in queues:
            for resource in queue.quota:  # configured queues only: a bounded set of series, always set
                self.queue_borrowed.set(queue.borrowed.get(resource, 0.0), {"queue": queue.name, "resource": resource})
            if not (queue.waiting or queue.running) and queue.name not in self._queues_shown:
                continue
            tags = {"queue": queue.name}
            self.queue_waiting.set(float(sum(queue.waiting.values())), tags)
            self.queue_running.set(float(queue.running), tags)
            self.queue_share.set(queue.share, tags)
            self.queue_fair_share.set(queue.fair_share, tags)
            self.queue_oldest_wait.set(queue.oldest_wait_s, tags)
            if queue.waiting or queue.running:
                shown.add(queue.name)
        for name in self._queues_shown - {queue.name for queue in queues}:
            for gauge in (self.queue_waiting, self.queue_running, self.queue_share, self.queue_fair_share,
                          self.queue_oldest_wait):
                gauge.set(0.0, {"queue": name})
        self._queues_shown = shown


def _set(gauge: Gauge, value: float | None, tags: dict[str, str]) -> None:
    if value is not None:
        gauge.set(float(value), tags)
