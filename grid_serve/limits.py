"""Bounds on what the app holds for its callers, set in serve_config (`args: limits:`).

Nothing a caller sends may grow without bound: queued tasks are capped (over the cap, a job is
answered 429 with Retry-After rather than queued), finished jobs are kept by count and their
results by total bytes (results go first: a later read says 410), and long polls are capped
per Ingress replica, so waiting clients cannot take every slot the health route needs.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_queued_tasks: int = Field(
        1_000_000, ge=1, le=100_000_000,
        description="tasks waiting in the Scheduler's queue, all jobs together; over it a new job gets 429")
    finished_jobs_kept: int = Field(
        2_000, ge=1, le=1_000_000,
        description="finished jobs kept per job runner (~12 KB each for small jobs, bench/load.py; results "
                    "are bounded by bytes apart)")
    results_bytes_kept: int = Field(
        256 * 1024 * 1024, ge=0, le=64 * 1024**3,
        description="bytes of finished jobs' results kept per job runner; the oldest results go first (410)")
    max_waiting_requests: int = Field(
        500, ge=1, le=100_000,
        description="requests that wait for a job (wait, wait_s) at once per Ingress replica; more get 429")
    max_schedule_waits: int = Field(
        100, ge=1, le=10_000,
        description="/v1/schedule requests that wait for room (wait_s) at once per Ingress replica; more get 429. "
                    "Each holds one of the Scheduler's 1,000 request slots, which runners' lease renewals need too")
    max_schedule_held: int = Field(
        100, ge=1, le=1_000_000,
        description="/v1/schedule reservations one HTTP caller holds or waits for at once (a token identity; "
                    "callers without a token share one count); more get 429. Handle calls are not counted")
    max_schedule_lease_s: float = Field(
        3600.0, gt=0, le=86400,
        description="the longest lease (lease_s) a /v1/schedule reservation may ask for; longer is refused (422), "
                    "so what a caller that went away held comes back within this")
    retry_after_s: int = Field(5, ge=1, le=3600, description="the Retry-After a 429 carries")
