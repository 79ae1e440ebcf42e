"""Cluster YAML -> `ClusterConfig`.

Reads the cluster files users already have (see `config/cluster.yaml`). Unknown keys are
errors, not silently dropped: a misspelt `max_share_gpus` must not quietly lend nothing.
Hosts are only used to match Ray nodes; nothing here or elsewhere connects to them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """The cluster file is missing, unreadable or invalid; the message says where."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class NodeSharing(_Strict):
    can_share: bool = False
    max_share_cpu: float = Field(0.0, ge=0)
    max_share_memory_gb: float = Field(0.0, ge=0)
    max_share_gpu: float = Field(0.0, ge=0)
    priority: float = Field(1.0, ge=0)


class NodeConfig(_Strict):
    name: str = Field(min_length=1)
    host: str = Field(min_length=1)
    role: Literal["master", "worker"] = "worker"
    cpu_count: float = Field(gt=0)
    gpu_count: float = Field(0, ge=0)
    memory_gb: float = Field(gt=0)
    tags: tuple[str, ...] = ()
    resource_sharing: NodeSharing = Field(default_factory=NodeSharing)


class SharingConfig(_Strict):
    enabled: bool = False
    policy: Literal["conservative", "balanced", "aggressive"] = "balanced"
    monitoring_interval_seconds: float = Field(1.0, gt=0)
    allocation_timeout_minutes: float = Field(10.0, gt=0)


class ClusterConfig(_Strict):
    name: str = "grid"
    nodes: tuple[NodeConfig, ...] = Field(min_length=1)
    resource_sharing: SharingConfig = Field(default_factory=SharingConfig)

    @model_validator(mode="after")
    def _names_unique(self) -> ClusterConfig:
        names = [node.name for node in self.nodes]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"node names must be unique; repeated: {', '.join(duplicates)}")
        return self

    def node(self, name: str) -> NodeConfig | None:
        return next((node for node in self.nodes if node.name == name), None)

    @property
    def head(self) -> NodeConfig:
        """The master node, or the first one listed when none says it is."""
        return next((node for node in self.nodes if node.role == "master"), self.nodes[0])


def parse_cluster_config(data: object, source: str = "<config>") -> ClusterConfig:
    """Validate already-loaded YAML data; errors name the file and the field."""
    try:
        return ClusterConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from None


def load_cluster_config(path: str | Path) -> ClusterConfig:
    """Read and validate a cluster YAML file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such cluster config file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    return parse_cluster_config(data, str(path))
