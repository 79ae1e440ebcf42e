"""Node names (grid_serve/naming.py): unique among live nodes, kept for a node's life. Pure, no Ray."""

from __future__ import annotations

import pytest

from grid_serve.naming import NodeFacts, NodeNamer


def node(node_id: str, ip: str = "10.0.0.1", label: str | None = None, hostname: str | None = None,
         alive: bool = True) -> NodeFacts:
    return NodeFacts(node_id=node_id, ip=ip, alive=alive, label=label, hostname=hostname)


@pytest.mark.parametrize("nodes, names", [
    # hand-labelled machines: their labels
    ([node("a1", "10.0.0.1", "gpu1", "m1"), node("b2", "10.0.0.2", "gpu2", "m2")], {"a1": "gpu1", "b2": "gpu2"}),
    # a KubeRay worker group: no grid.io/node label, each pod its own hostname
    ([node("a1", "10.0.0.1", None, "workers-abc"), node("b2", "10.0.0.2", None, "workers-xyz")],
     {"a1": "workers-abc", "b2": "workers-xyz"}),
    # a group label on several pods names none of them
    ([node("a1", "10.0.0.1", "workers", "pod-a"), node("b2", "10.0.0.2", "workers", "pod-b")],
     {"a1": "pod-a", "b2": "pod-b"}),
    # no hostname: the IP
    ([node("a1", "10.0.0.1"), node("b2", "10.0.0.2")], {"a1": "10.0.0.1", "b2": "10.0.0.2"}),
    # one machine, several raylets (a local cluster): shared hostname and IP name none of them
    ([node("aaaaaa1", "127.0.0.1", "head", "vm"), node("bbbbbb2", "127.0.0.1", None, "vm"),
      node("cccccc3", "127.0.0.1", None, "vm")],
     {"aaaaaa1": "head", "bbbbbb2": "127.0.0.1/bbbbbb", "cccccc3": "127.0.0.1/cccccc"}),
    # a hostname that is another node's label is taken: the IP
    ([node("a1", "10.0.0.1", "gpu1"), node("b2", "10.0.0.2", None, "gpu1")], {"a1": "gpu1", "b2": "10.0.0.2"}),
])
def test_first_unique_choice(nodes: list[NodeFacts], names: dict[str, str]) -> None:
    assert NodeNamer().name_all(nodes) == names


def test_a_name_stays_when_a_newcomer_shares_its_label() -> None:
    namer = NodeNamer()
    assert namer.name_all([node("a1", "10.0.0.1", "workers", "pod-a")]) == {"a1": "workers"}
    later = namer.name_all([node("a1", "10.0.0.1", "workers", "pod-a"), node("b2", "10.0.0.2", "workers", "pod-b")])
    assert later == {"a1": "workers", "b2": "pod-b"}


def test_a_restarted_machine_takes_its_label_again_and_the_dead_entry_keeps_it() -> None:
    namer = NodeNamer()
    namer.name_all([node("old", "10.0.0.1", "gpu1", "m1")])
    names = namer.name_all([node("old", "10.0.0.1", "gpu1", "m1", alive=False), node("new", "10.0.0.1", "gpu1", "m1")])
    assert names == {"old": "gpu1", "new": "gpu1"}  # lookups by name prefer the live one (test_strategies)


def test_names_survive_a_restart_of_the_namer_and_forget_vanished_nodes() -> None:
    first = NodeNamer()
    first.name_all([node("a1", "10.0.0.1", "workers", "pod-a")])
    first.name_all([node("a1", "10.0.0.1", "workers", "pod-a"), node("b2", "10.0.0.2", "workers", "pod-b")])
    again = NodeNamer(first.names)  # what the MetricsCollector saves in Ray's GCS and reloads
    assert again.name_all([node("a1", "10.0.0.1", "workers", "pod-a"), node("b2", "10.0.0.2", "workers", "pod-b")]) \
        == {"a1": "workers", "b2": "pod-b"}
    assert again.name_all([node("b2", "10.0.0.2", "workers", "pod-b")]) == {"b2": "pod-b"}


def test_a_node_id_is_the_last_resort() -> None:
    twins = [node("abcdef01", "10.0.0.1"), node("abcdef02", "10.0.0.1")]  # one IP, one id prefix
    assert NodeNamer().name_all(twins) == {"abcdef01": "10.0.0.1/abcdef", "abcdef02": "abcdef02"}


def test_live_names_never_collide() -> None:
    namer = NodeNamer()
    pods = [node(f"id{i:04d}", f"10.0.{i // 3}.1", "workers" if i % 2 else None, f"pod-{i // 2}") for i in range(12)]
    for count in range(1, len(pods) + 1):  # pods joining one by one, with repeated labels, hostnames and IPs
        names = namer.name_all(pods[:count])
        assert len(set(names.values())) == count, names
