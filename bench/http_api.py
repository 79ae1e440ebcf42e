"""HTTP: requests/s and p50/p99 latency of grid-serve's routes against a bare Serve deployment.

    python -m bench.http_api [--quick]

A load generator (bench/loadgen.py) runs in a separate process with 16 concurrent
connections. Status route: grid `GET /v1/health` vs bare `GET /bare/health`; one-task job:
grid `POST /v1/jobs {"task": "noop", "wait": true}` vs bare `POST /bare/job` (awaits one
no-op task). `GET /v1/tasks` (answered inside the Ingress, no hop) shows the proxy's own
cost. Target: grid status route >= 0.9x the bare deployment's requests/s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx

from .bare_app import deploy_bare
from .harness import REPO, Env, Report, main_for, summarize

TARGET = 0.9
CONCURRENCY = 16


def loadgen(url: str, seconds: float, method: str = "GET", body: object = None,
            warmup_s: float = 0.0) -> dict[str, float]:
    command = [sys.executable, "-m", "bench.loadgen", url, "--method", method, "--seconds", str(seconds),
               "--concurrency", str(CONCURRENCY), "--warmup", str(warmup_s)]
    if body is not None:
        command += ["--body", json.dumps(body)]
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=seconds + 120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def wait_for(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer")


def run(env: Env) -> Report:
    deploy_bare()
    wait_for(f"{env.base_url}/bare/health")
    seconds = 1.0 if env.quick else 5.0
    runs = 1 if env.quick else 3
    job = {"task": "noop", "count": 1, "wait": True}
    routes: dict[str, tuple[str, str, object]] = {
        "grid GET /v1/health": ("GET", "/v1/health", None),
        "bare GET /bare/health": ("GET", "/bare/health", None),
        "grid GET /v1/tasks (no hop)": ("GET", "/v1/tasks", None),
        "grid POST /v1/jobs (1 noop, wait)": ("POST", "/v1/jobs", job),
        "bare POST /bare/job (1 noop)": ("POST", "/bare/job", None),
    }
    if env.quick:  # the smoke run keeps only the pairs the table compares
        del routes["grid GET /v1/tasks (no hop)"]
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in routes}
    for run_index in range(runs):
        for name, (method, path, body) in routes.items():
            warmup = (0.3 if env.quick else 1.0) if run_index == 0 else 0.0  # connections, replicas, workers
            samples[name].append(loadgen(env.base_url + path, seconds, method, body, warmup))
    report = Report(f"HTTP: {CONCURRENCY} connections, {seconds:g}s per run, {runs} run(s); median (min–max)",
                    ["route", "requests/s", "p50 ms", "p99 ms", "errors", "vs bare"])
    rps = {name: summarize([s["rps"] for s in runs_]) for name, runs_ in samples.items()}
    bare = {"health": rps["bare GET /bare/health"].median, "job": rps["bare POST /bare/job (1 noop)"].median}
    for name, runs_ in samples.items():
        base = bare["job"] if "job" in name else bare["health"]
        report.add(name, rps[name].show(), summarize([s["p50_ms"] for s in runs_]).show(1),
                   summarize([s["p99_ms"] for s in runs_]).show(1), sum(s["errors"] for s in runs_),
                   f"{rps[name].median / base:.2f}×")
    status_ratio = rps["grid GET /v1/health"].median / bare["health"]
    report.target(status_ratio >= TARGET, f"status route {status_ratio:.3f}× the bare deployment (target ≥ {TARGET}×)")
    report.data = {"samples": samples, "status_ratio": status_ratio}
    return report


if __name__ == "__main__":
    main_for(run, __doc__)
