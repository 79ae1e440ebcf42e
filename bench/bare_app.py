"""The baseline for the HTTP benchmark: a bare Serve deployment doing the same minimal work.

`/bare/health` answers a constant; `/bare/job` awaits one no-op Ray task. Coordinating only,
so it takes no CPU (like grid-serve's deployments).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve

from .plain_ray import noop

bare_api = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress(bare_api)
class Bare:
    @bare_api.get("/health")
    async def health(self) -> dict[str, Any]:
        return {"status": "ok"}

    @bare_api.post("/job")
    async def job(self) -> dict[str, Any]:
        return {"ok": True, "result": await noop.remote(0)}


def deploy_bare() -> str:
    """Run the bare app beside grid (same Serve instance, same HTTP port) at /bare."""
    serve.run(Bare.bind(), name="bare", route_prefix="/bare", blocking=False)
    return "/bare"
