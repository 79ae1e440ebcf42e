"""Calls into a Serve deployment that a stopped caller cannot freeze.

Serve sends each `handle.method.remote(...)` as a streaming-generator actor task (its rejection
protocol: the replica's first item says whether it accepts), and Ray (2.60) ends such a task on
an async actor only after the caller has acknowledged every item, waiting *on the replica's
event loop*. So a caller that is stopped (SIGSTOP, a debugger, Ctrl-Z in a terminal) while one
of its calls ends freezes the whole replica, for every caller and Serve's own health checks,
until it resumes or dies. Seen: a stopped job runner froze the Scheduler (py-spy: its loop
thread in `TaskGeneratorBackpressureWaiter::WaitAllObjectsReported`) and Serve restarted it 90 s
later; `tests/test_ownership_faults.py` stops a runner and checks the app goes on.

`choose_replica` reserves a slot on a replica first, and `dispatch` then sends the call as a
plain actor task, whose reply the replica sends without waiting for anyone. Measured on this
2-core machine (one caller actor, a no-op method): 3.8-4.2 ms a call in sequence against
2.5-2.7 ms for `.remote()`, and 2.0-2.1 against 1.9 ms with 20 in flight; grid-serve's own calls
are a few per second per job or batched, so that is the price of a Scheduler no caller can stop.
"""

from __future__ import annotations

import os
from typing import Any


class StopSafeHandle:
    """A DeploymentHandle whose `.method.remote(...)` is `choose_replica` then `dispatch`.

    `.remote()` returns a coroutine (await it, or wrap it in a task): cancelling it before the
    reply (a timeout) releases the reserved slot. `handle` is the plain one, to pass on to
    another process. (Serve's reserved slot has no lease of its own: a caller killed between
    the reservation and the dispatch, a window of one local call, leaves one of the replica's
    `max_ongoing_requests` slots taken until the replica restarts.)
    """

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def __getattr__(self, method: str) -> _Method:
        if method.startswith("_"):
            raise AttributeError(method)
        return _Method(getattr(self.handle, method))


class _Method:
    def __init__(self, method: Any) -> None:
        self._method = method

    async def remote(self, *args: Any, **kwargs: Any) -> Any:
        async with self._method.choose_replica() as selection:
            return await self._method.dispatch(selection, *args, **kwargs)


def stop_safe(handle: Any) -> Any:
    """`handle` wrapped (None stays None; a wrapped one is not wrapped twice)."""
    if handle is None or isinstance(handle, StopSafeHandle):
        return handle
    return StopSafeHandle(handle)


def ray_address() -> str:
    """The Ray cluster to join: $RAY_ADDRESS, else the one `grid up` started, else 'auto'."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    from .local_cluster import read_state

    return (read_state() or {}).get("ray_address", "auto")


def connect_ray() -> None:
    """Join the grid's Ray cluster from this process, unless already connected."""
    import ray

    if not ray.is_initialized():
        ray.init(address=ray_address(), log_to_driver=False)
