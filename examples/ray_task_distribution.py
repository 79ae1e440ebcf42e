"""Every pattern of the user guide, run through grid-serve.

Start the app first (`grid up --local`), then: python examples/ray_task_distribution.py
Each section prints what happened and where; the test suite runs this file and checks it.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import ray
from ray import serve
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

import grid_serve as grid
from grid_serve import IntelligentScheduler, ResourceRequirement, SchedulingRequest, SchedulingStrategy, TaskPriority
from grid_serve.client import GridClient, HandleClient, connect_ray
from grid_serve.tasks import where_am_i


def node_counts(status) -> dict[str, int]:
    """Where the tasks ran, as each task reported from inside itself."""
    return dict(sorted(Counter(outcome.node_name for outcome in status.results).items()))


async def basic_spread(grid: HandleClient) -> None:
    """1. Basic task distribution: 100 tasks spread evenly (plain Ray's SPREAD is not even)."""
    status = await grid.submit_job({"task": "compute_task", "count": 100, "strategy": "spread", "wait": True})
    print(f"spread 100: {node_counts(status)}")


async def node_specific(grid: HandleClient) -> None:
    """2. Node-specific placement by name (no IPs, no node: resources)."""
    to_gpu1, to_gpu2 = await asyncio.gather(
        grid.submit_job({"count": 50, "strategy": "node_specific", "node": "gpu1", "wait": True}),
        grid.submit_job({"count": 50, "strategy": "node_specific", "node": "gpu2", "wait": True}),
    )
    print(f"node_specific gpu1: {node_counts(to_gpu1)}")
    print(f"node_specific gpu2: {node_counts(to_gpu2)}")


async def gpu_workloads(grid: HandleClient) -> None:
    """3. GPU workload distribution: 6 one-GPU tasks spread over the GPUs."""
    status = await grid.submit_job({"task": "gpu_task", "count": 6, "strategy": "spread", "wait": True})
    gpus = sorted({(o.node_name, tuple(o.result["gpu_ids"])) for o in status.results})
    print(f"gpu 6: {node_counts(status)} gpus={gpus}")


async def mixed_workloads(grid: HandleClient) -> None:
    """Advanced 1. Mixed workloads, each with its own strategy, all at once."""
    cpu, memory, gpu = await asyncio.gather(
        grid.submit_job({"task": "cpu_task", "count": 20, "strategy": "spread", "wait": True}),
        grid.submit_job({"task": "memory_task", "count": 10, "strategy": "load_balanced",
                         "resources": {"cpu_count": 2.0, "memory_mb": 64}, "wait": True}),
        grid.submit_job({"task": "gpu_task", "count": 3, "wait": True}),
    )
    print(f"mixed cpu spread: {node_counts(cpu)}")
    print(f"mixed memory load_balanced: {node_counts(memory)}")
    print(f"mixed gpu: {node_counts(gpu)}")
    print(f"mixed all succeeded: {cpu.succeeded + memory.succeeded + gpu.succeeded} of 33")


async def intelligent_scheduler() -> None:
    """Advanced 2. The IntelligentScheduler: a decision from the deployed Scheduler, then run it."""
    scheduler = IntelligentScheduler.connect()
    request = SchedulingRequest(
        task_id="my_task",
        requirements=ResourceRequirement(cpu_count=2.0, memory_mb=256, gpu_count=1),
        strategy=SchedulingStrategy.SPREAD,
        priority=TaskPriority.HIGH,
    )
    decision = await scheduler.schedule_task(request)
    print(f"Task scheduled on {decision.node_id} ({decision.node_name}): {decision.reasons[0]}")
    where = ray.get(ray.remote(where_am_i).options(**decision.ray_options()).remote())
    await scheduler.task_finished("my_task")
    print(f"intelligent scheduler ran on: {where['node']} (decided {decision.node_name})")


async def dynamic_load_balancing(grid: HandleClient) -> None:
    """Advanced 3. A hand-rolled balancer driven by the LoadBalancer deployment's live counts."""
    balancer = serve.get_deployment_handle("LoadBalancer", app_name="grid")
    status = await grid.cluster_status()
    nodes = {node.node_id: node.name for node in status.nodes if node.alive}
    jobs = []
    for task_id in range(12):
        target = await balancer.least_loaded.remote(list(nodes))
        jobs.append(await grid.submit_job({"task": "sleep_task", "args": [[task_id, 0.3]],
                                           "strategy": "node_specific", "node": nodes[target]}))
    finished = [await grid.wait_job(job.job_id) for job in jobs]
    print(f"dynamic balancer: {dict(sorted(Counter(o.node_name for s in finished for o in s.results).items()))}")


def resource_constraints(client: GridClient) -> None:
    """Best practice 2. Resource requirements: 2 CPUs, 1 GPU and 1 GB of RAM per task."""
    status = client.submit_job({"task": "gpu_task", "count": 2, "wait": True,
                                "resources": {"cpu_count": 2, "gpu_count": 1, "memory_mb": 1000}})
    print(f"constrained (2 CPU, 1 GPU, 1000 MB): {node_counts(status)}")


def placement_groups() -> None:
    """Best practice 3. Placement groups (plain Ray): STRICT_SPREAD puts each bundle on its own node."""
    pg = placement_group([{"CPU": 2, "GPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    ray.get(pg.ready(), timeout=120)
    task_in_pg = ray.remote(where_am_i)
    nodes = [ray.get(task_in_pg.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
        placement_group=pg, placement_group_bundle_index=index)).remote())["node"] for index in (0, 1)]
    remove_placement_group(pg)
    print(f"placement group bundles: {nodes} distinct={len(set(nodes)) == 2}")


def monitoring(client: GridClient) -> None:
    """Best practice 4. Monitoring: Ray's own view and grid-serve's."""
    for node in ray.nodes():
        print(f"Node: {node['NodeManagerAddress']} label={node['Labels'].get('grid.io/node')} Alive: {node['Alive']}")
    print(f"cluster CPUs: {ray.cluster_resources().get('CPU')} available: {ray.available_resources().get('CPU')}")
    for node in client.cluster_status().nodes:
        print(f"grid node {node.name}: alive={node.alive} in_flight={node.in_flight}")


# ---------------------------------------------------------------- the same snippets, Ray-native
# The guide's code with `@ray.remote` changed to `@grid.remote`: the calls run in this process's
# own Ray job (its modules, runtime_env, ObjectRefs), placed by grid-serve's Scheduler.


@grid.remote
def compute_task(task_id: int) -> str:
    return where_am_i()["node"]


@grid.remote(num_gpus=1)
def gpu_training_step(batch_id: int) -> tuple[str, list]:
    return where_am_i()["node"], [str(gpu) for gpu in ray.get_gpu_ids()]


@grid.remote
def memory_task(task_id: int) -> str:
    return where_am_i()["node"]


def ray_native() -> None:
    """1, 3 and Advanced 1 again, through grid.remote (a blocking API: run outside the event loop)."""
    refs = [compute_task.options(scheduling_strategy="SPREAD").remote(i) for i in range(100)]
    print(f"grid.remote spread 100: {dict(sorted(Counter(ray.get(refs)).items()))}")
    ran = ray.get([gpu_training_step.remote(i) for i in range(6)])
    print(f"grid.remote gpu 6: {dict(sorted(Counter(node for node, _ in ran).items()))} "
          f"one gpu each={all(len(gpus) == 1 for _, gpus in ran)}")
    cpu_refs = [compute_task.options(scheduling_strategy="SPREAD").remote(i) for i in range(20)]
    mem_refs = [memory_task.options(scheduling_strategy="LOAD_BALANCED", num_cpus=2.0).remote(i) for i in range(10)]
    gpu_refs = [gpu_training_step.remote(i) for i in range(3)]
    results = ray.get(cpu_refs + mem_refs + gpu_refs)
    print(f"grid.remote mixed: {len(results)} of 33, "
          f"gpu on {sorted({node for node, _ in results[30:]})}")
    to_gpu1 = ray.get([compute_task.options(scheduling_strategy="NODE_SPECIFIC", node="gpu1").remote(i)
                       for i in range(10)])
    print(f"grid.remote node_specific gpu1: {dict(Counter(to_gpu1))}")


async def main() -> None:
    connect_ray()
    grid = HandleClient.connect()
    await basic_spread(grid)
    await node_specific(grid)
    await gpu_workloads(grid)
    await mixed_workloads(grid)
    await intelligent_scheduler()
    await dynamic_load_balancing(grid)
    with GridClient() as client:
        resource_constraints(client)
        placement_groups()
        monitoring(client)
    await asyncio.to_thread(ray_native)
    print("all patterns done")


if __name__ == "__main__":
    asyncio.run(main())
