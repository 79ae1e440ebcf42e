"""`grid.remote`: the caller's own Ray program placed by grid-serve, on the real 3-node cluster.

Each function reports, from inside its task, the node it ran on (Ray's node id), which is what
these tests check; the app's node names come from /v1/cluster.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import ray

import grid_serve as grid
from grid_serve.client import GridClient
from grid_serve.errors import InvalidRequestError
from tests.test_api import wait_idle
from tests.test_ownership_faults import eventually, idle_and_unreserved, serve_actor

pytestmark = pytest.mark.cluster


def node_names(client: GridClient) -> dict[str, str]:
    return {node.node_id: node.name for node in client.cluster_status().nodes}


@grid.remote
def where(i: int) -> str:
    return ray.get_runtime_context().get_node_id()


def test_a_loop_of_100_spread_calls_lands_34_33_33(client: GridClient) -> None:
    wait_idle(client)
    names = node_names(client)
    refs = [where.options(scheduling_strategy="SPREAD").remote(i) for i in range(100)]
    assert all(isinstance(ref, ray.ObjectRef) for ref in refs)
    assert sorted(Counter(names[node] for node in ray.get(refs)).values()) == [33, 33, 34]


def test_a_stream_long_idle_rests_and_its_next_calls_wake_it(client: GridClient,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream quiet for `REST_S`, forgotten by the Scheduler, leaves the dispatcher's rounds
    (a service opening a stream per kind of job would otherwise pay a look per stream per
    tick); its next calls bring it back and spread exactly on their own."""
    from grid_serve import dispatch

    wait_idle(client)
    monkeypatch.setattr(dispatch, "REST_S", 0.5)
    names = node_names(client)
    resting = where.options(scheduling_strategy="SPREAD", priority="low")
    ray.get([resting.remote(i) for i in range(3)])
    group = resting._stream.group
    deadline = time.monotonic() + 30
    while group in dispatch.dispatcher()._streams:
        assert time.monotonic() < deadline, "the idle stream never rested"
        time.sleep(0.2)
    ran = ray.get([resting.remote(i) for i in range(30)], timeout=60)
    assert sorted(Counter(names[node] for node in ran).values()) == [10, 10, 10]
    assert group in dispatch.dispatcher()._streams


def test_six_one_gpu_calls_run_three_and_three(client: GridClient) -> None:
    wait_idle(client)
    names = node_names(client)
    gpu_step = grid.remote(num_gpus=1)(lambda i: (ray.get_runtime_context().get_node_id(), ray.get_gpu_ids()))
    ran = ray.get([gpu_step.remote(i) for i in range(6)])
    assert Counter(names[node] for node, _ in ran) == Counter({"gpu1": 3, "gpu2": 3})
    assert all(len(gpus) == 1 for _, gpus in ran)


def test_node_specific_and_an_existing_ray_function_keep_their_options(client: GridClient) -> None:
    names = node_names(client)

    @ray.remote(num_cpus=0.5, max_retries=1)
    def pinned(i: int) -> tuple[str, float]:
        return ray.get_runtime_context().get_node_id(), ray.get_runtime_context().get_assigned_resources()["CPU"]

    placed = grid.remote(pinned).options(scheduling_strategy="NODE_SPECIFIC", node="gpu1", priority="high")
    ran = ray.get([placed.remote(i) for i in range(5)])
    assert {names[node] for node, _ in ran} == {"gpu1"}
    assert {cpus for _, cpus in ran} == {0.5}


def test_object_refs_resolve_as_in_ray_and_results_stay_refs(client: GridClient) -> None:
    big = ray.put(list(range(100_000)))
    length = grid.remote(lambda values, nested: (len(values), isinstance(nested[0], ray.ObjectRef)))
    assert ray.get(length.remote(big, [big])) == (100_000, True)  # top-level resolved, nested kept
    twice = grid.remote(num_returns=2)(lambda x: (x, x * 2))
    first, second = twice.remote(21)
    assert ray.get([first, second]) == [21, 42]
    chained = length.remote(where.remote(0), [None])  # a grid.remote result passed on as a ref
    assert ray.get(chained)[0] == len(ray.get(where.remote(1)))


def test_a_call_that_can_never_fit_fails_at_once_naming_why(client: GridClient) -> None:
    huge = grid.remote(num_gpus=8)(lambda: None)
    with pytest.raises(InvalidRequestError, match="insufficient GPU"):
        huge.remote()


def test_async_callers_use_remote_async_and_remote_refuses_to_block_the_loop(client: GridClient) -> None:
    import asyncio

    async def caller() -> list:
        with pytest.raises(RuntimeError, match="remote_async"):
            where.remote(0)
        refs = [await where.remote_async(i) for i in range(3)]
        return await asyncio.gather(*refs)

    assert len(asyncio.run(caller())) == 3


def test_the_decisions_are_explained_and_counted_like_jobs(client: GridClient, http) -> None:
    wait_idle(client)
    counted = grid.remote(lambda i: i).options(scheduling_strategy="LOAD_BALANCED")
    assert ray.get([counted.remote(i) for i in range(10)]) == list(range(10))
    stream = counted._stream
    decisions = http.get("/v1/decisions", params={"job_id": stream.group}).json()["decisions"]
    assert len(decisions) >= 10 and all(d["reasons"] for d in decisions)
    wait_idle(client)  # every reservation released once the calls ended (and the unused ones handed back)


def test_calls_one_at_a_time_run_in_reused_slots_evenly_and_say_so(client: GridClient, http) -> None:
    wait_idle(client)
    names = node_names(client)
    one_by_one = where.options(scheduling_strategy="SPREAD", priority="normal")
    ran = [names[ray.get(one_by_one.remote(i))] for i in range(60)]
    assert sorted(Counter(ran).values()) == [20, 20, 20]
    decisions = http.get("/v1/decisions", params={"job_id": one_by_one._stream.group, "limit": 200}).json()
    reused = [d for d in decisions["decisions"] if "ran in the slot" in d["reasons"][0]]
    assert reused, "no call reused its predecessor's slot"
    wait_idle(client)  # the reused slots are released like any placement once the stream goes idle


CALLER = textwrap.dedent('''
    import os, sys, time, ray
    ray.init(address=sys.argv[1], log_to_driver=False,
             runtime_env={"working_dir": sys.argv[2], "env_vars": {"MY_SETTING": "from-the-caller"}})
    import grid_serve as grid
    import mymod
    f = grid.remote(mymod.setting)
    print(ray.get(f.remote()), flush=True)
    slow = grid.remote(mymod.hold)
    refs = [slow.remote(30) for _ in range(6)]  # the cluster's 6 CPUs, held until the caller dies
    while True:
        time.sleep(1)
        print("holding", flush=True)
''')


HANDLE_CALLER = textwrap.dedent('''
    import asyncio, sys, ray
    ray.init(address=sys.argv[1], log_to_driver=False,
             runtime_env={"working_dir": sys.argv[2], "env_vars": {"MY_SETTING": "from-the-caller"}})
    from grid_serve.client import HandleClient
    import mymod

    async def holding():
        while True:
            print("holding", flush=True)
            await asyncio.sleep(1)

    async def main():  # a handle job of the caller's own function with wait: it runs in this process
        client = HandleClient.connect()
        first = await client.submit_job({"args": [[]], "wait": True}, fn=mymod.setting)
        print(first.results[0].result, flush=True)
        asyncio.get_running_loop().create_task(holding())
        await client.submit_job({"args": [[30]] * 6, "wait": True}, fn=mymod.hold)

    asyncio.run(main())
''')


@pytest.mark.parametrize("program", [CALLER, HANDLE_CALLER], ids=["grid.remote", "handle-job"])
def test_a_callers_module_and_runtime_env_and_its_death_reclaims_what_it_held(
        client: GridClient, cluster_address: str, tmp_path: Path, program: str) -> None:
    wait_idle(client)
    (tmp_path / "mymod.py").write_text(textwrap.dedent('''
        import os, time
        def setting():
            return os.environ.get("MY_SETTING")
        def hold(seconds):
            time.sleep(seconds)
    '''))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    caller = subprocess.Popen([sys.executable, "-c", program, cluster_address, str(tmp_path)], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert caller.stdout is not None and caller.stderr is not None
        first = caller.stdout.readline().strip()
        assert first == "from-the-caller", caller.stderr.read() if caller.poll() is not None else first
        assert caller.stdout.readline().strip() == "holding"
        deadline = time.monotonic() + 30
        while sum(node.in_flight for node in client.cluster_status().nodes) < 6:
            assert time.monotonic() < deadline, "the caller's six calls never showed as in flight"
            time.sleep(0.2)
        caller.send_signal(signal.SIGKILL)
        caller.wait(10)
        wait_idle(client, timeout_s=30)  # its lease lapses (5 s) and everything it held is released
    finally:
        caller.kill()
    names = node_names(client)
    assert sorted(Counter(names[node] for node in ray.get([where.remote(i) for i in range(30)])).values()) == [10, 10, 10]



def test_a_scheduler_killed_mid_run_loses_no_call(client: GridClient) -> None:
    """Calls in flight finish (they are Ray's tasks of this process), the dispatcher registers its
    stream with the new Scheduler, and calls made while it restarts wait and then run."""
    wait_idle(client)
    names = node_names(client)
    sleeper = grid.remote(lambda i: (time.sleep(0.4), ray.get_runtime_context().get_node_id())[1])
    first = [sleeper.remote(i) for i in range(18)]
    ray.kill(serve_actor("Scheduler"), no_restart=True)
    later = [sleeper.remote(i) for i in range(18, 36)]
    assert len(ray.get(first + later, timeout=120)) == 36
    eventually(lambda: idle_and_unreserved(client), what="reservations back to zero")
    ran = ray.get([where.remote(i) for i in range(30)])
    assert sorted(Counter(names[node] for node in ran).values()) == [10, 10, 10]
