"""Small helpers every deployment uses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, Awaitable, Callable, Iterator

logger = logging.getLogger("ray.serve")

# Deployments that only coordinate must not take CPUs that tasks need, or tasks starve.
COORDINATOR_OPTIONS = {"ray_actor_options": {"num_cpus": 0}, "max_ongoing_requests": 1000}
# Deployments only other deployments call, several times per batch of tasks: an access-log line
# per call was a visible share of the Scheduler's CPU (py-spy; BENCHMARKS.md) and no user reads it.
INTERNAL_OPTIONS = {**COORDINATOR_OPTIONS, "logging_config": {"enable_access_log": False}}


KV_NAMESPACE = "grid_serve"


def load_saved(key: str) -> Any:
    """What `save(key, ...)` last stored in Ray's GCS (it outlives any replica), or None."""
    from ray.experimental import internal_kv

    raw = internal_kv._internal_kv_get(key, namespace=KV_NAMESPACE)
    return json.loads(raw) if raw else None


def save(key: str, state_json: str) -> None:
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(key, state_json, overwrite=True, namespace=KV_NAMESPACE)


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


def spawn(background: set[asyncio.Task], work: Awaitable[Any], what: str) -> None:
    """Run `work` in a task of its own, kept in `background` until it ends (the loop holds only
    a weak reference to a task); a failure is logged as "could not <what>", never lost."""

    async def run() -> None:
        try:
            await work
        except Exception:
            logger.exception("could not %s", what)

    task = asyncio.get_running_loop().create_task(run())
    background.add(task)
    task.add_done_callback(background.discard)


async def call_with_timeout(call: Awaitable[Any], timeout_s: float) -> Any:
    """Await a call to another deployment or actor, for at most `timeout_s`: no control path
    may hang on a peer that is stuck or being replaced."""
    return await asyncio.wait_for(call, timeout_s)


async def grid_call(call: Awaitable[Any]) -> Any:
    """Await a call to another deployment or actor; a GridError raised there (a bad request,
    an unknown job) reaches the caller as itself, so HTTP answers it with its own 4xx."""
    from ray.exceptions import RayTaskError

    from grid_serve.errors import GridError

    try:
        return await call
    except RayTaskError as exc:
        if isinstance(exc.cause, GridError):
            raise exc.cause from None
        raise


class WaitingCap:
    """Requests of one kind that may wait on this replica, counted: past `cap` a new one is
    turned away (429, retry after `retry_after_s`) before it can take a slot the health and
    status requests, or the runners' renewals, need. `refusal` says why, with `{count}`."""

    def __init__(self, cap: int, refusal: str, field: str, retry_after_s: float) -> None:
        self._cap, self._refusal, self._field, self._retry_after_s = cap, refusal, field, retry_after_s
        self.count = 0

    @contextlib.contextmanager
    def slot(self, waits: bool = True) -> Iterator[None]:
        """Held while the request may wait; a request that will not wait is not counted."""
        if not waits:
            yield
            return
        if self.count >= self._cap:
            from grid_serve.errors import TooBusyError

            raise TooBusyError(self._refusal.format(count=self.count), field=self._field,
                               retry_after_s=self._retry_after_s)
        self.count += 1
        try:
            yield
        finally:
            self.count -= 1
