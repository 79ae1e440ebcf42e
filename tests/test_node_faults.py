"""A node dies mid-job (its raylet killed): tasks that may move are placed again on live nodes,
`node_specific` tasks fail naming the node, and the dead node leaves every later decision.

Each test adds its own node to the shared cluster and kills it, so the three nodes the other
tests count on stay as they are (a dead node stays in Ray's table, marked dead).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from grid_serve.client import GridClient
from grid_serve.local_cluster import LocalNode
from tests.test_ownership_faults import assert_recovered, ended, eventually

pytestmark = pytest.mark.cluster

GiB = 1024**3


def join(cluster: Any, client: GridClient, name: str) -> Any:
    """A 2-CPU node labelled `name`, once the app places work on it."""
    node = cluster.add_node(**LocalNode(name, num_cpus=2, num_gpus=0, memory_bytes=2 * GiB, head=False).ray_args())
    eventually(lambda: any(n.name == name and n.alive for n in client.cluster_status().nodes), what=f"{name} joining")
    return node


def sleepers(tasks: int, seconds: float, **spec: Any) -> dict[str, Any]:
    return {"task": "sleep_task", "args": [[i, seconds] for i in range(tasks)], **spec}


def test_tasks_of_a_node_that_dies_are_placed_again_and_the_job_succeeds(
        ray_cluster: Any, client: GridClient, http: httpx.Client) -> None:
    node = join(ray_cluster, client, "doomed-1")
    job_id = http.post("/v1/jobs", json=sleepers(60, 0.5, strategy="spread")).json()["job_id"]
    eventually(lambda: (s := client.get_job(job_id)).succeeded >= 16 and s.per_node.get("doomed-1", 0) > 0,
               what="a quarter of the job done, some of it on doomed-1")
    ray_cluster.remove_node(node, allow_graceful=False)

    status = ended(client, job_id)
    assert (status.state, status.succeeded, status.failed) == ("succeeded", 60, 0), status.error
    moved = [result for result in status.results if result.attempts > 1]
    assert moved, "the tasks running or queued on doomed-1 were placed again"
    assert all(result.node_name != "doomed-1" and result.attempts == 2 for result in moved)
    assert sorted(result.index for result in status.results) == list(range(60))
    eventually(lambda: not any(n.alive for n in client.cluster_status().nodes if n.name == "doomed-1"),
               what="doomed-1 marked dead")
    assert_recovered(client, http)  # nothing reserved, and 99 tasks spread 33/33/33 over the live nodes


def test_node_specific_tasks_on_a_node_that_dies_fail_naming_it(
        ray_cluster: Any, client: GridClient, http: httpx.Client) -> None:
    node = join(ray_cluster, client, "doomed-2")
    job_id = http.post("/v1/jobs", json=sleepers(8, 3.0, strategy="node_specific", node="doomed-2")).json()["job_id"]
    eventually(lambda: client.get_job(job_id).running > 0, what="the job running on doomed-2")
    ray_cluster.remove_node(node, allow_graceful=False)

    status = ended(client, job_id)
    assert (status.state, status.succeeded, status.failed) == ("failed", 0, 8)
    assert all("doomed-2" in result.error for result in status.results), [r.error for r in status.results]
    eventually(lambda: not any(n.alive for n in client.cluster_status().nodes if n.name == "doomed-2"),
               what="doomed-2 marked dead")
    again = http.post("/v1/jobs", json={"task": "compute_task", "count": 2, "strategy": "node_specific",
                                        "node": "doomed-2"})
    assert again.status_code in (400, 422) and "doomed-2" in again.text and "dead" in again.text, again.text
    assert_recovered(client, http)
