"""The real app on the real 3-node cluster, over real HTTP and real handles.

Placements are checked from inside the tasks (each built-in task reports the node it ran on),
not from the decisions.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest

from grid_serve.client import GridClient
from grid_serve.models import JobSubmission

pytestmark = pytest.mark.cluster


def ran_on(status: dict) -> Counter:
    """Where each task ran, as the task itself reported."""
    return Counter(outcome["result"]["node"] for outcome in status["results"])


def submit(http: httpx.Client, **body) -> dict:
    response = http.post("/v1/jobs", json={"wait": True, **body})
    assert response.status_code == 200, response.text
    status = response.json()
    assert status["state"] == "succeeded", status
    return status


def owned(body: dict[str, Any]) -> dict[str, str]:
    """The header that shows the owner key an HTTP answer handed back (only its holder may
    cancel, complete or release what it made)."""
    return {"X-Grid-Owner-Key": body["owner_key"]}


def wait_idle(client: GridClient, timeout_s: float = 60) -> None:
    """Let the previous test's tasks drain so each test starts on an idle cluster."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.cluster_status()
        if status.queued == 0 and all(node.in_flight == 0 for node in status.nodes):
            return
        time.sleep(0.2)
    raise AssertionError("cluster did not become idle")


def hold_job(count: int, seconds: float, priority: str = "normal") -> Any:
    """Submit `count` holds as a task type never measured before: its lookahead is then
    exactly one queued task per slot (admission 2), so 12 of them fill the cluster's 6 CPUs and
    anything after them waits in grid-serve. All go through one job runner (the app runs two
    Ingress replicas), so Ray starts them in the order grid-serve dispatched them: Ray orders
    one owner's queued tasks, not several owners'."""
    import ray

    def hold(i: int, seconds: float) -> float:  # nested: pickled by value, as a caller's own function is
        started = time.time()
        time.sleep(seconds)
        return started

    spec = {"task": f"hold-{uuid.uuid4().hex[:8]}", "args": [[i, seconds] for i in range(count)],
            "strategy": "load_balanced", "priority": priority}
    runner = min((entry["name"], entry["namespace"]) for entry in ray.util.list_named_actors(all_namespaces=True)
                 if re.fullmatch(r"grid-runner-grid-[0-9a-f]{4}", entry["name"]))  # app "grid"'s, not "grid-auth"'s
    return ray.get(ray.get_actor(*runner).submit_job.remote(JobSubmission.model_validate(spec), hold), timeout=60)


def test_health_and_cluster_status(http: httpx.Client) -> None:
    assert http.get("/v1/health").json()["nodes_alive"] == 3
    nodes = {node["name"]: node for node in http.get("/v1/cluster").json()["nodes"]}
    assert set(nodes) == {"gpu-master", "gpu1", "gpu2"}
    assert nodes["gpu1"]["resources_total"]["GPU"] == 1.0
    assert nodes["gpu-master"]["labels"]["grid.io/node"] == "gpu-master"
    assert all(node["alive"] for node in nodes.values())


def test_openapi_document_is_served(http: httpx.Client) -> None:
    document = http.get("/openapi.json").json()
    assert "paths" in document, document
    paths = document["paths"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/cluster", "/v1/schedule", "/v1/tasks", "/v1/health"} <= set(paths)


def test_registered_tasks_are_listed(http: httpx.Client) -> None:
    tasks = {task["name"]: task for task in http.get("/v1/tasks").json()}
    assert {"compute_task", "cpu_task", "sleep_task", "memory_task", "gpu_task"} <= set(tasks)
    assert tasks["gpu_task"]["requirements"]["gpu_count"] == 1


def test_the_strategies_are_listed_from_their_modules(http: httpx.Client) -> None:
    answer = http.get("/v1/strategies")
    assert answer.status_code == 200, answer.text
    strategies = {strategy["name"]: strategy for strategy in answer.json()}
    assert set(strategies) == {"spread", "load_balanced", "performance_optimized", "node_specific", "pack"}
    spread = strategies["spread"]
    assert spread["summary"].startswith("the node with the fewest of this job's tasks") and spread["turns"] is True
    assert {"name": "job share", "weight": 1.0} in spread["scorers"] and "spread turn" in spread["waits_for"]
    assert "/v1/strategies" in http.get("/openapi.json").json()["paths"]


def test_spread_100_tasks_land_34_33_33(http: httpx.Client, client: GridClient) -> None:
    wait_idle(client)
    status = submit(http, task="compute_task", count=100, strategy="spread")
    assert sorted(ran_on(status).values()) == [33, 33, 34]
    assert sorted(status["per_node"].values()) == [33, 33, 34]
    assert [o["result"]["task_id"] for o in status["results"]] == list(range(100))


def test_node_specific_50_tasks_all_run_on_gpu1(http: httpx.Client) -> None:
    status = submit(http, task="compute_task", count=50, strategy="node_specific", node="gpu1")
    assert ran_on(status) == Counter({"gpu1": 50})


def test_six_gpu_tasks_run_three_and_three(http: httpx.Client, client: GridClient) -> None:
    wait_idle(client)
    status = submit(http, task="gpu_task", count=6)
    assert ran_on(status) == Counter({"gpu1": 3, "gpu2": 3})
    assert all(outcome["result"]["gpu_ids"] == ["0"] for outcome in status["results"])


def test_load_balanced_avoids_the_busy_node(http: httpx.Client, client: GridClient) -> None:
    wait_idle(client)
    blockers = http.post("/v1/jobs", json={"task": "sleep_task", "args": [[0, 3.0], [1, 3.0]],
                                           "strategy": "node_specific", "node": "gpu-master"})
    assert blockers.status_code == 202, blockers.text
    status = submit(http, task="compute_task", count=4, strategy="load_balanced")
    assert ran_on(status) == Counter({"gpu1": 2, "gpu2": 2})
    client.wait_job(blockers.json()["job_id"], timeout_s=60)


def test_priority_high_tasks_start_before_earlier_low_ones_once_the_lookahead_is_full(client: GridClient) -> None:
    wait_idle(client)
    # 12 blockers: one running and one queued inside Ray on each of the 6 CPUs (the lookahead),
    # so everything after them must wait in grid-serve, where priorities order it.
    blockers = hold_job(12, 4.0)  # long enough that low and high are both queued before any ends, even on a busy machine
    assert blockers.queued == 0
    low = hold_job(6, 1.0, "low")
    high = hold_job(6, 1.0, "high")
    assert low.queued == 6 and high.queued == 6
    low_done = client.wait_job(low.job_id, timeout_s=120)
    high_done = client.wait_job(high.job_id, timeout_s=120)
    assert low_done.state == high_done.state == "succeeded"
    # Both waited in grid-serve's queue, so every high task was placed before any low one. (Their
    # start times cannot say so per node: a high and a low task placed in one drain into two
    # slots that freed together start together, in either order; CI saw a low one 0.6 ms first.)
    placed_at = {job.job_id: [d.at for d in client.recent_decisions(limit=100, job_id=job.job_id).decisions]
                 for job in (low, high)}
    assert len(placed_at[high.job_id]) == len(placed_at[low.job_id]) == 6
    assert max(placed_at[high.job_id]) <= min(placed_at[low.job_id]), placed_at
    mean = lambda starts: sum(starts) / len(starts)  # noqa: E731
    assert mean([o.result for o in high_done.results]) < mean([o.result for o in low_done.results])
    assert client.wait_job(blockers.job_id, timeout_s=60).state == "succeeded"


def test_a_high_task_takes_back_lower_work_queued_inside_ray_instead_of_waiting_behind_it(client: GridClient) -> None:
    """Issue 22: 12 low blockers of 4 s on 6 CPUs run 6 and queue 6 inside Ray (the lookahead).
    A high job comes: the 6 queued ones are taken back before they start (Ray drops them) and
    queued again, and are placed again only once no high task waits. (Not: every high task
    starts before them. A high task may be placed into the lookahead behind other high tasks on
    a node whose slots freed first, while a slot freeing later elsewhere goes to a blocker: CI
    saw two high tasks start 0.5 s after two blockers so.) Without the take-back the queued
    blockers started in Ray as the first ones ended, before any high task was placed."""
    wait_idle(client)
    blockers = hold_job(12, 4.0, "low")
    assert blockers.queued == 0
    high = hold_job(6, 0.5, "high")
    blockers_done = client.wait_job(blockers.job_id, timeout_s=120)
    high_done = client.wait_job(high.job_id, timeout_s=120)
    assert blockers_done.state == high_done.state == "succeeded"
    assert blockers_done.taken_back == 6 and high_done.taken_back == 0
    placed = {job.job_id: sorted(d.at for d in client.recent_decisions(limit=100, job_id=job.job_id).decisions)
              for job in (blockers, high)}
    again = placed[blockers.job_id][12:]  # each blocker taken back was placed a second time
    assert len(again) == 6 and len(placed[high.job_id]) == 6
    assert max(placed[high.job_id]) <= min(again), placed
    blocker_starts = sorted(outcome.result for outcome in blockers_done.results)
    assert min(outcome.result for outcome in high_done.results) < blocker_starts[6]  # the first freed slot: high


def test_absurd_task_arguments_fail_the_task_not_the_app(http: httpx.Client) -> None:
    response = http.post("/v1/jobs", json={"task": "memory_task", "args": [{"megabytes": 10**9}], "wait": True})
    assert response.status_code == 200
    status = response.json()
    assert status["state"] == "failed" and status["failed"] == 1
    assert "megabytes must be between 0 and 16384" in status["results"][0]["error"]


def test_request_larger_than_every_node_is_rejected_at_once(http: httpx.Client) -> None:
    response = http.post("/v1/jobs", json={"task": "compute_task", "count": 3, "resources": {"cpu_count": 16}})
    assert response.status_code == 422
    body = response.json()
    assert body["error"].startswith("0/3 nodes are available: 3 insufficient CPU (it can never fit)")
    assert "needs 16 CPU, has 2" in body["error"]


@pytest.mark.parametrize("body, field, words", [
    ({"task": "compute_task", "strategy": "fastest"}, "strategy", "Input should be"),
    ({"task": "no_such_task"}, "task", "unknown task 'no_such_task'; registered tasks:"),
    ({"task": "compute_task", "strategy": "node_specific", "node": "gpu9"}, "node", "unknown node 'gpu9'"),
    ({"task": "compute_task", "resources": {"cpu_count": -1}}, "resources.cpu_count", "greater than or equal to 0"),
    ({"task": "compute_task", "resources": {"gpu_count": 1e9}}, "resources.gpu_count", "less than or equal to"),
    ({"task": "compute_task", "count": 10_000_000}, "count", "less than or equal to 100000"),
    ({"task": "compute_task", "count": 0}, "count", "greater than or equal to 1"),
    ({"task": "compute_task", "strategy": "node_specific"}, "body", "node_specific needs node"),
    ({"task": "compute_task", "colour": "red"}, "colour", "Extra inputs are not permitted"),
    ({"task": "compute_task", "node": "gpu1"}, "body", "node is only used with strategy node_specific"),
])
def test_bad_input_gets_a_4xx_naming_the_problem(http: httpx.Client, body: dict, field: str, words: str) -> None:
    response = http.post("/v1/jobs", json=body)
    assert 400 <= response.status_code < 500, response.text
    payload = response.json()
    assert payload["field"] == field
    assert words in payload["error"]


def test_malformed_json_gets_a_4xx_and_the_app_keeps_serving(http: httpx.Client) -> None:
    response = http.post("/v1/jobs", content=b'{"task": "compute_task", "count": ', headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "JSON" in response.json()["error"]
    assert http.get("/v1/jobs/does-not-exist").status_code == 404
    assert http.get("/v1/health").status_code == 200


def test_curl_style_body_without_json_content_type_works(http: httpx.Client) -> None:
    """`curl -d '{...}'` labels the body as form data; the API reads it as the JSON it is."""
    body = b'{"task": "compute_task", "count": 3, "strategy": "spread", "wait": true}'
    response = http.post("/v1/jobs", content=body, headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200, response.text
    assert sorted(response.json()["per_node"].values()) == [1, 1, 1]


def test_async_job_status_and_cancel(http: httpx.Client, client: GridClient) -> None:
    wait_idle(client)
    blockers = hold_job(12, 2.0)  # every CPU and its lookahead taken
    job_id = hold_job(4, 1.0).job_id
    assert http.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"
    cancelled = http.delete(f"/v1/jobs/{job_id}").json()
    assert cancelled["state"] == "cancelled" and cancelled["cancelled"] == 4 and cancelled["queued"] == 0
    done = client.wait_job(blockers.job_id, timeout_s=60)
    assert done.succeeded == 12
    assert client.get_job(job_id).succeeded == 0


def test_schedule_reserves_until_completed(http: httpx.Client, client: GridClient) -> None:
    wait_idle(client)
    decision = http.post("/v1/schedule", json={"task_id": "external-1", "strategy": "node_specific",
                                               "target_node": "gpu2", "requirements": {"cpu_count": 2}}).json()
    assert decision["node_name"] == "gpu2" and decision["resources"] == {"CPU": 2.0}
    nodes = {node.name: node for node in client.cluster_status().nodes}
    assert nodes["gpu2"].reserved == {"CPU": 2.0} and nodes["gpu2"].in_flight == 1
    assert http.post("/v1/schedule/external-1/complete", json={"ok": True, "duration_s": 0.5},
                     headers=owned(decision)).status_code == 200
    nodes = {node.name: node for node in client.cluster_status().nodes}
    assert nodes["gpu2"].in_flight == 0
    again = http.post("/v1/schedule/external-1/complete", headers=owned(decision))
    assert again.status_code == 404 and again.json()["field"] == "task_id"


def test_a_node_that_stays_busy_gives_up_its_spread_turn_and_the_job_says_so(http: httpx.Client,
                                                                            client: GridClient) -> None:
    """gpu2 is kept full by two 2-CPU reservations (4 of the 2 x 2 CPUs admission 2 allows): a
    spread job of four 2-CPU tasks puts one each on the other nodes, then waits for gpu2's turn
    until gpu2 gives it up (after 5 s, the least patience), and its status counts the turn."""
    wait_idle(client)
    holds = [http.post("/v1/schedule", json={"task_id": f"external-full-{i}", "strategy": "node_specific",
                                             "target_node": "gpu2", "requirements": {"cpu_count": 2}}).json()
             for i in range(2)]
    try:
        assert all(hold["node_name"] == "gpu2" for hold in holds), holds
        status = submit(http, task="sleep_task", args=[{"seconds": 0.1}] * 4, strategy="spread",
                        resources={"cpu_count": 2}, timeout_s=60)
        assert status["per_node"] == {"gpu-master": 2, "gpu1": 2}
        assert status["turns_given_up"] == {"gpu2": 1}
        assert client.get_job(status["job_id"]).turns_given_up == {"gpu2": 1}
    finally:
        for i, hold in enumerate(holds):
            http.post(f"/v1/schedule/external-full-{i}/complete", headers=owned(hold))


HANDLE_SCRIPT = textwrap.dedent("""
    import asyncio, json, sys
    import ray
    from ray import serve
    from grid_serve import IntelligentScheduler, SchedulingRequest, SchedulingStrategy, ResourceRequirement, TaskPriority
    from grid_serve.client import HandleClient

    def my_square(x):
        from grid_serve.tasks import where_am_i
        return {"square": x * x, **where_am_i()}

    async def main():
        ray.init(address=sys.argv[1], log_to_driver=False)
        grid = HandleClient(serve.get_app_handle("grid"))
        status = await grid.submit_job({"task": "compute_task", "count": 9, "strategy": "spread", "wait": True})
        custom = await grid.submit_job({"args": [[2], [3]], "strategy": "node_specific", "node": "gpu2", "wait": True},
                                       fn=my_square)
        assert isinstance(IntelligentScheduler.connect(), IntelligentScheduler)
        cluster_config = metrics_collector = resource_manager = None  # as the user guide passes them
        scheduler = IntelligentScheduler(cluster_config, metrics_collector, resource_manager)
        request = SchedulingRequest(task_id="my_task", requirements=ResourceRequirement(cpu_count=1, gpu_count=1),
                                    strategy=SchedulingStrategy.SPREAD, priority=TaskPriority.HIGH)
        decision = await scheduler.schedule_task(request)
        where = ray.get(ray.remote(my_square).options(**decision.ray_options()).remote(4))
        await scheduler.task_finished("my_task")
        print(json.dumps({"per_node": status.per_node, "custom": [o.result for o in custom.results],
                          "decision_node": decision.node_name, "decision_id": decision.node_id, "ran_on": where["node"]}))

    asyncio.run(main())
""")


def test_handle_call_from_a_separate_driver_process(base_url: str, cluster_address: str, tmp_path) -> None:
    script = tmp_path / "driver.py"
    script.write_text(HANDLE_SCRIPT)
    done = subprocess.run([sys.executable, str(script), cluster_address], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(result["per_node"].values()) == [3, 3, 3]
    assert [(r["square"], r["node"]) for r in result["custom"]] == [(4, "gpu2"), (9, "gpu2")]
    assert result["decision_node"] in ("gpu1", "gpu2") and result["ran_on"] == result["decision_node"]
    assert len(result["decision_id"]) == 56


def test_cancel_with_running_tasks_leaves_nothing_reserved(http: httpx.Client, client: GridClient) -> None:
    wait_idle(client)
    running = hold_job(15, 600.0)  # 6 run, 6 wait inside Ray (the lookahead), 3 wait in grid-serve
    assert running.running == 12 and running.queued == 3
    cancelled = http.delete(f"/v1/jobs/{running.job_id}").json()
    assert cancelled["state"] == "cancelled"
    final = client.wait_job(running.job_id, timeout_s=60)  # the 6 in time.sleep, out of reach of Ray's plain cancel,
    assert final.cancelled == 15, final  # are stopped by force after a grace (grid_serve.stopping)
    wait_idle(client)  # every reservation came back: nothing leaked


def test_a_queued_job_says_why_it_waits_what_is_ahead_and_when_it_should_run(http: httpx.Client,
                                                                              client: GridClient,
                                                                              base_url: str) -> None:
    """Issue 23: `pending` in a queued job's status (and `grid explain` of it): its place in the
    queue, what is ahead of it by priority, why no node takes it (counted as decisions count),
    and its forecast, unknown (saying why) while a run time it depends on is not learned."""
    wait_idle(client)
    filler = hold_job(12, 60.0, "high")  # 6 run, 6 queued inside Ray: the cluster is full
    ahead = hold_job(2, 0.1, "high")  # waits in grid-serve
    low = http.post("/v1/jobs", json={"task": "sleep_task", "args": [[i, 0.1] for i in range(3)],
                                      "priority": "low"}).json()
    try:
        status = http.get(f"/v1/jobs/{low['job_id']}").json()
        pending = status["pending"]
        assert (status["queued"], pending["position"], pending["ahead"], pending["waiting"], pending["held_back"]) == (
            3, 2, {"high": 2}, 3, 0), status
        assert re.match(r"0/\d+ nodes are available: 3 CPU busy", pending["reason"]), pending  # a dead node counts too
        assert "expected_start_s" not in pending and "expected_end_s" not in pending  # unknown: the fillers never ended
        assert re.fullmatch(r"no run time learned yet for task type 'hold-[0-9a-f]{8}' running on gpu-master",
                            pending["note"]), pending
        explained = subprocess.run([sys.executable, "-m", "grid_serve.cli", "explain", low["job_id"], "0", "--json"],
                                   capture_output=True, text=True, timeout=60, env={**os.environ, "GRID_ADDRESS": base_url})
        assert explained.returncode == 0, explained.stderr
        assert {k: v for k, v in json.loads(explained.stdout).items() if k in ("position", "ahead", "waiting", "note")
                } == {"position": 2, "ahead": {"high": 2}, "waiting": 3, "note": pending["note"]}
        assert "pending" not in http.get(f"/v1/jobs/{filler.job_id}").json()  # nothing of it waits in grid-serve
    finally:
        http.delete(f"/v1/jobs/{low['job_id']}", headers=owned(low))
        for job in (ahead, filler):
            http.delete(f"/v1/jobs/{job.job_id}")
    wait_idle(client)
    # with the run times learned (sleep_task's, each node), the forecast has numbers
    assert client.submit_job({"task": "sleep_task", "args": [[i, 0.2] for i in range(6)], "wait": True}).succeeded == 6
    busy = client.submit_job({"task": "sleep_task", "args": [[i, 30.0] for i in range(12)]})
    late = client.submit_job({"task": "sleep_task", "args": [[i, 0.2] for i in range(4)]})
    try:
        pending = client.get_job(late.job_id).pending
        assert pending is not None and pending.note is None and (pending.position, pending.waiting) == (0, 4), pending
        assert pending.expected_start_s is not None and pending.expected_end_s is not None
        assert 0 <= pending.expected_start_s <= pending.expected_end_s, pending
    finally:
        for job in (late, busy):
            client.cancel_job(job.job_id)
    wait_idle(client)


def test_schedule_refuses_a_task_id_already_reserved(http: httpx.Client, client: GridClient) -> None:
    wait_idle(client)
    body = {"task_id": "external-dup", "job_id": "shared-name", "requirements": {"cpu_count": 1}}
    first = http.post("/v1/schedule", json=body)
    assert first.status_code == 200, first.text
    again = http.post("/v1/schedule", json=body)
    assert again.status_code == 422 and again.json()["field"] == "task_id"
    assert "already reserved" in again.json()["error"]
    assert http.post("/v1/schedule/external-dup/complete", headers=owned(first.json())).status_code == 200
    wait_idle(client)


def test_a_restarted_load_balancer_does_not_strand_the_scheduler(http: httpx.Client, client: GridClient,
                                                                 cluster_address: str) -> None:
    import ray
    from ray.util.state import list_actors

    wait_idle(client)
    replicas = [a for a in list_actors(address=cluster_address, filters=[("state", "=", "ALIVE")])
                if "LoadBalancer" in (a.class_name or "")]
    assert len(replicas) == 1
    ray.kill(ray.get_actor(replicas[0].name, namespace="serve"), no_restart=False)
    deadline = time.monotonic() + 120
    while True:  # Serve brings a new replica with an empty ledger (a new epoch)
        response = http.post("/v1/jobs", json={"task": "compute_task", "count": 9, "wait": True, "timeout_s": 30})
        if response.status_code == 200 and response.json()["state"] == "succeeded":
            break
        assert time.monotonic() < deadline, response.text
        time.sleep(1)
    assert sorted(ran_on(response.json()).values()) == [3, 3, 3]
    wait_idle(client)


def test_a_jobs_task_cannot_be_released_through_the_schedule_route(http: httpx.Client, client: GridClient) -> None:
    wait_idle(client)
    job = http.post("/v1/jobs", json={"task": "sleep_task", "args": [[0, 6.0]]}).json()  # outlasts a slow check
    response = http.post(f"/v1/schedule/{job['job_id']}-0/complete")
    assert response.status_code == 404 and "a job's task" in response.json()["error"]
    nodes = client.cluster_status().nodes
    assert sum(node.in_flight for node in nodes) == 1  # still reserved by its job
    assert client.wait_job(job["job_id"], timeout_s=60).succeeded == 1
    wait_idle(client)


def test_a_schedule_caller_that_leaves_while_waiting_holds_nothing(http: httpx.Client, client: GridClient,
                                                                   base_url: str) -> None:
    """gpu2 is full (two 2-CPU reservations); a third waits for it with an hour's lease and wait_s=600,
    and its caller hangs up after 2 s, before any answer (so it never got the owner key): once
    gpu2 frees, that request is not placed and held for its lease, and nothing stays queued."""
    wait_idle(client)
    holds = [http.post("/v1/schedule", json={"task_id": f"external-leave-{i}", "strategy": "node_specific",
                                             "target_node": "gpu2", "requirements": {"cpu_count": 2}}).json()
             for i in range(2)]
    assert all(hold["node_name"] == "gpu2" for hold in holds), holds
    body = {"task_id": "external-leaver", "strategy": "node_specific", "target_node": "gpu2",
            "requirements": {"cpu_count": 2}}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base_url}/v1/schedule", params={"wait_s": 600, "lease_s": 3600}, json=body, timeout=2.0)
    for i, hold in enumerate(holds):
        assert http.post(f"/v1/schedule/external-leave-{i}/complete", headers=owned(hold)).status_code == 200
    wait_idle(client, timeout_s=30)  # before the fix: the leaver's request was placed and held for its lease
    time.sleep(2.0)  # a release that raced a placement would show now
    status = client.cluster_status()
    assert status.queued == 0 and not any(node.reserved.get("CPU") for node in status.nodes), status
