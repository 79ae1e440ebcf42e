"""`build_app(args)`: the grid application, as `serve_config.yaml` names it.

    MetricsCollector ─┬─> SharingManager ──┐ (allocations: placement groups on donors)
                      │                    ▼
                      ├─────────────> Scheduler ─> Ingress (HTTP /v1, handle)
    LoadBalancer ─────┘                    ▲           │
                                           └───────────┘ completions
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from grid_serve.config import ClusterConfig, load_cluster_config

from .ingress import Ingress
from .load_balancer import LoadBalancer
from .metrics_collector import MetricsCollector
from .scheduler import Scheduler
from .sharing_manager import SharingManager


class AppArgs(BaseModel):
    """The `args:` block of serve_config.yaml; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    cluster_config: str | None = Field(None, description="cluster YAML; relative paths are from the working dir")
    metrics_interval_s: float = Field(1.0, gt=0, le=60)
    probe_stale_after_s: float | None = Field(
        None, gt=0, le=3600,
        description="a node whose probe has not answered for this long is stale; default max(5 intervals, 10 s)")
    admission: float = Field(1.0, ge=1.0, le=16.0,
                             description="a node takes reservations up to this many times its resources")
    task_modules: list[str] = Field(default_factory=lambda: ["grid_serve.tasks"])


def load_config(args: AppArgs) -> ClusterConfig | None:
    if not args.cluster_config:
        return None
    return load_cluster_config(Path(args.cluster_config))


def build_app(args: dict) -> Application:
    settings = AppArgs.model_validate(args or {})
    config = load_config(settings)  # fail fast on a bad cluster file, before any replica starts
    metrics = MetricsCollector.bind(settings.metrics_interval_s, settings.probe_stale_after_s)
    load_balancer = LoadBalancer.bind()
    sharing = SharingManager.bind(config, metrics, load_balancer)
    scheduler = Scheduler.bind(metrics, load_balancer, settings.admission, settings.metrics_interval_s, sharing)
    return Ingress.bind(scheduler, load_balancer, metrics, settings.task_modules, sharing)
