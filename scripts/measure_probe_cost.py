"""CPU cost of one probe sample: `python scripts/measure_probe_cost.py [--samples N]`.

Measures `time.process_time()` (user + system CPU of this process, not wall time) over many
calls of `Probe.sample()`, the whole of what a probe actor does per interval, and prints the
mean per sample. Three cases: the real NVML binding as found on this machine (no driver here:
GPU reading is skipped after one failed init), and a fake NVML module with 1 and 8 GPUs, to
show the Python side of the GPU path (a real driver adds its own time per call).

`--actor` also measures the probe as deployed: a `NodeProbe` actor on a fresh private local
Ray instance (`address="local"`, never someone else's cluster), reading the CPU time of the
actor's own process (psutil) across many `sample.remote()` calls: sampling plus Ray's
per-call handling and serialisation inside the actor.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grid_serve.probe import Probe, load_nvml  # noqa: E402


def cpu_ms_per_sample(probe: Probe, samples: int) -> float:
    probe.sample()  # warm-up: imports and first reads out of the way
    began = time.process_time()
    for _ in range(samples):
        probe.sample()
    return (time.process_time() - began) / samples * 1000


def fake_nvml(gpu_count: int) -> object:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_probe import FakeNVML

    gpu = {"name": "NVIDIA A100-SXM4-40GB", "util": 50, "used_mb": 1000, "total_mb": 40960, "temp": 50,
           "power_mw": 200_000}
    return FakeNVML([dict(gpu) for _ in range(gpu_count)])


def actor_cpu_ms_per_sample(samples: int) -> float:
    import os

    import psutil
    import ray

    from deployments.probes import NodeProbe

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        probe = NodeProbe.remote()
        pid = ray.get(probe.__ray_call__.remote(lambda self: os.getpid()))
        ray.get([probe.sample.remote() for _ in range(20)])  # warm-up
        process = psutil.Process(pid)
        before = sum(process.cpu_times()[:2])
        for _ in range(samples):
            ray.get(probe.sample.remote())
        return (sum(process.cpu_times()[:2]) - before) / samples * 1000
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--actor", action="store_true", help="also measure the deployed NodeProbe actor")
    args = parser.parse_args()
    real = Probe(nvml=load_nvml())
    cases = [
        (f"real NVML binding ({real.gpu_reader.note or f'{len(real.sample().gpus)} GPU(s)'})", real),
        ("fake NVML, 1 GPU", Probe(nvml=fake_nvml(1))),
        ("fake NVML, 8 GPUs", Probe(nvml=fake_nvml(8))),
    ]
    for label, probe in cases:
        print(f"{label}: {cpu_ms_per_sample(probe, args.samples):.3f} ms CPU per sample "
              f"(mean of {args.samples}, time.process_time)")
    if args.actor:
        print(f"NodeProbe actor, real NVML binding: {actor_cpu_ms_per_sample(args.samples):.3f} ms CPU per "
              f"sample.remote() in the actor process (mean of {args.samples}, psutil cpu_times)")


if __name__ == "__main__":
    main()
