"""Resource sharing on the shared test cluster (gpu-master 2 CPU, gpu1 and gpu2 2 CPU + 1 GPU).

The app runs with config/cluster.yaml, whose sharing limits (gpu-master lends 2 CPU, gpu1 4,
gpu2 6) are bounded by what the test nodes really have (2 CPU each), so every node may lend
2 CPU; only gpu1 and gpu2 lend a GPU. Every test releases what it creates and waits until
Ray has removed the placement groups, leaving the cluster idle for the next.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Callable, Iterator

import pytest
import ray
from ray.util import placement_group_table
from ray.util.state import list_actors

from deployments._common import SoleWriterRecord
from deployments.sharing_manager import FAIL_SAVE_KEY, FAULTS_NAMESPACE, KV_KEY
from grid_serve.client import GridClient, HandleClient
from grid_serve.errors import InvalidRequestError
from tests.test_api import owned
from tests.test_ownership_faults import replica_process

pytestmark = pytest.mark.cluster


def eventually(check: Callable[[], object], what: str, timeout_s: float = 90.0, every_s: float = 0.5) -> object:
    """Poll until `check()` is truthy; generous, since the machine is shared (no timing asserted)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        time.sleep(every_s)


def node_ids() -> dict[str, str]:
    return {n["Labels"].get("grid.io/node"): n["NodeID"] for n in ray.nodes() if n["Alive"]}


def group_of(record: dict) -> dict:
    return placement_group_table().get(record["placement_group_id"], {})


def no_live_groups() -> bool:
    return not [g for g in placement_group_table().values()
                if g["name"].startswith("grid-sharing-") and g["state"] != "REMOVED"]


def ray_has_every_cpu_free() -> bool:
    return ray.available_resources().get("CPU", 0.0) == ray.cluster_resources().get("CPU", 0.0)


def all_spare(http) -> bool:
    """Every node's lendable capacity is spare again, as the manager sees it (Ray reports a
    removed group's resources back a moment after the group is gone)."""
    rows = http.get("/v1/sharing").json()["capacity"]
    return all(row["spare"] == row["lendable"] for row in rows)


@pytest.fixture()
def sharing(http) -> Iterator[Callable[..., dict]]:
    """`sharing(node=..., type=..., amount=...)` posts a request and returns the record;
    everything requested is released afterwards and the cluster left without sharing groups."""
    created: dict[str, dict[str, str]] = {}  # id -> its owner key header

    def request(expect: int | None = None, **body) -> dict:
        response = http.post("/v1/sharing", json=body)
        assert response.status_code in (201, 202), response.text
        if expect is not None:
            assert response.status_code == expect, response.text
        created[response.json()["id"]] = owned(response.json())
        return response.json()

    eventually(no_live_groups, "no sharing groups left by earlier tests")
    # an earlier test's last tasks may still be ending (CI: one that restarted the Scheduler left
    # 4 CPUs busy 3 s on, while the manager's snapshot still showed them spare): wait until Ray has
    # every CPU back, then until the manager sees it
    eventually(ray_has_every_cpu_free, "every CPU free in Ray")
    eventually(lambda: all_spare(http), "all sharing capacity spare")
    yield request
    for record_id, key in created.items():
        http.post(f"/v1/sharing/{record_id}/release", headers=key)
    eventually(lambda: not http.get("/v1/sharing").json()["allocations"], "allocations drained")
    eventually(no_live_groups, "placement groups removed")
    eventually(lambda: all_spare(http), "all sharing capacity spare again")


def test_grant_puts_the_placement_group_on_the_donor(http, sharing):
    record = sharing(expect=201, node="gpu-master", type="cpu", amount=1, priority="normal")
    # gpu1 and gpu2 both have all 2 of 2 CPUs spare; gpu2's sharing priority (0.9) beats gpu1's (0.8)
    assert (record["state"], record["donor"], record["borrower"]) == ("active", "gpu2", "gpu-master")
    assert record["ready"] and record["placement_group"] == f"grid-sharing-grid-{record['id']}"  # app grid's
    group = group_of(record)
    assert group["state"] == "CREATED" and group["bundles"] == {0: {"CPU": 1.0}}
    assert list(group["bundles_to_node_id"].values()) == [node_ids()["gpu2"]]
    assert http.get(f"/v1/sharing/{record['id']}").json()["state"] == "active"
    status = http.get("/v1/sharing").json()
    assert [a["id"] for a in status["allocations"]] == [record["id"]]
    spare = {(row["node"], row["resource"]): row["spare"] for row in status["capacity"]}
    assert spare[("gpu2", "CPU")] == 1 and spare[("gpu1", "CPU")] == 2
    # our view agrees with Ray's: the lent CPU is reserved on the donor
    nodes = {n["name"]: n for n in http.get("/v1/cluster").json()["nodes"]}
    assert nodes["gpu2"]["reserved"].get("CPU") == 1

    released = http.post(f"/v1/sharing/{record['id']}/release", headers=owned(record)).json()
    assert released["state"] == "released"
    eventually(lambda: group_of(record).get("state") == "REMOVED", "group removed after release")


def test_task_for_a_full_borrower_runs_inside_its_allocation_on_the_donor(http, client: GridClient, sharing):
    record = sharing(expect=201, node="gpu-master", type="cpu", amount=1)
    assert record["donor"] == "gpu2"
    # fill gpu-master (2 CPUs) with an external reservation, then ask for one more CPU there
    full = http.post("/v1/schedule", json={"task_id": "fill-master", "strategy": "node_specific",
                                           "target_node": "gpu-master", "requirements": {"cpu_count": 2}}).json()
    try:
        assert full["node_name"] == "gpu-master" and full["placement_group_id"] is None
        borrowed = http.post("/v1/schedule", json={"task_id": "borrowed-1", "strategy": "node_specific",
                                                   "target_node": "gpu-master"}).json()
        assert (borrowed["node_name"], borrowed["placement_group_id"], borrowed["bundle_index"]) == \
            ("gpu2", record["placement_group_id"], 0)
        assert borrowed["reasons"][0] == f"ran in allocation {record['id']} on donor gpu2, borrowed by gpu-master"
        http.post("/v1/schedule/borrowed-1/complete", json={"ok": True}, headers=owned(borrowed))

        # a real job: the task itself reports where it ran
        job = client.submit_job({"task": "compute_task", "count": 1, "strategy": "node_specific",
                                 "node": "gpu-master", "wait": True, "timeout_s": 120})
        assert job.state == "succeeded", job
        assert job.per_node == {"gpu2": 1}
        assert job.results[0].result["node"] == "gpu2"
    finally:
        http.post("/v1/schedule/fill-master/complete", json={"ok": True}, headers=owned(full))


def fill_all_cpus(sharing, priority: str) -> dict[str, dict]:
    """Every node lends its 2 CPUs: gpu-master borrows gpu2's and gpu1's, gpu1 borrows gpu-master's."""
    records = {
        "gpu2": sharing(node="gpu-master", type="cpu", amount=2, priority=priority),
        "gpu1": sharing(node="gpu-master", type="cpu", amount=2, priority=priority),
        "gpu-master": sharing(node="gpu1", type="cpu", amount=2, priority=priority),
    }
    assert {donor: r["donor"] for donor, r in records.items()} == {d: d for d in records}
    assert all(r["state"] == "active" and r["ready"] for r in records.values())
    return records


def test_critical_request_preempts_a_low_allocation_when_the_cluster_is_full(http, sharing):
    lows = fill_all_cpus(sharing, "low")
    critical = sharing(expect=201, node="gpu-master", type="cpu", amount=1, priority="critical")
    # one victim on either donor of gpu-master; ties go to the donor name: gpu1
    assert critical["state"] == "active" and critical["donor"] == "gpu1"
    assert f"by preempting {lows['gpu1']['id']} (low)" in critical["reason"]
    victim = http.get(f"/v1/sharing/{lows['gpu1']['id']}").json()
    assert victim["state"] == "preempted" and not victim["holding"]
    assert f"preempted by critical request {critical['id']}" in victim["reason"]
    eventually(lambda: group_of(victim).get("state") == "REMOVED", "victim's group removed")
    eventually(lambda: group_of(critical).get("state") == "CREATED", "critical group placed")
    assert list(group_of(critical)["bundles_to_node_id"].values()) == [node_ids()["gpu1"]]
    for donor in ("gpu2", "gpu-master"):
        assert http.get(f"/v1/sharing/{lows[donor]['id']}").json()["state"] == "active"


def test_normal_request_does_not_preempt_a_high_one_and_waits_its_turn(http, sharing):
    highs = fill_all_cpus(sharing, "high")
    waiting = sharing(expect=202, node="gpu-master", type="cpu", amount=1, priority="normal", timeout_s=600)
    assert waiting["state"] == "pending" and waiting["donor"] is None
    assert waiting["reason"].startswith("waiting: no donor has 1 CPU to spare")
    assert all(http.get(f"/v1/sharing/{r['id']}").json()["state"] == "active" for r in highs.values())
    assert [p["id"] for p in http.get("/v1/sharing").json()["pending"]] == [waiting["id"]]
    # capacity frees: the queued request is granted on the donor that freed
    http.post(f"/v1/sharing/{highs['gpu2']['id']}/release", headers=owned(highs["gpu2"]))
    granted = eventually(lambda: (lambda r: r if r["state"] == "active" and r["ready"] else None)(
        http.get(f"/v1/sharing/{waiting['id']}").json()), "queued request granted")
    assert granted["donor"] == "gpu2"


def test_lease_expires_and_frees_the_resources(http, sharing):
    record = sharing(expect=201, node="gpu1", type="gpu", amount=1, duration_s="3s")
    assert record["donor"] == "gpu2"
    assert group_of(record)["state"] == "CREATED"
    ended = eventually(lambda: (lambda r: r if r["state"] == "expired" and not r["holding"] else None)(
        http.get(f"/v1/sharing/{record['id']}").json()), "lease expired")
    assert ended["reason"].startswith("lease ended")
    eventually(lambda: group_of(record).get("state") == "REMOVED", "expired group removed")

    def gpu2_gpu_spare() -> bool:
        rows = http.get("/v1/sharing").json()["capacity"]
        return any(row["node"] == "gpu2" and row["resource"] == "GPU" and row["spare"] == 1 for row in rows)

    eventually(gpu2_gpu_spare, "gpu2's GPU spare again")
    nodes = {n["name"]: n for n in http.get("/v1/cluster").json()["nodes"]}
    assert nodes["gpu2"]["reserved"].get("GPU", 0) == 0


def test_a_stalled_load_balancer_does_not_keep_a_lease_alive(http, sharing):
    """Issue 20: a tick waits for the cluster's view at most `OBSERVE_TIMEOUT_S`, then ends the
    leases that are due anyway; the group goes once a view shows its tasks are done."""
    record = sharing(expect=201, node="gpu1", type="gpu", amount=1, duration_s="3s")
    balancer = replica_process("LoadBalancer")
    balancer.suspend()  # SIGSTOP: its snapshot never comes
    try:
        ended = eventually(lambda: (lambda r: r if r["state"] == "expired" else None)(
            http.get(f"/v1/sharing/{record['id']}").json()), "lease expired with the LoadBalancer stopped", 30)
        status = http.get("/v1/sharing", timeout=30)  # needs the view: a clear 503, nothing made
        asked = http.post("/v1/sharing", timeout=30, json={"node": "gpu1", "type": "cpu", "amount": 1})
    finally:
        balancer.resume()
    assert ended["reason"].startswith("lease ended")
    for answer in (status, asked):
        assert answer.status_code == 503 and answer.json()["error"].startswith("no view of the cluster within 5 s"), \
            answer.text
    eventually(lambda: group_of(record).get("state") == "REMOVED", "expired group removed once it is seen again")


def test_a_stalled_sharing_manager_is_a_503_naming_it_not_a_hang(http, sharing):
    """Issue 20: the Ingress waits for the SharingManager at most PEER_ANSWER_S; a request it
    gave up on is not made once the manager runs again (its caller was told it failed)."""
    before = http.get("/v1/sharing").json()
    manager = replica_process("SharingManager")
    manager.suspend()
    try:
        answers = [http.get("/v1/sharing", timeout=30), http.post("/v1/sharing", timeout=30,
                                                                  json={"node": "gpu1", "type": "cpu", "amount": 1})]
    finally:
        manager.resume()
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert re.match(r"the SharingManager did not answer within (10|20) s", answer.json()["error"]), answer.text
    assert eventually(lambda: http.get("/v1/sharing").status_code == 200, "the SharingManager answers again")
    time.sleep(1.0)  # what it had queued has run by now
    after = http.get("/v1/sharing").json()
    assert [(len(s["allocations"]), len(s["pending"])) for s in (before, after)] == [(0, 0), (0, 0)], after


def manager_actors(cluster_address: str) -> list:
    # name this cluster: other clusters on the machine have dashboards too
    return [a for a in list_actors(address=cluster_address, filters=[("state", "=", "ALIVE")], limit=1000)
            if "SharingManager" in (a.class_name or "")]


def kill_the_manager(cluster_address: str) -> None:
    """`ray.kill` the SharingManager replica and wait until Serve has started another."""
    (before,) = manager_actors(cluster_address)
    ray.kill(ray.get_actor(before.name, namespace=before.ray_namespace), no_restart=True)
    after = eventually(lambda: [a for a in manager_actors(cluster_address) if a.actor_id != before.actor_id],
                       "replica restarted")
    assert len(after) == 1


def test_killing_the_manager_replica_loses_no_allocation(http, sharing, cluster_address):
    record = sharing(expect=201, node="gpu-master", type="memory", amount=1)
    assert record["donor"] == "gpu2"
    kill_the_manager(cluster_address)
    back = eventually(lambda: (lambda r: r.json() if r.status_code == 200 else None)(
        http.get(f"/v1/sharing/{record['id']}")), "manager answers again")
    assert (back["state"], back["donor"], back["placement_group_id"]) == ("active", "gpu2", record["placement_group_id"])
    assert group_of(record)["state"] == "CREATED"
    assert [a["id"] for a in http.get("/v1/sharing").json()["allocations"]] == [record["id"]]


def test_a_manager_replaced_by_a_newer_one_grants_nothing_and_steps_aside(http, sharing, cluster_address):
    """A rolling update keeps the old replica alive beside the new one: once the new one has
    claimed the ledger, the old one can neither overwrite it nor make a grant it would lose."""
    SoleWriterRecord(f"{KV_KEY}:grid").claim()  # what a newer replica does as it starts
    body = {"node": "gpu-master", "type": "cpu", "amount": 1}
    refused = http.post("/v1/sharing", json=body)
    assert refused.status_code == 503, refused.text
    assert refused.json()["field"] == "resource_sharing" and "nothing was granted" in refused.json()["error"]
    assert no_live_groups()  # write-ahead: the grant's save failed, so no group was created
    again = http.post("/v1/sharing", json=body)  # from now on it refuses at once
    assert again.status_code == 503 and "replaced by a newer one" in again.json()["error"]
    assert http.get("/v1/sharing").json()["allocations"] == []
    kill_the_manager(cluster_address)  # the old one goes: Serve's next replica claims the ledger and grants
    eventually(lambda: http.get("/v1/sharing").status_code == 200, "manager answers again")
    record = sharing(expect=201, **body)
    assert (record["donor"], group_of(record)["state"]) == ("gpu2", "CREATED")


@pytest.mark.parametrize("body, field, words", [
    ({"node": "gpu-master", "type": "cpu", "amount": 3}, "amount", "over the sharing limit"),
    ({"node": "gpu1", "type": "gpu", "amount": 2}, "amount", "over the sharing limit"),
    ({"node": "gpu-master", "type": "memory", "amount": 5}, "amount", "over the sharing limit"),
    ({"node": "nowhere", "type": "cpu", "amount": 1}, "node", "unknown node"),
    ({"node": "gpu1", "type": "disk", "amount": 1}, "type", ""),
    ({"node": "gpu1", "type": "cpu", "amount": 0}, "amount", ""),
    ({"node": "gpu1", "type": "cpu", "amount": 1, "donor": "gpu1"}, "donor", "cannot lend to itself"),
    ({"node": "gpu2", "type": "gpu", "amount": 1, "donor": "gpu-master"}, "donor", "does not lend gpu"),
])
def test_bad_sharing_requests_are_refused_with_the_field(http, body, field, words):
    response = http.post("/v1/sharing", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert words in response.json()["error"]


def test_unknown_ids_are_404(http):
    assert http.get("/v1/sharing/nope").status_code == 404
    assert http.post("/v1/sharing/nope/release").json()["field"] == "id"


def test_handle_client_speaks_the_same_api(base_url):
    from ray import serve

    client = HandleClient(serve.get_app_handle("grid"))
    with pytest.raises(InvalidRequestError) as error:
        asyncio.run(client.request_resources({"node": "gpu-master", "type": "cpu", "amount": 9}))
    assert error.value.field == "amount"
    status = asyncio.run(client.sharing_status())
    assert status.enabled and {row.node for row in status.capacity} == {"gpu-master", "gpu1", "gpu2"}


def test_a_grant_that_cannot_be_recorded_grants_nothing_and_a_retry_grants_once(http, sharing):
    """Saving the ledger fails (GCS KV): the request answers 503 and leaves no record and no
    placement group; once saving works, the same request is granted once."""
    from ray.experimental import internal_kv

    body = {"node": "gpu-master", "type": "cpu", "amount": 1}
    internal_kv._internal_kv_put(FAIL_SAVE_KEY, "fail", namespace=FAULTS_NAMESPACE)
    try:
        refused = http.post("/v1/sharing", json=body)
        assert refused.status_code == 503 and "nothing was granted" in refused.json()["error"], refused.text
        status = http.get("/v1/sharing").json()
        assert status["allocations"] == [] and status["pending"] == []
        assert no_live_groups()
    finally:
        internal_kv._internal_kv_del(FAIL_SAVE_KEY, namespace=FAULTS_NAMESPACE)
    record = sharing(expect=201, **body)
    assert [a["id"] for a in http.get("/v1/sharing").json()["allocations"]] == [record["id"]]
    assert len([g for g in placement_group_table().values()
                if g["name"].startswith("grid-sharing-") and g["state"] != "REMOVED"]) == 1


def test_the_sweep_removes_this_apps_stray_groups_and_never_another_apps(http):
    """A group named as this app's but held by no allocation (a removal that failed, a crash
    between create and save) is removed; one named as another app's (`grid-auth`) is not."""
    from ray.util.placement_group import placement_group, remove_placement_group

    ours = placement_group([{"CPU": 0.01}], name="grid-sharing-grid-0123456789ab", lifetime="detached")
    theirs = placement_group([{"CPU": 0.01}], name="grid-sharing-grid-auth-0123456789ab", lifetime="detached")
    try:
        eventually(lambda: placement_group_table(ours)["state"] == "REMOVED", "this app's stray group swept")
        assert placement_group_table(theirs)["state"] != "REMOVED"
    finally:
        for group in (ours, theirs):
            if placement_group_table(group)["state"] != "REMOVED":
                remove_placement_group(group)
    eventually(no_live_groups, "test groups removed")
