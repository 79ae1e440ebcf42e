"""A job runner's bookkeeping without a cluster: `RunnerJob` (its `JobBooks`) records and `JobRunner`
calls that never reach Ray or the Scheduler on the paths tested here (real objects, no stand-ins)."""

from __future__ import annotations

import asyncio

import pytest
import ray

from deployments.runner import JobRunner
from deployments.runner_job import RunnerJob, hear_asks, record_ray_end
from grid_serve.models import JobSubmission, SchedulingDecision
from grid_serve.outcomes import OutcomeTable
from grid_serve.protocol import Placements
from grid_serve.tasks import load_task_modules

TASKS = load_task_modules(["grid_serve.tasks"])


def job_of(spec: dict, job_id: str = "abcd00000001") -> RunnerJob:
    submission = JobSubmission.model_validate(spec)
    task = TASKS[submission.task]
    return RunnerJob(id=job_id, spec=submission, fn_ref=task.fn, task_name=task.name, requirements=task.requirements,
                outcomes=OutcomeTable(job_id, submission.task_count), task_type=task)


def every_task_succeeds(job: RunnerJob) -> None:
    for index in range(job.spec.task_count):
        job.outcomes.record(index, node_id="n1", node_name="gpu1", ok=True, result=index)


def test_a_cancel_after_every_task_succeeded_leaves_the_job_succeeded() -> None:
    """The race: the last task ended, its end is not recorded yet (`ended` unset), a cancel lands."""
    job = job_of({"task": "noop", "count": 2})
    every_task_succeeds(job)
    job.cancelled = True  # what a cancel that lands now sets
    assert job.all_ended and job.state == "running"  # every task has an outcome; the end is on its way
    job.ended = True  # its end recorded (JobBooks.on_end)
    assert job.state == "succeeded"
    assert job.status().cancelled == 0 and job.status().succeeded == 2


def test_a_cancel_that_stopped_a_task_leaves_the_job_cancelled() -> None:
    job = job_of({"task": "noop", "count": 2})
    job.outcomes.record(0, node_id="n1", node_name="gpu1", ok=True)
    job.cancelled = True
    assert job.state == "cancelled"  # a cancel in flight: what runs is being stopped
    job.outcomes.record(1, node_id="", node_name="(not placed)", ok=False, error="cancelled")
    job.ended = True
    assert job.state == "cancelled"


def test_a_ray_error_for_a_task_of_a_job_being_cancelled_counts_as_its_cancellation() -> None:
    """CI saw a cancelled job end `failed`: Ray failed one of its tasks, as the cancel reached it,
    with a TypeError of its own (the interrupt it sent handled after the worker reset SIGINT).
    Only a task Ray was asked to stop counts so: one that failed before keeps its error."""
    job = job_of({"task": "sleep_task", "args": [[0, 0.5], [1, 0.5], [2, 0.5]]})
    for index in range(3):
        decision = SchedulingDecision(task_id=f"{job.id}-{index}", node_id="n1", node_name="gpu1", node_ip="",
                                      strategy="spread", score=0.0)
        job.on_sent([(index, decision)], ref=None)
    raised_by_ray = ray.exceptions.RayTaskError("run_call", "Traceback ...",
                                                TypeError("'Handlers' object is not callable"))
    record_ray_end(job, 0, None, raised_by_ray)  # before any cancel: the task failed
    job.cancelled = True
    job.cancel_sent.update(job.running)  # what JobRunner._cancel_running records as it asks Ray to stop them
    record_ray_end(job, 1, None, raised_by_ray)  # after it: the cancel's doing
    record_ray_end(job, 2, None, ray.exceptions.TaskCancelledError())
    job.ended = True
    failed, *stopped = job.outcomes.all()
    assert failed.error.startswith("RayTaskError")  # a Ray error before the cancel stays the task's failure
    assert [(o.ok, o.error) for o in stopped] == [(False, "cancelled"), (False, "cancelled")]
    assert (job.state, job.status().cancelled, job.status().failed) == ("cancelled", 2, 1)


def test_cancelling_a_job_whose_every_task_ended_changes_nothing() -> None:
    """Every task has an outcome: the runner asks the Scheduler nothing (this runner has none: a
    call to it would fail) and answers once the job's end is recorded, with its final state. CI
    saw the answer come before it: "running", for a job that had nothing left to stop."""
    runner = JobRunner(scheduler=None, task_modules=["grid_serve.tasks"], name="grid-runner-test-abcd", tag="abcd",
                       parent=None)
    job = job_of({"task": "noop", "count": 3})
    every_task_succeeds(job)
    runner._jobs[job.id] = job

    async def cancel_while_the_end_is_recorded():
        cancel = asyncio.ensure_future(runner.cancel_job(job.id))
        await asyncio.sleep(0.1)
        assert not cancel.done()  # it waits for the end rather than answer "running"
        job.ended = True  # what `JobRunner._end` records, then it sets `done`
        job.done.set()
        return await asyncio.wait_for(cancel, 5)

    status = asyncio.run(cancel_while_the_end_is_recorded())
    assert not job.cancelled
    assert (status.state, status.cancelled, status.succeeded) == ("succeeded", 0, 3)


MB = 1024 * 1024


@pytest.mark.parametrize("spec, memory_mb", [
    ({"task": "memory_task", "args": [[0, 100], [1, 2000], {"task_id": 2, "megabytes": 10}, [3]]}, [132, 2032, 42, 64]),
    ({"task": "memory_task", "count": 2}, [64, 64]),  # count jobs pass the index: the default 32 MB
    ({"task": "memory_task", "args": [[0, "lots"], [1, -5]]}, [64, 64]),  # the task refuses these itself
    ({"task": "memory_task", "args": [[0, 4000]], "resources": {"memory_mb": 8}}, [8]),  # the caller's own word wins
    ({"task": "sleep_task", "args": [[0, 1.0]]}, [0]),
])
def test_memory_task_reserves_what_its_arguments_allocate(spec: dict, memory_mb: list[float]) -> None:
    job = job_of(spec)
    requests = job.next_requests(job.spec.task_count)
    assert [request.requirements.memory_mb for request in requests] == memory_mb
    assert [request.requirements.as_ray_resources().get("memory", 0) for request in requests] == \
        [amount * MB for amount in memory_mb]


def test_a_task_ray_dropped_when_asked_back_waits_again_and_one_that_had_started_keeps_its_end() -> None:
    """Issue 22's take-back, the runner's side: what Ray dropped unstarted is handed back and
    queued again (not an outcome); one that had started ran to its end (the worker ignored the
    interrupt); in a job being cancelled, a drop is the task's cancellation."""
    job = job_of({"task": "sleep_task", "args": [[0, 0.5], [1, 0.5], [2, 0.5], [3, 0.5]]})
    job.next_requests(4)
    for index in range(4):
        decision = SchedulingDecision(task_id=f"{job.id}-{index}", node_id="n1", node_name="gpu1", node_ip="",
                                      strategy="spread", score=0.0)
        job.waiting.pop(decision.task_id)
        job.placed_per_node["n1"] = job.placed_per_node.get("n1", 0) + 1
        job.on_sent([(index, decision)], ref=object())
    asked = job.to_take_back([f"{job.id}-1", f"{job.id}-2", f"{job.id}-3", f"{job.id}-9"])  # 9: not running
    assert [index for index, _ in asked] == [1, 2, 3]
    assert job.to_take_back([f"{job.id}-1"]) == []  # asked once
    record_ray_end(job, 1, None, ray.exceptions.TaskCancelledError())  # dropped unstarted
    record_ray_end(job, 2, {"ok": True, "error": None, "result": 2, "duration_s": 0.5, "node_id": "n1",
                            "started_at": 1.0}, None)  # it had started: its end is its own
    assert f"{job.id}-1" in job.waiting and 1 not in job.running and not job.outcomes.has(1)
    assert [r.task_id for r in job.requeue] == [f"{job.id}-1"] and job.returned == [f"{job.id}-1"]
    assert job.placed_per_node["n1"] == 3 and job.outcomes.succeeded == 1 and job.asked_back == {3}
    report = job.take_report()
    assert report.returned == [f"{job.id}-1"] and [r.task_id for r in report.requeue] == [f"{job.id}-1"]
    job.begin_cancel()
    job.cancel_sent.update(job.running)
    record_ray_end(job, 3, None, ray.exceptions.TaskCancelledError())  # the job's cancel, not a take-back
    assert job.outcomes.cancelled == 1 and f"{job.id}-3" not in job.waiting
    job.check()


def running_job(spec: dict, job_id: str) -> RunnerJob:
    """A job whose every task was placed and handed to Ray (`sent`: none waits in the runner)."""
    job = job_of(spec, job_id)
    for request in job.next_requests(job.spec.task_count):
        job.waiting.pop(request.task_id)
        decision = SchedulingDecision(task_id=request.task_id, node_id="n1", node_name="gpu1", node_ip="",
                                      strategy="spread", score=0.0)
        job.on_sent([(RunnerJob.index_of(request.task_id), decision)], ref=object())
    return job


class SchedulerPeer:
    """The Scheduler's side of `wait_news` as the runner sees it: each call answers the next of
    `answers` (news per job, or an exception: a restarting Scheduler) and records what it was asked."""

    def __init__(self, answers: list) -> None:
        self.asked: list[list[str]] = []
        self._answers = answers
        self.wait_news = self

    def remote(self, groups: list[str], timeout_s: float):
        self.asked.append(sorted(groups))
        answer = self._answers.pop(0) if self._answers else asyncio.Event().wait()

        async def reply():
            if isinstance(answer, Exception):
                raise answer
            return await answer if asyncio.iscoroutine(answer) else answer
        return reply()


def test_one_long_poll_asks_for_every_job_whose_tasks_are_all_in_ray_and_hands_each_its_news() -> None:
    """The review's finding: one `wait_placed` per running job filled the Scheduler's
    `max_ongoing_requests` at a thousand jobs. One call per runner carries them all; jobs with
    tasks waiting (they poll on their own), critical ones (never asked back) and cancelled ones
    are left out; a failed call is retried, and each job's news reaches that job."""
    quiet = [running_job({"task": "sleep_task", "args": [[i, 1.0]]}, f"abcd0000000{i}") for i in (1, 2)]
    waiting = job_of({"task": "sleep_task", "args": [[0, 1.0]]}, "abcd00000003")
    critical = running_job({"task": "sleep_task", "args": [[0, 1.0]], "priority": "critical"}, "abcd00000004")
    cancelled = running_job({"task": "sleep_task", "args": [[0, 1.0]]}, "abcd00000005")
    cancelled.cancelled = True
    jobs = {job.id: job for job in [*quiet, waiting, critical, cancelled]}
    ask = Placements(take_back=[f"{quiet[1].id}-0"])
    peer = SchedulerPeer([RuntimeError("the Scheduler is restarting"), {quiet[1].id: ask}])
    heard: list[tuple[str, Placements]] = []

    async def listen() -> None:
        listener = asyncio.get_running_loop().create_task(
            hear_asks(jobs, peer, lambda job, news: heard.append((job.id, news)), 0.01))
        while not heard:
            await asyncio.sleep(0.01)
        listener.cancel()

    asyncio.run(asyncio.wait_for(listen(), 10.0))
    assert heard == [(quiet[1].id, ask)]
    assert peer.asked[:2] == [[quiet[0].id, quiet[1].id]] * 2
