"""A handle caller's own function, carried to the worker that runs it and opened only there.

A function from the caller's module (`mymod.f`, shipped in the caller's `runtime_env`) cannot
be unpickled in the Ingress, a job runner or the Scheduler: their processes run the app's
Ray job, without the caller's working_dir or py_modules (`No module named 'mymod'`). So
`HandleClient.submit_job(spec, fn=f)` sends `CallerCode`: the function as cloudpickled bytes
and the caller's runtime_env. grid-serve moves the bytes as bytes; the runner hands Ray each
task with that runtime_env as a task option, and the worker, which has the caller's modules,
opens the function (once per worker: `open_function` keeps what it opened).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

# set up by the caller's job, not a task's to carry: a hook Ray stored for that job alone
JOB_ONLY_KEYS = frozenset({"worker_process_setup_hook"})


@dataclass(frozen=True)
class CallerCode:
    """A caller's function as bytes (never opened on the way) and where it must run."""

    blob: bytes
    name: str
    runtime_env: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, fn: Callable[..., Any], runtime_env: Mapping[str, Any] | None = None) -> CallerCode:
        """Pack `fn` in the calling process; `runtime_env` None takes the caller's own (its Ray
        job's: working_dir and py_modules as the URIs Ray uploaded them to, env_vars, pip)."""
        from ray import cloudpickle

        env = caller_runtime_env() if runtime_env is None else dict(runtime_env)
        return cls(cloudpickle.dumps(fn), getattr(fn, "__name__", "custom"), env)

    @property
    def key(self) -> str:
        """Equal for equal code and environment: what a runner groups Ray's remote functions by."""
        return hashlib.sha1(self.blob + repr(sorted(self.runtime_env.items())).encode()).hexdigest()[:16]


def caller_runtime_env() -> dict[str, Any]:
    """The runtime_env this process's Ray job runs with ({} outside Ray, or without one)."""
    import ray

    if not ray.is_initialized():
        return {}
    env = dict(ray.get_runtime_context().runtime_env or {})
    return {name: value for name, value in env.items() if name not in JOB_ONLY_KEYS and not name.startswith("_")}


def open_function(fn: Any) -> Callable[..., Any]:
    """The callable to run: `fn` itself, or the function a `CallerCode`'s bytes hold (inside the
    worker, which has the caller's runtime_env)."""
    return _opened(fn) if isinstance(fn, bytes) else fn


@functools.lru_cache(maxsize=16)  # a worker runs few callers' functions; each entry holds the blob
def _opened(blob: bytes) -> Callable[..., Any]:
    from ray import cloudpickle

    return cloudpickle.loads(blob)
