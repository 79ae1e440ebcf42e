"""Pure rules of resource sharing: grant, preempt, queue, expire, refuse. No Ray."""

from __future__ import annotations

import dataclasses

import pytest

from grid_serve.config import parse_cluster_config
from grid_serve.errors import InvalidRequestError, NotFoundError, TooBusyError
from grid_serve.models import SchedulingRequest, SchedulingStrategy
from grid_serve.sharing import (
    Allocation,
    AllocationState,
    Event,
    IllegalTransition,
    ResourceType,
    SharingLedger,
    SharingRequest,
    allocation_decision,
    fold_allocations,
    next_state,
    parse_duration,
    reconcile,
    rules,
    sharing_status,
    status_tables,
)
from grid_serve.strategies import place
from grid_serve.view import ClusterView, make_node


def config(policy: str = "balanced", gpu_master_cpu: float = 2, gpu1_cpu: float = 4, gpu2_cpu: float = 6,
           timeout_min: float = 10):
    def node(name, cpu, gpu, priority, max_cpu, max_gpu, can_share=True):
        return {"name": name, "host": name, "cpu_count": cpu, "gpu_count": gpu, "memory_gb": 16,
                "resource_sharing": {"can_share": can_share, "max_share_cpu": max_cpu, "max_share_memory_gb": 8,
                                     "max_share_gpu": max_gpu, "priority": priority}}
    return parse_cluster_config({
        "nodes": [node("gpu-master", 8, 0, 1.0, gpu_master_cpu, 0), node("gpu1", 6, 1, 0.8, gpu1_cpu, 1),
                  node("gpu2", 8, 1, 0.9, gpu2_cpu, 1)],
        "resource_sharing": {"enabled": True, "policy": policy, "allocation_timeout_minutes": timeout_min},
    })


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cluster(**reserved) -> ClusterView:
    """gpu-master 8 CPU, gpu1 6 CPU + 1 GPU, gpu2 8 CPU + 1 GPU, 16 GB each; `gpu1={"CPU": 2}` reserves."""
    return ClusterView.of([
        make_node("gpu-master", cpus=8, memory_mb=16 * 1024, reserved=reserved.get("gpu_master")),
        make_node("gpu1", cpus=6, gpus=1, memory_mb=16 * 1024, reserved=reserved.get("gpu1")),
        make_node("gpu2", cpus=8, gpus=1, memory_mb=16 * 1024, reserved=reserved.get("gpu2")),
    ])


def ledger(**kwargs) -> tuple[SharingLedger, Clock]:
    clock = Clock()
    return SharingLedger(config(**kwargs), clock=clock), clock


def ask(node="gpu-master", type="cpu", amount=1.0, priority="normal", **extra) -> SharingRequest:
    return SharingRequest(node=node, type=type, amount=amount, priority=priority, **extra)


# ---------------------------------------------------------------- grant: which donor


@pytest.mark.parametrize("request_, reserved, donor, why", [
    # gpu2 may lend 6 of 8 CPUs, gpu1 4 of 6: both fully spare (1.0); gpu2's config priority 0.9 > 0.8 wins
    (ask(amount=2), {}, "gpu2", "granted on gpu2"),
    # gpu2 has 5 CPUs taken by tasks: 3 free of limit 6 (0.5) < gpu1's 4 of 4 (1.0)
    (ask(amount=2), {"gpu2": {"CPU": 5}}, "gpu1", "granted on gpu1"),
    # a GPU: gpu-master may not lend GPUs, gpu1 and gpu2 each 1: priority picks gpu2
    (ask(type="gpu", amount=1), {}, "gpu2", "granted on gpu2"),
    # gpu1 borrowing: never from itself; gpu2 (6/6) beats gpu-master (2/2) on priority 0.9 < 1.0? no: master 1.0
    (ask(node="gpu1", amount=2), {}, "gpu-master", "granted on gpu-master"),
    # memory in GB: 8 GB limit on each; gpu-master borrows 4 GB
    (ask(type="memory", amount=4), {}, "gpu2", "granted on gpu2"),
    # an explicit donor is honoured
    (ask(amount=1, donor="gpu1"), {}, "gpu1", "granted on gpu1"),
])
def test_grant_chooses_the_donor_with_most_spare_then_priority_then_name(request_, reserved, donor, why):
    book, _ = ledger()
    record, changes = book.submit(request_, cluster(**reserved))
    assert record.state == "active"
    assert record.donor == donor
    assert record.holding and record.placement_group == f"grid-sharing-{record.id}"
    assert record.reason.startswith(why)
    assert [g.id for g in changes.granted] == [record.id]
    assert record.expires_at == record.granted_at + record.duration_s


def test_spare_is_bounded_by_limit_minus_what_is_lent_and_by_what_is_free():
    book, _ = ledger()
    view = cluster(gpu_master={"CPU": 7})  # gpu-master: limit 2 but only 1 free
    first, _ = book.submit(ask(node="gpu1", amount=1), view)
    assert first.donor == "gpu2"  # gpu2 6/6 spare beats gpu-master 1/2
    room = book.room(view.resolve("gpu-master"), ResourceType.CPU, view)
    assert (room.limit, room.lent, room.free, room.spare) == (2, 0, 1, 1)
    room = book.room(view.resolve("gpu2"), ResourceType.CPU, view)
    assert (room.limit, room.lent, room.free, room.spare) == (6, 1, 7, 5)
    # Ray's own availability bounds it further (work outside grid-serve)
    available = {"id-gpu2": {"CPU": 3.0}}
    assert book.room(view.resolve("gpu2"), ResourceType.CPU, view, available).spare == 3


def test_limit_is_bounded_by_what_the_node_really_has():
    book, _ = ledger(gpu2_cpu=64)
    small = ClusterView.of([make_node("gpu-master", cpus=2), make_node("gpu2", cpus=2, gpus=1)])
    assert book.limit(small.resolve("gpu2"), ResourceType.CPU) == 2
    with pytest.raises(InvalidRequestError) as error:
        book.submit(ask(amount=3), small)
    assert error.value.field == "amount" and "most any node may lend gpu-master is 2" in error.value.message


# ---------------------------------------------------------------- refusals ("never")


@pytest.mark.parametrize("request_, field, words", [
    (ask(node="nowhere"), "node", "unknown node 'nowhere'"),
    (ask(amount=7), "amount", "over the sharing limit"),  # gpu2 lends at most 6
    (ask(type="gpu", amount=2), "amount", "over the sharing limit"),
    (ask(type="gpu", amount=1.5), "amount", "whole"),
    (ask(node="gpu2", type="gpu", amount=1, donor="gpu-master"), "donor", "gpu-master does not lend gpu"),
    (ask(node="gpu1", donor="gpu1"), "donor", "cannot lend to itself"),
    (ask(donor="elsewhere"), "donor", "unknown node 'elsewhere'"),
])
def test_bad_requests_are_refused_naming_the_field(request_, field, words):
    book, _ = ledger()
    with pytest.raises(InvalidRequestError) as error:
        book.submit(request_, cluster())
    assert error.value.field == field
    assert words in error.value.message
    assert book.records == {}


def test_a_node_that_is_the_only_lender_cannot_borrow_from_itself():
    book, _ = ledger()
    # only gpu1 and gpu2 lend GPUs: gpu2 borrowing a GPU gets gpu1's, never its own
    record, _ = book.submit(ask(node="gpu2", type="gpu", amount=1), cluster())
    assert record.donor == "gpu1"
    only_gpu2 = ClusterView.of([make_node("gpu-master"), make_node("gpu2", cpus=8, gpus=1)])
    with pytest.raises(InvalidRequestError) as error:
        SharingLedger(config()).submit(ask(node="gpu2", type="gpu", amount=1), only_gpu2)
    assert error.value.field == "type" and "no node other than gpu2 may lend gpu" in error.value.message


@pytest.mark.parametrize("body, field", [
    ({"node": "gpu1", "type": "disk", "amount": 1}, "type"),
    ({"node": "gpu1", "type": "cpu", "amount": 0}, "amount"),
    ({"node": "gpu1", "type": "cpu", "amount": -2}, "amount"),
    ({"node": "gpu1", "type": "cpu", "amount": 1, "duration_s": "soon"}, "duration_s"),
])
def test_request_model_rejects_bad_fields(body, field):
    with pytest.raises(ValueError) as error:
        SharingRequest.model_validate(body)
    assert error.value.errors()[0]["loc"][0] == field


def test_disabled_sharing_refuses_everything():
    book = SharingLedger(None)
    with pytest.raises(InvalidRequestError) as error:
        book.submit(ask(), cluster())
    assert "disabled" in error.value.message


# ---------------------------------------------------------------- preemption


def fill_gpu_cpus(book: SharingLedger, view: ClusterView, priority: str) -> list[Allocation]:
    """gpu-master borrows every CPU gpu1 (4) and gpu2 (6) may lend."""
    granted = [book.submit(ask(amount=4, priority=priority, donor="gpu1"), view)[0],
               book.submit(ask(amount=6, priority=priority, donor="gpu2"), view)[0]]
    assert all(r.state == "active" for r in granted)
    return granted


@pytest.mark.parametrize("holder, asker, preempts", [
    ("low", "critical", True),
    ("low", "normal", True),
    ("normal", "high", True),
    ("high", "normal", False),  # never a higher one
    ("normal", "normal", False),  # never an equal one
    ("critical", "critical", False),
])
def test_preemption_only_of_strictly_lower_priority(holder, asker, preempts):
    book, clock = ledger()
    view = cluster()
    victims = fill_gpu_cpus(book, view, holder)
    clock.now += 1
    record, changes = book.submit(ask(node="gpu1", amount=2, priority=asker, donor="gpu2"), view)
    if preempts:
        assert record.state == "active" and record.donor == "gpu2"
        assert [r.id for r in changes.remove] == [victims[1].id]
        assert book.get(victims[1].id).state == "preempted"
        assert not book.get(victims[1].id).holding
        assert f"preempted by {asker} request {record.id}" in book.get(victims[1].id).reason
        assert book.get(victims[0].id).state == "active"
    else:
        assert record.state == "pending" and changes.remove == []
        assert "waiting: no donor has 2 CPU to spare" in record.reason
        assert all(book.get(v.id).state == "active" for v in victims)


def test_preemption_takes_the_lowest_then_the_newest_first():
    book, clock = ledger()
    view = cluster()
    ids = {}
    for name, priority in [("old-low", "low"), ("normal", "normal"), ("new-low", "low")]:
        ids[name] = book.submit(ask(node="gpu1", amount=2, priority=priority, donor="gpu2"), view)[0].id
        clock.now += 1
    # gpu2 lends all 6 CPUs; a critical request for 2 takes the newest low one only
    record, changes = book.submit(ask(node="gpu1", amount=2, priority="critical", donor="gpu2"), view)
    assert record.state == "active"
    assert [r.id for r in changes.remove] == [ids["new-low"]]
    # another critical request for 4 must take the other low, then the normal one
    record, changes = book.submit(ask(node="gpu1", amount=4, priority="critical", donor="gpu2"), view)
    assert [r.id for r in changes.remove] == [ids["old-low"], ids["normal"]]


def test_conservative_policy_never_preempts():
    book, clock = ledger(policy="conservative")
    view = cluster()
    fill_gpu_cpus(book, view, "low")
    record, changes = book.submit(ask(node="gpu1", amount=2, priority="critical", donor="gpu2"), view)
    assert record.state == "pending" and not changes.remove


# ---------------------------------------------------------------- queue, timeout, leases


def test_queue_grants_by_priority_then_age_as_capacity_frees():
    book, clock = ledger()
    view = cluster()
    holders = fill_gpu_cpus(book, view, "critical")
    waiting = []
    for priority in ["low", "high", "normal", "high"]:
        clock.now += 1
        waiting.append(book.submit(ask(node="gpu1", amount=4, priority=priority), view)[0])
    assert [r.id for r in book.pending()] == [waiting[1].id, waiting[3].id, waiting[2].id, waiting[0].id]
    book.release(holders[1].id)  # gpu2's 6 CPUs drain, then free up: room for one request of 4
    changes = book.tick(view)
    assert [r.id for r in changes.remove] == [holders[1].id]
    assert [r.id for r in changes.granted] == [waiting[1].id]  # the oldest high one
    assert book.get(waiting[1].id).donor == "gpu2"
    assert [r.id for r in book.pending()] == [waiting[3].id, waiting[2].id, waiting[0].id]


def test_pending_requests_are_capped_and_a_release_makes_room(monkeypatch):
    """Waiting requests live until granted or timed out (up to a week) and are saved with the
    ledger on every change: past PENDING_KEPT a new one is 429, nothing of the others touched."""
    monkeypatch.setattr(rules, "PENDING_KEPT", 3)
    book, clock = ledger()
    view = cluster()
    fill_gpu_cpus(book, view, "critical")
    waiting = [book.submit(ask(node="gpu1", amount=4, priority="low"), view)[0] for _ in range(3)]
    with pytest.raises(TooBusyError, match="3 sharing requests already wait for a donor") as refused:
        book.submit(ask(node="gpu1", amount=4, priority="low"), view)
    assert refused.value.status == 429 and refused.value.field == "node"
    assert {r.id for r in book.pending()} == {r.id for r in waiting}
    book.release(waiting[0].id)  # withdrawn: room for one more
    assert book.submit(ask(node="gpu1", amount=4, priority="low"), view)[0].state == "pending"


def test_pending_request_times_out_with_a_clear_status():
    book, clock = ledger(timeout_min=1)
    view = cluster()
    fill_gpu_cpus(book, view, "critical")
    record, _ = book.submit(ask(amount=1, priority="low"), view)
    clock.now += 59
    book.tick(view)
    assert book.get(record.id).state == "pending"
    clock.now += 2
    changes = book.tick(view)
    ended = book.get(record.id)
    assert ended.state == "timed_out" and [r.id for r in changes.ended] == [record.id]
    assert ended.reason == "no donor had 1 CPU to spare within 60s"
    assert book.pending() == []


def test_lease_ends_and_the_group_is_removed_once_its_tasks_are_done():
    book, clock = ledger()
    book.drain_grace_s = 2
    view = cluster()
    record, _ = book.submit(ask(amount=2, duration_s="30s"), view)
    clock.now += 29
    assert book.tick(view).ended == []
    clock.now += 1
    changes = book.tick(view, in_flight={record.id: 1})
    assert [r.id for r in changes.ended] == [record.id] and changes.remove == []
    assert book.get(record.id).state == "expired" and book.get(record.id).holding  # a task still runs
    clock.now += 5
    assert book.tick(view, in_flight={record.id: 1}).remove == []
    changes = book.tick(view, in_flight={})
    assert [r.id for r in changes.remove] == [record.id]
    assert not book.get(record.id).holding
    assert book.lent("gpu2", ResourceType.CPU) == 0


def test_without_a_view_leases_and_waits_still_end_but_nothing_is_granted_or_drained():
    """`expire` is what a tick does when the cluster cannot be observed (a stalled
    LoadBalancer): time ends what it ends; the groups stay until a view says their tasks are done."""
    book, clock = ledger(timeout_min=1)
    book.drain_grace_s = 0
    view = cluster()
    leased = fill_gpu_cpus(book, view, "critical")
    waiting, _ = book.submit(ask(amount=1, priority="low"), view)
    assert book.get(waiting.id).state == "pending"
    clock.now = max(record.expires_at or 0 for record in leased) + 61
    changes = book.expire()
    assert sorted(r.id for r in changes.ended) == sorted([r.id for r in leased] + [waiting.id])
    assert [book.get(r.id).state for r in leased] == ["expired", "expired"]
    assert book.get(waiting.id).state == "timed_out"
    assert changes.remove == [] and changes.granted == [] and all(book.get(r.id).holding for r in leased)
    assert sorted(r.id for r in book.tick(view, in_flight={}).remove) == sorted(r.id for r in leased)


def test_release_grace_keeps_the_group_briefly_even_when_idle():
    book, clock = ledger()
    book.drain_grace_s = 3
    view = cluster()
    record, _ = book.submit(ask(amount=1), view)
    released, _ = book.release(record.id)
    assert released.state == "released" and released.holding
    assert book.tick(view).remove == []
    clock.now += 3
    assert [r.id for r in book.tick(view).remove] == [record.id]


def test_an_allocation_on_a_dead_donor_ends_lost_and_its_group_goes_at_once():
    book, _ = ledger()
    record, _ = book.submit(ask(amount=1), cluster())
    assert record.donor == "gpu2"
    view = cluster()
    gpu2 = next(node for node in view.nodes.values() if node.name == "gpu2")
    dead = view.with_node(dataclasses.replace(gpu2, alive=False))
    changes = book.tick(dead, in_flight={record.id: 1})  # its tasks died with the node: nothing to drain
    assert [r.id for r in changes.ended] == [record.id] and [r.id for r in changes.remove] == [record.id]
    lost = book.get(record.id)
    assert (lost.state, lost.holding) == ("lost", False) and lost.reason.startswith("donor gpu2 died")
    assert book.lent("gpu2", ResourceType.CPU) == 0


def test_a_grant_that_could_not_be_recorded_goes_back_to_pending():
    book, _ = ledger()
    record, changes = book.submit(ask(amount=1), cluster())
    assert [r.id for r in changes.granted] == [record.id]
    book.ungrant(record.id, "waiting: could not record the grant")
    again = book.get(record.id)
    assert (again.state, again.donor, again.holding, again.placement_group_id) == ("pending", None, False, None)
    assert [r.id for r in book.tick(cluster()).granted] == [record.id]  # granted on a later tick


def test_release_of_pending_withdraws_and_unknown_ids_are_404():
    book, _ = ledger()
    view = cluster()
    fill_gpu_cpus(book, view, "critical")
    record, _ = book.submit(ask(amount=1), view)
    released, changes = book.release(record.id)
    assert released.state == "released" and not released.holding and not changes.any
    with pytest.raises(NotFoundError):
        book.release("nope")


def test_state_round_trips_and_reconcile_forgets_vanished_groups():
    book, _ = ledger()
    view = cluster()
    kept, _ = book.submit(ask(amount=1), view)
    lost, _ = book.submit(ask(amount=1), view)
    waiting, _ = book.submit(ask(amount=6, priority="low", donor="gpu2"), view)  # gpu2 has 5 left
    assert (kept.donor, lost.donor, waiting.state) == ("gpu2", "gpu1", "pending")
    restored = SharingLedger(config())
    restored.load_state(book.to_state())
    assert restored.records == book.records
    stray, other_app = "grid-sharing-0123456789ab", "grid-sharing-other-0123456789ab"  # ours, and another app's
    groups = {kept.placement_group: ("ab" * 14, "CREATED"), stray: ("cd" * 14, "CREATED"), other_app: ("cd" * 14, "CREATED")}
    groups.update({r.placement_group: ("ef" * 14, "PENDING") for r in book.holding() if r.id not in (kept.id, lost.id)})
    vanished, orphans = reconcile(restored, groups)
    assert vanished == [lost.id] and orphans == [stray]
    assert restored.get(kept.id).placement_group_id == "ab" * 14 and restored.get(kept.id).ready
    assert restored.get(waiting.id).state == "pending"


# ---------------------------------------------------------------- tasks inside allocations


def borrowed_view(tasks_on_master: float = 2, accepting: bool = True) -> tuple[ClusterView, Allocation]:
    book, _ = ledger()
    view = ClusterView.of([make_node("gpu-master", cpus=2, reserved={"CPU": tasks_on_master}),
                           make_node("gpu1", cpus=2, gpus=1), make_node("gpu2", cpus=2, gpus=1)])
    record, _ = book.submit(ask(amount=1, donor="gpu1"), view)
    book.placed(record.id, "ab" * 14, ready=accepting)
    return fold_allocations(view, book.holding()), book.get(record.id)


def task_for(node="gpu-master", cpus=1.0, gpus=0.0, by_label=False) -> SchedulingRequest:
    if by_label:
        return SchedulingRequest(task_id="t", requirements={"cpu_count": cpus, "gpu_count": gpus},
                                 label_selector={"grid.io/node": node})
    return SchedulingRequest(task_id="t", strategy=SchedulingStrategy.NODE_SPECIFIC, target_node=node,
                             requirements={"cpu_count": cpus, "gpu_count": gpus})


def test_folded_allocation_is_reserved_on_its_donor():
    view, record = borrowed_view()
    assert view.resolve("gpu1").reserved["CPU"] == 1
    assert view.allocations[record.id].accepting and view.allocations[record.id].donor == "gpu1"


@pytest.mark.parametrize("request_, tasks_on_master, accepting, runs_in_allocation", [
    (task_for(), 2, True, True),  # gpu-master full: the allocation on gpu1 takes it
    (task_for(by_label=True), 2, True, True),  # named by label: the same
    (task_for(), 1, True, False),  # gpu-master has room: it stays home
    (task_for(), 2, False, False),  # the allocation's group is not placed yet
    (task_for(cpus=2), 2, True, False),  # bigger than the allocation
    (task_for(gpus=1, cpus=0), 0, True, False),  # needs a GPU the CPU allocation lacks
    (task_for(node="gpu2"), 2, True, False),  # gpu2 borrowed nothing
])
def test_allocation_decision(request_, tasks_on_master, accepting, runs_in_allocation):
    view, record = borrowed_view(tasks_on_master, accepting)
    outcome = place(request_, view)
    decision = allocation_decision(request_, view, outcome)
    if runs_in_allocation:
        assert decision is not None
        assert (decision.node_name, decision.placement_group_id, decision.bundle_index) == ("gpu1", "ab" * 14, 0)
        assert decision.reasons[0] == f"ran in allocation {record.id} on donor gpu1, borrowed by gpu-master"
        options = decision.model_dump()
        assert options["resources"] == {"CPU": 1.0}
    else:
        assert decision is None


def test_status_tables_show_allocations_pending_capacity_and_use():
    book, clock = ledger()
    view = cluster()
    holders = fill_gpu_cpus(book, view, "high")
    book.submit(ask(amount=1, priority="low"), view)
    status = sharing_status(book, view)
    tables = status_tables(status, now=clock.now)
    headers, rows = tables["allocations"]
    assert headers[:7] == ["id", "donor", "borrower", "resource", "amount", "priority", "expires"]
    # granted at the same instant: ordered by id, which is random, so compare as sorted lists
    assert sorted(row[:6] for row in rows) == sorted([[holders[0].id, "gpu1", "gpu-master", "cpu", "4", "high"],
                                                      [holders[1].id, "gpu2", "gpu-master", "cpu", "6", "high"]])
    assert rows[0][6] == "in 1800s"
    assert len(tables["pending"][1]) == 1
    capacity = {(row[0], row[1]): row for row in tables["capacity"][1]}
    assert capacity[("gpu2", "cpu")][4:7] == ["6", "6", "0"]  # lendable, lent, spare
    use = {row[0]: row for row in tables["utilisation"][1]}
    assert use["gpu1"][2] == "4/6" and use["gpu-master"][6] == "10 cpu"


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("30m", 1800), ("1h30m", 5400), ("2d", 172800),
                                           (45, 45)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


def test_parse_duration_rejects_nonsense():
    with pytest.raises(ValueError):
        parse_duration("30 minutes please")


def test_scheduler_core_overflows_a_full_borrower_into_its_allocation_then_overbooks_at_home():
    from grid_serve.scheduling import SchedulerCore

    view, record = borrowed_view(tasks_on_master=0)
    requests = [SchedulingRequest(task_id=f"t{i}", job_id="j", strategy=SchedulingStrategy.NODE_SPECIFIC,
                                  target_node="gpu-master") for i in range(4)]
    strict = SchedulerCore()
    result = strict.submit(requests, view)  # admission 1: nothing waits in Ray's queue
    placed = [(d.task_id, d.node_name, d.placement_group_id) for d in result.placed]
    assert placed == [("t0", "gpu-master", None), ("t1", "gpu-master", None), ("t2", "gpu1", "ab" * 14)]
    assert len(strict) == 1  # t3 waits for room at home or in the allocation
    assert result.view.allocations[record.id].used == {"CPU": 1.0}
    assert result.view.resolve("gpu1").reserved["CPU"] == 1  # the task did not count twice on the donor
    overbooking = SchedulerCore().submit(requests, dataclasses.replace(view, admission=2.0))
    placed = [(d.task_id, d.node_name, d.placement_group_id) for d in overbooking.placed]
    assert placed == [("t0", "gpu-master", None), ("t1", "gpu-master", None), ("t2", "gpu1", "ab" * 14),
                      ("t3", "gpu-master", None)]


def test_scheduler_core_waits_for_an_allocation_rather_than_rejecting():
    from grid_serve.scheduling import SchedulerCore

    book, _ = ledger()
    view = ClusterView.of([make_node("gpu-master", cpus=2), make_node("gpu1", cpus=2, gpus=1),
                           make_node("gpu2", cpus=2, gpus=1)])
    record, _ = book.submit(ask(type="gpu", amount=1, donor="gpu1"), view)
    book.placed(record.id, "ab" * 14, ready=True)
    view = fold_allocations(view, book.holding())
    gpu_tasks = [SchedulingRequest(task_id=f"g{i}", job_id="g", strategy=SchedulingStrategy.NODE_SPECIFIC,
                                   target_node="gpu-master", requirements={"cpu_count": 0, "gpu_count": 1})
                 for i in range(2)]
    core = SchedulerCore()
    result = core.submit(gpu_tasks, view)
    assert [(d.task_id, d.node_name) for d in result.placed] == [("g0", "gpu1")]
    assert result.rejected == [] and len(core) == 1  # g1 waits for the GPU allocation to free


# ---------------------------------------------------------------- the lifecycle table

LIFECYCLE = {  # (state, event) -> (next state, holds capacity); every other pair is illegal
    ("pending", "grant"): ("active", True),
    ("pending", "withdraw"): ("released", False),
    ("pending", "time out"): ("timed_out", False),
    ("active", "release"): ("released", True),  # drains first: running tasks may finish
    ("active", "lease end"): ("expired", True),
    ("active", "preempt"): ("preempted", False),  # gives the capacity back at once
    ("active", "donor dies"): ("lost", False),  # the capacity went with the node
    ("active", "ungrant"): ("pending", False),  # the grant could not be recorded: try again later
}


@pytest.mark.parametrize("state", list(AllocationState))
@pytest.mark.parametrize("event", list(Event))
def test_every_state_and_event_pair(state: AllocationState, event: Event) -> None:
    expected = LIFECYCLE.get((str(state), str(event)))
    if expected is None:
        with pytest.raises(IllegalTransition, match=f"an allocation that is {state} cannot {event}"):
            next_state(state, event)
    else:
        assert next_state(state, event) == expected
