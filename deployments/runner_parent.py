"""A job runner's name, and whose it is: the Ingress replica that made it or took it over, and when a runner
whose replica is gone leaves.

A runner is a detached actor so that its jobs outlive the Ingress replica that made it (killed,
replaced by a deploy, scaled down). A new replica may take an orphan over, so its jobs stay
readable by id; a runner nobody holds leaves once its finished jobs have been readable for
`ORPHAN_KEEP_S`. The replica is looked up in the GCS in a thread, so the runner's loop (its
jobs' reads, its reports) never waits on the GCS.
"""

from __future__ import annotations

import asyncio
import time
from typing import Iterable

import ray

from ._common import logger

RUNNER_PREFIX = "grid-runner-"
RUNNER_NAMESPACE = "grid-serve"  # runners of every grid app on the cluster, named by app and tag
TAG_LEN = 4  # a job id starts with its runner's tag
ORPHAN_KEEP_S = 300.0  # a runner no replica holds keeps its finished jobs readable this long, then leaves


def runner_name(app: str, tag: str) -> str:
    return f"{RUNNER_PREFIX}{app}-{tag}"


def is_runner_of(name: str, app: str) -> bool:
    """Whether the actor `name` is one of `app`'s runners: its name is the prefix, the app's
    name and a tag, exactly. Another app whose name starts alike (`grid-auth` beside `grid`)
    has runners that share the prefix `grid-runner-grid-`, never the exact shape.

    >>> is_runner_of("grid-runner-grid-1a2b", "grid"), is_runner_of("grid-runner-grid-auth-1a2b", "grid")
    (True, False)
    """
    prefix = runner_name(app, "")
    tag = name[len(prefix):]
    return name.startswith(prefix) and len(tag) == TAG_LEN and all(c in "0123456789abcdef" for c in tag)


class Parentage:
    """One runner's parent: `(actor name, namespace)` of its Ingress replica, or None when unknown."""

    def __init__(self, runner: str, parent: tuple[str, str] | None) -> None:
        self._runner = runner
        self.parent = parent
        self._seen = False  # the parent was seen alive once: only then may its absence make the runner leave
        self.replaced = False  # its Ingress replica started another runner (this one stopped answering)

    async def take_over(self, parent: tuple[str, str]) -> bool:
        """Whether `parent` may make this runner its own: only when the replica that made it is gone."""
        if self.replaced or (self.parent is not None and self.parent != parent and await self.alive()):
            return False
        self.parent, self._seen = parent, True
        return True

    async def alive(self) -> bool:
        """Whether the parent replica lives (a GCS lookup, off the loop)."""
        assert self.parent is not None
        try:
            await asyncio.to_thread(ray.get_actor, self.parent[0], namespace=self.parent[1])
            return True
        except ValueError:
            return False

    async def may_leave(self, finished_at: Iterable[float | None]) -> bool:
        """No job runs: whether the runner should leave now. Yes when its replica is gone (or
        replaced it), no other took it over, and no job ended within `ORPHAN_KEEP_S`. A parent
        never seen alive is forgotten instead, so a wrong name can never make a runner leave."""
        if not self.replaced:
            if self.parent is None:
                return False
            if await self.alive():
                self._seen = True
                return False
            if not self._seen:
                logger.warning("runner %s cannot see its Ingress replica %s; it stays", self._runner, self.parent)
                self.parent = None
                return False
        last_end = max((at or 0.0 for at in finished_at), default=0.0)
        return time.time() - last_end > ORPHAN_KEEP_S
