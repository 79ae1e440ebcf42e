"""Resource sharing: nodes borrow capacity from each other, with priorities, leases and preemption.

    models.py     SharingRequest, Allocation, ResourceType (user units), parse_duration
    lifecycle.py  the allocation states and the one table of transitions between them
    rules.py      SharingLedger: grant, preempt, wait, time out, drain; reconcile after a restart
    borrowing.py  tasks inside allocations (what the Scheduler sees and decides)
    status.py     the status as data (HTTP); render.py: as table rows (CLI)

Pure (no Ray): the `SharingManager` deployment wraps one `SharingLedger`, creates and removes
the placement groups its `Changes` ask for, and persists `to_state()`.

    request -> validate ("never": 422) -> queue -> grant on a donor | preempt lower | wait -> time out
    granted -> active -> lease end / release (drains: its tasks finish) | preemption (at once)

A donor may lend a resource only within its `resource_sharing` limits from the cluster config,
bounded by what the node really has (Ray's totals), minus what it already lends, and only what
is free now. The donor is chosen deterministically: the most spare room relative to its limit,
then the higher config sharing priority, then the name. When no donor has room, a request may
preempt allocations of strictly lower priority, lowest priority first, then newest first
(Kueue's reclaim order); otherwise it waits in a queue ordered by priority then age.
Amounts are in the units users type: CPUs, GPUs, and GB of memory.
"""

from __future__ import annotations

from .borrowing import allocation_decision, borrower_of, fold_allocations, may_fit_allocation
from .lifecycle import ENDED_STATES, TRANSITIONS, AllocationState, Event, IllegalTransition, next_state
from .models import (
                     DEFAULT_LEASE_S,
                     MAX_LEASE_S,
                     PLACEMENT_GROUP_PREFIX,
                     Allocation,
                     ResourceType,
                     SharingRequest,
                     parse_duration,
)
from .render import config_capacity_rows, status_tables
from .rules import Changes, Room, SharingLedger, reconcile
from .status import CapacityRow, NodeUsage, SharingStatus, sharing_status

__all__ = [
    "DEFAULT_LEASE_S", "ENDED_STATES", "MAX_LEASE_S", "PLACEMENT_GROUP_PREFIX", "TRANSITIONS", "Allocation",
    "AllocationState", "CapacityRow", "Changes", "Event", "IllegalTransition", "NodeUsage", "ResourceType", "Room",
    "SharingLedger", "SharingRequest", "SharingStatus", "allocation_decision", "borrower_of", "config_capacity_rows",
    "fold_allocations", "may_fit_allocation", "next_state", "parse_duration", "reconcile", "sharing_status",
    "status_tables",
]
