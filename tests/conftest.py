"""One real multi-node Ray cluster (3 raylets labelled gpu-master, gpu1, gpu2; one logical GPU
on each worker) with the grid app deployed, shared by the whole test session.

Pure unit tests never touch it: only tests that ask for a cluster fixture start it.
"""

from __future__ import annotations

import datetime
import os
import re
import sys
from pathlib import Path
from typing import Iterator

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from grid_serve.client import GridClient  # noqa: E402
from grid_serve.local_cluster import LocalNode, deploy_app, free_port, start_cluster  # noqa: E402

GiB = 1024**3
TEST_NODES = [
    LocalNode("gpu-master", num_cpus=2, num_gpus=0, memory_bytes=4 * GiB, head=True),
    LocalNode("gpu1", num_cpus=2, num_gpus=1, memory_bytes=4 * GiB, head=False),
    LocalNode("gpu2", num_cpus=2, num_gpus=1, memory_bytes=4 * GiB, head=False),
]

# Ray marks a killed raylet dead after its health checks fail: about 15 s by default, ~3 s here
# (a live but busy raylet still has 3 x 5 s to answer).
FAST_NODE_DEATH = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000,
                   "health_check_timeout_ms": 5000, "health_check_failure_threshold": 3}


# Low enough that tests/test_limits.py reaches each one; no other test comes near them.
TEST_LIMITS = {"max_queued_tasks": 5000, "max_waiting_requests": 20, "max_schedule_waits": 5,
               "max_schedule_held": 16,  # above the 12 that test_limits' waiting test holds or queues at once
               "results_bytes_kept": 2_000_000}
# Queues with quotas, for tests/test_quotas_cluster.py (no other test's queue has one, so none
# of them is served differently).
TEST_QUEUES = {"quota-a": {"quota": {"CPU": 2}}, "quota-b": {"quota": {"CPU": 4}},
               "reclaim-b": {"quota": {"CPU": 4}, "reclaim": "cancel_running"}}
# The tokens (two identities) of the second app tests/test_access.py deploys: raylets (and so
# replicas) inherit them.
os.environ.setdefault("GRID_TEST_TOKEN", "alice=test-token-0123,bob=test-token-4567")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[object]:
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    cluster = start_cluster(TEST_NODES, FAST_NODE_DEATH)
    yield cluster
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="session")
def base_url(ray_cluster: object) -> str:
    url = deploy_app(free_port(), {"metrics_interval_s": 0.5, "ingress_replicas": 2, "limits": TEST_LIMITS,
                                  "queues": TEST_QUEUES})
    os.environ["GRID_ADDRESS"] = url
    return url


@pytest.fixture(scope="session")
def cluster_address(ray_cluster: object) -> str:
    return ray_cluster.address  # type: ignore[attr-defined]


@pytest.fixture()
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120) as client:
        yield client


@pytest.fixture()
def client(base_url: str) -> Iterator[GridClient]:
    with GridClient(base_url, timeout_s=120) as grid:
        yield grid


# What the app said while a cluster test failed: CI shows only pytest's output, and the cause of
# a rare failure (a lapsed lease, a replica restarted, a retried call) is in the replicas' logs.
APP_LOG_LINES_PER_FILE = 15


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and "ray_cluster" in getattr(item, "fixturenames", ()):
        report.sections.append(("grid-serve warnings during the test", _app_warnings_since(call.start)))


def _app_warnings_since(started: float) -> str:
    """The last WARNING and ERROR lines of each app log written since `started`."""
    import ray

    if not ray.is_initialized():
        return "(Ray is not running)"
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    shown: list[str] = []
    for path in sorted([*logs.glob("serve/*.log"), *logs.glob("worker-*.err")]):  # the replicas', the runners'
        if path.stat().st_mtime < started:
            continue
        with path.open(errors="replace") as text:
            lines = [line.rstrip() for line in text if _is_warning(line) and _logged_at(line) >= started - 1.0]
        shown.extend(f"{path.relative_to(logs)}: {line}" for line in lines[-APP_LOG_LINES_PER_FILE:])
    return "\n".join(shown) or f"(no warnings in {logs})"


def _is_warning(line: str) -> bool:
    """Ray's lines start "<time>\tWARNING", Serve's "WARNING <time>"."""
    head = line[:40]
    return "WARNING" in head or "ERROR" in head


def _logged_at(line: str) -> float:
    """When a log line was written (its own timestamp, local time); 0 when it has none."""
    found = re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line[:60])
    return datetime.datetime.strptime(found.group(), "%Y-%m-%d %H:%M:%S").timestamp() if found else 0.0
