"""Pure tests of the node probe: real psutil figures from this machine, and the NVML path
through a fake NVML module (this machine has no NVIDIA driver). No Ray."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import psutil
import pytest

from grid_serve.models import MB, NodeStatus, SchedulingDecision, SchedulingRequest
from grid_serve.probe import GpuReader, NodeSample, Probe, is_stale, load_nvml, with_reading
from grid_serve.strategies import place
from grid_serve.view import view_from


class FakeNVMLError(Exception):
    pass


class FakeNVML:
    """The few calls of nvidia-ml-py the probe makes, over a list of GPU dicts."""

    NVML_TEMPERATURE_GPU = 0
    NVMLError = FakeNVMLError

    def __init__(self, gpus: list[dict], init_error: str | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.init_calls = 0
        self.name_calls = 0

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error:
            raise FakeNVMLError(self.init_error)

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict:
        return self.gpus[index]

    def nvmlDeviceGetName(self, handle: dict) -> bytes:
        self.name_calls += 1
        return handle["name"].encode()  # older bindings return bytes

    def nvmlDeviceGetUtilizationRates(self, handle: dict) -> SimpleNamespace:
        return SimpleNamespace(gpu=handle["util"], memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: dict) -> SimpleNamespace:
        return SimpleNamespace(used=handle["used_mb"] * MB, total=handle["total_mb"] * MB,
                               free=(handle["total_mb"] - handle["used_mb"]) * MB)

    def nvmlDeviceGetTemperature(self, handle: dict, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return handle["temp"]

    def nvmlDeviceGetPowerUsage(self, handle: dict) -> int:
        if handle.get("power_mw") is None:
            raise FakeNVMLError("Not Supported")
        return handle["power_mw"]


TWO_GPUS = [
    {"name": "NVIDIA A100-SXM4-40GB", "util": 87, "used_mb": 10_000, "total_mb": 40_960, "temp": 61, "power_mw": 251_500},
    {"name": "NVIDIA A100-SXM4-40GB", "util": 3, "used_mb": 500, "total_mb": 40_960, "temp": 35, "power_mw": None},
]


def test_sample_reads_every_gpu_through_nvml() -> None:
    gpus = Probe(nvml=FakeNVML(TWO_GPUS)).sample().gpus
    assert [(g.index, g.name, g.utilization_pct, g.memory_used_mb, g.memory_total_mb, g.temperature_c, g.power_w)
            for g in gpus] == [
        (0, "NVIDIA A100-SXM4-40GB", 87.0, 10_000.0, 40_960.0, 61.0, 251.5),
        (1, "NVIDIA A100-SXM4-40GB", 3.0, 500.0, 40_960.0, 35.0, None),  # power not supported: None, not an error
    ]


def test_gpu_figures_follow_the_device_but_names_are_read_once() -> None:
    nvml = FakeNVML([dict(gpu) for gpu in TWO_GPUS])
    probe = Probe(nvml=nvml)
    probe.sample()
    nvml.gpus[0]["util"] = 12
    nvml.gpus[0]["used_mb"] = 20_000
    gpu = probe.sample().gpus[0]
    assert (gpu.utilization_pct, gpu.memory_used_mb) == (12.0, 20_000.0)
    assert (nvml.init_calls, nvml.name_calls) == (1, 2)


@pytest.mark.parametrize("nvml, note", [
    (None, "nvidia-ml-py is not installed"),
    (FakeNVML([], init_error="NVML Shared Library Not Found"), "NVML unavailable: NVML Shared Library Not Found"),
    (FakeNVML([]), "NVML reports no GPUs"),
])
def test_no_nvml_or_no_gpus_reports_no_gpus_and_logs_once(nvml: FakeNVML | None, note: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="grid_serve.probe"):
        probe = Probe(nvml=nvml)
        samples = [probe.sample() for _ in range(5)]
    assert all(sample.gpus == () and sample.gpu_note == note for sample in samples)
    assert [r.getMessage().endswith(f"({note})") for r in caplog.records] == [True]
    if nvml is not None:
        assert nvml.init_calls == 1  # not retried at every sample


def test_real_nvml_binding_on_this_machine_gives_no_gpus_without_error() -> None:
    """This machine has nvidia-ml-py but no driver: the real binding must take the no-GPU path."""
    nvml = load_nvml()
    assert nvml is not None, "nvidia-ml-py is a dependency"
    reader = GpuReader(nvml)
    if reader.read():
        pytest.skip("this machine has a real NVIDIA GPU; scripts/check_nvml_gpu.py covers it")
    assert reader.note is not None and reader.note.startswith("NVML")


def test_cpu_memory_swap_and_load_are_this_machines_figures() -> None:
    sample = Probe(nvml=None).sample()
    assert isinstance(sample, NodeSample)
    assert sample.cpu_count == psutil.cpu_count() == len(sample.cpu_percent_per_core)
    assert all(0.0 <= pct <= 100.0 for pct in sample.cpu_percent_per_core)
    assert sample.cpu_percent == pytest.approx(sum(sample.cpu_percent_per_core) / sample.cpu_count, abs=0.01)
    assert sample.memory_total_mb == pytest.approx(psutil.virtual_memory().total / MB, rel=1e-3)
    assert 0 < sample.memory_used_mb < sample.memory_total_mb
    assert 0.0 < sample.memory_percent < 100.0
    assert 0.0 <= sample.swap_percent <= 100.0
    assert len(sample.load_avg) == 3 and all(load >= 0 for load in sample.load_avg)
    assert sample.taken_at > 0


def test_sample_fits_the_node_status_fields() -> None:
    sample = Probe(nvml=FakeNVML(TWO_GPUS)).sample()
    status = NodeStatus(name="gpu1", node_id="n1", address="127.0.0.1", alive=True,
                        cpu_percent=sample.cpu_percent, gpus=list(sample.gpus), load_avg=list(sample.load_avg))
    assert status.gpus[0].memory_total_mb == 40_960.0


@pytest.mark.parametrize("now, started_at, answered_at, stale", [
    (10.0, 0.0, 9.0, False),   # answered a moment ago
    (10.0, 0.0, 6.0, True),    # last answer 4 s old, limit 3 s
    (10.0, 0.0, 7.0, False),   # exactly at the limit: still fresh
    (10.0, 0.0, None, False),  # never answered, still within its start-up grace
    (40.0, 0.0, None, True),   # never answered and the grace is over
])
def test_staleness(now: float, started_at: float, answered_at: float | None, stale: bool) -> None:
    assert is_stale(now, started_at, answered_at, stale_after_s=3.0, startup_grace_s=30.0) is stale


# ---------------------------------------------------------------- readings into decisions


def ray_node(name: str, alive: bool = True) -> NodeStatus:
    return NodeStatus(name=name, node_id=f"id-{name}", address="127.0.0.1", alive=alive,
                      resources_total={"CPU": 2.0} if alive else {})


def test_reading_fills_the_live_figures() -> None:
    sample = Probe(nvml=FakeNVML(TWO_GPUS)).sample()
    status = with_reading(ray_node("gpu1"), sample, sampled_at=123.0, stale=False)
    assert (status.cpu_percent, status.cpu_count, status.swap_percent) == (sample.cpu_percent, sample.cpu_count, sample.swap_percent)
    assert status.load_avg == list(sample.load_avg) and status.sampled_at == 123.0
    assert [gpu.memory_used_mb for gpu in status.gpus] == [10_000.0, 500.0]


@pytest.mark.parametrize("alive, stale, sampled, in_decisions", [
    (True, False, True, True),
    (True, False, False, True),   # probe still starting: Ray's word is enough
    (True, True, True, False),    # probe stopped answering: out until it answers again
    (False, False, True, False),  # Ray reports it dead: out for good, whatever the probe said
])
def test_stale_or_dead_nodes_are_out_of_every_decision(alive: bool, stale: bool, sampled: bool,
                                                       in_decisions: bool) -> None:
    sample = Probe(nvml=None).sample() if sampled else None
    nodes = [with_reading(ray_node("a-node", alive), sample, 1.0 if sampled else None, stale), ray_node("b-other")]
    view = view_from(nodes)
    assert (view.nodes["id-a-node"].alive and not view.nodes["id-a-node"].stale) is in_decisions
    for strategy in ("spread", "load_balanced", "performance_optimized", "pack", "node_specific"):
        decision = place(SchedulingRequest(strategy=strategy, target_node="a-node"), view)
        if in_decisions:
            assert isinstance(decision, SchedulingDecision)
        elif strategy == "node_specific":  # a dead node can never take it; a stale one may come back
            assert not isinstance(decision, SchedulingDecision) and decision.can_wait is stale
            assert decision.rejections[0].reason == ("node is stale: no fresh measurements" if stale else "node is dead")
        else:
            assert isinstance(decision, SchedulingDecision) and decision.node_name == "b-other"
