"""Small helpers every deployment uses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import Any, Awaitable, Callable, Iterator

from grid_serve.errors import GridError, UnavailableError, plain_seconds

logger = logging.getLogger("ray.serve")

# Deployments that only coordinate must not take CPUs that tasks need, or tasks starve.
COORDINATOR_OPTIONS = {"ray_actor_options": {"num_cpus": 0}, "max_ongoing_requests": 1000}
# Deployments only other deployments call, several times per batch of tasks: an access-log line
# per call was a visible share of the Scheduler's CPU (py-spy; BENCHMARKS.md) and no user reads it.
INTERNAL_OPTIONS = {**COORDINATOR_OPTIONS, "logging_config": {"enable_access_log": False}}


CALL_TIMEOUT_S = 30.0  # a call to another deployment or actor on a control path answers within this
SCHEDULER_GRACE_S = 60.0  # how long a job rides out an unreachable Scheduler before it fails
KV_NAMESPACE = "grid_serve"


def load_saved(key: str) -> Any:
    """What `save(key, ...)` last stored in Ray's GCS (it outlives any replica), or None."""
    from ray.experimental import internal_kv

    raw = internal_kv._internal_kv_get(key, namespace=KV_NAMESPACE)
    return json.loads(raw) if raw else None


def save(key: str, state_json: str) -> None:
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(key, state_json, overwrite=True, namespace=KV_NAMESPACE)


class ReplacedError(Exception):
    """A newer replica took the record over since this one last wrote it: this one must stop
    writing it (and stop acting on what it holds)."""


class SoleWriterRecord:
    """A JSON record in Ray's GCS that one replica at a time writes, such as a deployment's
    state across a restart or a rolling update (old and new replica alive together).

    Each write puts the next version under a key of its own, and only if that key is absent:
    the GCS's put-if-absent is its one atomic check, so it serves as compare-and-set. A replica
    `claim`s the record when it starts (reads the newest version and writes the next one); from
    then on an older replica's next write finds its version taken and raises `ReplacedError`
    instead of overwriting what the newer one keeps. Each version names its writer, so a put
    retried after it had landed (the GCS client retries) is known as this replica's own. Readers
    take the newest version, and only the two newest are kept: an older replica whose next
    version was pruned meanwhile writes a version below the newest, which no reader takes; it
    sees that, deletes it and is replaced all the same. A record saved by `save(key, ...)`
    (before versions) is read as version -1."""

    def __init__(self, key: str) -> None:
        self._key = key
        self._writer = uuid.uuid4().hex
        self._version: int | None = None  # the version this replica last wrote; None: not claimed

    def claim(self) -> Any:
        """The newest state (None: nothing saved yet), with this replica its only writer."""
        while True:
            version, state = self._newest()
            if self._put(version + 1, json.dumps(state)):
                self._version = version + 1
                self._prune(self._versions())
                return state

    def save(self, state_json: str) -> None:
        """Write the next version, unless a newer replica claimed the record (`ReplacedError`)."""
        if self._version is None:
            raise RuntimeError("claim the record before saving it")
        version = self._version + 1
        if not self._put(version, state_json):
            raise ReplacedError(f"another replica took over {self._key}")
        self._version = version  # written: whatever happens next, the next save is the one after it
        versions = self._versions()
        if not self._is_newest(versions):  # written below a newer replica's versions: read by no one
            self._delete(version)
            raise ReplacedError(f"another replica took over {self._key}")
        self._prune(versions)

    def still_mine(self) -> bool:
        """Whether the newest version is the one this replica last wrote (one list call)."""
        return self._is_newest(self._versions())

    def _is_newest(self, versions: list[int]) -> bool:
        return bool(versions) and versions[-1] == self._version

    def _versioned(self, version: int) -> str:
        return f"{self._key}@{version:012d}"

    def _versions(self) -> list[int]:
        from ray.experimental import internal_kv

        keys = internal_kv._internal_kv_list(f"{self._key}@", namespace=KV_NAMESPACE)
        return sorted(int(key.decode().rsplit("@", 1)[1]) for key in keys)

    def _newest(self) -> tuple[int, Any]:
        """The newest version and its state (a record from before versions: -1 and its state)."""
        versions = self._versions()
        if not versions:
            return -1, load_saved(self._key)
        stored = self._stored(versions[-1])
        return versions[-1], stored["state"] if stored else None

    def _stored(self, version: int) -> dict[str, Any] | None:
        from ray.experimental import internal_kv

        raw = internal_kv._internal_kv_get(self._versioned(version), namespace=KV_NAMESPACE)
        return json.loads(raw) if raw else None

    def _put(self, version: int, state_json: str) -> bool:
        """True when this replica wrote `version` (now, or by a put retried after it landed);
        False when another did."""
        from ray.experimental import internal_kv

        value = f'{{"writer": {json.dumps(self._writer)}, "state": {state_json}}}'
        existed = internal_kv._internal_kv_put(self._versioned(version), value, overwrite=False,
                                               namespace=KV_NAMESPACE)
        if not existed:
            return True
        stored = self._stored(version)
        return bool(stored) and stored.get("writer") == self._writer

    def _prune(self, versions: list[int]) -> None:
        """Keep the two newest of `versions` (the list this replica just read)."""
        for version in versions[:-2]:
            self._delete(version)

    def _delete(self, version: int) -> None:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_del(self._versioned(version), namespace=KV_NAMESPACE)


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


def is_answer(exc: BaseException) -> bool:
    """Whether a Scheduler call's error is its answer (a bad request, a full queue), raised there
    and carried back by Ray, rather than a Scheduler that is away."""
    cause = getattr(exc, "cause", None)
    return isinstance(exc, (GridError, ValueError)) or isinstance(cause, (GridError, ValueError))


async def ask_riding_restarts(call: Callable[[], Awaitable[Any]], grace_s: float = SCHEDULER_GRACE_S) -> Any:
    """Call the Scheduler, riding out its restart: retry until `grace_s` has passed."""
    deadline = time.monotonic() + grace_s
    while True:
        try:
            return await call_with_timeout(call(), CALL_TIMEOUT_S)
        except Exception as exc:
            if is_answer(exc):
                raise
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the Scheduler did not answer for {grace_s:g} s "
                                   f"({type(exc).__name__}: {exc})") from None
            logger.warning("Scheduler call failed (%s); retrying", type(exc).__name__)
            await asyncio.sleep(0.25)


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


async def answer_within(call: Awaitable[Any], timeout_s: float, who: str, field: str | None = None) -> Any:
    """`grid_call`, or 503 naming `who` once `timeout_s` passed: a stopped (SIGSTOP) or stuck
    peer must not hold the request, and the replica's slot, forever."""
    try:
        return await asyncio.wait_for(grid_call(call), timeout_s)
    except asyncio.TimeoutError:
        raise UnavailableError(f"{who} did not answer within {plain_seconds(timeout_s)} (stopped or overloaded); "
                               "retry later", field=field) from None


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
