"""What one node looks like from inside: CPU per core, memory, swap, load and its GPUs.

`Probe.sample()` is the whole job of the per-node probe actor (deployments/probes.py); it lives
here, without Ray, so it can be tested and timed alone. GPUs are read through NVML
(nvidia-ml-py, `import pynvml`), passed in as a module object: the one seam where tests hand in
a fake module with a few GPUs, because this machine has no NVIDIA driver.

A node without NVML, or without GPUs, reports an empty GPU list and says why once (in
`gpu_note` and one log line), not at every sample.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

import psutil

from .models import MB, GpuInfo, NodeStatus

logger = logging.getLogger("grid_serve.probe")


@dataclass(frozen=True)
class NodeSample:
    """One probe reading. Percentages are 0..100; `taken_at` is the probe's epoch clock."""

    cpu_percent: float
    cpu_percent_per_core: tuple[float, ...]
    cpu_count: int
    memory_percent: float
    memory_used_mb: float
    memory_total_mb: float
    swap_percent: float
    load_avg: tuple[float, float, float]
    gpus: tuple[GpuInfo, ...] = ()
    gpu_note: str | None = None
    taken_at: float = 0.0


def load_nvml() -> ModuleType | None:
    """The real NVML binding, or None when nvidia-ml-py is not installed."""
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


class GpuReader:
    """Reads every GPU through an NVML module; initialises once and remembers a failure.

    Device handles and names never change while the driver is loaded, so they are read once:
    each later sample costs four or five NVML calls per GPU. A single figure a GPU does not
    support (power on some boards, say) is None, not an error.
    """

    def __init__(self, nvml: Any | None) -> None:
        self._nvml = nvml
        self._devices: list[tuple[int, Any, str]] | None = None
        self.note: str | None = None
        if nvml is None:
            self._give_up("nvidia-ml-py is not installed")
            return
        try:
            nvml.nvmlInit()
            self._devices = [self._open(nvml, index) for index in range(nvml.nvmlDeviceGetCount())]
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...: no GPUs to read
            self._give_up(f"NVML unavailable: {exc}")
            return
        if not self._devices:
            self._give_up("NVML reports no GPUs")

    @staticmethod
    def _open(nvml: Any, index: int) -> tuple[int, Any, str]:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        name = nvml.nvmlDeviceGetName(handle)
        return index, handle, name.decode() if isinstance(name, bytes) else str(name)

    def _give_up(self, why: str) -> None:
        self._devices = []
        self.note = why
        logger.info("grid-serve probe on pid %s: no GPU figures (%s)", os.getpid(), why)

    def read(self) -> tuple[GpuInfo, ...]:
        return tuple(self._read_one(index, handle, name) for index, handle, name in self._devices or ())

    def _read_one(self, index: int, handle: Any, name: str) -> GpuInfo:
        nvml = self._nvml
        memory = _figure(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        return GpuInfo(
            index=index,
            name=name,
            utilization_pct=_figure(lambda: float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)),
            memory_used_mb=None if memory is None else round(memory.used / MB, 1),
            memory_total_mb=None if memory is None else round(memory.total / MB, 1),
            temperature_c=_figure(lambda: float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))),
            power_w=_figure(lambda: round(nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0, 1)),  # NVML reports mW
        )


def _figure(read: Callable[[], Any]) -> Any | None:
    """One NVML reading, or None when this GPU does not report it."""
    try:
        return read()
    except Exception:  # NVMLError_NotSupported and friends: a missing figure, not a broken probe
        return None


@dataclass
class Probe:
    """Samples this machine. The first CPU reading primes psutil, so the first sample
    already covers the time since the probe started rather than returning zeros."""

    nvml: Any | None = None
    clock: Callable[[], float] = time.time
    gpu_reader: GpuReader = field(init=False)

    def __post_init__(self) -> None:
        self.gpu_reader = GpuReader(self.nvml)
        psutil.cpu_percent(percpu=True)

    def sample(self) -> NodeSample:
        per_core = tuple(psutil.cpu_percent(percpu=True))
        memory = psutil.virtual_memory()
        swap = psutil.swap_memory()
        return NodeSample(
            cpu_percent=round(sum(per_core) / len(per_core), 2) if per_core else 0.0,
            cpu_percent_per_core=per_core,
            cpu_count=len(per_core),
            memory_percent=float(memory.percent),
            memory_used_mb=round((memory.total - memory.available) / MB, 1),
            memory_total_mb=round(memory.total / MB, 1),
            swap_percent=float(swap.percent),
            load_avg=_load_avg(),
            gpus=self.gpu_reader.read(),
            gpu_note=self.gpu_reader.note,
            taken_at=self.clock(),
        )


def _load_avg() -> tuple[float, float, float]:
    one, five, fifteen = psutil.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


def is_stale(now: float, started_at: float, answered_at: float | None, stale_after_s: float,
             startup_grace_s: float) -> bool:
    """Whether a node's probe has stopped answering.

    A probe that answered before is stale once its last answer is older than `stale_after_s`.
    One that never answered gets `startup_grace_s` to start its worker first: a fresh node is
    not treated as broken while its probe process is still booting.

    >>> is_stale(now=10, started_at=0, answered_at=9, stale_after_s=3, startup_grace_s=30)
    False
    >>> is_stale(now=10, started_at=0, answered_at=5, stale_after_s=3, startup_grace_s=30)
    True
    """
    if answered_at is not None:
        return now - answered_at > stale_after_s
    return now - started_at > startup_grace_s


def with_reading(status: NodeStatus, sample: NodeSample | None, sampled_at: float | None,
                 stale: bool) -> NodeStatus:
    """The node as Ray reports it, plus its probe's last reading.

    A stale node keeps its last figures (they say what it looked like when it went quiet) but
    is flagged, which takes it out of decisions. A dead node carries no live figures at all.
    """
    if not status.alive:
        return status
    if sample is None:
        return status.model_copy(update={"stale": stale})
    return status.model_copy(update={
        "cpu_percent": sample.cpu_percent,
        "cpu_percent_per_core": list(sample.cpu_percent_per_core),
        "cpu_count": sample.cpu_count,
        "memory_percent": sample.memory_percent,
        "memory_used_mb": sample.memory_used_mb,
        "memory_total_mb": sample.memory_total_mb,
        "swap_percent": sample.swap_percent,
        "load_avg": list(sample.load_avg),
        "gpus": list(sample.gpus),
        "gpu_note": sample.gpu_note,
        "sampled_at": sampled_at,
        "stale": stale,
    })
