"""The `/v1/schedule` path: a node decided and reserved for a task its caller submits itself,
released by `complete` or when its lease runs out. It goes straight to the Scheduler; the
Ingress checks who asks (priority, owner) and hands the rest here.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from grid_serve.access import Caller
from grid_serve.errors import (
    InvalidRequestError,
    NoCapacityError,
    NotFoundError,
    plain_seconds,
    require_id,
    require_number,
)
from grid_serve.ledger import EXTERNAL_PREFIX, Completion
from grid_serve.limits import Limits
from grid_serve.models import SchedulingDecision, SchedulingRequest
from grid_serve.protocol import Submit

from ._common import WaitingCap, grid_call, spawn


class ScheduleDesk:
    """One Ingress replica's /v1/schedule requests: how many wait now, and the releases of those
    whose caller left before its answer."""

    def __init__(self, scheduler: Any, limits: Limits) -> None:
        self._scheduler = scheduler  # stop-safe (`grid_serve.handles`)
        self._limits = limits
        # each waiting request holds a long-poll in the Scheduler, whose request slots the
        # runners' lease renewals share
        self._waiting = WaitingCap(limits.max_schedule_waits, field="wait_s", retry_after_s=limits.retry_after_s,
                                   refusal="{count} /v1/schedule requests already wait on this replica "
                                           "(max_schedule_waits); ask again later")
        self._unheard: set[asyncio.Task] = set()  # releases of requests whose caller left

    async def schedule(self, request: SchedulingRequest, lease_s: float, wait_s: float,
                       claim: tuple[str, str | None]) -> SchedulingDecision:
        """Decide and reserve a node for a task the caller will submit itself. The reservation
        holds until `complete(task_id)` or until the lease runs out. Each such task is its own
        group (a `job_id` is ignored), so its decision can never be delivered to anyone else,
        and its id lives apart from jobs' task ids (`EXTERNAL_PREFIX`). `claim`: its owner (who
        alone may complete it: the cluster, for a handle call) and the owner key to hand back."""
        owner, key = claim  # lease_s and wait_s were checked by the Ingress, before who asks
        inner = request.model_copy(update={"task_id": EXTERNAL_PREFIX + request.task_id, "job_id": None})
        request_key = uuid.uuid4().hex  # this request's alone: a hang-up releases only what it made
        with self._waiting.slot():
            try:
                placements = await self._scheduler.submit.remote(Submit(requests=[inner], lease_s=lease_s, owner=owner,
                                                                        request_key=request_key))
                deadline = time.monotonic() + wait_s
                while not placements.placed and not placements.rejected and time.monotonic() < deadline:
                    placements = await self._scheduler.wait_placed.remote(inner.group, min(5.0, wait_s))
            except asyncio.CancelledError:  # the caller went away (its connection closed) before it heard the decision
                self._forget_unheard(inner.task_id, request_key)
                raise
        if placements.rejected:
            reason = placements.rejected[0].reason.replace(repr(inner.task_id), repr(request.task_id))
            raise InvalidRequestError(reason, field="task_id" if reason.startswith("task id") else "requirements")
        if not placements.placed:
            await self._scheduler.finished.remote(inner.group)
            raise NoCapacityError(f"no node had room for task {request.task_id} within {plain_seconds(wait_s)}; the "
                                  "cluster is busy: try again later, or wait longer (wait_s)", field="wait_s",
                                  retry_after_s=self._limits.retry_after_s)
        return placements.placed[0].model_copy(update={"task_id": request.task_id, "owner_key": key})

    def _forget_unheard(self, task_id: str, request_key: str) -> None:
        """A /v1/schedule request whose caller left before its answer: nobody got its owner key,
        so nobody could ever release it; released now (or dropped from the queue), not held for
        its lease. In a task of its own: the request's own task is being cancelled."""
        spawn(self._unheard, self._scheduler.abandon.remote(task_id, request_key),
              f"release /v1/schedule request {task_id} whose caller left (its lease ends it)")

    async def complete(self, task_id: str, ok: bool = True, duration_s: float | None = None,
                       caller: Caller | None = None) -> dict[str, Any]:
        require_id("task_id", task_id)
        if duration_s is not None:
            duration_s = require_number("duration_s", duration_s, 0, 1e9)
        completion = Completion(task_id=EXTERNAL_PREFIX + task_id, ok=bool(ok), duration_s=duration_s)
        if not await grid_call(self._scheduler.complete_external.remote(completion, caller)):
            raise NotFoundError(f"no /v1/schedule reservation for task {task_id!r} (already released, expired, "
                                "or a job's task, which its job releases)", field="task_id")
        return {"task_id": task_id, "released": True}
