"""The real `grid` entry point, run as a subprocess against the test cluster's app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grid_serve.local_cluster import free_port
from grid_serve.placement import STRATEGIES, SUMMARIES

GRID = [sys.executable, "-m", "grid_serve.cli"]


def grid(*args: str, address: str | None = None, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    environment = {**os.environ, **(env or {})}
    if address:
        environment["GRID_ADDRESS"] = address
    return subprocess.run([*GRID, *args], capture_output=True, text=True, timeout=timeout, env=environment)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("grid: error: "), done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    return lines[0]


@pytest.mark.cluster
def test_spread_table_shows_34_33_33(base_url: str) -> None:
    done = grid("distribute", "test", "--strategy", "spread", "--tasks", "100", address=base_url)
    assert done.returncode == 0, done.stderr
    rows = {line.split("│")[1].strip(): line.split("│")[3].strip() for line in done.stdout.splitlines()
            if line.startswith("│") and line.split("│")[1].strip() in ("gpu-master", "gpu1", "gpu2")}
    assert sorted(rows.values()) == ["33", "33", "34"]
    assert "100 succeeded, 0 failed" in done.stdout


@pytest.mark.cluster
def test_node_specific_json_puts_all_50_on_gpu1(base_url: str) -> None:
    done = grid("distribute", "test", "--strategy", "node_specific", "--node", "gpu1", "--tasks", "50", "--json",
                address=base_url)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["per_node"] == [{"node": "gpu1", "ip": report["per_node"][0]["ip"], "tasks": 50, "share": 100.0}]
    assert report["state"] == "succeeded" and report["tasks"] == 50


@pytest.mark.cluster
def test_status_lists_three_alive_nodes(base_url: str) -> None:
    done = grid("distribute", "status", "--json", address=base_url)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert sorted(node["name"] for node in status["nodes"] if node["alive"]) == ["gpu-master", "gpu1", "gpu2"]
    assert status["health"]["status"] == "ok"
    table = grid("distribute", "status", address=base_url)
    assert table.returncode == 0 and table.stdout.count(" yes ") == 3


@pytest.mark.cluster
def test_unknown_node_is_usage_error_naming_the_valid_ones(base_url: str) -> None:
    done = grid("distribute", "test", "--strategy", "node_specific", "--node", "gpu9", "--tasks", "5", address=base_url)
    assert done.returncode == 2
    assert "unknown node 'gpu9'; known nodes: gpu-master, gpu1, gpu2" in one_line_error(done)


@pytest.mark.cluster
def test_explain_prints_one_tasks_decision_in_full(base_url: str) -> None:
    ran = grid("distribute", "test", "--strategy", "node_specific", "--node", "gpu1", "--tasks", "3", "--json",
               address=base_url)
    job_id = json.loads(ran.stdout)["job_id"]
    done = grid("explain", job_id, "1", address=base_url)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"{job_id}-1 (compute_task, normal priority) -> gpu1 by node_specific, score 1.000")
    assert lines[1].startswith("  node_specific: 'gpu1' is gpu1 (")
    assert any(line.split() == ["│", "named", "node", "│", "1.000", "│"] for line in lines), done.stdout
    record = json.loads(grid("explain", job_id, "1", "--json", address=base_url).stdout)
    assert record["task_id"] == f"{job_id}-1" and record["node"] == "gpu1"
    assert record["explanation"]["winner"] == {"node": "gpu1", "score": 1.0, "scores": {"named node": 1.0}}
    assert record["explanation"]["runner_up"] is None and record["explanation"]["passed_over"] == []
    assert record["reasons"][0] == record["explanation"]["summary"]
    latest = json.loads(grid("explain", job_id, "--json", address=base_url).stdout)
    assert latest["task_id"].startswith(f"{job_id}-")


@pytest.mark.cluster
@pytest.mark.parametrize("args, words", [
    (("nosuchjob",), "nosuchjob"),
    (("{job}", "7"), "task 7 of job {job} has no decision kept (kept: tasks 0-2, 3 of them"),
    (("{job}", "-1"), "-1"),
    (("{job}", "one"), "Invalid value for 'task_index'"),
])
def test_explain_bad_input_is_one_line_and_exit_2(base_url: str, args: tuple[str, ...], words: str) -> None:
    ran = grid("distribute", "test", "--strategy", "node_specific", "--node", "gpu2", "--tasks", "3", "--json",
               address=base_url)
    job_id = json.loads(ran.stdout)["job_id"]
    done = grid("explain", *[arg.format(job=job_id) for arg in args], address=base_url)
    assert done.returncode == 2
    assert words.format(job=job_id) in one_line_error(done)


def test_unknown_strategy_is_usage_error_naming_the_choices() -> None:
    done = grid("distribute", "test", "--strategy", "fastest")
    assert done.returncode == 2
    line = one_line_error(done)
    assert "'fastest' is not one of 'spread', 'load_balanced', 'performance_optimized', 'node_specific', 'pack'" in line


def test_unreachable_address_is_one_line_and_exit_1() -> None:
    port = free_port()
    done = grid("distribute", "status", "--address", f"http://127.0.0.1:{port}")
    assert done.returncode == 1
    assert f"not reachable at http://127.0.0.1:{port}" in one_line_error(done)


@pytest.mark.cluster
def test_strategies_lists_what_the_strategy_modules_declare(base_url: str) -> None:
    listed = json.loads(grid("strategies", "--json", address=base_url).stdout)
    assert [(s["name"], s["summary"]) for s in listed] == list(SUMMARIES.items())
    done = grid("strategies", address=base_url)
    assert done.returncode == 0, done.stderr
    assert [name.lower() for name in STRATEGIES if name.lower() in done.stdout] == [n.lower() for n in STRATEGIES]
    assert "`grid strategies`" in " ".join(grid("distribute", "test", "--help").stdout.split())


def test_help_explains_with_examples() -> None:
    done = grid("distribute", "test", "--help")
    assert done.returncode == 0
    assert "Example: grid distribute test --strategy spread --tasks 100" in " ".join(done.stdout.split())


@pytest.mark.cluster
def test_validate_passes_against_the_test_cluster(base_url: str, tmp_path: Path) -> None:
    config = tmp_path / "cluster.yaml"
    config.write_text(TEST_CLUSTER_YAML)
    done = grid("validate", "--config", str(config), address=base_url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASS") == 12 and "all 12 checks passed" in done.stdout


@pytest.mark.cluster
def test_validate_fails_on_a_missing_node(base_url: str, tmp_path: Path) -> None:
    config = tmp_path / "cluster.yaml"
    config.write_text(TEST_CLUSTER_YAML + "  - {name: gpu3, host: gpu3, cpu_count: 2, memory_gb: 4}\n")
    done = grid("validate", "--config", str(config), address=base_url)
    assert done.returncode == 1
    assert "FAIL  node gpu3: no Ray node has the label grid.io/node=gpu3" in done.stdout
    assert "1 of 13 checks failed" in one_line_error(done)


@pytest.mark.cluster
def test_up_and_down_a_local_cluster(tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text("nodes:\n"
                      "  - {name: head, host: head, role: master, cpu_count: 1, memory_gb: 2}\n"
                      "  - {name: worker, host: worker, cpu_count: 1, gpu_count: 1, memory_gb: 2}\n")
    env = {"GRID_HOME": str(tmp_path / "home")}
    port = free_port()
    address = f"http://127.0.0.1:{port}"
    up = grid("up", "--local", "--config", str(config), "--port", str(port), env=env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"grid-serve is up: HTTP API {address}" in up.stdout
        again = grid("up", "--local", "--config", str(config), "--port", str(port), env=env)
        assert "already up" in again.stdout
        status = json.loads(grid("distribute", "status", "--json", address=address, env=env).stdout)
        assert sorted(node["name"] for node in status["nodes"]) == ["head", "worker"]
        job = grid("distribute", "test", "--tasks", "4", "--json", address=address, env=env)
        assert sorted((row["node"], row["tasks"]) for row in json.loads(job.stdout)["per_node"]) == [("head", 2), ("worker", 2)]
    finally:
        down = grid("down", env=env)
    assert down.returncode == 0 and "Stopped the local cluster" in down.stdout
    assert "Nothing to stop" in grid("down", env=env).stdout
    assert grid("distribute", "status", address=address).returncode == 1


TEST_CLUSTER_YAML = """\
name: test
nodes:
  - {name: gpu-master, host: gpu-master, role: master, cpu_count: 2, gpu_count: 0, memory_gb: 4}
  - {name: gpu1, host: gpu1, cpu_count: 2, gpu_count: 1, memory_gb: 4}
  - {name: gpu2, host: gpu2, cpu_count: 2, gpu_count: 1, memory_gb: 4}
"""


@pytest.mark.cluster
def test_resource_sharing_request_status_release(base_url: str, tmp_path: Path) -> None:
    granted = grid("resource-sharing", "request", "--node", "gpu-master", "--type", "cpu", "--amount", "1",
                   "--priority", "high", "--duration", "10m", "--json", address=base_url)
    assert granted.returncode == 0, granted.stderr
    record = json.loads(granted.stdout)
    try:
        assert record["state"] == "active" and record["borrower"] == "gpu-master"
        assert record["donor"] in ("gpu1", "gpu2") and record["priority"] == "HIGH"
        config = tmp_path / "cluster.yaml"
        config.write_text(TEST_CLUSTER_YAML)
        status = grid("resource-sharing", "status", "--config", str(config), address=base_url)
        assert status.returncode == 0, status.stderr
        row = next(line for line in status.stdout.splitlines() if record["id"] in line)
        assert "gpu-master" in row and record["donor"] in row and "HIGH" in row.upper()
        assert "sharing limits in" in status.stdout
        listed = json.loads(grid("resource-sharing", "status", "--json", address=base_url).stdout)
        assert [a["id"] for a in listed["allocations"]] == [record["id"]]
    finally:
        released = grid("resource-sharing", "release", record["id"], "--json", address=base_url)
    assert released.returncode == 0 and json.loads(released.stdout)["state"] == "released"
    deadline = time.monotonic() + 60
    while json.loads(grid("resource-sharing", "status", "--json", address=base_url).stdout)["allocations"]:
        assert time.monotonic() < deadline, "the released allocation never let its capacity go"
        time.sleep(0.5)


@pytest.mark.cluster
@pytest.mark.parametrize("args, words", [
    (["--node", "gpu-master", "--type", "cpu", "--amount", "64"], "amount 64 CPU is over the sharing limit: the most any node may lend gpu-master is 2"),
    (["--node", "gpu9", "--type", "cpu", "--amount", "1"], "unknown node 'gpu9'"),
    (["--node", "gpu1", "--type", "cpu", "--amount", "1", "--donor", "gpu1"], "a node cannot lend to itself"),
    (["--node", "gpu-master", "--type", "cpu", "--amount", "0"], "amount: Input should be greater than 0"),
])
def test_resource_sharing_bad_requests_exit_2(base_url: str, args: list[str], words: str) -> None:
    done = grid("resource-sharing", "request", *args, address=base_url)
    assert done.returncode == 2, done.stdout + done.stderr
    assert words in one_line_error(done)


def test_resource_sharing_with_no_app_is_one_line_exit_1() -> None:
    done = grid("resource-sharing", "release", "nope", "--address", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 1 and "not reachable" in one_line_error(done)


@pytest.mark.parametrize("args, words", [
    (["--gpus", "1.5"], "gpu_count: gpu_count above 1 must be a whole number, got 1.5"),
    (["--cpus", "5000"], "cpu_count: Input should be less than or equal to 4096"),
    (["--node", "gpu1"], "--node is only used with --strategy node_specific"),
    (["--tasks", "0"], "Invalid value for '--tasks'"),
])
def test_bad_values_are_one_line_exit_2(args: list[str], words: str) -> None:
    done = grid("distribute", "test", *args, "--address", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 2
    assert words in one_line_error(done)


CLUSTER_HOLDER = """
import sys, time
from grid_serve.local_cluster import LocalNode, start_cluster
cluster = start_cluster([LocalNode("head", 1, 0, 1 << 30, True), LocalNode("worker", 1, 0, 1 << 30, False)])
print(cluster.address, flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


@pytest.mark.cluster
def test_up_without_local_deploys_onto_the_cluster_ray_address_names(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", CLUSTER_HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        ray_address = holder.stdout.readline().strip()
        assert ray_address, "the cluster holder did not start"
        env = {"GRID_HOME": str(tmp_path / "home"), "RAY_ADDRESS": ray_address, "GRID_ADDRESS": ""}
        port = free_port()
        up = grid("up", "--port", str(port), env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"grid-serve is up: HTTP API http://127.0.0.1:{port}" in up.stdout
        assert f"Web UI:       http://127.0.0.1:{port}/ui" in up.stdout
        status = json.loads(grid("distribute", "status", "--json", env=env).stdout)  # address from grid up's state
        assert sorted(node["name"] for node in status["nodes"]) == ["head", "worker"]
        down = grid("down", env=env)
        assert down.returncode == 0 and f"Deleted the grid app from the cluster at {ray_address}" in down.stdout
        assert grid("distribute", "status", "--address", f"http://127.0.0.1:{port}", env=env).returncode == 1
    finally:
        holder.stdin.close()
        holder.wait(timeout=120)


def test_up_without_local_or_ray_address_is_a_usage_error(tmp_path: Path) -> None:
    env = {"GRID_HOME": str(tmp_path / "home"), "RAY_ADDRESS": ""}
    done = grid("up", "--port", str(free_port()), env=env)
    assert done.returncode == 2
    assert "no Ray cluster given: pass --address or set RAY_ADDRESS" in one_line_error(done)


# ---------------------------------------------------------------- output, without a cluster


def test_explain_counts_the_nodes_passed_over_per_cause(capsys: pytest.CaptureFixture[str]) -> None:
    from grid_serve import cli
    from grid_serve.models import DecisionRecord, ResourceRequirement, SchedulingRequest
    from grid_serve.strategies import place
    from grid_serve.view import ClusterView, make_node

    view = ClusterView.of([make_node("a", reserved={"CPU": 2}), make_node("b", reserved={"CPU": 2}), make_node("c"),
                           make_node("d", cpus=1)])
    decision = place(SchedulingRequest(task_id="job-0", job_id="job", strategy="load_balanced",
                                       requirements=ResourceRequirement(cpu_count=2)), view)
    cli._print_decision(DecisionRecord(at=0.0, job_id="job", task_type="task", node=decision.node_name, priority="normal",
                                       **decision.model_dump(include={"task_id", "node_id", "strategy", "score", "waited_s",
                                                                      "reasons", "explanation"})))
    out = capsys.readouterr().out
    assert "passed over 3/4 nodes: 2 CPU busy, 1 insufficient CPU" in out
    assert "  a: CPU busy: needs 2 CPU, 0 free" in out and "  d: insufficient CPU: needs 2 CPU, has 1" in out


def test_distribution_shows_the_spread_turns_given_up(capsys: pytest.CaptureFixture[str]) -> None:
    from grid_serve import cli
    from grid_serve.models import JobStatus

    job = JobStatus(job_id="j", task="compute_task", strategy="spread", priority="normal", state="succeeded", total=4,
                    queued=0, running=0, succeeded=4, failed=0, cancelled=0, per_node={"a": 2, "b": 2},
                    turns_given_up={"c": 1}, submitted_at=0.0)
    cli._print_distribution(job, {"a": "10.0.0.1", "b": "10.0.0.2"}, 1.0, as_json=False)
    assert "spread turns given up (a node busy or stale past its patience; each counts as a task there): c 1" \
        in capsys.readouterr().out
    cli._print_distribution(job, {}, 1.0, as_json=True)
    assert json.loads(capsys.readouterr().out)["turns_given_up"] == {"c": 1}
