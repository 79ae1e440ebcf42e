"""Probes, live figures, learned performance and exported metrics on the real 3-node cluster.

CPU and memory figures are this machine's real numbers (all three raylets share it); NVML
finds no driver here, so every node reports no GPUs and says why.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import httpx
import psutil
import pytest
import ray

from grid_serve.models import MB, ClusterStatus, JobSubmission
from grid_serve.tasks import slow_on_node

pytestmark = pytest.mark.cluster


def live_cluster(http: httpx.Client, timeout_s: float = 120) -> ClusterStatus:
    """/v1/cluster once every alive node's probe has answered."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = ClusterStatus.model_validate(http.get("/v1/cluster").json())
        if all(node.sampled_at is not None for node in status.nodes if node.alive):
            return status
        assert time.monotonic() < deadline, f"probes never answered: {status}"
        time.sleep(0.5)


def test_every_node_reports_live_figures_from_its_probe(http: httpx.Client) -> None:
    first = live_cluster(http)
    assert {node.name for node in first.nodes} == {"gpu-master", "gpu1", "gpu2"}
    cores, memory_mb = psutil.cpu_count(), psutil.virtual_memory().total / MB
    for node in first.nodes:
        assert node.alive and not node.stale, node
        assert node.cpu_count == cores and len(node.cpu_percent_per_core) == cores
        assert node.cpu_percent is not None and 0.0 <= node.cpu_percent <= 100.0
        assert node.memory_total_mb == pytest.approx(memory_mb, rel=1e-3)
        assert node.memory_percent is not None and 0.0 < node.memory_percent < 100.0
        assert node.swap_percent is not None and node.load_avg is not None and len(node.load_avg) == 3
        assert node.gpus == [] and node.gpu_note is not None and node.gpu_note.startswith("NVML")
    sampled = {node.name: node.sampled_at for node in first.nodes}
    deadline = time.monotonic() + 60
    while True:  # the figures keep coming: every node's sample is replaced by a newer one
        later = {node.name: node.sampled_at for node in live_cluster(http).nodes}
        if all(later[name] > sampled[name] for name in sampled):  # type: ignore[operator]
            break
        assert time.monotonic() < deadline, f"samples did not refresh: {sampled} -> {later}"
        time.sleep(0.5)


def alive_probes(cluster_address: str) -> list:
    from ray.util.state import list_actors

    return list_actors(address=cluster_address, filters=[("class_name", "=", "NodeProbe"), ("state", "=", "ALIVE")])


def test_one_probe_actor_runs_pinned_on_each_node(http: httpx.Client, cluster_address: str) -> None:
    live_cluster(http)
    probes = alive_probes(cluster_address)
    alive_nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert sorted(probe.node_id for probe in probes) == sorted(alive_nodes)


def test_probe_fleet_follows_nodes_joining_and_leaving(cluster_address: str) -> None:
    """The fleet the MetricsCollector uses, driven directly: a node that leaves loses its
    probe, one that (re)joins gets a new one, and each answer comes from its own node."""
    from deployments.probes import ProbeFleet

    node_ids = sorted(node["NodeID"] for node in ray.nodes() if node["Alive"])
    fleet = ProbeFleet(stale_after_s=60.0)

    async def collect_all(expected: set[str], timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(fleet.reading(node_id)[0] is not None for node_id in expected):
            assert time.monotonic() < deadline, "probes did not answer"
            await fleet.collect(wait_s=1.0)

    def my_probes() -> list[str]:
        mine = {member.actor._actor_id.hex() for member in fleet._members.values()}
        return sorted(actor.node_id for actor in alive_probes(cluster_address) if actor.actor_id in mine)

    try:
        fleet.sync(set(node_ids))
        asyncio.run(collect_all(set(node_ids)))
        assert my_probes() == node_ids
        leaving = node_ids[-1]
        fleet.sync(set(node_ids[:-1]))
        assert fleet.reading(leaving) == (None, None, False)
        deadline = time.monotonic() + 60
        while my_probes() != node_ids[:-1]:
            assert time.monotonic() < deadline, "the dropped probe is still alive"
            time.sleep(0.5)
        fleet.sync(set(node_ids))
        asyncio.run(collect_all({leaving}))
        sample, sampled_at, stale = fleet.reading(leaving)
        assert sample is not None and sampled_at is not None and not stale
    finally:
        fleet.shutdown()


def test_performance_optimized_moves_work_away_from_a_slow_node(http: httpx.Client) -> None:
    """gpu2 sleeps 20× longer than the others. Before any measurement the prior spreads the
    first batch over all three nodes; once those completions are in, later batches avoid gpu2
    while the fast nodes have room (4 tasks, 4 free CPUs on them: nothing forces gpu2).
    Where each task ran is read from inside the task."""
    from ray import serve

    ingress = serve.get_app_handle("grid")
    label = f"slow-node-{uuid.uuid4().hex[:8]}"  # a task type no earlier test has taught the ledger

    def run_batch() -> Counter:
        spec = JobSubmission(task=label, strategy="performance_optimized", wait=True, timeout_s=300,
                             args=[{"task_id": i, "node": "gpu2", "slow_s": 1.0, "fast_s": 0.05} for i in range(4)])
        status = ingress.submit_job.remote(spec, slow_on_node).result(timeout_s=300)
        assert status.state == "succeeded", status
        return Counter(outcome.result["node"] for outcome in status.results)

    live_cluster(http)
    first = run_batch()
    assert first["gpu2"] >= 1, f"with no measurements yet the prior should spread: {first}"
    later = run_batch() + run_batch()
    assert later["gpu2"] == 0, f"work should have moved off the slow node: first {first}, later {later}"
    assert sum(later.values()) == 8


def test_metrics_reach_rays_prometheus_endpoint(http: httpx.Client) -> None:
    """Ray exports each process's metrics through its node's metrics agent (prefixed `ray_`),
    every few seconds: poll until this test's placements and every node's figures are there."""
    live_cluster(http)
    queued = http.post("/v1/jobs", json={"task": "sleep_task", "args": [[0, 2.0]], "queue": "metrics-q"})
    assert queued.status_code == 202, queued.text  # runs past a tick: its queue's series are set
    assert http.post("/v1/jobs", json={"task": "noop", "count": 3, "strategy": "pack", "wait": True}).status_code == 200
    ports = [node["MetricsExportPort"] for node in ray.nodes() if node["Alive"]]

    def exported() -> dict[str, list[str]]:
        lines: dict[str, list[str]] = {}
        for port in ports:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            except httpx.HTTPError:
                continue
            for line in text.splitlines():
                if line.startswith("ray_grid_"):
                    lines.setdefault(line.split("{", 1)[0].split(" ", 1)[0], []).append(line)
        return lines

    def missing(lines: dict[str, list[str]]) -> list[str]:
        gaps = [name for name in ("ray_grid_queue_length", "ray_grid_decision_latency_seconds_bucket",
                                  "ray_grid_node_memory_percent") if name not in lines]
        if not any('strategy="pack"' in line for line in lines.get("ray_grid_placements_total", [])):
            gaps.append("ray_grid_placements_total{strategy=pack}")
        for series in ("ray_grid_queue_running", "ray_grid_queue_share", "ray_grid_queue_fair_share"):
            if not any('queue="metrics-q"' in line for line in lines.get(series, [])):
                gaps.append(f"{series}{{queue=metrics-q}}")
        if not any('queue="quota-a"' in line and 'resource="CPU"' in line
                   for line in lines.get("ray_grid_queue_borrowed", [])):  # a queue with a quota: always set
            gaps.append("ray_grid_queue_borrowed{queue=quota-a,resource=CPU}")
        for node in ("gpu-master", "gpu1", "gpu2"):
            if not any(f'node="{node}"' in line for line in lines.get("ray_grid_node_cpu_percent", [])):
                gaps.append(f"ray_grid_node_cpu_percent{{node={node}}}")
        return gaps

    deadline = time.monotonic() + 120
    while gaps := missing(exported()):
        assert time.monotonic() < deadline, f"not exported after 120 s: {gaps}"
        time.sleep(2)
