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
    "JobStatus",
    "JobSubmission",
    "ResourceRequirement",
    "SchedulingDecision",
    "SchedulingRequest",
    "SchedulingStrategy",
    "TaskPriority",
]


def __getattr__(name: str):  # the client pulls in Ray and httpx; load it only when asked
    if name == "IntelligentScheduler":
        from .client import IntelligentScheduler

        return IntelligentScheduler
    raise AttributeError(name)
