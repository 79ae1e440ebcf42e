"""An allocation's lifecycle: its states, and the one table of the transitions between them.

    pending --grant--> active --release | lease end--> released | expired   (drains: tasks finish)
    pending --withdraw | time out--> released | timed_out                   (held nothing)
    active  --preempt--> preempted                                          (gives capacity back at once)
    active  --donor dies--> lost                                            (its capacity is gone with the node)
    active  --ungrant--> pending            (the grant could not be recorded; its group was never made)

An ended allocation may still hold its donor's capacity (`holding`) until its running tasks
finish: that is the drain, and it ends the same way whatever ended the allocation.
"""

from __future__ import annotations

from enum import StrEnum
from types import MappingProxyType


class AllocationState(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    RELEASED = "released"
    EXPIRED = "expired"
    PREEMPTED = "preempted"
    TIMED_OUT = "timed_out"
    LOST = "lost"


class Event(StrEnum):
    GRANT = "grant"
    WITHDRAW = "withdraw"
    TIME_OUT = "time out"
    RELEASE = "release"
    LEASE_END = "lease end"
    PREEMPT = "preempt"
    DONOR_DIES = "donor dies"
    UNGRANT = "ungrant"


# (state, event) -> (next state, whether it holds the donor's capacity afterwards)
TRANSITIONS = MappingProxyType({
    (AllocationState.PENDING, Event.GRANT): (AllocationState.ACTIVE, True),
    (AllocationState.PENDING, Event.WITHDRAW): (AllocationState.RELEASED, False),
    (AllocationState.PENDING, Event.TIME_OUT): (AllocationState.TIMED_OUT, False),
    (AllocationState.ACTIVE, Event.RELEASE): (AllocationState.RELEASED, True),
    (AllocationState.ACTIVE, Event.LEASE_END): (AllocationState.EXPIRED, True),
    (AllocationState.ACTIVE, Event.PREEMPT): (AllocationState.PREEMPTED, False),
    (AllocationState.ACTIVE, Event.DONOR_DIES): (AllocationState.LOST, False),
    (AllocationState.ACTIVE, Event.UNGRANT): (AllocationState.PENDING, False),
})

ENDED_STATES = frozenset({AllocationState.RELEASED, AllocationState.EXPIRED, AllocationState.PREEMPTED,
                          AllocationState.TIMED_OUT, AllocationState.LOST})


class IllegalTransition(ValueError):
    """An event the state has no transition for: a bug in the rules, never user input."""


def next_state(state: AllocationState, event: Event) -> tuple[AllocationState, bool]:
    """Where `event` takes an allocation in `state`, and whether it then holds capacity.

    >>> next_state(AllocationState.ACTIVE, Event.LEASE_END)
    (<AllocationState.EXPIRED: 'expired'>, True)
    """
    try:
        return TRANSITIONS[(AllocationState(state), event)]
    except KeyError:
        raise IllegalTransition(f"an allocation that is {state} cannot {event}") from None
