"""Quotas with borrowing on the shared cluster (issue 22): queue quota-a (2 CPUs owed) borrows
all 6 while quota-b (4 owed) is idle; when quota-b submits, its first 4 tasks are placed before
any more borrowed work of quota-a's, and quota-a's borrowed work never waits inside Ray ahead of them.
`/v1/cluster` and `grid queue` show the quota and what is borrowed; each decision says where
its queue stood. Placement order is asserted, not times."""

from __future__ import annotations

import httpx
import pytest

from grid_serve.cli import main
from grid_serve.client import GridClient
from tests.test_ownership_faults import eventually, idle_and_unreserved

pytestmark = pytest.mark.cluster

A_TASKS, B_TASKS, RUN_S = 18, 8, 1.0


def submit(http: httpx.Client, queue: str, tasks: int, run_s: float = RUN_S) -> str:
    response = http.post("/v1/jobs", json={"task": "sleep_task", "args": [[i, run_s] for i in range(tasks)],
                                           "strategy": "load_balanced", "queue": queue})
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def queues(http: httpx.Client) -> dict[str, dict]:
    return {queue["name"]: queue for queue in http.get("/v1/cluster").json()["queues"]}


def borrowing_everything(http: httpx.Client) -> dict | None:
    shown = queues(http)
    a = shown.get("quota-a", {})
    return shown if a.get("running") == 6 and a.get("borrowed") == {"CPU": 4.0} else None


def test_a_queue_borrows_what_another_leaves_idle_and_gives_it_back_at_task_boundaries(
        client: GridClient, http: httpx.Client, capsys: pytest.CaptureFixture[str]) -> None:
    eventually(lambda: idle_and_unreserved(client), what="an idle cluster")
    first = submit(http, "quota-a", A_TASKS)
    shown = eventually(lambda: borrowing_everything(http), timeout_s=30, what="quota-a borrowing all 6 CPUs")
    assert (shown["quota-a"]["quota"], shown["quota-b"]["quota"], shown["quota-b"]["borrowed"]) == \
        ({"CPU": 2.0}, {"CPU": 4.0}, {}), shown
    assert shown["quota-a"]["waiting"], shown  # borrowed work was not queued inside Ray: it waits here
    assert main(["queue", "--address", str(http.base_url)]) == 0
    assert "CPU 2 (borrows 4)" in capsys.readouterr().out
    second = submit(http, "quota-b", B_TASKS)
    for job_id in (first, second):
        assert client.wait_job(job_id, timeout_s=120).state == "succeeded"
    decisions = {job_id: sorted(client.recent_decisions(limit=100, job_id=job_id).decisions, key=lambda d: d.at)
                 for job_id in (first, second)}
    assert [len(decisions[first]), len(decisions[second])] == [A_TASKS, B_TASKS]
    b_first, b_fourth = decisions[second][0].at, decisions[second][3].at
    # quota-b's tasks wait in the Scheduler while quota-a's do (not inside Ray behind quota-a's running
    # ones), so its 4 are placed over several drains as slots free; quota-a may take a slot meanwhile
    # only within its own quota of 2, never a borrowed one
    between = [d.explanation.summary for d in decisions[first] if b_first <= d.at < b_fourth]
    assert not [summary for summary in between if "quota-a borrows" in summary], \
        f"quota-a borrowed slots before quota-b held the 4 CPUs it is owed: {between}"
    summaries = [d.explanation.summary for d in decisions[second][:4]]
    assert all("queue quota-b is within its quota" in summary for summary in summaries), summaries
    borrowed = [d for d in decisions[first] if "queue quota-a borrows beyond its quota" in d.explanation.summary]
    assert len(borrowed) >= 4, [d.explanation.summary for d in decisions[first][:8]]


def test_a_queue_that_reclaims_stops_borrowed_running_tasks_and_each_runs_again(
        client: GridClient, http: httpx.Client) -> None:
    """reclaim-b (`reclaim: cancel_running`, 4 CPUs owed) submits while quota-a (2 owed) runs 8 s
    tasks on all 6 CPUs: 4 of quota-a's running tasks are stopped, reclaim-b's 4 all start before
    any of quota-a's ends (without reclaim, none could), and the 4 stopped run again and succeed."""
    eventually(lambda: idle_and_unreserved(client), what="an idle cluster")
    borrower = submit(http, "quota-a", 6, run_s=8.0)
    eventually(lambda: borrowing_everything(http), timeout_s=30, what="quota-a borrowing all 6 CPUs")
    owner = submit(http, "reclaim-b", 4, run_s=0.5)
    lent, owed = client.wait_job(borrower, timeout_s=120), client.wait_job(owner, timeout_s=120)
    assert (lent.state, owed.state) == ("succeeded", "succeeded"), (lent.error, owed.error)
    assert lent.taken_back == 4 and owed.taken_back == 0
    first_end = min(outcome.started_at + outcome.duration_s for outcome in lent.results)
    assert max(outcome.started_at for outcome in owed.results) < first_end, (lent.results, owed.results)
    assert all(outcome.ok for outcome in lent.results) and len(lent.results) == 6


def test_a_quota_setting_that_cannot_hold_is_refused_naming_the_field() -> None:
    from pydantic import ValidationError

    from deployments.app import AppArgs

    with pytest.raises(ValidationError, match="borrowing_limit names GPU"):
        AppArgs.model_validate({"queues": {"team": {"quota": {"CPU": 2}, "borrowing_limit": {"GPU": 1}}}})
