"""grid-serve: better task placement for Ray, running inside the cluster as a Serve app."""

from .models import (
    JobStatus,
    JobSubmission,
    ResourceRequirement,
    SchedulingDecision,
    SchedulingRequest,
    SchedulingStrategy,
    TaskPriority,
)

__all__ = [
    "IntelligentScheduler",
    "remote",
    "JobStatus",
    "JobSubmission",
    "ResourceRequirement",
    "SchedulingDecision",
    "SchedulingRequest",
    "SchedulingStrategy",
    "TaskPriority",
]


def __getattr__(name: str):  # the client and `remote` pull in Ray; load them only when asked
    if name == "IntelligentScheduler":
        from .client import IntelligentScheduler

        return IntelligentScheduler
    if name == "remote":
        from .dispatch import remote

        globals()["remote"] = remote
        return remote
    raise AttributeError(name)
