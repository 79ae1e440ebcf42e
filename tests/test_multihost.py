"""grid-serve on several hosts: Linux network namespaces, each with its own IP and hostname, joined
by a bridge (scripts/netns_cluster.sh). Ray is started on them by hand (`ray start --head`, then
`ray start --address`) and the app deployed with `serve run` on the head, as on real machines.

The app answers on the head's loopback, so every client here runs on a host (`netns_cluster.sh
exec`). Tasks report `socket.gethostname()` from inside their worker: each host has its own, so a
count by hostname is a count by machine. Needs root and iproute2 (CI has both: it runs as root and
`.ci/run` installs iproute2); elsewhere these tests skip, saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "netns_cluster.sh"
PREFIX = "gst"  # apart from a cluster a developer started by hand (gs)
NET = "198.18.7"
STATE = Path(f"/tmp/grid-netns-{PREFIX}")
ENV = {**os.environ, "GRID_NETNS_PREFIX": PREFIX, "GRID_NETNS_NET": NET, "GRID_NETNS_STATE": str(STATE)}
HOSTNAMES = {"gpu-master": f"{PREFIX}-host1", "gpu1": f"{PREFIX}-host2", "gpu2": f"{PREFIX}-host3"}
IPS = {"gpu-master": f"{NET}.1", "gpu1": f"{NET}.2", "gpu2": f"{NET}.3"}
INTERVAL_S = 1.0  # metrics_interval_s in serve_config.yaml

pytestmark = pytest.mark.multihost


def why_not_here() -> str | None:
    """Why network namespaces cannot be made on this machine, or None when they can."""
    if os.geteuid() != 0:
        return "needs root to make network namespaces"
    if not all(shutil.which(tool) for tool in ("ip", "unshare", "nsenter", "pgrep")):
        return "needs ip (iproute2), unshare and nsenter (util-linux) and pgrep (procps)"
    probe = f"{PREFIX}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=True)
    return None


def script(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=ENV, cwd=REPO)


def on_host(host: int, *command: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return script("exec", str(host), *command, timeout=timeout)


def grid(*args: str) -> subprocess.CompletedProcess:
    """The `grid` CLI, on the head host (where the app's loopback is)."""
    return on_host(1, "grid", *args)


def api(method: str, path: str, body: Any = None, refused: bool = False, headers: dict[str, str] | None = None,
        **params: Any) -> Any:
    """One HTTP call to the app, made from the head host; the parsed JSON answer, which must be a
    success (a 4xx refusal with `refused`)."""
    code = ("import httpx, json, sys; r = httpx.request(sys.argv[1], 'http://127.0.0.1:8000' + sys.argv[2], "
            "json=json.loads(sys.argv[3]), params=json.loads(sys.argv[4]), headers=json.loads(sys.argv[5]), "
            "timeout=300); print(r.status_code); print(r.text)")
    arguments = [json.dumps(value) for value in (body, params, headers or {})]
    done = on_host(1, "python", "-c", code, method, path, *arguments)
    assert done.returncode == 0, done.stderr
    status, text = done.stdout.split("\n", 1)
    assert (400 <= int(status) < 500) if refused else int(status) < 300, f"HTTP {status}: {text}"
    return json.loads(text)


def job(**spec: Any) -> dict[str, Any]:
    """Run a job to its end; its status with results."""
    return api("POST", "/v1/jobs", {"wait": True, **spec})


def decisions(job_id: str) -> list[dict[str, Any]]:
    """The job's latest 100 placement decisions, newest first."""
    return api("GET", "/v1/decisions", job_id=job_id, limit=100)["decisions"]


def by_host(status: dict[str, Any]) -> Counter:
    """Tasks per hostname, as each task saw it from inside its worker."""
    return Counter(result["result"]["hostname"] for result in status["results"])


def eventually(check: Callable[[], Any], what: str, timeout_s: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def why_failed(status: dict[str, Any]) -> str:
    """What a job that should have succeeded says of itself, and what its runner warned of: the
    hosts' logs go with `down`, so a failure in CI must carry them in its message."""
    summary = {key: value for key, value in status.items() if key != "results"}
    errors = Counter(f"{result['error']} (attempts {result['attempts']}, {result['node_name']})"
                     for result in status.get("results") or [] if not result["ok"])
    logs = subprocess.run(["grep", "-rhE", "WARNING|ERROR", str(STATE / "ray"), str(STATE / "tmp")],
                          capture_output=True, text=True).stdout.splitlines()
    warnings = [line[:400] for line in logs if "job " in line or "node " in line][-40:]
    return f"{summary}\nfailed tasks: {dict(errors)}\nwarnings:\n" + "\n".join(warnings)


def nodes() -> dict[str, dict[str, Any]]:
    return {node["name"]: node for node in api("GET", "/v1/cluster")["nodes"]}


def leftovers() -> list[str]:
    """Namespaces, links and processes of this cluster still on the machine."""
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    processes = subprocess.run(["pgrep", "-af", str(STATE)], capture_output=True, text=True).stdout.splitlines()
    return ([name for name in namespaces if name.startswith(f"{PREFIX}-")]
            + [line.split(": ")[1] for line in links.splitlines() if line.split(": ")[1].startswith(f"{PREFIX}-")]
            + [line for line in processes if "pgrep" not in line])


@pytest.fixture(scope="module")
def hosts() -> Iterator[None]:
    reason = why_not_here()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"multihost tests must run in CI: {reason}")
        pytest.skip(reason)
    script("down")  # what an interrupted earlier run may have left
    started = time.monotonic()
    try:
        up = script("up", timeout=300)
        assert up.returncode == 0, f"{up.stdout}\n{up.stderr}\n" + (STATE / "serve.log").read_text()[-3000:]
        print(f"\nnetns cluster up in {time.monotonic() - started:.1f}s")
        yield
    finally:
        down = script("down")
        assert down.returncode == 0, down.stderr
        assert leftovers() == [], "netns_cluster.sh down left these behind"


def test_spread_99_lands_33_on_each_host(hosts: None) -> None:
    status = job(task="compute_task", count=99, strategy="spread")
    assert status["per_node"] == {"gpu-master": 33, "gpu1": 33, "gpu2": 33}
    assert by_host(status) == {hostname: 33 for hostname in HOSTNAMES.values()}
    assert {(r["node_name"], r["result"]["ip"]) for r in status["results"]} == set(IPS.items())


@pytest.mark.parametrize("reference, name", [(f"{NET}.2", "gpu1"), ("gpu2", "gpu2")])
def test_node_specific_by_ip_and_by_name_runs_all_on_that_host(hosts: None, reference: str, name: str) -> None:
    status = job(task="compute_task", count=20, strategy="node_specific", node=reference)
    assert by_host(status) == {HOSTNAMES[name]: 20}


def test_one_gpu_tasks_go_two_and_two_to_the_gpu_hosts(hosts: None) -> None:
    status = job(task="gpu_task", count=4, strategy="spread", resources={"cpu_count": 0.5, "gpu_count": 1})
    assert by_host(status) == {HOSTNAMES["gpu1"]: 2, HOSTNAMES["gpu2"]: 2}
    assert all(result["result"]["gpu_ids"] for result in status["results"])


def test_a_group_label_spreads_exactly_over_the_group(hosts: None) -> None:
    status = job(task="compute_task", count=10, strategy="spread", label_selector={"grid.io/group": "gpu-workers"})
    assert by_host(status) == {HOSTNAMES["gpu1"]: 5, HOSTNAMES["gpu2"]: 5}
    nobody = api("POST", "/v1/jobs", {"task": "compute_task", "count": 2,
                                      "label_selector": {"grid.io/group": "tpu-workers"}}, refused=True)
    assert "0/3 nodes are available: 3 label mismatch (it can never fit)" in nobody["error"], nobody


def test_status_shows_each_hosts_own_ip(hosts: None) -> None:
    done = grid("distribute", "status", "--json")
    assert done.returncode == 0, done.stderr
    shown = {node["name"]: node["address"] for node in json.loads(done.stdout)["nodes"]}
    assert shown == IPS


def test_validate_with_a_cluster_file_of_the_hosts_ips_and_without_one(hosts: None) -> None:
    config = (STATE / "cluster.yaml").read_text()
    assert all(f"host: {ip}" in config for ip in IPS.values())
    with_file = grid("validate", "--config", str(STATE / "cluster.yaml"))
    assert with_file.returncode == 0 and "all 12 checks passed" in with_file.stdout, with_file.stdout
    bare = grid("validate")
    assert bare.returncode == 0 and "PASS  probes: 3/3 live nodes report measurements" in bare.stdout, bare.stdout


def test_a_handle_client_on_another_host(hosts: None) -> None:
    done = on_host(2, "python", "examples/handle_client.py")  # a driver on gpu1's host, joining over the bridge
    assert done.returncode == 0, done.stderr[-2000:]
    assert "word counts: [4, 2, 3, 2, 2, 1]" in done.stdout
    assert "per node: {'gpu-master': 2, 'gpu1': 2, 'gpu2': 2}" in done.stdout


def test_a_sharing_grant_holds_its_placement_group_on_the_donor_host(hosts: None) -> None:
    done = grid("resource-sharing", "request", "--node", "gpu-master", "--type", "cpu", "--amount", "1",
                "--priority", "high", "--json")
    assert done.returncode == 0, done.stderr
    grant = json.loads(done.stdout)
    assert grant["state"] == "active" and grant["donor"] in ("gpu1", "gpu2"), grant
    code = ("import ray, json, sys; ray.init(logging_level='ERROR'); "
            "from ray.util.placement_group import placement_group_table; "
            "table = placement_group_table(); nodes = {n['NodeID']: n['NodeManagerAddress'] for n in ray.nodes()}; "
            "print(json.dumps([nodes[n] for n in table[sys.argv[1]]['bundles_to_node_id'].values()]))")
    where = on_host(1, "python", "-c", code, grant["placement_group_id"])
    assert where.returncode == 0, where.stderr[-2000:]
    assert json.loads(where.stdout.splitlines()[-1]) == [IPS[grant["donor"]]]
    assert grid("resource-sharing", "release", grant["id"]).returncode == 0


def test_a_host_added_mid_run_without_a_node_label_is_named_by_hostname_probed_and_given_work(hosts: None) -> None:
    # long enough to be running whenever the host joins; cancelled once the host has taken work
    running = api("POST", "/v1/jobs", {"task": "sleep_task", "args": [[i, 1.0] for i in range(300)],
                                       "strategy": "load_balanced"})
    adding_at = time.time()
    added = script("add", "4", "grid.io/group=cpu-workers")  # a group label only, as a KubeRay pod comes up
    assert added.returncode == 0, added.stderr
    added_at = time.time()
    worker = eventually(lambda: nodes().get("worker-4"), "the new host in the app's view")
    assert (worker["address"], worker["hostname"]) == (f"{NET}.4", "worker-4")
    assert "grid.io/node" not in worker["labels"] and worker["labels"]["grid.io/group"] == "cpu-workers"
    eventually(lambda: nodes()["worker-4"]["sampled_at"], "the new host's probe answering")
    placed = eventually(lambda: [d["at"] for d in decisions(running["job_id"]) if d["node"] == "worker-4"],
                        "the running job placing tasks on worker-4")
    eventually(lambda: api("GET", f"/v1/jobs/{running['job_id']}")["per_node"].get("worker-4"),
               "the running job's tasks finishing on worker-4")
    api("DELETE", f"/v1/jobs/{running['job_id']}", headers={"X-Grid-Owner-Key": running["owner_key"]})
    status = api("GET", f"/v1/jobs/{running['job_id']}", results=True, wait_s=120)
    assert status["state"] == "cancelled" and status["succeeded"] < 300, status["state"]
    started = min(r["started_at"] for r in status["results"] if r["node_name"] == "worker-4" and r["ok"])
    print(f"\nworker-4's first placement came {min(placed) - added_at:.2f}s after `ray start` on it returned "
          f"({min(placed) - adding_at:.2f}s after it began); its first task started "
          f"{started - added_at:.2f}s after (interval {INTERVAL_S:g}s)")

    pinned = job(task="compute_task", count=8, strategy="node_specific", node="worker-4")
    assert by_host(pinned) == {"worker-4": 8}
    spread = job(task="compute_task", count=100, strategy="spread")
    assert spread["per_node"] == {"gpu-master": 25, "gpu1": 25, "gpu2": 25, "worker-4": 25}
    config = STATE / "cluster-with-worker-4.yaml"
    config.write_text((STATE / "cluster.yaml").read_text().replace("resource_sharing:\n  enabled", (
        f"- name: gpu3\n  host: {NET}.4\n  cpu_count: 2\n  memory_gb: 4\nresource_sharing:\n  enabled"), 1))
    checked = grid("validate", "--config", str(config))
    assert checked.returncode == 0, checked.stdout
    assert "node gpu3 alive: " in checked.stdout and f"found by host {NET}.4, named worker-4" in checked.stdout


def test_a_host_whose_raylet_dies_mid_job_leaves_decisions(hosts: None) -> None:
    assert nodes()["worker-4"]["alive"], "the previous test added worker-4"
    running = api("POST", "/v1/jobs", {"task": "sleep_task", "args": [[i, 0.5] for i in range(120)],
                                       "strategy": "spread"})
    eventually(lambda: api("GET", f"/v1/jobs/{running['job_id']}")["per_node"].get("worker-4"),
               "some of the job done on worker-4")
    assert script("kill-raylet", "4").returncode == 0
    killed_at = time.time()
    status = api("GET", f"/v1/jobs/{running['job_id']}", results=True, wait_s=120)
    assert (status["state"], status["succeeded"], status["failed"]) == ("succeeded", 120, 0), why_failed(status)
    moved = [result for result in status["results"] if result["attempts"] > 1]
    assert moved and all(result["node_name"] != "worker-4" for result in moved)
    eventually(lambda: not nodes()["worker-4"]["alive"], "worker-4 marked dead")
    last = max((d["at"] for d in decisions(running["job_id"]) if d["node"] == "worker-4"), default=killed_at)
    print(f"\nlast decision for worker-4 came {last - killed_at:.2f}s after its raylet was killed "
          f"({(last - killed_at) / INTERVAL_S:.1f} intervals)")
    after = job(task="compute_task", count=99, strategy="spread")
    assert after["per_node"] == {"gpu-master": 33, "gpu1": 33, "gpu2": 33}
