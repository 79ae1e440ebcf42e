"""The plain-Ray side of every benchmark: the same task bodies, submitted the way Ray users do."""

from __future__ import annotations

import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .harness import TRIO, TRIO_SHARE


@ray.remote
def noop(task_id: int = 0) -> int:
    return task_id


@ray.remote
def node_of(task_id: int = 0) -> str:
    """Where the task ran (Ray node id): what balance counts."""
    return ray.get_runtime_context().get_node_id()


@ray.remote
def sleep_for(seconds: float) -> tuple[str, float, float]:
    """Sleep like grid's sleep_task; report node, start and end (epoch seconds)."""
    started = time.time()
    time.sleep(seconds)
    return ray.get_runtime_context().get_node_id(), started, time.time()


@ray.remote
def slow_on(node: str, slow_s: float, fast_s: float) -> str:
    """grid's slow_on_node for plain Ray: sleep `slow_s` on the node labelled `node`, else `fast_s`."""
    here = ray.get_runtime_context().get_node_labels().get("grid.io/node", "")
    time.sleep(slow_s if here == node else fast_s)
    return here


def options(strategy: str, on_trio: bool = False) -> dict[str, Any]:
    """`.options()` for Ray's named strategies, optionally held to the 3 `trio` nodes."""
    opts: dict[str, Any] = {"scheduling_strategy": strategy}
    if on_trio:
        opts["resources"] = {TRIO: TRIO_SHARE}
    return opts


def pinned(node_ids: list[str]) -> list[Any]:
    """One configured `noop` per node, pinned hard: the per-task NodeAffinity baseline."""
    return [noop.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
            for node_id in node_ids]
