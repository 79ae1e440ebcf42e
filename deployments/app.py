"""`build_app(args)`: the grid application, as `serve_config.yaml` names it.

    MetricsCollector ─┬─> SharingManager ──┐ (allocations: placement groups on donors)
                      │                    ▼
                      └─────────────> Scheduler <──── Ingress (HTTP /v1, handle) x N
    LoadBalancer <── ledger copy ──────┘   ▲  placements      │ jobs
                                           │                  ▼
                                           └─ reports ── JobRunner (one per Ingress replica)
                                              leases        └─> Ray tasks, pinned
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from grid_serve.access import LOOPBACK_HOSTS
from grid_serve.config import ClusterConfig, load_cluster_config
from grid_serve.limits import Limits
from grid_serve.models import QueueName
from grid_serve.queues import QueueSettings

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
    lookahead_ms: float = Field(
        100.0, ge=0, le=10_000,
        description="work handed to Ray ahead of free capacity, per slot, in expected run time (always at "
                    "least one task; 0 = none: strict priorities, lower throughput). See grid_serve/lookahead.py")
    chunk_ms: float = Field(
        2.0, ge=0, le=100,
        description="tasks learned to run far shorter than this go to Ray several to one Ray task, up to this "
                    "much expected run time each (Ray's own cost per task is then paid once per chunk); each "
                    "task keeps its own decision and result. 0 = one Ray task per task. See grid_serve/lookahead.py")
    admission: float | None = Field(
        None, ge=1.0, le=16.0,
        description="fixed admission instead of the lookahead: a node takes reservations up to this many "
                    "times its resources")
    ingress_replicas: int = Field(1, ge=1, le=16, description="Ingress replicas; any of them answers for any job")
    task_modules: list[str] = Field(default_factory=lambda: ["grid_serve.tasks"])
    token_env: str | None = Field(
        None, min_length=1, max_length=200,
        description="name of an environment variable (set where Ray runs) holding the API token, or "
                    "`name=token` pairs separated by commas (one identity each): then starting, cancelling or "
                    "releasing work and reading results need `Authorization: Bearer <token>`, and only the "
                    "identity that made a job, reservation or allocation may cancel, complete or release it")
    critical_callers: list[str] | None = Field(
        None, min_length=1,
        description="token identities (token_env's `name=token` pairs) that may use `critical` priority over HTTP; "
                    "default: anyone. Handle calls may always")
    limits: Limits = Field(default_factory=Limits, description="bounds on queues, kept jobs and waiting requests")
    queues: dict[QueueName, QueueSettings] = Field(
        default_factory=dict,
        description="queues by name (a token identity, `ray-job:<id>`, `anonymous`, `default`, or a name jobs give "
                    "in `queue`) and their settings: `weight` (fair share), `quota` and `borrowing_limit` per "
                    "resource, `reclaim` (cancel_running: stop borrowers' running tasks); a queue not listed "
                    "has weight 1 and no quota. See grid_serve/queues.py")
    allowed_hosts: list[str] = Field(
        default_factory=lambda: list(LOOPBACK_HOSTS), min_length=1,
        description="host names the HTTP API answers to (the Host header); '*' for any. Loopback by default")


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
    scheduler = Scheduler.bind(metrics, load_balancer, settings.admission, settings.metrics_interval_s, sharing,
                               settings.lookahead_ms, settings.limits, settings.queues)
    return Ingress.options(num_replicas=settings.ingress_replicas).bind(
        scheduler, load_balancer, metrics, settings.task_modules, sharing, settings.metrics_interval_s,
        (settings.token_env, tuple(settings.allowed_hosts),
         tuple(settings.critical_callers) if settings.critical_callers else None), settings.limits, settings.chunk_ms)
