"""What an Ingress replica reads of the Scheduler for its status routes and job reads, each
bounded so that a stopped (SIGSTOP), overloaded or restarting Scheduler costs a request a
clear answer, never a hang: `/v1/health` (cached briefly, degraded with the last counts after
HEALTH_TIMEOUT_S), the cluster status (one call shared by the requests that arrive while it is
in flight), the decision reads (503 naming the Scheduler after PEER_ANSWER_S), and a queued
job's forecast (left out when late).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from grid_serve.models import ClusterStatus, JobStatus

from ._common import answer_within, call_with_timeout, logger

HEALTH_MAX_AGE_S = 0.5
PEER_ANSWER_S = 10.0  # the Scheduler or SharingManager answers a read within this, or the request is 503
HEALTH_TIMEOUT_S = 3.0  # a Scheduler that does not answer within this makes /v1/health say so, not hang
_SCHEDULER_STALLED = (f"the Scheduler did not answer within {HEALTH_TIMEOUT_S:g} s (stopped, overloaded or being "
                      "replaced): placements wait until it does")


class SchedulerReads:
    """One Ingress replica's reads of the Scheduler."""

    def __init__(self, scheduler: Any) -> None:
        self._scheduler = scheduler
        self._status_call: asyncio.Future | None = None
        self._health_status: tuple[float, ClusterStatus] | None = None  # (monotonic time, status)

    async def answer(self, call: Any) -> Any:
        """A read of the Scheduler's, or 503 once PEER_ANSWER_S passed."""
        return await answer_within(call, PEER_ANSWER_S, "the Scheduler")

    async def health(self) -> dict[str, Any]:
        """Liveness with node and queue counts, from a cluster status at most
        HEALTH_MAX_AGE_S old: probes poll this often, and a Scheduler round trip per probe
        cost much of the route's rate (bench/http_api.py; BENCHMARKS.md). /v1/cluster stays exact."""
        cached = self._health_status
        stalled: list[str] = []
        if cached is not None and time.monotonic() - cached[0] < HEALTH_MAX_AGE_S:
            answered_at, status = cached
        else:
            try:
                status = await call_with_timeout(self._shared_cluster_status(), HEALTH_TIMEOUT_S)
                answered_at = time.monotonic()
                self._health_status = (answered_at, status)
            except asyncio.TimeoutError:  # stopped, or being replaced: say so with what was last known
                if cached is None:
                    return {"status": "degraded", "stalled": ["scheduler"], "reason": _SCHEDULER_STALLED}
                (answered_at, status), stalled = cached, ["scheduler"]
        alive = sum(1 for node in status.nodes if node.alive)
        stale = sum(1 for node in status.nodes if node.alive and node.stale)
        health = {"status": "degraded" if stale or stalled else "ok", "stalled": stalled, "nodes_alive": alive,
                  "nodes_stale": stale, "nodes": len(status.nodes), "queued": status.queued,
                  "jobs_running": status.jobs_running,  # the snapshot's age now, not when the answer came
                  "snapshot_age_s": round(status.snapshot_age_s + time.monotonic() - answered_at, 2)}
        if stalled:
            assert cached is not None
            health["reason"] = _SCHEDULER_STALLED + f"; the counts are from {time.monotonic() - cached[0]:.0f} s ago"
        return health

    async def cluster_status(self) -> ClusterStatus:
        return await self.answer(self._shared_cluster_status())

    async def with_pending(self, status: JobStatus) -> JobStatus:
        """A job with queued tasks says why they wait and when they should run (the Scheduler's
        forecast, `grid_serve.pending`); left out if the Scheduler does not answer in time."""
        if status.queued == 0 or status.state not in ("queued", "running"):
            return status
        try:
            pending = await call_with_timeout(self._scheduler.pending.remote(status.job_id), HEALTH_TIMEOUT_S)
        except Exception as exc:
            logger.warning("no forecast for job %s (%s)", status.job_id, type(exc).__name__)
            return status
        return status.model_copy(update={"pending": pending}) if pending is not None else status

    async def _shared_cluster_status(self) -> ClusterStatus:
        """One Scheduler call serves every status request that arrives while it is in flight.

        Under load the status routes cost a Scheduler round trip per request, which cut
        their rate well below a bare Serve deployment's (bench/http_api.py; BENCHMARKS.md); sharing
        the call in flight keeps every answer no older than one round trip and fails all alike.
        """
        if self._status_call is None or self._status_call.done():
            self._status_call = asyncio.ensure_future(self._scheduler.cluster_status.remote())
        return await asyncio.shield(self._status_call)
