"""Nothing a caller sends grows without bound (grid_serve.limits): a queue cap answered with 429
and Retry-After, capped waiting requests (the health route still answers), finished jobs'
results dropped oldest first (410, the status stays), and a paged job list.

The shared app runs with conftest.TEST_LIMITS: 5,000 queued tasks, 20 waiting requests per
Ingress replica, 2 MB of results per job runner."""

from __future__ import annotations

import threading
from collections import defaultdict

import httpx
import pytest
from ray import serve

from grid_serve.client import GridClient
from tests.test_api import owned
from tests.test_ownership_faults import TAG_LEN, eventually, idle_and_unreserved

pytestmark = pytest.mark.cluster


def test_a_job_that_would_overfill_the_queue_gets_429_with_retry_after(http: httpx.Client, client: GridClient) -> None:
    too_big = http.post("/v1/jobs", json={"task": "noop", "count": 5001})
    assert too_big.status_code == 422 and too_big.json()["field"] == "count"
    filler = http.post("/v1/jobs", json={"task": "sleep_task", "args": [[i, 2.0] for i in range(4900)]}).json()
    try:
        refused = http.post("/v1/jobs", json={"task": "noop", "count": 200})
        assert refused.status_code == 429, refused.text
        assert refused.headers["retry-after"] == "5" and "max_queued_tasks" in refused.json()["error"]
        assert http.get("/v1/health").status_code == 200
    finally:
        http.delete(f"/v1/jobs/{filler['job_id']}", headers=owned(filler))
    client.wait_job(filler["job_id"], timeout_s=60, results=False)
    eventually(lambda: idle_and_unreserved(client), what="the queue emptied")
    assert http.post("/v1/jobs", json={"task": "noop", "count": 200, "wait": True}).json()["succeeded"] == 200


def test_waiting_requests_are_capped_and_the_health_route_still_answers(http: httpx.Client, base_url: str) -> None:
    job = http.post("/v1/jobs", json={"task": "sleep_task", "args": [[0, 8.0]]}).json()
    codes: list[int] = []
    lock = threading.Lock()

    def wait_for_it() -> None:
        with httpx.Client(base_url=base_url, timeout=60) as own:
            response = own.get(f"/v1/jobs/{job['job_id']}", params={"wait_s": 30})
        with lock:
            codes.append(response.status_code)
            if response.status_code == 429:
                assert response.headers["retry-after"] == "5" and response.json()["field"] == "wait"

    waiters = [threading.Thread(target=wait_for_it) for _ in range(60)]  # 2 replicas x 20 may wait
    for waiter in waiters:
        waiter.start()
    eventually(lambda: codes.count(429) >= 20, timeout_s=60, what="waiters past the cap turned away")
    assert http.get("/v1/health").status_code == 200  # while 40 requests wait
    for waiter in waiters:
        waiter.join(timeout=60)
    assert codes.count(200) >= 1 and set(codes) <= {200, 429} and len(codes) == 60, codes


def test_old_results_are_dropped_first_and_say_410(http: httpx.Client, client: GridClient) -> None:
    handle = serve.get_app_handle("grid")

    def big_result(_: int = 0) -> str:  # nested: pickled by value, the replicas cannot import tests
        return "x" * 300_000

    by_runner: dict[str, list[str]] = defaultdict(list)
    for _ in range(3):  # 1.2 MB of results each; two of three share a runner (two Ingress replicas)
        status = handle.submit_job.remote({"args": [[i] for i in range(4)], "wait": True}, big_result).result()
        assert status.succeeded == 4
        by_runner[status.job_id[:TAG_LEN]].append(status.job_id)
    older, newer = next(jobs for jobs in by_runner.values() if len(jobs) >= 2)[-2:]
    gone = http.get(f"/v1/jobs/{older}", params={"results": "true"})
    assert gone.status_code == 410 and gone.json()["field"] == "results", gone.text
    status = http.get(f"/v1/jobs/{older}").json()  # its status remains
    assert (status["state"], status["succeeded"]) == ("succeeded", 4)
    kept = http.get(f"/v1/jobs/{newer}", params={"results": "true"}).json()
    assert [len(result["result"]) for result in kept["results"]] == [300_000] * 4


def test_the_job_list_pages_newest_first(http: httpx.Client) -> None:
    for _ in range(3):
        http.post("/v1/jobs", json={"task": "noop", "count": 1, "wait": True})
    first, second = http.get("/v1/jobs", params={"limit": 2}).json(), http.get("/v1/jobs", params={"limit": 2, "offset": 2}).json()
    assert len(first) == 2 and len(second) == 2
    stamps = [job["submitted_at"] for job in first + second]
    assert stamps == sorted(stamps, reverse=True)
    assert {job["job_id"] for job in first}.isdisjoint(job["job_id"] for job in second)
    assert http.get("/v1/jobs", params={"limit": 0}).status_code == 422


def test_schedule_waits_are_capped_per_replica_and_renewals_still_get_through(
        http: httpx.Client, base_url: str, client: GridClient) -> None:
    """gpu2 full; 20 /v1/schedule requests wait for it at once: each Ingress replica lets 5 wait
    (max_schedule_waits) and turns the rest away with 429 naming wait_s, so their long-polls
    cannot take the Scheduler's request slots; a job runs meanwhile (its lease renewals pass)."""
    eventually(lambda: idle_and_unreserved(client), what="an idle cluster")
    full = {"strategy": "node_specific", "target_node": "gpu2", "requirements": {"cpu_count": 2}}
    holds = [http.post("/v1/schedule", json={"task_id": f"cap-hold-{i}", **full}).json() for i in range(2)]
    assert all(hold["node_name"] == "gpu2" for hold in holds), holds
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def wait_for_room(i: int) -> None:
        with httpx.Client(base_url=base_url, timeout=60) as own:
            response = own.post("/v1/schedule", params={"wait_s": 8}, json={"task_id": f"cap-wait-{i}", **full})
        with lock:
            answers.append(response)

    waiters = [threading.Thread(target=wait_for_room, args=(i,)) for i in range(20)]
    try:
        for waiter in waiters:
            waiter.start()

        def turned_away() -> list[httpx.Response]:
            with lock:
                return [a for a in answers if a.status_code == 429 and "max_schedule_waits" in a.text]

        eventually(lambda: len(turned_away()) >= 10, timeout_s=30, what="waiters past the cap turned away")
        assert all(a.json()["field"] == "wait_s" and a.headers["retry-after"] == "5" for a in turned_away())
        job = client.submit_job({"task": "sleep_task", "args": [[i, 0.2] for i in range(4)],
                                 "strategy": "load_balanced", "wait": True, "timeout_s": 60})
        assert job.state == "succeeded"  # placed and renewed while the allowed ones wait
    finally:
        for waiter in waiters:
            waiter.join(timeout=60)
        for i, hold in enumerate(holds):
            http.post(f"/v1/schedule/cap-hold-{i}/complete", headers=owned(hold))
        for answer in answers:
            if answer.status_code == 200:  # placed once the holds went
                decision = answer.json()
                http.post(f"/v1/schedule/{decision['task_id']}/complete", headers=owned(decision))
    assert len(answers) == 20 and {a.status_code for a in answers} <= {200, 429}
    eventually(lambda: idle_and_unreserved(client), timeout_s=30, what="nothing held afterwards")


def test_one_schedule_caller_holds_at_most_max_schedule_held_and_leases_are_bounded(
        http: httpx.Client, client: GridClient) -> None:
    """Callers without a token share one count: 16 small reservations (max_schedule_held in the
    tests' limits) are granted, the 17th is turned away with 429 until one is completed; and a
    lease past max_schedule_lease_s (an hour) is refused with 422 naming lease_s."""
    eventually(lambda: idle_and_unreserved(client), what="an idle cluster")
    small = {"requirements": {"cpu_count": 0.1}}
    held = [http.post("/v1/schedule", json={"task_id": f"held-{i}", **small}).json() for i in range(16)]
    try:
        assert all(decision.get("node_name") for decision in held), held
        over = http.post("/v1/schedule", json={"task_id": "held-16", **small})
        assert over.status_code == 429 and over.json()["field"] == "task_id", over.text
        assert "max_schedule_held" in over.json()["error"] and over.headers["retry-after"] == "5"
        assert http.post("/v1/schedule/held-0/complete", headers=owned(held[0])).status_code == 200
        again = http.post("/v1/schedule", json={"task_id": "held-16", **small})
        assert again.status_code == 200, again.text
        held[0] = again.json()
    finally:
        for decision in held:
            http.post(f"/v1/schedule/{decision['task_id']}/complete", headers=owned(decision))
    long = http.post("/v1/schedule", params={"lease_s": 7200}, json={"task_id": "too-long"})
    assert long.status_code == 422 and long.json()["field"] == "lease_s", long.text
    assert "max_schedule_lease_s" in long.json()["error"]
    eventually(lambda: idle_and_unreserved(client), what="nothing left reserved")
