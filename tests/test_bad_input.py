"""Bad input gets a 4xx naming the field, never a 500, a stuck job or a leak; caller-chosen ids
can never address or block another caller's work. Over HTTP and through the handle."""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import pytest
from ray import serve

from grid_serve.client import GridClient
from grid_serve.errors import InvalidRequestError, NotFoundError
from grid_serve.models import ZERO_RESOURCE_SLOT, ResourceRequirement, SchedulingRequest
from grid_serve.scheduling import SchedulerCore
from grid_serve.view import ClusterView, make_node
from tests.test_api import owned
from tests.test_ownership_faults import eventually, idle_and_unreserved

RAW_JSON = {"content-type": "application/json"}


def refused(response: httpx.Response, field: str) -> str:
    assert response.status_code in (400, 422), (response.status_code, response.text)
    body = response.json()
    assert body["field"] == field, body
    return body["error"]


@pytest.mark.cluster
@pytest.mark.parametrize("resources, field", [
    ({"cpu_count": 0.00001}, "resources.cpu_count"),  # finer than Ray's unit: Ray would refuse the task
    ({"gpu_count": 1.5}, "resources.gpu_count"),
    ({"memory_mb": -1}, "resources.memory_mb"),
    ({"custom_resources": {"bad name": 1}}, "resources.custom_resources"),
    ({"custom_resources": {"trio": 0.00001}}, "resources.custom_resources"),
])
def test_resource_amounts_ray_would_refuse_are_refused_before_anything_is_reserved(
        http: httpx.Client, client: GridClient, resources: dict[str, Any], field: str) -> None:
    refused(http.post("/v1/jobs", json={"task": "noop", "count": 3, "resources": resources}), field)
    assert idle_and_unreserved(client)


@pytest.mark.cluster
@pytest.mark.parametrize("body, field", [
    ('{"task": "noop", "args": []}', "args"),
    ('{"task": "compute_task", "args": [[NaN]]}', "args"),
    ('{"task": "compute_task", "args": [{"task_id": Infinity}]}', "args"),
    ('{"task": "noop", "timeout_s": Infinity}', "timeout_s"),
    ('{"task": "noop", "resources": {"cpu_count": NaN}}', "resources.cpu_count"),
    ('{"task": "' + "t" * 201 + '"}', "task"),
    ('{"task": "noop", "result_refs": true}', "result_refs"),  # ObjectRefs cannot travel over HTTP
])
def test_empty_and_non_finite_job_bodies_are_refused(http: httpx.Client, body: str, field: str) -> None:
    refused(http.post("/v1/jobs", content=body, headers=RAW_JSON), field)


@pytest.mark.cluster
def test_schedule_bodies_and_completions_are_bounded_and_finite(http: httpx.Client) -> None:
    refused(http.post("/v1/schedule", json={"task_id": "x" * 201}), "task_id")
    refused(http.post("/v1/schedule", json={"task_id": "ok", "task_type": "y" * 201}), "task_type")
    refused(http.post("/v1/schedule", json={"task_id": "ok", "job_id": ""}), "job_id")
    decision = http.post("/v1/schedule", json={"task_id": "finite-check"}).json()
    assert decision["task_id"] == "finite-check"
    refused(http.post("/v1/schedule/finite-check/complete", content='{"duration_s": NaN}', headers=RAW_JSON),
            "duration_s")
    assert http.post("/v1/schedule/finite-check/complete", json={"duration_s": 0.5},
                     headers=owned(decision)).json()["released"] is True


@pytest.mark.cluster
def test_handle_calls_refuse_what_http_refuses(base_url: str) -> None:
    handle = serve.get_app_handle("grid")
    request = SchedulingRequest(task_id="handle-bounds")
    for lease in (None, 0, -5, float("nan"), 7200.0):  # the last past max_schedule_lease_s
        with pytest.raises(InvalidRequestError, match="lease_s"):
            handle.schedule.remote(request, lease).result()
    with pytest.raises(InvalidRequestError, match="wait_s"):
        handle.schedule.remote(request, 10.0, -1).result()
    with pytest.raises(InvalidRequestError, match="timeout_s"):
        handle.wait_job.remote("abcd00000000", -1.0).result()
    with pytest.raises(InvalidRequestError, match="job_id"):
        handle.get_job.remote(None).result()
    with pytest.raises(InvalidRequestError, match="duration_s"):
        handle.complete.remote("handle-bounds", True, float("inf")).result()
    with pytest.raises(NotFoundError):  # nothing was reserved by the refused calls
        handle.complete.remote("handle-bounds").result()


@pytest.mark.cluster
def test_a_schedule_caller_cannot_address_or_block_a_job_s_tasks(http: httpx.Client, client: GridClient) -> None:
    job = http.post("/v1/jobs", json={"task": "sleep_task", "args": [[0, 2.0], [1, 2.0]]}).json()
    job_task = f"{job['job_id']}-1"
    # the job's own task id, and its job id (a lone decision's group), taken by an outside caller
    keys = {}
    for task_id in (job_task, job["job_id"]):
        decision = http.post("/v1/schedule", json={"task_id": task_id}, params={"lease_s": 30})
        assert decision.status_code == 200 and decision.json()["task_id"] == task_id, decision.text
        keys[task_id] = owned(decision.json())
    released = http.post(f"/v1/schedule/{job_task}/complete", headers=keys[job_task])
    assert released.json()["released"] is True  # its own, not the job's
    assert http.post(f"/v1/schedule/{job_task}/complete", headers=keys[job_task]).status_code == 404
    assert http.post(f"/v1/schedule/{job['job_id']}/complete", headers=keys[job["job_id"]]).json()["released"] is True
    final = client.wait_job(job["job_id"], timeout_s=60)
    assert (final.state, final.succeeded) == ("succeeded", 2)
    eventually(lambda: idle_and_unreserved(client), what="nothing reserved")


@pytest.mark.cluster
def test_a_task_result_json_cannot_carry_is_sent_as_null(base_url: str, http: httpx.Client) -> None:
    handle = serve.get_app_handle("grid")

    def not_a_number() -> float:
        return float("nan")

    status = handle.submit_job.remote({"args": [[]], "wait": True}, not_a_number).result()
    assert status.state == "succeeded"
    response = http.get(f"/v1/jobs/{status.job_id}", params={"results": True})
    assert response.status_code == 200 and response.json()["results"][0]["result"] is None


@pytest.mark.cluster
def test_a_large_zero_resource_job_runs(http: httpx.Client) -> None:
    body = http.post("/v1/jobs", json={"task": "noop", "count": 300, "resources": {"cpu_count": 0},
                                       "wait": True, "timeout_s": 300}).json()
    assert (body["state"], body["succeeded"]) == ("succeeded", 300), body


def test_zero_resource_tasks_are_capped_per_node() -> None:
    """Each node runs at most max(4, 2 x CPUs) zero-resource tasks at once, whatever the lookahead."""
    view = ClusterView.of([make_node("small", cpus=1, node_id="a1" * 28), make_node("big", cpus=4, node_id="b2" * 28)],
                          admission=50.0)
    requests = [SchedulingRequest(task_id=f"z-{i}", job_id="z", requirements=ResourceRequirement(cpu_count=0),
                                  strategy="load_balanced")
                for i in range(100)]
    result = SchedulerCore().submit(requests, view)
    per_node: dict[str, int] = {}
    for decision in result.placed:
        per_node[decision.node_name] = per_node.get(decision.node_name, 0) + 1
        assert decision.resources == {ZERO_RESOURCE_SLOT: 1.0}
        assert "resources" not in decision.ray_options() and decision.ray_options()["num_cpus"] == 0.0
    assert per_node == {"small": 4, "big": 8}


@pytest.mark.cluster
def test_no_room_within_the_wait_is_busy_try_later_in_plain_seconds(http: httpx.Client, client: GridClient) -> None:
    """A full cluster and a wait too short to see room free: the documented "busy, try later"
    (429 with Retry-After, as a full queue answers), the wait said in plain units, nothing kept."""
    kind = "never-measured-filler"  # admitted up to twice a node's CPUs (one queued successor per slot)
    holders = []
    for node, copy in itertools.product(("gpu-master", "gpu1", "gpu2"), range(2)):  # every node at its admission
        body = {"task_id": f"fill-{node}-{copy}", "task_type": kind, "strategy": "node_specific", "target_node": node,
                "requirements": {"cpu_count": 2}}
        holders.append(http.post("/v1/schedule", json=body, params={"lease_s": 120}).json())
    assert all("node_id" in holder for holder in holders), holders
    try:
        for wait_s, said in ((1.16263e-245, "within 0 s"), (0.25, "within 0.25 s")):
            busy = http.post("/v1/schedule", json={"task_id": "no-room", "task_type": kind}, params={"wait_s": wait_s})
            assert busy.status_code == 429 and busy.headers["retry-after"].isdigit(), busy.text
            assert said in busy.json()["error"] and busy.json()["field"] == "wait_s", busy.text
    finally:
        for holder in holders:
            http.post(f"/v1/schedule/{holder['task_id']}/complete", headers=owned(holder))
    eventually(lambda: idle_and_unreserved(client), what="nothing left reserved")


@pytest.mark.cluster
def test_memory_task_reserves_the_memory_it_allocates(http: httpx.Client) -> None:
    """memory_task allocates `megabytes`: its reservation follows (megabytes + 32 MB), so a task
    too big for every node is refused up front instead of running into the node's memory."""
    job = http.post("/v1/jobs", json={"task": "memory_task", "args": [[0, 8], {"task_id": 1, "megabytes": 200}],
                                      "wait": True}).json()
    assert job["state"] == "succeeded", job
    too_big = http.post("/v1/jobs", json={"task": "memory_task", "args": [[0, 5000]]})  # the nodes hold 4 GiB
    assert too_big.status_code == 422 and "insufficient memory" in too_big.json()["error"], too_big.text
    assert "needs 5032 MB of memory" in too_big.json()["error"], too_big.text
