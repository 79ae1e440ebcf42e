"""Fuzz every operation of the app's own OpenAPI document (schemathesis): no input may get a
5xx, every answer must match the document, and the app still serves afterwards.

Bounded: a fixed number of examples per operation, derandomised (the same cases every run).
What the fuzzer starts is kept small and cleaned up, so the shared cluster is left as found:
job sizes are capped and jobs never wait; jobs, reservations and allocations it creates are
cancelled, completed or released after each case.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from pydantic import ValidationError
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from grid_serve.client import GridClient
from grid_serve.models import MAX_ARGS_DEPTH, JobSubmission
from tests.test_ownership_faults import eventually, idle_and_unreserved

EXAMPLES_PER_OPERATION = 30
MAX_FUZZ_TASKS = 5
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=5))


@st.composite
def nested_args(draw: Any, max_depth: int = 2 * MAX_ARGS_DEPTH) -> tuple[int, list[Any]]:
    """One task's argument list whose deepest value sits `depth` levels of lists and objects down
    (the argument list itself is the first), with scalar siblings along the way."""
    depth = draw(st.integers(1, max_depth))
    value: Any = draw(SCALARS)
    for _ in range(depth - 1):
        sibling = draw(SCALARS)
        value = draw(st.sampled_from([[value], [sibling, value], {"k": value}, {"a": sibling, "b": value}]))
    return depth, [value]


@hypothesis.given(case=nested_args())
@hypothesis.settings(max_examples=100, deadline=None, derandomize=True, database=None)
def test_nested_args_past_the_limit_are_refused_on_args_and_never_overflow(case: tuple[int, list[Any]]) -> None:
    depth, entry = case
    try:
        JobSubmission.model_validate({"task": "noop", "args": [[1], entry]})
    except ValidationError as exc:
        assert depth > MAX_ARGS_DEPTH, exc
        (error,) = exc.errors()
        assert error["loc"] == ("args",) and "args[1]" in error["msg"], error
    else:
        assert depth <= MAX_ARGS_DEPTH


def test_arguments_nested_thousands_deep_are_refused_without_recursion() -> None:
    entry: Any = 1
    for _ in range(100_000):
        entry = [entry]
    with pytest.raises(ValidationError, match=f"at most {MAX_ARGS_DEPTH}"):
        JobSubmission.model_validate({"args": [entry]})


@pytest.mark.cluster
def test_deeply_nested_args_over_http_get_422_on_args_never_a_5xx(http: httpx.Client) -> None:
    @hypothesis.given(case=nested_args())
    @hypothesis.settings(max_examples=20, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    def one_case(case: tuple[int, list[Any]]) -> None:
        depth, entry = case
        answer = http.post("/v1/jobs", json={"task": "noop", "args": [entry]})
        if depth > MAX_ARGS_DEPTH:
            assert answer.status_code == 422 and answer.json()["field"] == "args", (depth, answer.text)
        else:
            assert answer.status_code in (200, 202), (depth, answer.text)
            http.delete(f"/v1/jobs/{answer.json()['job_id']}", headers={"X-Grid-Owner-Key": answer.json()["owner_key"]})

    one_case()
    for depth in (600, 5_000):  # the 600 (a RecursionError, 500), and past the JSON parser's own limit
        refused = http.post("/v1/jobs", content='{"task": "noop", "args": [' + "[" * depth + "1" + "]" * depth + "]}",
                            headers={"content-type": "application/json"})
        assert 400 <= refused.status_code < 500 and refused.json()["field"] in ("args", "body"), (depth, refused.text)


def keep_small(case: Any) -> None:
    """A generated job runs at most MAX_FUZZ_TASKS tasks and never makes the request wait."""
    if case.method.upper() == "POST" and case.path == "/v1/jobs" and isinstance(case.body, dict):
        if isinstance(case.body.get("count"), int) and case.body["count"] > MAX_FUZZ_TASKS:
            case.body["count"] = MAX_FUZZ_TASKS
        if isinstance(case.body.get("args"), list):
            case.body["args"] = case.body["args"][:MAX_FUZZ_TASKS]
        case.body["wait"] = False
    if case.path == "/v1/jobs/{job_id}" and isinstance(case.query, dict) and "wait_s" in case.query:
        case.query["wait_s"] = 0


def clean_up(base_url: str, case: Any, response: Any) -> None:
    """Undo what an accepted case started: cancel its job, complete its reservation, release its loan."""
    if response.status_code >= 300:
        return
    body = response.json()
    key = body.get("owner_key") if isinstance(body, dict) else None
    with httpx.Client(base_url=base_url, timeout=60, headers={"X-Grid-Owner-Key": key} if key else None) as http:
        if case.path == "/v1/jobs" and case.method.upper() == "POST":
            http.delete(f"/v1/jobs/{body['job_id']}")
        elif case.path == "/v1/schedule":
            http.post(f"/v1/schedule/{quote(body['task_id'], safe='')}/complete")
        elif case.path == "/v1/sharing" and case.method.upper() == "POST":
            http.post(f"/v1/sharing/{body['id']}/release")


def fuzz(base_url: str, operation: Any) -> None:
    """EXAMPLES_PER_OPERATION generated cases of one operation, each checked and cleaned up."""

    @hypothesis.given(case=operation.as_strategy())
    @hypothesis.settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    def one_case(case: Any) -> None:
        keep_small(case)
        response = case.call(base_url=base_url, timeout=120)
        try:
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
        finally:
            clean_up(base_url, case, response)

    one_case()


@pytest.mark.cluster
def test_no_input_gets_a_server_error_or_an_undocumented_answer(base_url: str) -> None:
    # (one test over every operation: schemathesis' lazy pytest fixture does not run on pytest 9)
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    failures = {}
    for operation in operations:
        try:
            fuzz(base_url, operation)
        except Exception as exc:  # collect every operation's first failure, then fail once
            causes = getattr(exc, "exceptions", None) or [exc]
            failures[operation.label] = "; ".join(f"{type(c).__name__}: {str(c)[:1500]}" for c in causes)
    assert not failures, "\n\n".join(f"{label}: {why}" for label, why in failures.items())


@pytest.mark.cluster
def test_the_app_still_serves_after_the_fuzz(http: httpx.Client, client: GridClient) -> None:
    assert http.get("/v1/health").status_code == 200
    eventually(lambda: idle_and_unreserved(client), what="nothing left reserved by the fuzz")
    job = client.submit_job({"task": "compute_task", "count": 99, "strategy": "spread", "wait": True})
    assert job.per_node == {"gpu-master": 33, "gpu1": 33, "gpu2": 33}
