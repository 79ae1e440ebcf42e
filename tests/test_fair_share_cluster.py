"""Fair share between queues on the shared cluster (issue 22): two jobs in two queues over HTTP,
the second arriving while the first fills all 6 CPUs. From the second's first start until it
ends, it gets half the task starts (within 10 points), counted from the Scheduler's decisions;
`/v1/cluster` and `grid queue` show both queues while they share, and a bad queue name is a 422
naming the field."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import ray

from grid_serve.cli import main
from grid_serve.client import GridClient, HandleClient
from tests.test_ownership_faults import eventually, idle_and_unreserved

pytestmark = pytest.mark.cluster

FIRST, SECOND = 60, 30  # tasks; each 0.3 s on one CPU


def submit(http: httpx.Client, queue: str, tasks: int) -> str:
    response = http.post("/v1/jobs", json={"task": "sleep_task", "args": [[i, 0.3] for i in range(tasks)],
                                           "strategy": "load_balanced", "queue": queue})
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def both_waiting(http: httpx.Client) -> dict | None:
    queues = {queue["name"]: queue for queue in http.get("/v1/cluster").json()["queues"]}
    ready = all(name in queues and queues[name]["running"] > 0 for name in ("fair-a", "fair-b"))
    return queues if ready else None


def test_a_second_queue_gets_half_the_starts_though_the_first_came_first(
        client: GridClient, http: httpx.Client, capsys: pytest.CaptureFixture[str]) -> None:
    eventually(lambda: idle_and_unreserved(client), what="an idle cluster")
    first = submit(http, "fair-a", FIRST)
    time.sleep(1.0)  # the first job holds every CPU, its next tasks wait
    second = submit(http, "fair-b", SECOND)
    queues = eventually(lambda: both_waiting(http), timeout_s=30, what="both queues running")
    assert queues["fair-b"]["fair_share"] == queues["fair-a"]["fair_share"] == 0.5, queues
    pending = eventually(lambda: (http.get(f"/v1/jobs/{first}").json().get("pending") or {}).get("fair_share"),
                         timeout_s=30, what="the first job's fair-share standing")
    assert pending.startswith("queue fair-a holds") and "fair share of 50%" in pending, pending
    assert main(["queue", "--address", str(http.base_url)]) == 0
    shown = capsys.readouterr().out
    assert "fair-a" in shown and "fair-b" in shown and "50%" in shown, shown
    for job_id, queue in ((first, "fair-a"), (second, "fair-b")):
        done = client.wait_job(job_id, timeout_s=120)
        assert (done.state, done.queue) == ("succeeded", queue)
    decisions = {job_id: sorted(client.recent_decisions(limit=100, job_id=job_id).decisions, key=lambda d: d.at)
                 for job_id in (first, second)}
    assert [len(decisions[first]), len(decisions[second])] == [FIRST, SECOND]
    began, ended = decisions[second][0].at, decisions[second][-1].at
    firsts = sum(1 for decision in decisions[first] if began <= decision.at <= ended)
    share = SECOND / (SECOND + firsts)
    assert 0.4 <= share <= 0.6, (f"the second queue got {SECOND} of {SECOND + firsts} starts while it had work",
                                 [(d.job_id[:6], round(d.at - began, 2)) for d in sorted(
                                     decisions[first] + decisions[second], key=lambda d: d.at)])
    chosen = [d for d in decisions[second] if "fair share chose it: queue fair-b" in d.explanation.summary]
    assert chosen, decisions[second][0].explanation


def test_a_bad_queue_name_is_refused_naming_the_field(http: httpx.Client) -> None:
    response = http.post("/v1/jobs", json={"task": "sleep_task", "count": 1, "queue": "no spaces please"})
    assert response.status_code == 422
    assert "queue" in response.text and "is not a queue name" in response.text, response.text


def test_a_job_naming_no_queue_waits_in_its_caller_s(http: httpx.Client) -> None:
    """Over HTTP without a token: `anonymous`; through `HandleClient`: its Ray job's own; a bare
    handle call: `default`."""
    from ray import serve

    over_http = http.post("/v1/jobs", json={"task": "compute_task", "count": 1, "wait": True}).json()
    assert over_http["queue"] == "anonymous", over_http

    async def through_the_handle() -> tuple[str | None, str | None]:
        client = HandleClient(serve.get_app_handle("grid"))
        mine = await client.submit_job({"task": "compute_task", "count": 1, "wait": True})
        bare = await serve.get_app_handle("grid").submit_job.remote({"task": "compute_task", "count": 1, "wait": True})
        return mine.queue, bare.queue

    mine, bare = asyncio.run(through_the_handle())
    assert (mine, bare) == (f"ray-job:{ray.get_runtime_context().get_job_id()}", "default")
