"""Who may reach the HTTP API: foreign hosts and cross-site browser requests are refused on every
route, and with a token configured, starting, cancelling or releasing work and reading results
need it. The policy as a table, then on the shared app and on a second app with a token."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Iterator

import httpx
import pytest

from grid_serve.access import AccessPolicy, needs_token, route_path
from tests.test_api import owned

OWN = {"host": "127.0.0.1:8000"}


@pytest.mark.parametrize("headers, status", [
    (OWN, None),  # curl, the CLI, the clients
    ({"host": "localhost:8000"}, None),
    ({"host": "[::1]:8000"}, None),
    ({**OWN, "origin": "http://127.0.0.1:8000", "sec-fetch-site": "same-origin"}, None),  # our own /ui page
    ({"host": "evil.example:8000"}, 403),  # DNS rebinding: a foreign name pointed at loopback
    ({"host": ""}, 403),
    ({**OWN, "origin": "http://evil.example"}, 403),
    ({**OWN, "origin": "http://localhost:3000"}, 403),  # another local site is another origin
    ({**OWN, "origin": "null"}, 403),  # sandboxed frames, file:// pages
    ({**OWN, "sec-fetch-site": "cross-site"}, 403),
    ({**OWN, "sec-fetch-site": "same-site"}, 403),
])
def test_hosts_and_origins(headers: dict[str, str], status: int | None) -> None:
    refusal = AccessPolicy().refusal("POST", "/v1/jobs", {}, headers)
    assert (refusal.status if refusal else None) == status


def test_allowed_hosts_extend_the_loopback_default() -> None:
    policy = AccessPolicy(allowed_hosts=("127.0.0.1", "grid.svc.cluster.local"))
    assert policy.refusal("GET", "/v1/cluster", {}, {"host": "grid.svc.cluster.local:8000"}) is None
    assert AccessPolicy(allowed_hosts=("*",)).refusal("GET", "/v1/cluster", {}, {"host": "anything"}) is None


@pytest.mark.parametrize("method, path, query, needed", [
    ("POST", "/v1/jobs", {}, True),
    ("DELETE", "/v1/jobs/abcd12345678", {}, True),
    ("POST", "/v1/schedule", {"lease_s": "30"}, True),
    ("POST", "/v1/schedule/my_task/complete", {}, True),
    ("POST", "/v1/sharing", {}, True),
    ("POST", "/v1/sharing/0123abcd/release", {}, True),
    ("GET", "/v1/jobs/abcd12345678", {"results": "true"}, True),
    ("GET", "/v1/jobs/abcd12345678", {}, False),  # status without results stays open
    ("GET", "/v1/jobs", {}, False),
    ("GET", "/v1/cluster", {}, False),
    ("GET", "/v1/health", {}, False),
    ("GET", "/v1/sharing", {}, False),
])
def test_what_needs_the_token(method: str, path: str, query: dict[str, str], needed: bool) -> None:
    assert needs_token(method, path, query) is needed
    policy = AccessPolicy(tokens={"token": "s3cret"})
    for prefix in ("/prefix", "/api/v1/grid", "/v1", "/x/v1/jobs"):  # a route prefix may hold /v1/ itself
        refused = policy.refusal(method, prefix + path, query, OWN, root_path=prefix)
        assert (refused is not None and refused.status == 401) is needed, prefix
    assert policy.refusal(method, path, query, {**OWN, "authorization": "Bearer s3cret"}) is None
    if needed:
        assert policy.refusal(method, path, query, {**OWN, "authorization": "Bearer wrong"}).status == 401


@pytest.mark.parametrize("root_path, path", [
    ("", "/v1/jobs"), ("/auth", "/auth/v1/jobs"), ("/api/v1/grid", "/api/v1/grid/v1/jobs/abc"),
    ("/api/v1/grid", "/api/v1/grid"), ("/api/v1/grid", "/api/v1/gridx/v1/jobs"), ("/auth", "/other/v1/jobs"),
])
def test_the_token_check_reads_the_path_the_router_routes(root_path: str, path: str) -> None:
    """One reading of the path: the access check sees what Starlette's router matches routes against."""
    from starlette._utils import get_route_path

    assert route_path(path, root_path) == get_route_path({"path": path, "root_path": root_path})


TRUE_WORDS = ("1", "t", "T", "y", "Y", "yes", "YES", "on", "On", "true", "True", "tRuE")
FALSE_WORDS = ("0", "f", "F", "n", "N", "no", "off", "false", "False")


@pytest.mark.parametrize("word", TRUE_WORDS + FALSE_WORDS + ("", "maybe", "2", " true", "1.0"))
def test_results_is_read_by_one_parser_for_the_check_and_the_route(word: str) -> None:
    """FastAPI reads `?results=` with pydantic's bool; the token check must read it the same way,
    and anything that does not read as false (a word FastAPI refuses with 422 included) needs the token."""
    from pydantic import TypeAdapter, ValidationError

    try:
        fastapi_reads = TypeAdapter(bool).validate_python(word)
    except ValidationError:
        fastapi_reads = None
    assert (word in TRUE_WORDS, word in FALSE_WORDS) == (fastapi_reads is True, fastapi_reads is False)
    assert needs_token("GET", "/v1/jobs/abcd12345678", {"results": word}) is (fastapi_reads is not False)


@pytest.mark.cluster
def test_the_app_refuses_foreign_hosts_and_cross_site_requests(http: httpx.Client) -> None:
    newest_before = newest_job(http)
    spec = {"task": "compute_task", "count": 1}
    assert http.get("/v1/health", headers={"Host": "evil.example"}).status_code == 403
    for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        refused = http.post("/v1/jobs", json=spec, headers=headers)
        assert refused.status_code == 403 and refused.json()["field"] == "headers", refused.text
        # a form post needs no preflight in a browser: refused all the same
        assert http.post("/v1/jobs", content="task=compute_task", headers={
            **headers, "content-type": "application/x-www-form-urlencoded"}).status_code == 403
    assert newest_job(http) == newest_before  # nothing was started: a new job would list first
    own_page = {"Origin": str(http.base_url).rstrip("/"), "Sec-Fetch-Site": "same-origin"}
    assert http.post("/v1/jobs", json=spec, headers=own_page).status_code in (200, 202)


def newest_job(http: httpx.Client) -> str | None:
    """The id of the newest job (the list is newest first): a refused request must not change it."""
    jobs = http.get("/v1/jobs", params={"limit": 1}).json()
    return jobs[0]["job_id"] if jobs else None


TOKEN = "test-token-0123"  # alice's
BOB = "test-token-4567"
# The token app is mounted under a prefix that holds `/v1/` itself: its routes must be guarded all the same.
TOKEN_APP_PREFIX = "/api/v1/auth"


@pytest.fixture(scope="module")
def token_app(base_url: str) -> Iterator[str]:
    """A second grid app on the cluster, with a token (conftest put it in the raylets' environment)."""
    from ray import serve

    from deployments.app import build_app

    assert os.environ.get("GRID_TEST_TOKEN") == f"alice={TOKEN},bob={BOB}"
    serve.run(build_app({"metrics_interval_s": 0.5, "token_env": "GRID_TEST_TOKEN", "critical_callers": ["alice"]}),
              name="grid-auth",
              route_prefix=TOKEN_APP_PREFIX, blocking=False)
    url = f"{base_url}{TOKEN_APP_PREFIX}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/health", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    try:
        yield url
    finally:
        serve.delete("grid-auth")


@pytest.mark.cluster
def test_with_a_token_work_and_results_need_it(token_app: str) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=token_app, timeout=60) as http:
        assert http.get("/v1/cluster").status_code == 200  # status stays open
        refused = http.post("/v1/jobs", json={"task": "compute_task", "count": 2})
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert refused.json()["field"] == "authorization"
        job = http.post("/v1/jobs", json={"task": "compute_task", "count": 2, "wait": True}, headers=bearer).json()
        assert job["state"] == "succeeded", job
        assert http.get(f"/v1/jobs/{job['job_id']}").status_code == 200
        for word in TRUE_WORDS + ("maybe", ""):  # every word FastAPI reads as true, and words it refuses
            refused = http.get(f"/v1/jobs/{job['job_id']}", params={"results": word})
            assert refused.status_code == 401 and refused.json()["field"] == "authorization", (word, refused.text)
            assert "results" not in refused.json()
        for word in FALSE_WORDS:  # the status without results stays open
            answer = http.get(f"/v1/jobs/{job['job_id']}", params={"results": word})
            assert answer.status_code == 200 and "results" not in answer.json(), (word, answer.text)
        # the last of repeated parameters is what the route reads, and so what the check reads
        repeated = http.get(f"/v1/jobs/{job['job_id']}?results=false&results=t")
        assert repeated.status_code == 401, repeated.text
        for word in ("t", "Y", "on", "1"):
            read = http.get(f"/v1/jobs/{job['job_id']}", params={"results": word}, headers=bearer)
            assert read.status_code == 200 and len(read.json()["results"]) == 2, (word, read.text)
        assert http.get(f"/v1/jobs/{job['job_id']}", params={"results": "maybe"}, headers=bearer).status_code == 422
        assert http.post("/v1/schedule", json={"task_id": "t"}).status_code == 401
        assert http.delete(f"/v1/jobs/{job['job_id']}").status_code == 401


@pytest.mark.cluster
def test_a_route_prefix_holding_v1_guards_every_route(token_app: str) -> None:
    """The token app lives under /api/v1/auth: what starts work or reads results needs the token there too."""
    assert TOKEN_APP_PREFIX in token_app
    with httpx.Client(base_url=token_app, timeout=60) as http:
        newest_before = newest_job(http)
        for method, path, body in (("POST", "/v1/jobs", {"task": "compute_task", "count": 1}),
                                   ("POST", "/v1/schedule", {"task_id": "prefixed"}),
                                   ("POST", "/v1/sharing", {"node": "gpu1", "type": "memory", "amount": 0.5})):
            refused = http.request(method, path, json=body)
            assert refused.status_code == 401 and refused.json()["field"] == "authorization", (path, refused.text)
        assert newest_job(http) == newest_before  # nothing was started


@pytest.mark.cluster
def test_bob_cannot_read_alice_s_results(token_app: str) -> None:
    alice, bob = ({"Authorization": f"Bearer {token}"} for token in (TOKEN, BOB))
    with httpx.Client(base_url=token_app, timeout=60) as http:
        job = http.post("/v1/jobs", json={"task": "sleep_task", "args": [[0, 0.01], [1, 0.01]], "wait": True},
                        headers=alice).json()
        assert job["state"] == "succeeded", job
        for params in ({"results": "true"}, {"results": "true", "wait_s": 1}):
            refused = http.get(f"/v1/jobs/{job['job_id']}", params=params, headers=bob)
            assert refused.status_code == 403 and refused.json()["field"] == "results", refused.text
            assert "'alice'" in refused.json()["error"] and "results" not in refused.json()
        status = http.get(f"/v1/jobs/{job['job_id']}", headers=bob)  # the status stays open to any caller
        assert status.status_code == 200 and "results" not in status.json()
        mine = http.get(f"/v1/jobs/{job['job_id']}", params={"results": "true"}, headers=alice).json()
        assert [outcome["result"]["slept_s"] for outcome in mine["results"]] == [0.01, 0.01]


@pytest.mark.cluster
def test_one_app_s_job_list_leaves_out_another_app_s_jobs(token_app: str, http: httpx.Client) -> None:
    """`grid-auth`'s runners are named `grid-runner-grid-auth-<tag>`: app `grid` must not list them."""
    alice = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=token_app, timeout=60) as other:
        job = other.post("/v1/jobs", json={"task": "compute_task", "count": 1, "wait": True}, headers=alice).json()
        assert job["job_id"] in {listed["job_id"] for listed in other.get("/v1/jobs", params={"limit": 1000}).json()}
    listed = {entry["job_id"] for entry in http.get("/v1/jobs", params={"limit": 1000}).json()}
    assert job["job_id"] not in listed
    assert http.get(f"/v1/jobs/{job['job_id']}").status_code == 404  # nor finds it by id


@pytest.mark.cluster
def test_the_cli_sends_grid_token(token_app: str) -> None:
    env = {**os.environ, "GRID_ADDRESS": token_app}
    command = [sys.executable, "-m", "grid_serve.cli", "distribute", "test", "--tasks", "3", "--json"]
    without = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert without.returncode != 0 and "Authorization: Bearer" in without.stderr, without.stderr
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**env, "GRID_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr


@pytest.mark.cluster
def test_only_the_maker_of_a_job_reservation_or_allocation_touches_it(http: httpx.Client) -> None:
    job = http.post("/v1/jobs", json={"task": "sleep_task", "args": [[0, 5.0]]}).json()
    for headers in ({}, {"X-Grid-Owner-Key": "a-guess"}):
        refused = http.delete(f"/v1/jobs/{job['job_id']}", headers=headers)
        assert refused.status_code == 403 and refused.json()["field"] == "job_id", refused.text
        assert "X-Grid-Owner-Key" in refused.json()["error"]
    assert http.get(f"/v1/jobs/{job['job_id']}").json()["state"] in ("queued", "running")  # untouched
    assert http.delete(f"/v1/jobs/{job['job_id']}", headers=owned(job)).json()["state"] == "cancelled"

    decision = http.post("/v1/schedule", json={"task_id": "owned-1"}).json()
    refused = http.post("/v1/schedule/owned-1/complete")
    assert refused.status_code == 403 and refused.json()["field"] == "task_id", refused.text
    assert http.post("/v1/schedule/owned-1/complete", headers=owned(decision)).json()["released"] is True

    record = http.post("/v1/sharing", json={"node": "gpu1", "type": "memory", "amount": 0.5}).json()
    refused = http.post(f"/v1/sharing/{record['id']}/release")
    assert refused.status_code == 403 and refused.json()["field"] == "id", refused.text
    assert http.get(f"/v1/sharing/{record['id']}").json()["state"] in ("active", "pending")
    assert http.post(f"/v1/sharing/{record['id']}/release", headers=owned(record)).json()["state"] == "released"
    assert record["owner"].startswith("key:") and record["owner_key"] not in record["owner"]  # only its hash is kept


@pytest.mark.cluster
def test_what_a_handle_call_made_only_handle_calls_touch(http: httpx.Client) -> None:
    from ray import serve

    handle = serve.get_app_handle("grid")
    job = handle.submit_job.remote({"task": "sleep_task", "args": [[0, 5.0]]}).result()
    assert job.owner_key is None  # inside the cluster: Ray's trust model, no key to keep
    refused = http.delete(f"/v1/jobs/{job.job_id}")
    assert refused.status_code == 403 and "handle call" in refused.json()["error"], refused.text
    assert handle.cancel_job.remote(job.job_id).result().state == "cancelled"


@pytest.mark.cluster
def test_with_tokens_each_identity_owns_its_work_and_critical_is_alice_s(token_app: str) -> None:
    alice, bob = ({"Authorization": f"Bearer {token}"} for token in (TOKEN, BOB))
    with httpx.Client(base_url=token_app, timeout=60) as http:
        job = http.post("/v1/jobs", json={"task": "sleep_task", "args": [[0, 5.0]]}, headers=alice).json()
        assert "owner_key" not in job  # the token is the identity: no key to keep
        refused = http.delete(f"/v1/jobs/{job['job_id']}", headers=bob)
        assert refused.status_code == 403 and "'alice'" in refused.json()["error"], refused.text
        assert http.delete(f"/v1/jobs/{job['job_id']}", headers=alice).json()["state"] == "cancelled"
        critical = {"task": "compute_task", "count": 1, "priority": "critical", "wait": True}
        refused = http.post("/v1/jobs", json=critical, headers=bob)
        assert refused.status_code == 403 and refused.json()["field"] == "priority", refused.text
        assert http.post("/v1/jobs", json=critical, headers=alice).json()["state"] == "succeeded"


@pytest.mark.cluster
def test_each_token_identity_waits_in_its_own_queue(token_app: str) -> None:
    """Issue 22: a job that names no queue waits in its caller's: alice's and bob's jobs share the
    cluster as two queues (the decisions fair share made say whose queue it served)."""
    alice, bob = ({"Authorization": f"Bearer {token}"} for token in (TOKEN, BOB))
    with httpx.Client(base_url=token_app, timeout=60) as http:
        jobs = {name: http.post("/v1/jobs", json={"task": "sleep_task", "args": [[i, 0.3] for i in range(count)],
                                                  "strategy": "load_balanced"}, headers=headers).json()["job_id"]
                for name, headers, count in (("alice", alice, 18), ("bob", bob, 6))}
        for name, job_id in jobs.items():
            done = http.get(f"/v1/jobs/{job_id}", params={"wait_s": 60}).json()
            assert (done["state"], done["queue"]) == ("succeeded", name), done
        summaries = {name: [d["explanation"]["summary"] for d in
                            http.get("/v1/decisions", params={"job_id": job_id}).json()["decisions"]]
                     for name, job_id in jobs.items()}
    assert any("fair share chose it: queue bob:" in summary for summary in summaries["bob"]), summaries["bob"]
    assert not any("queue anonymous" in summary for summaries_of in summaries.values() for summary in summaries_of)
