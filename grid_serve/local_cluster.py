"""A local multi-node Ray cluster with the grid app on it: for `grid up --local`, examples,
tests and benchmarks.

One raylet per node of the cluster config, labelled `grid.io/node=<name>`, with its CPU and
GPU counts scaled to fit this machine (GPUs are logical: Ray hands out ids, no device needs to
exist). Built on `ray.cluster_utils.Cluster`, so the whole cluster lives and dies with the one
process that holds it: `grid down` stops exactly what `grid up` started, and nothing else.
"""

from __future__ import annotations

import math
import os
import random
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import psutil

from .config import ClusterConfig, NodeConfig
from .models import NODE_LABEL

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "config" / "cluster.yaml"
DEFAULT_SERVE_CONFIG = REPO_ROOT / "serve_config.yaml"
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class LocalNode:
    name: str
    num_cpus: int
    num_gpus: int
    memory_bytes: int
    head: bool
    resources: Mapping[str, float] = field(default_factory=dict)  # custom Ray resources, e.g. {"trio": 1000}

    def ray_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "memory": self.memory_bytes,
            "labels": {NODE_LABEL: self.name},
            "object_store_memory": 100 * 1024 * 1024,
        }
        if self.resources:
            args["resources"] = dict(self.resources)
        if self.head:
            args["dashboard_host"] = LOOPBACK
            args["include_dashboard"] = True
            args["dashboard_port"] = free_port(8265)  # another cluster on this machine may hold 8265
        return args


def scaled_nodes(config: ClusterConfig, cpu_budget: int | None = None,
                 memory_budget: int | None = None) -> list[LocalNode]:
    """The config's nodes shrunk to fit this machine, keeping their proportions.

    >>> # 8/6/8 CPUs on a 2-core machine (budget 6) -> 2/2/2; GPU counts kept as they are.
    """
    cpu_budget = cpu_budget or max(6, 3 * (os.cpu_count() or 2))
    memory_budget = memory_budget or int(psutil.virtual_memory().total * 0.5)
    total_cpus = sum(node.cpu_count for node in config.nodes)
    total_memory = sum(node.memory_gb for node in config.nodes) * 1024**3
    cpu_factor = min(1.0, cpu_budget / total_cpus)
    memory_factor = min(1.0, memory_budget / total_memory)
    head = config.head
    return [_scale(node, cpu_factor, memory_factor, node is head) for node in config.nodes]


def _scale(node: NodeConfig, cpu_factor: float, memory_factor: float, head: bool) -> LocalNode:
    return LocalNode(
        name=node.name,
        num_cpus=max(1, round(node.cpu_count * cpu_factor)),
        num_gpus=int(math.ceil(node.gpu_count)),
        memory_bytes=int(node.memory_gb * 1024**3 * memory_factor),
        head=head,
    )


def start_cluster(nodes: list[LocalNode], system_config: Mapping[str, Any] | None = None) -> Any:
    """Start the raylets (head first) and connect this process to them. `system_config`: Ray
    internals for the whole cluster (tests shorten the health checks that find a dead node)."""
    import ray
    from ray.cluster_utils import Cluster

    head = next(node for node in nodes if node.head)
    head_args = head.ray_args()
    if system_config:
        head_args["_system_config"] = dict(system_config)
    cluster = Cluster(initialize_head=True, head_node_args=head_args)
    for node in nodes:
        if not node.head:
            cluster.add_node(**node.ray_args())
    cluster.wait_for_nodes()
    if not ray.is_initialized():
        ray.init(address=cluster.address, log_to_driver=False)
    return cluster


def free_port(preferred: int | None = None) -> int:
    """`preferred` if nothing listens there on loopback, else a free loopback port.

    Picked below the kernel's ephemeral range (where `bind(0)` and every outgoing connection
    draw from): a port taken from there can be taken again by a client connection before the
    server binds it, which made `grid up --local` fail now and then on a busy machine.
    """
    if preferred and listener_on(preferred) is None:
        return preferred
    low, high = _below_ephemeral_range()
    for _ in range(64):
        port = random.randrange(low, high)
        if listener_on(port) is None:
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _below_ephemeral_range() -> tuple[int, int]:
    """Ports 20000 up to where the kernel starts handing out ephemeral ports."""
    try:
        first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first_ephemeral = 32768
    return (20000, first_ephemeral) if first_ephemeral > 21000 else (first_ephemeral // 2, first_ephemeral)


def listener_on(port: int, host: str = LOOPBACK) -> str | None:
    """None when a server could listen on host:port now, else who holds it (as far as we can tell).

    The test bind sets SO_REUSEADDR, as every server we start does (uvicorn, Ray): the
    connections a stopped server leaves in TIME-WAIT must not count, only a live listener.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return _describe_listener(port)
    return None


def _describe_listener(port: int) -> str:
    """'pid 123 (ray::ProxyActor ...)' for the process listening on `port`, when we may see it."""
    try:
        pids = {conn.pid for conn in psutil.net_connections(kind="tcp")
                if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port}
    except (psutil.Error, OSError):
        pids = set()
    for pid in sorted(pid for pid in pids if pid):
        try:
            command = " ".join(psutil.Process(pid).cmdline()) or psutil.Process(pid).name()
        except psutil.Error:
            continue
        if "ProxyActor" in command:
            return f"a Ray Serve proxy, pid {pid} (another grid-serve or Serve app)"
        return f"pid {pid} ({command[:60]})"
    return "another program"


def serve_app_spec(serve_config: Path = DEFAULT_SERVE_CONFIG) -> tuple[dict[str, Any], dict[str, Any]]:
    """The grid application's entry and the http options from serve_config.yaml."""
    import yaml

    data = yaml.safe_load(serve_config.read_text())
    app = next(app for app in data["applications"] if app.get("name") == "grid")
    return app, data.get("http_options", {})


def deploy_app(port: int, args: dict[str, Any] | None = None, serve_config: Path = DEFAULT_SERVE_CONFIG) -> str:
    """Deploy the grid app (as serve_config.yaml describes it) on the connected cluster,
    HTTP on loopback:`port`; returns the base URL once the app is running."""
    from ray import serve

    from deployments.app import build_app

    app, _ = serve_app_spec(serve_config)
    app_args = dict(app.get("args", {}))
    if app_args.get("cluster_config") and not Path(app_args["cluster_config"]).is_absolute():
        app_args["cluster_config"] = str(serve_config.parent / app_args["cluster_config"])
    app_args.update(args or {})
    serve.start(http_options={"host": LOOPBACK, "port": port})
    serve.run(build_app(app_args), name=app["name"], route_prefix=app.get("route_prefix", "/"), blocking=False)
    return f"http://{LOOPBACK}:{port}"


# ---------------------------------------------------------------- `grid up --local` supervisor
#
# `grid up --local` starts `python -m grid_serve.local_cluster` detached. That one process owns
# the cluster: it starts the raylets, deploys the app, writes the state file, and on SIGTERM
# (`grid down`) takes everything down with it.


def state_dir() -> Path:
    return Path(os.environ.get("GRID_HOME", Path.home() / ".grid"))


def state_file() -> Path:
    return state_dir() / "local.json"


def log_file() -> Path:
    return state_dir() / "local.log"


def read_state() -> dict[str, Any] | None:
    """The running local cluster's state, or None when none is up (stale files are removed)."""
    import json

    path = state_file()
    try:
        state = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    if state.get("mode") == "local" and not _is_our_supervisor(state):
        path.unlink(missing_ok=True)
        return None
    return state


def _is_our_supervisor(state: dict[str, Any]) -> bool:
    """The recorded pid is still the supervisor that wrote the state, not a reused pid."""
    try:
        process = psutil.Process(state.get("pid", -1))
        return abs(process.create_time() - state.get("started_at", process.create_time())) <= 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def write_state(state: dict[str, Any]) -> None:
    import json

    state_dir().mkdir(parents=True, exist_ok=True)
    tmp = state_file().with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(state_file())


def supervise(config_path: Path, serve_config: Path, port: int) -> None:
    """Run the local cluster and app until SIGTERM/SIGINT, then stop both."""
    import signal
    import threading

    import ray

    from .config import load_cluster_config

    nodes = scaled_nodes(load_cluster_config(config_path))
    cluster = start_cluster(nodes)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        url = deploy_app(port, {"cluster_config": str(config_path.resolve())}, serve_config)
        write_state({
            "mode": "local", "pid": os.getpid(), "started_at": psutil.Process().create_time(),
            "http": url, "ray_address": cluster.address,
            "dashboard": _dashboard_url(), "config": str(config_path.resolve()),
            "nodes": [{"name": n.name, "num_cpus": n.num_cpus, "num_gpus": n.num_gpus,
                       "memory_bytes": n.memory_bytes} for n in nodes],
        })
        stop.wait()
    finally:
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()
            state = read_state()
            if state and state.get("pid") == os.getpid():
                state_file().unlink(missing_ok=True)


def _dashboard_url() -> str | None:
    try:
        from ray._private.worker import get_dashboard_url

        url = get_dashboard_url()
        return url if url.startswith("http") else f"http://{url}"
    except Exception:  # the dashboard is optional; the app works without it
        return None


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Supervisor for `grid up --local`; use `grid up --local` instead.")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--serve-config", type=Path, default=DEFAULT_SERVE_CONFIG)
    parser.add_argument("--port", type=int, default=8000)
    options = parser.parse_args()
    supervise(options.config, options.serve_config, options.port)
