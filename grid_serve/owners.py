"""Who owns what the Scheduler holds: every job (group) has a runner that renews a lease.

The Scheduler's reservations and queued tasks belong to a job runner (or to a `/v1/schedule`
caller, whose decisions carry their own lease in the ledger). A runner renews the leases of
its jobs every fraction of an interval; a job whose lease lapses has lost its runner (the
process died, or cannot reach the Scheduler), and everything it held is reclaimed so no later
job waits on it. What was reclaimed and why is remembered for a while, so a caller asking
after that job hears the reason instead of "no such job".

Pure: the Scheduler deployment calls `overdue()` on its tick, asks those runners whether they
still hold their jobs, and `reclaim`s the rest.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterable

TOMBSTONES_KEPT = 1000


@dataclass
class Owners:
    lease_s: float
    tick_s: float = 0.0  # how often the Scheduler asks `lapsed` when nothing stalls
    clock: Callable[[], float] = time.monotonic
    deadlines: dict[str, float] = field(default_factory=dict)  # group -> lease end
    runners: dict[str, str] = field(default_factory=dict)  # group -> the runner that owns it
    gone: OrderedDict[str, str] = field(default_factory=OrderedDict)  # group -> why it was reclaimed
    looked_at: float | None = None  # when `lapsed` last ran: the Scheduler's own pulse


    def register(self, group: str, runner: str) -> None:
        self.deadlines[group] = self.clock() + self.lease_s
        self.runners[group] = runner
        self.gone.pop(group, None)

    def renew(self, groups: Iterable[str]) -> list[str]:
        """Extend the leases of `groups`; returns those this Scheduler does not know (it
        restarted, or their lease lapsed): their runner must register them again."""
        until = self.clock() + self.lease_s
        unknown = []
        for group in groups:
            if group in self.deadlines:
                self.deadlines[group] = until
            else:
                unknown.append(group)
        return unknown

    def knows(self, group: str) -> bool:
        return group in self.deadlines

    def overdue(self) -> list[str]:
        """Groups whose runner has not renewed within the lease. Silence proves a runner gone
        only while this Scheduler was listening: asked more than half a lease later than its
        tick (its own process or event loop stalled, and renewals sent meanwhile still wait in
        its queue), every lease is first extended by the stall. The Scheduler asks a runner
        that is overdue whether it still holds the job before it `reclaim`s anything: late
        renewals from a live runner cost a live job its queue.

        >>> now = [0.0]
        >>> owners = Owners(lease_s=2.0, tick_s=1.0, clock=lambda: now[0])
        >>> owners.register("job", "runner"); owners.overdue()
        []
        >>> now[0] = 0.9; owners.renew(["job"]); now[0] = 1.0; owners.overdue()  # renewed: due at 2.9
        []
        []
        >>> now[0] = 4.5  # the Scheduler stalled for 2.5 s: the runner's renewals are not read yet
        >>> owners.overdue(), owners.knows("job")
        ([], True)
        >>> now[0] = 5.5; owners.overdue()  # listening again, still no word: 2 s of listening
        ['job']
        >>> owners.reclaim(["job"]), owners.knows("job"), owners.gone["job"][:25]
        (['job'], False, 'its runner runner stopped')
        """
        now = self.clock()
        stall = 0.0 if self.looked_at is None else now - self.looked_at - self.tick_s
        self.looked_at = now
        if stall > self.lease_s / 2:
            for group in self.deadlines:
                self.deadlines[group] += stall
        return [group for group, deadline in self.deadlines.items() if deadline <= now]

    def reclaim(self, groups: Iterable[str]) -> list[str]:
        """Forget those of `groups` still overdue (a renewal that came meanwhile keeps a group),
        remembering why; returns the ones forgotten."""
        now = self.clock()
        reclaimed = [group for group in groups if self.deadlines.get(group, now + 1) <= now]
        for group in reclaimed:
            runner = self.runners.get(group, "?")
            self.forget(group, reason=f"its runner {runner} stopped renewing its lease "
                                      f"(no word for {self.lease_s:g} s); what it held was reclaimed")
        return reclaimed

    def forget(self, group: str, reason: str | None = None) -> None:
        self.deadlines.pop(group, None)
        self.runners.pop(group, None)
        if reason:
            self.gone[group] = reason
            while len(self.gone) > TOMBSTONES_KEPT:
                self.gone.popitem(last=False)

    def __len__(self) -> int:
        return len(self.deadlines)
