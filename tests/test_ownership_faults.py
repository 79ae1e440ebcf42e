"""Capacity always has a live owner: kill each replica (Ingress, Scheduler, LoadBalancer,
MetricsCollector, SharingManager) and a job runner in the middle of a job.

On the shared cluster (the app runs two Ingress replicas there). After each kill: the app
answers again, the job succeeds, nothing stays reserved once idle, and a following 99-task
spread job lands 33/33/33. A killed runner's job is reported gone, with the reason.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from typing import Any, Callable

import httpx
import psutil
import pytest
import ray
from ray import serve

from grid_serve.client import GridClient, HandleClient
from grid_serve.errors import GridError
from grid_serve.models import ResourceRequirement, SchedulingRequest
from grid_serve.protocol import Submit
from tests.test_api import owned

pytestmark = pytest.mark.cluster

TAG_LEN = 4


def serve_actor(deployment: str) -> Any:
    """The live replica actor of `deployment` in the grid app."""
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["name"].startswith(f"SERVE_REPLICA::grid#{deployment}#"):
            return ray.get_actor(entry["name"], namespace=entry["namespace"])
    raise AssertionError(f"no live {deployment} replica")


def runner_actors() -> dict[str, Any]:
    """Job runners by tag."""
    return {entry["name"].rsplit("-", 1)[1]: ray.get_actor(entry["name"], namespace=entry["namespace"])
            for entry in ray.util.list_named_actors(all_namespaces=True)
            if entry["name"].startswith("grid-runner-grid-")}


def eventually(check: Callable[[], Any], timeout_s: float = 90.0, what: str = "condition") -> Any:
    """`check()`'s first truthy answer; errors while the app restarts count as 'not yet'."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (GridError, httpx.HTTPError, ray.exceptions.RayError) as exc:
            last = exc
        time.sleep(0.25)
    raise AssertionError(f"{what} did not happen within {timeout_s:g}s (last: {last!r})")


def idle_and_unreserved(client: GridClient) -> bool:
    status = client.cluster_status()
    return status.queued == 0 and all(node.in_flight == 0 and not any(node.reserved.values())
                                      for node in status.nodes)


def assert_recovered(client: GridClient, http: httpx.Client) -> None:
    eventually(lambda: http.get("/v1/health").status_code == 200, what="health")
    eventually(lambda: idle_and_unreserved(client), what="reservations back to zero")
    job = eventually(lambda: client.submit_job({"task": "compute_task", "count": 99, "strategy": "spread",
                                                "wait": True, "timeout_s": 120}), what="a new job")
    assert job.state == "succeeded"
    assert job.per_node == {"gpu-master": 33, "gpu1": 33, "gpu2": 33}


def ended(client: GridClient, job_id: str) -> Any:
    """The job's final status, read through whichever replica answers (retried while they restart)."""
    return eventually(lambda: (s := client.wait_job(job_id, timeout_s=5)).state not in ("queued", "running") and s,
                      timeout_s=120, what=f"job {job_id} ending")


def start_job(http: httpx.Client, tasks: int = 36, seconds: float = 0.4) -> str:
    response = http.post("/v1/jobs", json={"task": "sleep_task", "args": [[i, seconds] for i in range(tasks)],
                                           "strategy": "spread"})
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


@pytest.mark.parametrize("deployment", ["Scheduler", "LoadBalancer", "Ingress", "MetricsCollector", "SharingManager"])
def test_a_replica_killed_mid_job_loses_nothing(deployment: str, client: GridClient, http: httpx.Client) -> None:
    eventually(lambda: idle_and_unreserved(client), what="an idle cluster")
    job_id = start_job(http)
    time.sleep(0.8)  # tasks are running and more wait: the job is in the middle
    ray.kill(serve_actor(deployment), no_restart=True)
    final = ended(client, job_id)
    # Scheduler: the runner registers its job with the new one (what runs, per-node counts, what
    # waits); LoadBalancer: only the ledger's copy is lost; Ingress: the detached runner goes on.
    assert final.state == "succeeded" and final.succeeded == 36
    assert_recovered(client, http)
    if deployment == "Ingress":  # the killed replica's runner, idle now, left: one runner per live replica
        eventually(lambda: len(runner_actors()) == 2, what="the orphaned runner exiting")


def test_job_runners_live_on_the_head_node(client: GridClient) -> None:
    """A runner holds its jobs and results: on the head node, no worker node's death takes them
    (its Ingress replica may sit anywhere; a new replica takes an orphaned runner over)."""
    head = next(node["NodeID"] for node in ray.nodes()
                if node["Alive"] and "node:__internal_head__" in node["Resources"])
    runners = eventually(lambda: len(runner_actors()) >= 2 and runner_actors(), what="two runners")
    where = {tag: ray.get(runner.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id()))
             for tag, runner in runners.items()}
    assert set(where.values()) == {head}, where


def test_a_schedule_reservation_survives_a_scheduler_restart(client: GridClient, http: httpx.Client) -> None:
    """A /v1/schedule caller's 2 CPUs on gpu1, then the Scheduler killed: the new Scheduler shows
    them reserved (new work does not land on them), its owner's `complete` releases them."""
    eventually(lambda: idle_and_unreserved(client), what="an idle cluster")
    body = {"task_id": "survivor", "strategy": "node_specific", "target_node": "gpu1", "requirements": {"cpu_count": 2}}
    decision = http.post("/v1/schedule", params={"lease_s": 600}, json=body)
    assert decision.status_code == 200 and decision.json()["node_name"] == "gpu1", decision.text
    time.sleep(1.0)  # the reservation is written to the GCS off the request's path
    scheduler = serve.get_deployment_handle("Scheduler", app_name="grid")
    old_epoch = scheduler.caller_settings.remote().result()["epoch"]
    ray.kill(serve_actor("Scheduler"), no_restart=True)

    def a_new_scheduler() -> bool:
        try:
            return scheduler.caller_settings.remote().result(timeout_s=5)["epoch"] != old_epoch
        except Exception:  # being replaced: no replica answers yet
            return False

    eventually(a_new_scheduler, what="a new Scheduler")

    def gpu1_reserved() -> float:
        return next(node.reserved.get("CPU", 0.0) for node in client.cluster_status().nodes if node.name == "gpu1")

    assert gpu1_reserved() == 2.0  # before: 0, and new work landed on them
    done = http.post("/v1/schedule/survivor/complete", headers=owned(decision.json()))
    assert done.status_code == 200 and done.json()["released"] is True, done.text
    assert_recovered(client, http)


def test_a_dead_runner_s_capacity_is_reclaimed_and_its_job_explains(client: GridClient, http: httpx.Client) -> None:
    eventually(lambda: idle_and_unreserved(client), what="an idle cluster")
    job_id = start_job(http, tasks=60, seconds=0.5)
    time.sleep(0.8)
    ray.kill(runner_actors()[job_id[:TAG_LEN]], no_restart=True)
    # Its lease lapses (5 s here) and the Scheduler reclaims what it held; the job says why.
    eventually(lambda: idle_and_unreserved(client), timeout_s=30, what="reclaimed reservations")
    response = eventually(lambda: (r := http.get(f"/v1/jobs/{job_id}")).status_code == 404 and r,
                          what="the job's fate")
    assert "stopped renewing" in response.json()["error"]
    assert_recovered(client, http)


def test_a_handle_caller_whose_runner_was_killed_has_its_next_job_run_by_a_new_one(
        client: GridClient, http: httpx.Client) -> None:
    """`HandleClient` sends jobs straight to its Ingress replica's runner; that runner killed,
    the next job goes through the Ingress, which starts another runner and runs it there."""
    eventually(lambda: idle_and_unreserved(client), what="an idle cluster")

    async def a_job_then_another_after_its_runner_dies() -> tuple[Any, Any]:
        grid = HandleClient(serve.get_app_handle("grid"))
        first = await grid.submit_job({"task": "noop", "count": 3, "wait": True})
        ray.kill(runner_actors()[first.job_id[:TAG_LEN]], no_restart=True)
        return first, await grid.submit_job({"task": "noop", "count": 3, "wait": True})

    first, second = asyncio.run(a_job_then_another_after_its_runner_dies())
    assert (first.state, first.succeeded, second.state, second.succeeded) == ("succeeded", 3, "succeeded", 3)
    assert second.job_id[:TAG_LEN] != first.job_id[:TAG_LEN] and second.job_id[:TAG_LEN] in runner_actors()
    assert http.get(f"/v1/jobs/{second.job_id}").json()["state"] == "succeeded"
    assert_recovered(client, http)


def test_a_killed_ingress_replica_s_jobs_stay_readable_after_they_end(client: GridClient, http: httpx.Client) -> None:
    """Its runner is taken over by the replica Serve starts in its place: the jobs, the finished
    one and the one that was running, are read by id and listed long after the runner went idle
    (an orphaned runner used to leave once idle, and its jobs answered 404)."""
    eventually(lambda: idle_and_unreserved(client), what="an idle cluster")
    running = start_job(http, tasks=6, seconds=3.0)
    runner = runner_actors()[running[:TAG_LEN]]
    finished = eventually(lambda: (r := http.post("/v1/jobs", json={"task": "noop", "count": 10, "wait": True})).json()
                          ["job_id"].startswith(running[:TAG_LEN]) and r.json(), what="a finished job on that runner")
    parent = ray.get(runner.__ray_call__.remote(lambda self: self._parentage.parent))
    ray.kill(ray.get_actor(parent[0], namespace=parent[1]), no_restart=False)
    assert ended(client, running).state == "succeeded"
    time.sleep(3.0)  # several heartbeats with no job left: an orphan would have gone by now
    for job_id in (running, finished["job_id"]):
        assert http.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded"
    assert {running, finished["job_id"]} <= {job["job_id"] for job in http.get("/v1/jobs").json()}
    assert running[:TAG_LEN] in runner_actors() and len(runner_actors()) == 2  # taken over, none left behind
    assert_recovered(client, http)


@ray.remote(num_cpus=0)
class SilentRunner:
    """A live runner whose lease renewals never reach the Scheduler (as when Serve's router held
    a busy runner's renewals for over 5 s): asked directly, it says which jobs it still holds."""

    def __init__(self) -> None:
        self.jobs: set[str] = set()

    def hold(self, job_id: str, held: bool = True) -> None:
        (self.jobs.add if held else self.jobs.discard)(job_id)

    def holds(self, job_ids: list[str]) -> list[str]:
        return [job_id for job_id in job_ids if job_id in self.jobs]


def test_a_live_runner_whose_renewals_stop_arriving_keeps_its_job(client: GridClient) -> None:
    eventually(lambda: idle_and_unreserved(client), what="an idle cluster")
    name, job_id = f"grid-runner-silent-{uuid.uuid4().hex[:4]}", f"silent{uuid.uuid4().hex[:6]}"
    runner = SilentRunner.options(name=name, namespace="grid-serve").remote()
    try:
        ray.get(runner.hold.remote(job_id))
        requests = [SchedulingRequest(task_id=f"{job_id}-{i}", job_id=job_id, task_type="sleep_task",
                                      requirements=ResourceRequirement(cpu_count=1)) for i in range(3)]
        scheduler = serve.get_deployment_handle("Scheduler", app_name="grid")
        assert len(scheduler.submit.remote(Submit(requests=requests, runner=name)).result().placed) == 3
        time.sleep(8.0)  # past the 5 s lease with no renewal: the runner answers that it holds the job
        assert not idle_and_unreserved(client) and client.cluster_status().jobs_running >= 1
        ray.get(runner.hold.remote(job_id, held=False))  # now it does not: reclaimed at the next lapse
        eventually(lambda: idle_and_unreserved(client), timeout_s=30, what="the released job reclaimed")
    finally:
        ray.kill(runner)


def test_a_stopped_runner_s_capacity_is_reclaimed_and_its_job_goes_on_when_it_resumes(
        client: GridClient, http: httpx.Client) -> None:
    eventually(lambda: idle_and_unreserved(client), what="an idle cluster")
    job_id = start_job(http, tasks=24, seconds=0.5)
    time.sleep(0.8)
    runner = runner_actors()[job_id[:TAG_LEN]]
    process = psutil.Process(ray.get(runner.__ray_call__.remote(lambda _: os.getpid())))  # not the state API: slow under load
    process.suspend()  # SIGSTOP: no renewal, and no answer when the Scheduler asks whether it holds the job
    try:
        eventually(lambda: idle_and_unreserved(client), timeout_s=30, what="a stopped runner's reservations reclaimed")
        read = http.get(f"/v1/jobs/{job_id}")  # answered (503), never held while the runner is stopped
        assert read.status_code == 503 and read.json()["field"] == "job_id", read.text
        assert http.get("/v1/jobs").status_code == 200  # the other runners' jobs are still listed
    finally:
        process.resume()
    final = ended(client, job_id)  # resumed, it registers the job again and finishes it
    assert (final.state, final.succeeded) == ("succeeded", 24), final
    assert_recovered(client, http)


def test_any_ingress_replica_answers_for_any_job(client: GridClient, http: httpx.Client, base_url: str) -> None:
    eventually(lambda: len(runner_actors()) >= 2, what="two runners (one per Ingress replica)")
    jobs: list[str] = []
    keys: dict[str, dict[str, str]] = {}
    lock = threading.Lock()

    def submit() -> None:
        with httpx.Client(base_url=base_url, timeout=60) as own:
            body = own.post("/v1/jobs", json={"task": "sleep_task", "args": [[0, 0.5]]}).json()
        with lock:
            jobs.append(body["job_id"])
            keys[body["job_id"]] = owned(body)

    for _ in range(10):  # until both replicas took some: requests spread over the replicas
        threads = [threading.Thread(target=submit) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if len({job[:TAG_LEN] for job in jobs}) >= 2:
            break
    assert len({job[:TAG_LEN] for job in jobs}) >= 2, jobs
    for job_id in jobs:  # each read goes to whichever replica the proxy picks
        for _ in range(4):
            response = http.get(f"/v1/jobs/{job_id}")
            assert response.status_code == 200 and response.json()["job_id"] == job_id
    assert {job["job_id"] for job in http.get("/v1/jobs").json()} >= set(jobs)
    cancelled = [http.delete(f"/v1/jobs/{job_id}", headers=keys[job_id]).json() for job_id in jobs]
    unexpected = [body for body in cancelled
                  if body.get("job_id") not in jobs or body.get("state") not in ("cancelled", "succeeded")]
    assert not unexpected, unexpected
    for job_id in jobs:
        assert client.wait_job(job_id, timeout_s=30).state in ("cancelled", "succeeded")


def replica_process(deployment: str) -> psutil.Process:
    """The OS process of this app's live `deployment` replica (frozen and thawed below), asked
    of the replica's actor itself: a scan of process titles could pick a replica an earlier test
    replaced (its process still exiting) or another checkout's."""
    pid = ray.get(serve_actor(deployment).__ray_call__.remote(lambda _: os.getpid()), timeout=30)
    process = psutil.Process(pid)
    assert f"ServeReplica:grid:{deployment}" in " ".join(process.cmdline()), (deployment, process.cmdline())
    return process


def test_a_stalled_scheduler_makes_health_say_so_instead_of_hanging(client: GridClient, http: httpx.Client) -> None:
    """Issue 20: with the Scheduler stopped, `/v1/health` answers (degraded, naming it) within
    its own timeout instead of waiting for it, the counts the last it knew; the routes that read
    the Scheduler answer 503 naming it."""
    eventually(lambda: idle_and_unreserved(client), what="an idle cluster")
    scheduler = replica_process("Scheduler")
    scheduler.suspend()  # SIGSTOP: it answers nothing
    try:
        time.sleep(1.0)  # past the health route's cache of the last answer
        health = http.get("/v1/health", timeout=20).json()
        reads = [http.get(path, timeout=30) for path in ("/v1/cluster", "/v1/decisions", "/v1/placements")]
    finally:
        scheduler.resume()
    assert (health["status"], health["stalled"]) == ("degraded", ["scheduler"]), health
    assert health["reason"].startswith("the Scheduler did not answer within 3 s")
    for read in reads:  # the Scheduler's reads: a 503 saying who, not a request held for ever
        assert read.status_code == 503, (read.request.url, read.text)
        assert read.json()["error"].startswith("the Scheduler did not answer within 10 s"), read.text
    # ok, not only unstalled: right after the resume the Scheduler answers from the snapshot it
    # had when it stopped (34 s old), and an Ingress replica caches that answer for 0.5 s; a test
    # that starts within it reads a degraded health it did not cause
    assert eventually(lambda: http.get("/v1/health").json()["status"] == "ok", what="health ok again")
    assert_recovered(client, http)


def test_a_stalled_metrics_collector_is_not_trusted_forever(client: GridClient, http: httpx.Client) -> None:
    """Issue 20: a node snapshot too old to trust (the collector stopped) makes every node stale:
    health says so, and a new job waits until a fresh snapshot comes."""
    eventually(lambda: idle_and_unreserved(client), what="an idle cluster")
    collector = replica_process("MetricsCollector")
    collector.suspend()  # answers nothing, like a Ray state call that hangs
    stopped_at = time.monotonic()

    def distrusted_since_the_stop() -> dict | None:
        """Degraded by this stop: the snapshot it distrusts is one from about when the collector
        stopped (an answer left from an earlier stall names an older one: CI read one of 34 s)."""
        health = http.get("/v1/health").json()
        since_stop = time.monotonic() - stopped_at
        return health if health["status"] == "degraded" and health["snapshot_age_s"] <= since_stop + 2.0 else None

    try:
        health = eventually(distrusted_since_the_stop, timeout_s=60, what="the old snapshot distrusted")
        assert health["stalled"] == [] and health["nodes_stale"] == 3 and health["snapshot_age_s"] > 10, health
        job_id = start_job(http, tasks=3, seconds=0.1)
        time.sleep(1.0)
        job = client.get_job(job_id)
        # no new work on nodes nobody vouches for
        assert job.state == "queued", (collector.status(), health, http.get("/v1/health").json(), job)
    finally:
        collector.resume()
    final = ended(client, job_id)
    assert final.state == "succeeded" and final.succeeded == 3
    assert http.get("/v1/health").json()["status"] == "ok"
    assert_recovered(client, http)
