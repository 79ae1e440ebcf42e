"""Small helpers every deployment uses."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

logger = logging.getLogger("ray.serve")

# Deployments that only coordinate must not take CPUs that tasks need, or tasks starve.
COORDINATOR_OPTIONS = {"ray_actor_options": {"num_cpus": 0}, "max_ongoing_requests": 1000}
# Deployments only other deployments call, several times per batch of tasks: an access-log line
# per call took ~4% of the Scheduler's CPU in a 1,000-task job (py-spy) and no user reads it.
INTERNAL_OPTIONS = {**COORDINATOR_OPTIONS, "logging_config": {"enable_access_log": False}}


def every(interval_s: float, step: Callable[[], Awaitable[None]], name: str) -> asyncio.Task:
    """Run `step` every `interval_s` on the replica's loop; a failing step is logged, not fatal."""

    async def loop() -> None:
        while True:
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep the loop alive: one bad sample must not stop the next
                logger.exception("grid-serve background step %s failed", name)
            await asyncio.sleep(interval_s)

    return asyncio.get_running_loop().create_task(loop(), name=name)
