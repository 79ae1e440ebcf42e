"""An Ingress replica's job runners: its own (started, taken over from a gone replica, replaced
when it dies or stops answering) and every other replica's, found by name.

A job id starts with its runner's tag, so any replica reaches the runner of any job by name;
the runners are detached actors on the head node, so a replica's replacement keeps its jobs
readable and no worker node's death takes a runner with it.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from grid_serve.errors import NotFoundError, require_id
from grid_serve.limits import Limits
from grid_serve.models import JobStatus

from ._common import answer_within, call_with_timeout, logger
from .runner import JobRunner
from .runner_parent import RUNNER_NAMESPACE, TAG_LEN, is_runner_of, runner_name

RUNNER_ANSWER_S = 10.0  # a runner answers a read or a cancel within this (beyond a wait), or it is called stopped
_RunnerActor = ray.remote(JobRunner)


def head_node_id() -> str:
    """The head node's id (Ray gives it the resource `node:__internal_head__`); this node's when
    no live node says so."""
    for node in ray.nodes():
        if node.get("Alive") and "node:__internal_head__" in node.get("Resources", {}):
            return str(node["NodeID"])
    return ray.get_runtime_context().get_node_id()


@dataclass(frozen=True)
class RunnerSettings:
    """What every runner this replica starts is given."""

    app: str
    scheduler: Any  # the Scheduler's stop-safe handle (`grid_serve.handles`)
    task_modules: list[str]
    parent: tuple[str, str] | None  # the replica's actor name and namespace (None: not a Serve replica)
    interval_s: float
    limits: Limits
    chunk_s: float


class RunnerDirectory:
    """This replica's runner (`current`, under `tag`) and the way to any other's."""

    def __init__(self, settings: RunnerSettings) -> None:
        self._settings = settings
        self._node = head_node_id()  # where its runners live (it never changes)
        self.tag, self.current = self._take_over_orphan() or self._new_runner()

    def _take_over_orphan(self) -> tuple[str, ActorHandle] | None:
        """A runner of this app whose Ingress replica is gone, made this replica's own (its tag
        and its jobs with it): a killed or replaced replica's jobs stay readable, listed and
        cancellable, and no runner is left behind. None when there is none to take."""
        settings = self._settings
        if settings.parent is None:
            return None
        for name in self.names():
            try:
                runner = ray.get_actor(name, namespace=RUNNER_NAMESPACE)
                taken = ray.get(runner.take_over.remote(settings.parent, settings.limits, settings.interval_s,
                                                        settings.chunk_s), timeout=RUNNER_ANSWER_S)
            except Exception:  # gone meanwhile, or not answering: not one to take
                continue
            if taken:
                logger.info("Ingress replica %s took over runner %s and its jobs", settings.parent[0], name)
                return name.rsplit("-", 1)[1], runner
        return None

    def names(self) -> list[str]:
        """This app's runners on the cluster, every replica's (a GCS lookup: it blocks)."""
        return sorted(entry["name"] for entry in ray.util.list_named_actors(all_namespaces=True)
                      if entry["namespace"] == RUNNER_NAMESPACE and is_runner_of(entry["name"], self._settings.app))

    def _new_runner(self) -> tuple[str, ActorHandle]:
        """A new tag and a runner started under it: detached, so jobs outlive a replaced replica,
        on the head node, so that no worker node's death takes a runner's jobs and results with
        it (the head's takes the cluster's GCS anyway)."""
        tag, settings = uuid.uuid4().hex[:TAG_LEN], self._settings
        name = runner_name(settings.app, tag)
        runner = _RunnerActor.options(
            name=name, namespace=RUNNER_NAMESPACE, lifetime="detached", get_if_exists=True, num_cpus=0,
            max_concurrency=10_000, scheduling_strategy=NodeAffinitySchedulingStrategy(self._node, soft=False),
        ).remote(settings.scheduler.handle, settings.task_modules, name, tag, settings.parent, settings.interval_s,
                 settings.limits, settings.chunk_s)
        return tag, runner

    def replace(self, why: str) -> None:
        logger.warning("runner %s %s; starting a new one", runner_name(self._settings.app, self.tag), why)
        self.tag, self.current = self._new_runner()

    async def check(self) -> None:
        """A runner that died is replaced; one that does not answer is retired (its jobs stay its
        own, heard once it answers again) and replaced for new jobs."""
        try:
            await call_with_timeout(self.current.ping.remote(), RUNNER_ANSWER_S)
        except ray.exceptions.RayActorError:
            self.replace("is gone")
        except asyncio.TimeoutError:
            self.current.retire.remote()
            self.replace(f"did not answer within {RUNNER_ANSWER_S:g} s")

    async def of_job(self, job_id: str) -> ActorHandle:
        """The runner that holds `job_id` (its id starts with the runner's tag)."""
        tag = require_id("job_id", job_id)[:TAG_LEN]
        if tag == self.tag:
            return self.current
        try:
            return ray.get_actor(runner_name(self._settings.app, tag), namespace=RUNNER_NAMESPACE)
        except ValueError:  # no such runner: a bad id, or the runner died with its jobs
            fate = await self._settings.scheduler.job_fate.remote(job_id)
            raise NotFoundError(f"no job {job_id!r}" + (f": {fate}" if fate else ""), field="job_id") from None

    @staticmethod
    async def answer(job_id: str, call: Any, beyond_s: float = 0.0) -> Any:
        """A runner's answer about `job_id`, or 503 once it is RUNNER_ANSWER_S late: a stopped
        (SIGSTOP) or stuck runner must not hold the request, and the replica's slot, forever."""
        return await answer_within(call, beyond_s + RUNNER_ANSWER_S, f"the runner of job {job_id!r}", field="job_id")

    async def all_jobs(self) -> list[JobStatus]:
        """Every runner's jobs, newest first. The GCS lookup of the runners runs off the event
        loop (it blocks); a runner that does not answer in time is left out, not waited for."""
        names = await asyncio.to_thread(self.names)
        answers = await asyncio.gather(*(self._jobs_of(name) for name in names))
        return sorted((job for jobs in answers for job in jobs), key=lambda job: job.submitted_at, reverse=True)

    async def _jobs_of(self, name: str) -> list[JobStatus]:
        try:
            return await asyncio.wait_for(ray.get_actor(name, namespace=RUNNER_NAMESPACE).list_jobs.remote(),
                                          RUNNER_ANSWER_S)
        except (ValueError, ray.exceptions.RayActorError):
            return []  # a runner that just exited has no jobs left to list
        except asyncio.TimeoutError:  # stopped or stuck: the others' jobs are still listed
            logger.warning("runner %s did not answer within %g s; its jobs are left out of the list",
                           name, RUNNER_ANSWER_S)
            return []
