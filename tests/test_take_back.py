"""Issue 22's take-back against real Ray workers: a task asked back after it started runs to its
end (its worker ignores that interrupt), and a job's cancel still stops a running task."""

from __future__ import annotations

import os
import tempfile
import time
import uuid

import pytest
import ray

from deployments.runner_job import ask_ray_to_drop, forget_asked_back, forget_then_stop
from grid_serve.stopping import stop_tasks
from grid_serve.tasks import run_call

pytestmark = pytest.mark.cluster


def napping() -> object:
    """A function that says it started (a file beside the test: the cluster's workers share this
    machine), then sleeps in Python-level steps, so an interrupt that is not ignored stops it.
    Nested: pickled by value, as a caller's own function is (workers cannot import the tests)."""

    def nap(flag: str, seconds: float) -> str:
        with open(flag, "w"):
            pass
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.01)
        return "slept"

    return nap


def started(flag: str, ref: object, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(flag):
        if ray.wait([ref], timeout=0)[0]:
            raise AssertionError(f"the task ended before it said it started: {ray.get(ref)}")
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.02)


@pytest.fixture()
def flag() -> str:
    path = os.path.join(tempfile.gettempdir(), f"grid-take-back-{uuid.uuid4().hex}")
    yield path
    if os.path.exists(path):
        os.remove(path)


def test_a_task_asked_back_after_it_started_runs_to_its_end(ray_cluster: object, flag: str) -> None:
    ref = ray.remote(run_call).options(max_retries=0).remote(napping(), [], flag, 1.5)
    started(flag, ref)
    ask_ray_to_drop([ref])  # too late: Ray interrupts it, and its worker ignores that interrupt
    envelope = ray.get(ref, timeout=60)
    assert envelope["ok"] and envelope["result"] == "slept", envelope
    forget_asked_back(ref)


def test_a_cancelled_job_still_stops_its_running_task(ray_cluster: object, flag: str) -> None:
    ref = ray.remote(run_call).options(max_retries=0).remote(napping(), [], flag, 60.0)
    started(flag, ref)
    began = time.monotonic()
    stop_tasks([ref])  # not asked back: the interrupt stops it, as before take-backs
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(ref, timeout=60)
    assert time.monotonic() - began < 30  # stopped, not run to its 60 s end


def test_a_task_asked_back_late_still_stops_when_its_job_is_cancelled(ray_cluster: object, flag: str) -> None:
    """Its name leaves the key-value store before the cancel: the interrupt stops it (Ray's
    TaskCancelledError), rather than being ignored until the forced cancel kills its worker."""
    ref = ray.remote(run_call).options(max_retries=0).remote(napping(), [], flag, 60.0)
    started(flag, ref)
    ask_ray_to_drop([ref])  # ignored: it had started
    time.sleep(0.5)
    assert not ray.wait([ref], timeout=0)[0]  # still running
    forget_then_stop([ref])  # what the runner does for such a task when its job is cancelled
    with pytest.raises(ray.exceptions.TaskCancelledError):  # not WorkerCrashedError: not forced
        ray.get(ref, timeout=60)
