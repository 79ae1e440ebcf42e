"""grid-serve's metrics on a real Prometheus (Debian's `prometheus`), and the Grafana dashboard
`deploy/grafana/grid-serve.json` read against it: the way a user watches the app.

Prometheus scrapes the test cluster's nodes at Ray's own metrics endpoints (each node's
`MetricsExportPort`, loopback), listens on loopback, and keeps its data under the test's tmp
path. Ray's metrics agent exports every few seconds, so each check polls (no timing asserted).
The binary comes from the system (`apt-get install prometheus`; `.ci/run` installs it);
GRID_PROMETHEUS names another one.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import ray
import yaml

from grid_serve.client import GridClient
from grid_serve.local_cluster import free_port
from grid_serve.models import TaskPriority
from tests.test_api import wait_idle
from tests.test_metrics_integration import live_cluster
from tests.test_ownership_faults import eventually

pytestmark = pytest.mark.cluster

PROMETHEUS = os.environ.get("GRID_PROMETHEUS", "/usr/bin/prometheus")
DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "grid-serve.json"
NODES = ("gpu-master", "gpu1", "gpu2")


@pytest.fixture(scope="module")
def prometheus(base_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A Prometheus scraping every live node of the test cluster each second."""
    if not Path(PROMETHEUS).exists():
        message = f"no prometheus at {PROMETHEUS}: apt-get install -y prometheus (or set GRID_PROMETHEUS)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    home = tmp_path_factory.mktemp("prometheus")
    targets = [f"127.0.0.1:{node['MetricsExportPort']}" for node in ray.nodes() if node["Alive"]]
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "scrape_configs": [{"job_name": "ray", "static_configs": [{"targets": targets}]}]}
    (home / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (home / "prometheus.log").open("w")
    process = subprocess.Popen([PROMETHEUS, f"--config.file={home / 'prometheus.yml'}",
                                f"--storage.tsdb.path={home / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                                "--storage.tsdb.retention.time=1h", "--log.level=warn"],
                               stdout=log, stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        def ready() -> bool:
            assert process.poll() is None, (home / "prometheus.log").read_text()[-2000:]
            try:
                return client.get("/-/ready").status_code == 200
            except httpx.TransportError:
                return False

        eventually(ready, timeout_s=60, what="prometheus ready")
        yield client
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=20)
        log.close()


def query(prometheus: httpx.Client, promql: str) -> list[dict[str, Any]]:
    """An instant query through Prometheus's HTTP API: its result vector."""
    answer = prometheus.get("/api/v1/query", params={"query": promql}).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def per_label(prometheus: httpx.Client, promql: str, label: str) -> dict[str, float]:
    return {series["metric"].get(label, ""): float(series["value"][1]) for series in query(prometheus, promql)}


def test_placements_queue_and_node_load_are_queried_through_prometheus_with_their_labels(
        prometheus: httpx.Client, http: httpx.Client, client: GridClient) -> None:
    """A 9-task high-priority spread job: its placements show up per node, strategy and priority
    exactly (3 more on each node), the queue per priority and each node's CPU too."""
    live_cluster(http)
    wait_idle(client)
    placed = 'sum by (node) (ray_grid_placements_total{strategy="spread", priority="high"})'
    eventually(lambda: query(prometheus, "ray_grid_queue_length"), what="the app's first series scraped")
    time.sleep(3)  # a scrape or two after the last export: what came before the job is in
    before = per_label(prometheus, placed, "node")
    job = client.submit_job({"task": "noop", "count": 9, "strategy": "spread", "priority": "high", "wait": True})
    assert job.state == "succeeded" and sorted(job.per_node.values()) == [3, 3, 3]

    def grew() -> dict[str, float] | None:
        now = per_label(prometheus, placed, "node")
        growth = {node: now.get(node, 0.0) - before.get(node, 0.0) for node in NODES}
        return growth if sum(growth.values()) >= 9 else None

    assert eventually(grew, timeout_s=120, what="the job's placements scraped") == {node: 3.0 for node in NODES}
    queue = per_label(prometheus, "sum by (priority) (ray_grid_queue_length)", "priority")
    assert set(queue) == {str(priority) for priority in TaskPriority}, queue
    cpu = per_label(prometheus, "max by (node) (ray_grid_node_cpu_percent)", "node")
    assert set(NODES) <= set(cpu) and all(0 <= cpu[node] <= 100 for node in NODES), cpu
    waits = query(prometheus, 'ray_grid_queue_wait_seconds_count{strategy="spread", priority="high"}')
    assert waits, "the queue-wait histogram carries strategy and priority"


def test_every_panel_of_the_grafana_dashboard_returns_data_after_a_job(
        prometheus: httpx.Client, http: httpx.Client, client: GridClient) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert variables == {"datasource", "SessionName"}
    targets = [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in dashboard["panels"])
    assert len(dashboard["panels"]) == 12 and len(targets) == 17
    live_cluster(http)
    spec = {"task": "sleep_task", "args": [[i, 0.05] for i in range(12)], "strategy": "load_balanced",
            "priority": "low", "wait": True}
    # A series Prometheus first sees after its first observations has no increase to rate: one
    # job makes the series (or adds to it), and once Prometheus has its waits, a second one is
    # what the panels show. Counted, not just looked for: a Scheduler replica killed by an
    # earlier test leaves its series behind, with the same labels and no new samples
    waits = 'ray_grid_queue_wait_seconds_count{strategy="load_balanced", priority="low"}'

    def waited() -> dict[frozenset, float]:  # per series: a replica's own, by its labels
        return {frozenset(series["metric"].items()): float(series["value"][1]) for series in query(prometheus, waits)}

    before = waited()
    assert client.submit_job(spec).state == "succeeded"
    eventually(lambda: any(count >= before.get(labels, 0.0) + 12 for labels, count in waited().items()),
               timeout_s=120, what="the first job's waits scraped")
    assert client.submit_job(spec).state == "succeeded"

    def empty_panels() -> list[str]:
        empty = []
        for title, expr in targets:
            values = [float(series["value"][1]) for series in query(prometheus, expr.replace("$SessionName", ".*"))]
            if not any(math.isfinite(value) for value in values):  # a quantile of nothing is NaN
                empty.append(f"{title}: {expr}")
        return empty

    deadline = time.monotonic() + 120
    while left := empty_panels():
        assert time.monotonic() < deadline, f"panels with no data after 120 s: {left}"
        time.sleep(1.0)
    sessions = query(prometheus, "count by (SessionName) (ray_grid_queue_length)")
    assert sessions and all(series["metric"].get("SessionName") for series in sessions), sessions
