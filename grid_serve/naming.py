"""Node names: what users type and read, kept for a node's whole life, never shared by two live nodes.

Labels are the names people choose (`ray start --labels grid.io/node=gpu1`), but on KubeRay labels
are set per worker group, so most pods carry none, or one the whole group shares. A node is
therefore named by the first of these that is *unique among live nodes* and that no live node
holds as its name already:

    its grid.io/node label  ->  its hostname (a pod's name)  ->  its IP  ->  <ip>/<first 6 of its id>

and, should even that be taken, its whole Ray node id (unique by Ray's own rule). A name, once
given, stays until Ray forgets the node, even when a newcomer later shares its label or
hostname: the newcomer is named by its next choice instead. So a name never moves from one
live node to another. A dead node keeps its name (one first seen dead gets its first choice),
and a machine restarted under the same label takes that name again: a dead entry may share
a live node's name, and lookups prefer the live one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Mapping


@dataclass(frozen=True)
class NodeFacts:
    """What Ray's node table says about a node that naming depends on."""

    node_id: str
    ip: str
    alive: bool = True
    label: str | None = None  # its grid.io/node label
    hostname: str | None = None


def choices(node: NodeFacts) -> list[str]:
    """The node's possible names, best first.

    >>> choices(NodeFacts("f00dfeed0123", "10.0.0.7", hostname="worker-abc"))
    ['worker-abc', '10.0.0.7', '10.0.0.7/f00dfe', 'f00dfeed0123']
    """
    wanted = [node.label, node.hostname, node.ip, f"{node.ip}/{node.node_id[:6]}", node.node_id]
    return [name for name in dict.fromkeys(wanted) if name]


class NodeNamer:
    """Remembers every name it gave (by node id) and names newcomers around them."""

    def __init__(self, known: Mapping[str, str] | None = None) -> None:
        self._names: dict[str, str] = dict(known or {})

    @property
    def names(self) -> Mapping[str, str]:
        """node id -> name, for every node of the last `name_all`; what to save across restarts."""
        return dict(self._names)

    def name_all(self, nodes: Iterable[NodeFacts]) -> dict[str, str]:
        """node id -> name for `nodes` (Ray's whole node table); nodes no longer listed are forgotten."""
        nodes = list(nodes)
        self._names = {node.node_id: self._names[node.node_id] for node in nodes if node.node_id in self._names}
        live = [node for node in nodes if node.alive]
        held = {self._names[node.node_id] for node in live if node.node_id in self._names}
        shared = _shared_facts(live)
        # labelled newcomers first: a chosen name beats a hostname or IP that happens to equal it
        newcomers = sorted((n for n in nodes if n.node_id not in self._names),
                           key=lambda n: (n.label is None, n.node_id))
        for node in newcomers:
            if not node.alive:  # seen only after it died: its best name, as it most likely had
                self._names[node.node_id] = choices(node)[0]
                continue
            name = next(choice for choice in choices(node) if choice not in held and choice not in shared)
            self._names[node.node_id] = name
            held.add(name)
        return dict(self._names)


def _shared_facts(live: list[NodeFacts]) -> set[str]:
    """Labels, hostnames and IPs that more than one live node has (each kind apart): none of
    them names a node."""
    shared: set[str] = set()
    for kind in ("label", "hostname", "ip"):
        counts = Counter(getattr(node, kind) for node in live if getattr(node, kind))
        shared |= {fact for fact, count in counts.items() if count > 1}
    return shared
