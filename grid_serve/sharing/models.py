"""The sharing records: what a node asks for and each request's whole life, in user units."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..config import NodeConfig
from ..models import TaskPriority, _CaseInsensitiveEnum
from .lifecycle import AllocationState

GiB = 1024**3
DEFAULT_LEASE_S = 30 * 60.0
MAX_LEASE_S = 7 * 24 * 3600.0
PLACEMENT_GROUP_PREFIX = "grid-sharing-"
RECORD_ID = re.compile(r"[0-9a-f]{12}")  # uuid4().hex[:12], what a ledger names its records
EPS = 1e-9


class ResourceType(_CaseInsensitiveEnum):
    CPU = "CPU"
    GPU = "GPU"
    MEMORY = "MEMORY"

    @property
    def ray_name(self) -> str:
        return "memory" if self is ResourceType.MEMORY else self.value

    @property
    def unit(self) -> str:
        return "GB memory" if self is ResourceType.MEMORY else self.value

    def to_ray(self, amount: float) -> float:
        """User units (CPUs, GPUs, GB) -> Ray's (memory in bytes)."""
        return amount * GiB if self is ResourceType.MEMORY else amount

    def from_ray(self, amount: float) -> float:
        return amount / GiB if self is ResourceType.MEMORY else amount

    def limit_of(self, node: NodeConfig) -> float:
        sharing = node.resource_sharing
        if not sharing.can_share:
            return 0.0
        return {ResourceType.CPU: sharing.max_share_cpu, ResourceType.GPU: sharing.max_share_gpu,
                ResourceType.MEMORY: sharing.max_share_memory_gb}[self]


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|m|s)")
_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str | float | int) -> float:
    """Seconds in a duration a user typed: `90`, `"90s"`, `"30m"`, `"1h30m"`, `"2d"`.

    >>> parse_duration("1h30m")
    5400.0
    """
    if isinstance(text, (int, float)):
        return float(text)
    cleaned = text.strip().lower().replace(" ", "")
    try:
        return float(cleaned)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(cleaned)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != cleaned:
        raise ValueError(f"not a duration: {text!r} (try 90s, 30m, 2h, 1h30m)")
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


class SharingRequest(BaseModel):
    """A node asks to borrow `amount` of one resource for `duration_s`."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    node: str = Field(min_length=1, max_length=200, description="the borrowing node: name, Ray node id, IP or hostname")
    type: ResourceType = Field(description="cpu, gpu or memory (GB)")
    amount: float = Field(gt=0, le=1e6)
    priority: TaskPriority = TaskPriority.NORMAL
    duration_s: float = Field(DEFAULT_LEASE_S, gt=0, le=MAX_LEASE_S, description="lease; also '30m', '2h'")
    timeout_s: float | None = Field(None, gt=0, le=MAX_LEASE_S,
                                    description="how long to wait for a donor; default: allocation_timeout_minutes")
    donor: str | None = Field(None, min_length=1, max_length=200, description="borrow from this node only")

    @field_validator("duration_s", "timeout_s", mode="before")
    @classmethod
    def _durations_may_be_text(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("amount")
    @classmethod
    def _amount_is_finite(cls, value: float) -> float:
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("amount must be a finite number")
        return value


class Allocation(BaseModel):
    """One request's whole life: pending, then active on a donor, then how it ended.

    `holding` says the donor's capacity is still set aside: from the grant until the placement
    group is removed (a released or expired allocation drains its running tasks first).
    """

    model_config = ConfigDict(frozen=True)

    id: str
    borrower: str
    resource: ResourceType
    amount: float
    priority: TaskPriority
    state: AllocationState
    requested_at: float
    duration_s: float
    timeout_at: float
    donor: str | None = None
    requested_donor: str | None = None
    granted_at: float | None = None
    expires_at: float | None = None
    ended_at: float | None = None
    holding: bool = False
    placement_group: str = ""
    placement_group_id: str | None = None
    ready: bool = False
    in_flight: int = 0
    reason: str = ""
    owner: str | None = Field(None, description="who made it: `id:<token identity>`, `key:<hash of its owner key>`, "
                                                "or `cluster` (a handle call); only they may release it")
    owner_key: str | None = Field(None, description="only in the answer that made it over HTTP without a token: "
                                                    "send it as X-Grid-Owner-Key to release it")

    @property
    def ray_bundle(self) -> dict[str, float]:
        return {self.resource.ray_name: self.resource.to_ray(self.amount)}




def figure(value: float) -> str:
    """Amounts in messages and tables to two decimals at most: 4.71, not 4.70812.

    >>> figure(4.70812), figure(2.0)
    ('4.71', '2')
    """
    return f"{round(value, 2):g}"
