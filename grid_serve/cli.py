"""The `grid` command: start a local cluster, distribute test jobs, check status, explain a
decision, validate.

Every command talks to the app over HTTP (`--address`, default `$GRID_ADDRESS`, else the app
`grid up` started, else http://127.0.0.1:8000) except `up`/`down`, which start and stop it. Failures print one line:
exit code 1 for runtime errors (the app is not reachable, a job failed), 2 for bad usage
(an unknown strategy or node, a bad value).
"""

from __future__ import annotations

import enum
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .client import AppUnreachableError, GridClient, OwnerKeys, default_address
from .config import ClusterConfig, ConfigError, NodeConfig, load_cluster_config
from .errors import GridError, InvalidRequestError, NotFoundError, describe_error
from .local_cluster import (
    DEFAULT_CONFIG,
    DEFAULT_SERVE_CONFIG,
    LOOPBACK,
    listener_on,
    log_file,
    read_state,
    state_dir,
    state_file,
)
from .models import (
    NODE_LABEL,
    ClusterStatus,
    DecisionRecord,
    JobPending,
    JobStatus,
    JobSubmission,
    NodeStatus,
    ResourceRequirement,
    SchedulingStrategy,
    TaskPriority,
    count_text,
)
from .queues import amount_text
from .sharing import Allocation, ResourceType, SharingRequest, config_capacity_rows, parse_duration, status_tables

console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
StrategyName = enum.Enum("StrategyName", {str(s): str(s) for s in SchedulingStrategy}, type=str)  # type: ignore[misc]
PriorityName = enum.Enum("PriorityName", {str(p): str(p) for p in TaskPriority}, type=str)  # type: ignore[misc]
UP_TIMEOUT_S = 300.0

app = typer.Typer(
    help=f"grid-serve: place Ray work where it should run ({', '.join(StrategyName.__members__)}; "
         "`grid strategies` says what each does).\n\nStart with `grid up --local`, then "
         "`grid distribute test --strategy spread --tasks 100`.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
)
distribute = typer.Typer(help="Submit test jobs and look at how work is spread.", no_args_is_help=True)
app.add_typer(distribute, name="distribute")
sharing_cli = typer.Typer(help="Borrow capacity between nodes: allocations with priorities and leases.",
                          no_args_is_help=True)
app.add_typer(sharing_cli, name="resource-sharing")

AddressOption = typer.Option(None, "--address", "-a",
                             help="The app's HTTP address [default: $GRID_ADDRESS, else the app `grid up` started, "
                                  "else http://127.0.0.1:8000]")
JsonOption = typer.Option(False, "--json", help="Print JSON for scripts instead of tables.")


class CliError(Exception):
    """A failure to report in one line; `code` 1 = runtime, 2 = usage."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = 1) -> NoReturn:
    raise CliError(message, code)


def connect(address: str | None) -> GridClient:
    """A client that keeps owner keys in $GRID_HOME: `release` finds what an earlier `request` made."""
    return GridClient(address or default_address(), timeout_s=60.0,
                      owner_keys=OwnerKeys(state_dir() / "owner-keys.json"))


# ================================================================== up / down


@app.command()
def up(
    local: bool = typer.Option(False, "--local", help="Start a local multi-node cluster (one raylet per config node) "
                                                      "and deploy the app on it."),
    config: Path = typer.Option(DEFAULT_CONFIG, "--config", "-c",
                                help="Cluster config (node names, CPUs, GPUs, memory)."),
    serve_config: Path = typer.Option(DEFAULT_SERVE_CONFIG, "--serve-config",
                                      help="The Serve application file to deploy."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="HTTP port on 127.0.0.1."),
    address: str | None = typer.Option(None, "--address",
                                       help="Ray cluster to deploy onto (without --local) [default: $RAY_ADDRESS]."),
) -> None:
    """Start grid-serve and return once it answers.

    \b
    Example: grid up --local            (3 local nodes: gpu-master, gpu1, gpu2)
    Example: RAY_ADDRESS=auto grid up   (deploy onto the cluster you are connected to)
    """
    state = read_state()
    if state:
        console.print(f"grid-serve is already up at {state['http']} ({state['mode']}); `grid down` stops it. "
                      f"Web UI: {state['http']}/ui")
        return
    for path in (config, serve_config):
        if not path.exists():
            fail(f"no such file: {path}", 2)
    try:
        load_cluster_config(config)
    except ConfigError as exc:
        fail(str(exc), 2)
    holder = listener_on(port)
    if holder:
        fail(f"port {port} on {LOOPBACK} is in use by {holder}; pick another with --port", 2)
    if local:
        state = _start_local(config, serve_config, port)
    else:
        state = _deploy_remote(address or os.environ.get("RAY_ADDRESS"), serve_config, port)
    console.print(f"grid-serve is up: HTTP API {state['http']}  (OpenAPI: {state['http']}/docs)")
    console.print(f"Web UI:       {state['http']}/ui  (open it in a browser)")
    if state.get("dashboard"):
        console.print(f"Ray dashboard: {state['dashboard']}")
    if state.get("ray_address"):
        console.print(f"Ray address:  {state['ray_address']}  (RAY_ADDRESS for handle clients)")


def _start_local(config: Path, serve_config: Path, port: int) -> dict[str, Any]:
    log = log_file()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "grid_serve.local_cluster", "--config", str(config.resolve()),
             "--serve-config", str(serve_config.resolve()), "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    console.print(f"Starting a local cluster from {config} (log: {log}) ...")
    deadline = time.monotonic() + UP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = " | ".join(log.read_text().strip().splitlines()[-3:])
            fail(f"the local cluster exited during start-up (code {process.returncode}): {tail}")
        state = read_state()
        if state and _healthy(state["http"]):
            return state
        time.sleep(1.0)
    process.terminate()
    fail(f"the app did not become healthy within {UP_TIMEOUT_S:.0f}s; see {log}")


def _deploy_remote(ray_address: str | None, serve_config: Path, port: int) -> dict[str, Any]:
    if not ray_address:
        fail("no Ray cluster given: pass --address or set RAY_ADDRESS, or use `grid up --local`", 2)
    import ray

    from .local_cluster import deploy_app, write_state

    try:
        ray.init(address=ray_address, log_to_driver=False)
    except Exception as exc:  # connection errors vary by Ray version; report them in one line
        fail(f"cannot connect to the Ray cluster at {ray_address}: {exc}")
    url = deploy_app(port, None, serve_config)
    state = {"mode": "remote", "http": url, "ray_address": ray_address, "pid": os.getpid()}
    deadline = time.monotonic() + UP_TIMEOUT_S
    while not _healthy(url):
        if time.monotonic() > deadline:
            fail(f"the app did not become healthy within {UP_TIMEOUT_S:.0f}s")
        time.sleep(1.0)
    write_state(state)
    return state


def _healthy(url: str) -> bool:
    try:
        with GridClient(url, timeout_s=5.0) as client:
            return client.health().get("status") == "ok"
    except GridError:
        return False


@app.command()
def down() -> None:
    """Stop exactly what `grid up` started (the local cluster, or the app it deployed).

    \b
    Example: grid down
    """
    state = read_state()
    if not state:
        console.print("Nothing to stop: grid-serve was not started by `grid up` (no state in "
                      f"{state_file().parent}).")
        return
    if state["mode"] == "local":
        import psutil

        process = psutil.Process(state["pid"])  # read_state() checked it is still our supervisor
        process.terminate()
        try:
            process.wait(timeout=120)
        except psutil.TimeoutExpired:
            process.kill()
        state_file().unlink(missing_ok=True)
        console.print(f"Stopped the local cluster and app ({state['http']}).")
        return
    import ray
    from ray import serve

    ray.init(address=state["ray_address"], log_to_driver=False)
    serve.delete("grid")
    state_file().unlink(missing_ok=True)
    console.print(f"Deleted the grid app from the cluster at {state['ray_address']}.")


# ================================================================== distribute


@distribute.command("test")
def distribute_test(
    strategy: StrategyName = typer.Option("spread", "--strategy", "-s", case_sensitive=False,
                                          help="How to place the tasks (`grid strategies` says what each does)."),
    tasks: int = typer.Option(100, "--tasks", "-n", min=1, max=100_000, help="How many tasks."),
    node: str | None = typer.Option(None, "--node",
                                    help="Target node for node_specific: name, Ray node id, IP or hostname."),
    priority: PriorityName = typer.Option("normal", "--priority", "-p", case_sensitive=False,
                                          help="Queue order when nodes are full."),
    cpus: float | None = typer.Option(None, "--cpus", min=0, help="CPUs per task [default: the task's own, 1]."),
    gpus: float | None = typer.Option(None, "--gpus", min=0, help="GPUs per task [default: the task's own, 0]."),
    task: str = typer.Option("compute_task", "--task", "-t", help="Registered task to run (see /v1/tasks)."),
    queue_name: str | None = typer.Option(None, "--queue", "-q",
                                          help="The queue its tasks wait in [default: the caller's own: its token "
                                               "identity, or `anonymous`]. See `grid queue`."),
    as_json: bool = JsonOption,
    address: str | None = AddressOption,
) -> None:
    """Run N tasks through grid-serve and show where they ran.

    \b
    Example: grid distribute test --strategy spread --tasks 100
    Example: grid distribute test --strategy node_specific --node gpu1 --tasks 50
    """
    if strategy.value == "node_specific" and not node:
        fail("--strategy node_specific needs --node NAME", 2)
    if node and strategy.value != "node_specific":
        fail(f"--node is only used with --strategy node_specific (got --strategy {strategy.value})", 2)
    resources = None
    if cpus is not None or gpus is not None:
        resources = ResourceRequirement(cpu_count=1.0 if cpus is None else cpus, gpu_count=gpus or 0.0)
    spec = JobSubmission(task=task, count=tasks, strategy=strategy.value, node=node, priority=priority.value,
                         resources=resources, queue=queue_name)
    with connect(address) as client:
        started = time.monotonic()
        job = client.submit_job(spec)
        job = _follow(client, job, show=not as_json)
        elapsed = time.monotonic() - started
        addresses = {n.name: n.address for n in client.cluster_status().nodes}
    _print_distribution(job, addresses, elapsed, as_json)
    if job.state != "succeeded":
        fail(f"job {job.job_id} {job.state}: {job.failed} failed, {job.cancelled} cancelled"
             + (f" ({job.error})" if job.error else ""))


def _follow(client: GridClient, job: JobStatus, show: bool) -> JobStatus:
    """Poll the job until it ends, with a progress bar on a terminal."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not show) as progress:
        bar = progress.add_task(f"{job.strategy} x{job.total}", total=job.total)
        while job.state in ("queued", "running"):
            job = client.wait_job(job.job_id, timeout_s=0.5, results=False)
            progress.update(bar, completed=job.succeeded + job.failed + job.cancelled)
    return job


def _print_distribution(job: JobStatus, addresses: dict[str, str], elapsed: float, as_json: bool) -> None:
    rows = [{"node": name, "ip": addresses.get(name, "?"), "tasks": count,
             "share": round(100.0 * count / max(job.total, 1), 1)} for name, count in sorted(job.per_node.items())]
    if as_json:
        print(json.dumps({"job_id": job.job_id, "strategy": str(job.strategy), "state": job.state, "tasks": job.total,
                          "succeeded": job.succeeded, "failed": job.failed, "elapsed_s": round(elapsed, 3),
                          "per_node": rows, "turns_given_up": job.turns_given_up}, indent=2))
        return
    table = Table(title=f"{job.strategy}: {job.total} tasks (job {job.job_id})")
    for column, justify in (("Node", "left"), ("IP", "left"), ("Tasks", "right"), ("Share", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(row["node"], row["ip"], str(row["tasks"]), f"{row['share']:.1f}%")
    table.add_section()
    table.add_row("total", "", str(sum(r["tasks"] for r in rows)), "100.0%" if rows else "0%")
    console.print(table)
    console.print(f"{job.succeeded} succeeded, {job.failed} failed in {elapsed:.2f}s")
    if job.turns_given_up:
        console.print("spread turns given up (a node busy or stale past its patience; each counts as a task there): "
                      + ", ".join(f"{name} {turns}" for name, turns in sorted(job.turns_given_up.items())),
                      markup=False)


@distribute.command("status")
def distribute_status(as_json: bool = JsonOption, address: str | None = AddressOption) -> None:
    """One row per node (resources used/total, tasks in flight) and the app's health.

    \b
    Example: grid distribute status
    """
    with connect(address) as client:
        health = client.health()
        status = client.cluster_status()
    if as_json:
        print(json.dumps({"health": health, **status.model_dump(mode="json")}, indent=2))
        return
    console.print(_status_table(status))
    console.print(f"app: {health['status']}, {health['nodes_alive']}/{health['nodes']} nodes alive, "
                  f"{status.queued} task(s) queued, {health['jobs_running']} job(s) running")


def _used(node: Any, resource: str) -> str:
    total = node.resources_total.get(resource, 0.0)
    used = total - node.resources_available.get(resource, total)
    return f"{used:g}/{total:g}"


def _status_table(status: ClusterStatus) -> Table:
    table = Table(title="grid-serve cluster")
    for column in ("Node", "Node ID", "Address", "Alive", "CPUs", "GPUs", "Memory GiB", "CPU %", "Mem %", "GPU %",
                   "In flight"):
        table.add_column(column)
    for node in status.nodes:
        memory = node.resources_total.get("memory", 0.0) / 1024**3
        used_memory = memory - node.resources_available.get("memory", node.resources_total.get("memory", 0.0)) / 1024**3
        alive = "[red]no[/red]" if not node.alive else ("[yellow]stale[/yellow]" if node.stale else "yes")
        table.add_row(
            node.name, node.node_id[:8], node.address, alive,
            _used(node, "CPU"), _used(node, "GPU"), f"{used_memory:.1f}/{memory:.1f}",
            _percent(node.cpu_percent), _percent(node.memory_percent),
            " ".join(_percent(gpu.utilization_pct) for gpu in node.gpus) or "-", str(node.in_flight),
        )
    return table


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


@app.command()
def queue(as_json: bool = JsonOption, address: str | None = AddressOption) -> None:
    """The queues: what waits in each per priority, what runs, where each stands in fair share,
    and its quota. At one priority a task its queue's quota covers goes before borrowed work,
    and among each the queue furthest under its weighted share of its dominant resource goes
    next (weights and quotas: `queues:` in serve_config's args). A job's queue is the one it
    names (`queue`), else its caller's: a token identity, `anonymous`, or `ray-job:<id>`.

    \b
    Example: grid queue
    """
    with connect(address) as client:
        status = client.cluster_status()
    if as_json:
        print(json.dumps([queue.model_dump(mode="json") for queue in status.queues], indent=2))
        return
    rows = [[queue.name, f"{queue.weight:g}", _waiting_text(queue.waiting), str(queue.running),
             f"{queue.share:.0%} {queue.dominant}" if queue.dominant else "0%", f"{queue.fair_share:.0%}",
             f"{queue.oldest_wait_s:.1f}s" if queue.waiting else "-", _quota_text(queue.quota, queue.borrowed)]
            for queue in status.queues]
    _print_rows("queues (fair share at each priority)",
                ["Queue", "Weight", "Waiting", "Running", "Share", "Fair share", "Oldest wait", "Quota"], rows)


def _quota_text(quota: dict[str, float], borrowed: dict[str, float]) -> str:
    """'CPU 2 (borrows 4)' per resource of the quota; '-' without one."""
    if not quota:
        return "-"
    return ", ".join(f"{name} {amount_text(name, amount)}" + (f" (borrows {amount_text(name, borrowed[name])})"
                                                             if name in borrowed else "")
                     for name, amount in quota.items())


def _waiting_text(waiting: dict[TaskPriority, int]) -> str:
    """Tasks waiting per priority, highest first: "2 high, 5 normal"; "0" when none."""
    parts = [f"{waiting[priority]} {priority}" for priority in sorted(waiting, key=lambda p: -p.rank)]
    return ", ".join(parts) or "0"


# ================================================================== explain


@app.command()
def strategies(as_json: bool = JsonOption, address: str | None = AddressOption) -> None:
    """The placement strategies the app runs, as each strategy module declares itself: what it
    chooses, and what makes a task wait for it rather than go to another node.

    \b
    Example: grid strategies
    """
    with connect(address) as client:
        listed = client.list_strategies()
    if as_json:
        print(json.dumps(listed))
        return
    table = Table(title="Placement strategies (--strategy, any case)")
    for column in ("strategy", "what it chooses", "a task waits for"):
        table.add_column(column, overflow="fold")
    for strategy in listed:
        table.add_row(strategy["name"].lower(), strategy["summary"], ", ".join(strategy["waits_for"]) or "-")
    Console().print(table)


@app.command()
def explain(
    job_id: str = typer.Argument(..., help="The job, as `grid distribute test` or POST /v1/jobs named it."),
    task_index: int | None = typer.Argument(None, min=0, help="Which task of the job [default: its latest decision]."),
    as_json: bool = JsonOption,
    address: str | None = AddressOption,
) -> None:
    """Why one task of a job runs where it does: its decision in full. A task still queued:
    why it waits, what is ahead of it, and when it is expected to start and end.

    \b
    Example: grid explain 3f2a9c1e07b4 0
    """
    with connect(address) as client:
        status = client.get_job(job_id)  # an unknown job is a usage error naming it
        kept = client.recent_decisions(limit=500, job_id=job_id).decisions
        task_ids: dict[int, str] = {}
        if not kept:  # a job its caller's process ran: placed as calls of that caller's stream
            kept, task_ids = _stream_decisions(client, job_id)
    wanted = None if task_index is None else task_ids.get(task_index, f"{job_id}-{task_index}")
    if status.pending is not None and (not kept or (wanted and all(r.task_id != wanted for r in kept))):
        _print_pending(job_id, status.pending, as_json)
        return
    record = _decision_of(job_id, task_index, kept, task_ids)
    if as_json:
        print(json.dumps(record.model_dump(mode="json"), indent=2))
        return
    _print_decision(record)


def _print_pending(job_id: str, pending: JobPending, as_json: bool) -> None:
    """A queued job's forecast (`GET /v1/jobs/{id}`'s `pending`)."""
    if as_json:
        print(json.dumps(pending.model_dump(mode="json"), indent=2))
        return
    ahead = ", ".join(f"{count} {priority}" for priority, count in pending.ahead.items()) or "nothing"
    console.print(f"[bold]job {job_id}[/bold]: {pending.waiting} task(s) queued, {pending.held_back} more held back; "
                  f"its next one is number {pending.position + 1} in the queue (ahead of it: {ahead})")
    console.print(f"  why not yet: {pending.reason or 'placed at the next drain (capacity just freed)'}")
    if pending.fair_share:
        console.print(f"  fair share: {pending.fair_share}")
    start, end = (_in_seconds(value) for value in (pending.expected_start_s, pending.expected_end_s))
    console.print(f"  expected to start {start}, and the job to end {end}" +
                  (f" ({pending.note})" if pending.note else ""))


def _in_seconds(value: float | None) -> str:
    return "at a time not known yet" if value is None else f"in {value:.1f} s"


def _stream_decisions(client: GridClient, job_id: str) -> tuple[list[DecisionRecord], dict[int, str]]:
    """The kept decisions of a job that ran in its caller's process (`grid_serve.caller_jobs`):
    its tasks were calls of one of that process's streams, placed under the stream's ids, which
    the job's outcomes name. Newest first; with each task's index -> its id there."""
    try:
        outcomes = client.get_job(job_id, results=True).results or []
    except GridError:  # its results are not this caller's to read, or were dropped: no ids to go by
        return [], {}
    task_ids = {outcome.index: outcome.task_id for outcome in outcomes
                if outcome.task_id != f"{job_id}-{outcome.index}"}
    if not task_ids:
        return [], {}
    ids = set(task_ids.values())
    groups = {task_id.rsplit("-", 1)[0] for task_id in ids}
    kept = [record for group in groups for record in client.recent_decisions(limit=500, job_id=group).decisions
            if record.task_id in ids]
    kept.sort(key=lambda record: record.at, reverse=True)
    return kept, task_ids


def _decision_of(job_id: str, task_index: int | None, kept: list[DecisionRecord],
                 task_ids: dict[int, str]) -> DecisionRecord:
    """The kept decision of task `task_index` (the latest one when None), or a usage error.
    `task_ids`: the tasks placed under ids other than `<job>-<index>`."""
    if not kept:
        fail(f"job {job_id} has no decision kept: nothing placed yet, or the job is too old", 2)
    if task_index is None:
        return kept[0]
    wanted = task_ids.get(task_index, f"{job_id}-{task_index}")
    found = next((record for record in kept if record.task_id == wanted), None)
    if found is None:
        indexes = sorted(_index_of(record.task_id, task_ids) for record in kept)
        keeps = ("the latest 100 of the stream its caller's process placed it with" if task_ids
                 else "each job keeps its latest 100")
        fail(f"task {task_index} of job {job_id} has no decision kept (kept: tasks {indexes[0]}-{indexes[-1]}, "
             f"{len(indexes)} of them; {keeps})", 2)
    return found


def _index_of(task_id: str, task_ids: dict[int, str]) -> int:
    by_id = {value: index for index, value in task_ids.items()}
    return by_id[task_id] if task_id in by_id else int(task_id.rsplit("-", 1)[1])


def _print_decision(record: DecisionRecord) -> None:
    console.print(f"[bold]{record.task_id}[/bold] ({record.task_type}, {record.priority} priority) -> "
                  f"[bold]{record.node}[/bold] by {record.strategy}, score {record.score:.3f}, "
                  f"waited {record.waited_s:.3f}s" + (", in borrowed capacity" if record.borrowed else ""))
    explanation = record.explanation
    if explanation is None:  # borrowed capacity: its reasons are all there is
        for line in record.reasons:
            console.print(f"  {line}", markup=False)
        return
    console.print(f"  {explanation.summary}", markup=False)
    nodes = [explanation.winner] + ([explanation.runner_up] if explanation.runner_up else [])
    table = Table(title="scores (each in [0, 1])", title_justify="left")
    table.add_column("scorer")
    for scores, role in zip(nodes, ("winner", "runner-up")):
        table.add_column(f"{scores.node} ({role})", justify="right")
    for name in explanation.winner.scores:
        table.add_row(name, *[f"{scores.scores.get(name, 0.0):.3f}" for scores in nodes])
    table.add_section()
    table.add_row("total", *[f"{scores.score:.3f}" for scores in nodes])
    console.print(table)
    passed = sum(explanation.passed_over_counts.values())
    if not passed:
        console.print(f"passed over 0/{explanation.nodes} nodes")
        return
    console.print(f"passed over {passed}/{explanation.nodes} nodes: {count_text(explanation.passed_over_counts)}",
                  markup=False)
    for node in explanation.passed_over:
        console.print(f"  {node.node}: {node.cause}: {node.reason}", markup=False)
    if passed > len(explanation.passed_over):
        console.print(f"  ... and {passed - len(explanation.passed_over)} more")


# ================================================================== resource sharing

ResourceName = enum.Enum("ResourceName", {str(r): str(r) for r in ResourceType}, type=str)  # type: ignore[misc]


@sharing_cli.command("status")
def sharing_status(
    config: Path | None = typer.Option(None, "--config", "-c",
                                       help="Also show the sharing limits this cluster file sets."),
    as_json: bool = JsonOption,
    address: str | None = AddressOption,
) -> None:
    """Active allocations, pending requests, shareable capacity and use per node.

    \b
    Example: grid resource-sharing status --config config/cluster.yaml
    """
    limits = None
    if config is not None:
        try:
            limits = config_capacity_rows(load_cluster_config(config))
        except ConfigError as exc:
            fail(str(exc), 2)
    try:
        with connect(address) as client:
            status = client.sharing_status()
    except AppUnreachableError:
        if limits and not as_json:
            _print_rows(f"sharing limits in {config}", *limits)
        raise
    if as_json:
        body = status.model_dump(mode="json")
        if limits:
            body["config_limits"] = [dict(zip(limits[0], row)) for row in limits[1]]
        print(json.dumps(body, indent=2))
        return
    console.print(f"resource sharing: {'enabled' if status.enabled else 'disabled'}, policy {status.policy}")
    titles = {"allocations": "active allocations", "pending": "pending requests",
              "capacity": "shareable capacity per node", "utilisation": "node utilisation"}
    for key, (headers, rows) in status_tables(status).items():
        _print_rows(titles[key], headers, rows)
    if limits:
        _print_rows(f"sharing limits in {config}", *limits)


def _print_rows(title: str, headers: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title)
    for header in headers:
        table.add_column(header)
    for row in rows:
        table.add_row(*row)
    if not rows:
        table.add_row(*(["(none)"] + [""] * (len(headers) - 1)))
    console.print(table)


@sharing_cli.command("request")
def sharing_request(
    node: str = typer.Option(..., "--node", help="The node that borrows: name, Ray node id, IP or hostname."),
    resource: ResourceName = typer.Option(..., "--type", case_sensitive=False, help="What to borrow (memory in GB)."),
    amount: float = typer.Option(..., "--amount", help="How much (CPUs, GPUs or GB)."),
    priority: PriorityName = typer.Option("normal", "--priority", "-p", case_sensitive=False,
                                          help="Higher may preempt strictly lower allocations when no donor has room."),
    duration: str = typer.Option("30m", "--duration", help="Lease length: 90s, 30m, 2h."),
    timeout: str | None = typer.Option(None, "--timeout", help="How long to wait for a donor "
                                                               "[default: the config's allocation_timeout_minutes]."),
    donor: str | None = typer.Option(None, "--donor", help="Borrow from this node only."),
    as_json: bool = JsonOption,
    address: str | None = AddressOption,
) -> None:
    """Ask for capacity for a node; granted on a donor, queued, or refused with the reason.

    \b
    Example: grid resource-sharing request --node gpu-master --type cpu --amount 2.0 --priority high
    """
    try:
        request = SharingRequest(node=node, type=resource.value, amount=amount, priority=priority.value,
                                 duration_s=parse_duration(duration),
                                 timeout_s=parse_duration(timeout) if timeout else None, donor=donor)
    except ValueError as exc:
        fail(_first_error(exc), 2)
    with connect(address) as client:
        record = client.request_resources(request)
    _print_allocation(record, as_json)


@sharing_cli.command("release")
def sharing_release(
    record_id: str = typer.Argument(..., metavar="ID", help="The allocation (or pending request) id."),
    as_json: bool = JsonOption,
    address: str | None = AddressOption,
) -> None:
    """End an allocation now (running tasks finish first) or withdraw a pending request.

    \b
    Example: grid resource-sharing release 1a2b3c4d5e6f
    """
    with connect(address) as client:
        record = client.release_resources(record_id)
    _print_allocation(record, as_json)


def _print_allocation(record: Allocation, as_json: bool) -> None:
    if as_json:
        print(json.dumps(record.model_dump(mode="json"), indent=2))
        return
    where = f"on {record.donor}" if record.donor else "(no donor yet)"
    console.print(f"{record.id}: {record.state} {record.amount:g} {record.resource} for {record.borrower} {where}, "
                  f"priority {record.priority}" + (f" - {record.reason}" if record.reason else ""))


def _first_error(exc: ValueError) -> str:
    """One line from a pydantic error: 'amount: Input should be greater than 0'."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        field, message = describe_error(errors()[0])
        return f"{field}: {message}" if field != "body" else message
    return str(exc)


# ================================================================== validate


@app.command()
def validate(
    config: Path | None = typer.Option(
        None, "--config", "-c",
        help="Cluster config the cluster should match [default: the one `grid up --local` started, else none: "
             "check only what needs no config]."),
    address: str | None = AddressOption,
) -> None:
    """Check the cluster: the app answering, every live node probed, reporting resources and
    uniquely labelled; with a cluster config also every config node alive, found (by its label,
    else its host's IP or hostname) and sized as configured. Exits 1 if any check fails.

    \b
    Example: grid validate --config config/cluster.yaml
    """
    checks = run_validation(config or _local_config(), address)
    for ok, name, detail in checks:
        mark = "[green]PASS[/green]" if ok else "[red]FAIL[/red]"
        console.print(f"{mark}  {name}" + (f": {detail}" if detail else ""))
    failed = sum(1 for ok, _, _ in checks if not ok)
    if failed:
        fail(f"{failed} of {len(checks)} checks failed")
    console.print(f"all {len(checks)} checks passed")


Check = tuple[bool, str, str]


def _local_config() -> Path | None:
    """The cluster file of the local cluster `grid up --local` started, if one is up."""
    state = read_state()
    return Path(state["config"]) if state and state.get("mode") == "local" and state.get("config") else None


def run_validation(config_path: Path | None, address: str | None) -> list[Check]:
    """(passed, check, detail) for each check; shared with scripts/validate_ray_cluster.py."""
    checks: list[Check] = []
    config = None
    if config_path is not None:
        try:
            config = load_cluster_config(config_path)
            checks.append((True, "cluster config", f"{config_path}: {len(config.nodes)} nodes"))
        except ConfigError as exc:
            return [(False, "cluster config", str(exc))]
    client = connect(address)
    try:
        health = client.health()
        checks.append((health.get("status") == "ok", "app answers", f"{client.address} is {health.get('status')}"))
        status = client.cluster_status()
    except GridError as exc:
        return checks + [(False, "app answers", exc.message)]
    finally:
        client.close()
    checks.append((bool(status.nodes), "Ray cluster reachable", f"{len(status.nodes)} Ray node(s)"))
    checks += _live_node_checks(status)
    if config is not None and config_path is not None:
        checks += _config_checks(config, config_path, status)
    return checks


def _live_node_checks(status: ClusterStatus) -> list[Check]:
    """What holds on any cluster, config or not: probes answer, totals reported, labels unique."""
    live = [node for node in status.nodes if node.alive]
    unprobed = [node.name for node in live if node.sampled_at is None or node.stale]
    unsized = [node.name for node in live if node.resources_total.get("CPU") is None]
    labels = [node.labels[NODE_LABEL] for node in live if NODE_LABEL in node.labels]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    return [
        (not unprobed, "probes", f"{len(live) - len(unprobed)}/{len(live)} live nodes report measurements"
         + (f"; none from {', '.join(unprobed)}" if unprobed else "")),
        (not unsized, "resources reported", f"{len(live) - len(unsized)}/{len(live)} live nodes report their CPUs"
         + (f"; not {', '.join(unsized)}" if unsized else "")),
        (not repeated, "labels unique", f"{len(labels)} live node(s) labelled {NODE_LABEL}"
         + (f"; shared by several: {', '.join(repeated)} (a name goes to one live node at most: the others "
            "are named by hostname or IP)"
            if repeated else "")),
    ]


def _config_checks(config: ClusterConfig, config_path: Path, status: ClusterStatus) -> list[Check]:
    """Every config node found, alive and sized as the config says."""
    checks: list[Check] = []
    expected = _expected_sizes(config, config_path)
    for node_config in config.nodes:
        node, how = _find(node_config, status.nodes)
        if node is None:
            checks.append((False, f"node {node_config.name}", how))
            continue
        checks.append((node.alive, f"node {node_config.name} alive", f"{node.node_id[:8]} at {node.address}{how}"))
        cpus, gpus, note = expected[node_config.name]
        have_cpus, have_gpus = node.resources_total.get("CPU", 0.0), node.resources_total.get("GPU", 0.0)
        matches = have_cpus == cpus and have_gpus == gpus
        checks.append((matches, f"node {node_config.name} resources",
                       f"{have_cpus:g} CPU / {have_gpus:g} GPU, config {cpus:g} CPU / {gpus:g} GPU{note}"))
    return checks


def _find(node_config: NodeConfig, nodes: list[NodeStatus]) -> tuple[NodeStatus | None, str]:
    """The Ray node a config node means: the live one labelled with its name, else the one
    node whose IP or hostname is its host. The text says how it was found, or why not."""
    labelled = [node for node in nodes if node.labels.get(NODE_LABEL) == node_config.name]
    if labelled:
        return max(labelled, key=lambda node: node.alive), ""
    by_host = [node for node in nodes if node.alive and node_config.host in (node.address, node.hostname)]
    if len(by_host) == 1:
        return by_host[0], (f" (found by host {node_config.host}, named {by_host[0].name}: label it "
                            f"{NODE_LABEL}={node_config.name} to give it this file's name and sharing limits)")
    if by_host:
        return None, f"host {node_config.host} is shared by nodes {', '.join(n.name for n in by_host)}; " \
                     f"label each with {NODE_LABEL}"
    return None, f"no Ray node has the label {NODE_LABEL}={node_config.name}, nor the host {node_config.host}"


def _expected_sizes(config: ClusterConfig, config_path: Path) -> dict[str, tuple[float, float, str]]:
    """Config sizes, or the scaled sizes `grid up --local` actually started for this config."""
    state = read_state()
    if state and state.get("mode") == "local" and state.get("config") == str(config_path.resolve()):
        return {n["name"]: (float(n["num_cpus"]), float(n["num_gpus"]), " (scaled for the local cluster)")
                for n in state["nodes"]}
    return {n.name: (float(n.cpu_count), float(n.gpu_count), "") for n in config.nodes}


# ================================================================== entry point


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; expected failures print one line on stderr, never a traceback."""
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="grid", standalone_mode=False)
        return 0
    except CliError as exc:
        _error(str(exc))
        return exc.code
    except typer.Abort:
        _error("aborted")
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # click's usage errors, as typer vendors them
        if type(exc).__name__ == "NoArgsIsHelpError" and getattr(exc, "ctx", None):
            print(exc.ctx.get_help(), file=sys.stderr)  # type: ignore[attr-defined]
        else:
            _error(" ".join(exc.format_message().split()).replace("Value error, ", ""))
        return getattr(exc, "exit_code", 2)
    except (InvalidRequestError, NotFoundError) as exc:
        _error(exc.message)
        return 2
    except ValidationError as exc:  # a value the models refuse, e.g. --gpus 1.5
        _error(_first_error(exc))
        return 2
    except AppUnreachableError as exc:
        _error(exc.message)
        return 1
    except GridError as exc:
        _error(exc.message)
        return 1


def _error(message: str) -> None:
    print(f"grid: error: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
