"""Every example runs against the test cluster and prints what the user guide promises."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, base_url: str, cluster_address: str) -> dict[str, str]:
    env = {**os.environ, "GRID_ADDRESS": base_url, "RAY_ADDRESS": cluster_address}
    done = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    lines = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(": ")
        lines[key] = value
    return lines


def test_user_guide_patterns(base_url: str, cluster_address: str) -> None:
    out = run_example("ray_task_distribution.py", base_url, cluster_address)
    assert sorted(ast.literal_eval(out["spread 100"]).values()) == [33, 33, 34]
    assert ast.literal_eval(out["node_specific gpu1"]) == {"gpu1": 50}
    assert ast.literal_eval(out["node_specific gpu2"]) == {"gpu2": 50}
    assert out["gpu 6"].startswith("{'gpu1': 3, 'gpu2': 3}")
    assert sum(ast.literal_eval(out["mixed cpu spread"]).values()) == 20
    mixed_gpu = ast.literal_eval(out["mixed gpu"])
    assert sum(mixed_gpu.values()) == 3 and set(mixed_gpu) <= {"gpu1", "gpu2"}
    assert out["mixed all succeeded"] == "33 of 33"
    ran_on, decided = out["intelligent scheduler ran on"].split(" (decided ")
    assert ran_on in ("gpu1", "gpu2") and decided == ran_on + ")"
    assert sum(ast.literal_eval(out["dynamic balancer"]).values()) == 12
    assert len(ast.literal_eval(out["dynamic balancer"])) == 3
    constrained = ast.literal_eval(out["constrained (2 CPU, 1 GPU, 1000 MB)"])
    assert sum(constrained.values()) == 2 and set(constrained) <= {"gpu1", "gpu2"}
    assert out["placement group bundles"].endswith("distinct=True")
    assert out["cluster CPUs"].startswith("6.0")
    assert "all patterns done" in out
    assert {f"grid node {name}" for name in ("gpu-master", "gpu1", "gpu2")} <= set(out)
    # the same snippets through grid.remote, where each call reported its own node
    assert sorted(ast.literal_eval(out["grid.remote spread 100"]).values()) == [33, 33, 34]
    assert out["grid.remote gpu 6"] == "{'gpu1': 3, 'gpu2': 3} one gpu each=True"
    mixed, gpu_nodes = out["grid.remote mixed"].split(", gpu on ")
    assert mixed == "33 of 33" and set(ast.literal_eval(gpu_nodes)) <= {"gpu1", "gpu2"}
    assert ast.literal_eval(out["grid.remote node_specific gpu1"]) == {"gpu1": 10}


def test_http_client_example(base_url: str, cluster_address: str) -> None:
    out = run_example("http_client.py", base_url, cluster_address)
    assert out["health"] == "ok"
    assert sorted(ast.literal_eval(out["spread 30"]).values()) == [10, 10, 10]
    assert "succeeded, 6 succeeded" in next(v for k, v in out.items() if k.startswith("job "))
    assert "(422, field node)" in next(k for k in out if k.startswith("rejected"))


def test_handle_client_example(base_url: str, cluster_address: str) -> None:
    out = run_example("handle_client.py", base_url, cluster_address)
    assert out["word counts"] == "[4, 2, 3, 2, 2, 1]"
    assert sorted(ast.literal_eval(out["per node"]).values()) == [2, 2, 2]
