"""How grid-serve stops the Ray tasks of a job it cancels (a DELETE, `timeout_s`, a caller
that gave up): Ray's cancel first, then, for what has not ended `CANCEL_GRACE_S` later, Ray's
forced cancel.

Ray's plain cancel raises KeyboardInterrupt in the task, which only Python bytecode sees: a
task blocked in C (`time.sleep`, I/O, a NumPy or CUDA call) runs on to its end, holding its CPUs
and GPUs while its job reads `cancelled` (a 120 s sleep ran on for the whole test, and the
next job's task waited behind it in Ray's queue). The forced cancel kills the task's worker,
so what a cancelled job held is free once its tasks are. The grace lets a task that can stop
cleanly do so (its `finally` runs) and spares the worker restart.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

logger = logging.getLogger("grid_serve.stopping")

CANCEL_GRACE_S = 2.0


def stop_tasks(refs: list[Any], grace_s: float = CANCEL_GRACE_S) -> None:
    """Ask Ray to stop the tasks of `refs` (one ref per task), forcing those still unfinished
    after `grace_s`; returns at once (a timer thread forces: the caller's event loop may be
    gone by then)."""
    import ray

    asked = []
    for ref in refs:
        try:
            ray.cancel(ref, force=False)
            asked.append(ref)
        except Exception:  # it ended meanwhile
            pass
    if asked:
        timer = threading.Timer(grace_s, _force_unfinished, (asked, grace_s))
        timer.daemon = True
        timer.start()


def _force_unfinished(refs: list[Any], grace_s: float) -> None:
    import ray

    try:
        _, unfinished = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
    except Exception as exc:  # Ray is shut down: its tasks went with it
        logger.debug("could not look for tasks still running after a cancel (%s)", exc)
        return
    for ref in unfinished:
        try:
            ray.cancel(ref, force=True)
        except Exception:  # it ended meanwhile
            pass
    if unfinished:
        logger.info("%d cancelled task(s) still ran after %.0f s (blocked outside Python); their workers "
                    "were stopped", len(unfinished), grace_s)
