"""Real-GPU check: do the probe's GPU figures match `nvidia-smi`?

Run on a machine with an NVIDIA GPU and driver, from the repo root (with the project installed):

    python scripts/check_nvml_gpu.py

Starts a private one-node Ray cluster with as many GPUs as nvidia-smi lists, deploys the grid
app on a free loopback port, waits until `/v1/cluster` shows the node's probe figures, reads
`nvidia-smi --query-gpu=... --format=csv` right after, prints both side by side and a verdict.
Exit code 0 when they agree, 1 when they do not, 2 when the check could not run (no
nvidia-smi, say). Names, counts and total memory must match exactly (total within 1 MB);
figures that move by themselves get a tolerance: memory used ±512 MB, utilisation ±20 points,
temperature ±5 °C, power ±25 W.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

QUERY = "index,name,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw"
# (probe field, nvidia-smi column, allowed difference; 0 means must be equal)
COMPARED = [
    ("name", "name", 0),
    ("memory_total_mb", "memory.total", 1.0),
    ("memory_used_mb", "memory.used", 512.0),
    ("utilization_pct", "utilization.gpu", 20.0),
    ("temperature_c", "temperature.gpu", 5.0),
    ("power_w", "power.draw", 25.0),
]


def nvidia_smi() -> list[dict[str, str]]:
    """One dict per GPU, keyed by the query's column names, values as nvidia-smi prints them."""
    out = subprocess.run(["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,noheader,nounits"],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    columns = QUERY.split(",")
    return [dict(zip(columns, (cell.strip() for cell in line.split(",")))) for line in out.strip().splitlines()]


def probe_gpus(gpu_count: int, timeout_s: float = 180) -> tuple[list[dict], str | None]:
    """Start a one-node cluster with the app, and return the node's GPU figures from /v1/cluster."""
    import httpx

    from grid_serve.local_cluster import LocalNode, deploy_app, free_port, start_cluster

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    node = LocalNode("gpu-check", num_cpus=max(2, min(8, os.cpu_count() or 2)), num_gpus=gpu_count,
                     memory_bytes=4 * 1024**3, head=True)
    cluster = start_cluster([node])
    try:
        url = deploy_app(free_port(), {"metrics_interval_s": 1.0, "cluster_config": None})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                nodes = httpx.get(f"{url}/v1/cluster", timeout=30).json()["nodes"]
            except (httpx.HTTPError, KeyError, ValueError):
                nodes = []
            if nodes and nodes[0].get("sampled_at"):
                return nodes[0]["gpus"], nodes[0].get("gpu_note")
            time.sleep(1)
        raise TimeoutError(f"the probe did not report within {timeout_s:.0f}s")
    finally:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def differences(probe: list[dict], smi: list[dict[str, str]]) -> list[str]:
    problems = []
    if len(probe) != len(smi):
        problems.append(f"probe sees {len(probe)} GPU(s), nvidia-smi {len(smi)}")
    for ours, theirs in zip(sorted(probe, key=lambda g: g["index"]), sorted(smi, key=lambda g: int(g["index"]))):
        for field, column, tolerance in COMPARED:
            mine, raw = ours.get(field), theirs[column]
            if raw in ("[N/A]", "[Not Supported]", "N/A"):
                if mine is not None:
                    problems.append(f"GPU {ours['index']} {field}: probe {mine}, nvidia-smi has none")
                continue
            if tolerance == 0:
                if str(mine) != raw:
                    problems.append(f"GPU {ours['index']} {field}: probe {mine!r} != nvidia-smi {raw!r}")
            elif mine is None or abs(float(mine) - float(raw)) > tolerance:
                problems.append(f"GPU {ours['index']} {field}: probe {mine} vs nvidia-smi {raw} (±{tolerance:g})")
    return problems


def main() -> int:
    if shutil.which("nvidia-smi") is None:
        print("cannot check: nvidia-smi is not on PATH (no NVIDIA driver here)")
        return 2
    try:
        gpu_count = len(nvidia_smi())
        probe, note = probe_gpus(gpu_count)
        smi = nvidia_smi()  # read right after the probe, so moving figures are close in time
    except (subprocess.SubprocessError, OSError, TimeoutError) as exc:
        print(f"cannot check: {type(exc).__name__}: {exc}")
        return 2
    print(f"nvidia-smi --query-gpu={QUERY} --format=csv,noheader,nounits")
    for row in smi:
        print("  " + ", ".join(row[c] for c in QUERY.split(",")))
    print(f"probe (/v1/cluster){f' note: {note}' if note else ''}")
    for gpu in probe:
        print("  " + ", ".join(str(gpu.get(f)) for f in ("index", "name", "utilization_pct", "memory_used_mb",
                                                           "memory_total_mb", "temperature_c", "power_w")))
    problems = differences(probe, smi)
    if not probe:
        problems.append("the probe reported no GPUs")
    print("VERDICT: " + ("PASS: the probe agrees with nvidia-smi" if not problems else "FAIL"))
    for problem in problems:
        print(f"  - {problem}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
