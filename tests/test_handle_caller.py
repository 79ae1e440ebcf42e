"""A Ray program's own function through the handle (`HandleClient.submit_job(spec, fn=...)`),
from a separate driver with its own module and runtime_env, on the real 3-node cluster: a job
with `wait` runs in the caller's own Ray job (the app's processes never open `mymod`), placed
exactly by the Scheduler, with the caller's env_vars; ObjectRef arguments reach it as Ray passes
them (top-level ones as their values, nested ones as refs); with `result_refs` its results stay
in the object store, the caller getting their ObjectRefs (read over HTTP as their object ids);
the finished job reads by id from its runner and `grid explain` shows its tasks' decisions;
`timeout_s` cancels what has not ended, and it stops even when blocked outside Python."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from grid_serve.client import GridClient

pytestmark = pytest.mark.cluster

MODULE = textwrap.dedent('''
    import os, time, ray
    def setting(i):
        return [i, os.environ.get("MY_SETTING"), ray.get_runtime_context().get_job_id()]
    def nap(i):
        time.sleep(120)
    def sleep_for(seconds):
        time.sleep(seconds)
        return seconds
    def measure(data, i, nested=None):
        return [len(data), i, type(nested[0]).__name__ if nested else None]
    def blob(i):
        if i == 3:
            raise ValueError("no blob 3")
        return bytes([i]) * 500_000  # 3 of them stay within the tests' results_bytes_kept
''')

CALLER = textwrap.dedent('''
    import asyncio, json, sys, ray
    ray.init(address=sys.argv[1], log_to_driver=False,
             runtime_env={"working_dir": sys.argv[2], "env_vars": {"MY_SETTING": "from-the-caller"}})
    from grid_serve.client import HandleClient
    import mymod

    async def stopped(name):
        """Whether Ray's tasks of `name` all ended within 60 s (what a cancelled job held is free again)."""
        from ray.util.state import list_tasks
        for _ in range(120):
            if not list_tasks(address=sys.argv[1], filters=[("name", "=", name), ("state", "=", "RUNNING")]):
                return True
            await asyncio.sleep(0.5)
        return False

    async def main():
        client = HandleClient.connect()
        first = await client.submit_job({"count": 6, "strategy": "spread", "wait": True}, fn=mymod.setting)
        data = ray.put(b"x" * 1_000_000)  # once, read by every task
        args = [{"data": data, "i": i, "nested": [data]} if i % 2 else [data, i] for i in range(6)]
        second = await client.submit_job({"args": args, "wait": True}, fn=mymod.measure)
        kept = await client.submit_job({"args": [[i] for i in range(4)], "result_refs": True, "wait": True},
                                       fn=mymod.blob)
        refs = [o.result for o in kept.results]
        blobs = ray.get(refs[:3])
        late = await client.submit_job({"count": 2, "wait": True, "timeout_s": 1.0}, fn=mymod.nap)
        naps_stopped = await stopped("nap")  # blocked in time.sleep: Ray's plain cancel does not reach them
        # one slot: the short task ends, the 4th waits for room past timeout_s (its wait raises)
        crowded = await client.submit_job({"args": [[0.2], [60], [60], [60]], "strategy": "node_specific",
                                           "node": "gpu1", "resources": {"cpu_count": 2}, "wait": True,
                                           "timeout_s": 10.0}, fn=mymod.sleep_for)
        crowded_stopped = await stopped("sleep_for")
        print(json.dumps({"job": ray.get_runtime_context().get_job_id(), "first_id": first.job_id,
                          "first": [first.state, first.task, first.per_node, [o.result for o in first.results]],
                          "late": [late.state, late.cancelled, late.error, naps_stopped],
                          "crowded": [crowded.state, crowded.succeeded, crowded.cancelled, crowded.error,
                                      [o.result for o in crowded.results if o.ok], crowded_stopped],
                          "second": [second.state, [o.result for o in second.results], second.error],
                          "kept": [kept.job_id, kept.failed, [type(ref).__name__ for ref in refs],
                                   [ref.hex() for ref in refs[:3]], [(len(b), b[0]) for b in blobs],
                                   kept.results[3].error]}), flush=True)

    asyncio.run(main())
''')


def test_a_callers_module_function_runs_in_its_runtime_env_with_object_refs_resolved_as_in_ray(
        client: GridClient, base_url: str, cluster_address: str, tmp_path: Path) -> None:
    (tmp_path / "mymod.py").write_text(MODULE)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    done = subprocess.run([sys.executable, "-c", CALLER, cluster_address, str(tmp_path)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    state, task, per_node, results = seen["first"]
    assert (state, task) == ("succeeded", "setting")
    assert results == [[i, "from-the-caller", seen["job"]] for i in range(6)]  # in the caller's own Ray job
    assert per_node == {"gpu-master": 2, "gpu1": 2, "gpu2": 2}
    kept_first = client.get_job(seen["first_id"])  # the job ran in the caller; its runner keeps it, readable by id
    assert (kept_first.state, kept_first.per_node) == ("succeeded", per_node)
    fourth = client.get_job(seen["first_id"], results=True).results[4]
    explained = subprocess.run([sys.executable, "-m", "grid_serve.cli", "explain", seen["first_id"], "4", "--json"],
                               capture_output=True, text=True, timeout=60, env={**env, "GRID_ADDRESS": base_url})
    assert explained.returncode == 0, explained.stderr
    record = json.loads(explained.stdout)  # placed as a call of the caller's stream: found by the task's id
    assert (record["task_id"], record["node"], record["strategy"]) == (fourth.task_id, fourth.node_name, "SPREAD")
    state, results, error = seen["second"]
    assert state == "succeeded", (results, error)
    assert results == [[1_000_000, i, "ObjectRef" if i % 2 else None] for i in range(6)]
    job_id, failed, kinds, hexes, blobs, error = seen["kept"]
    assert (failed, kinds[:3], kinds[3]) == (1, ["ObjectRef"] * 3, "NoneType")
    assert blobs == [[500_000, i] for i in range(3)]
    assert error == "ValueError: no blob 3"
    over_http = client.get_job(job_id, results=True).results
    assert [outcome.result for outcome in over_http] == [{"object_ref": h} for h in hexes] + [None]
    state, cancelled, error, stopped = seen["late"]  # timeout_s bounds a job run in the caller: what has not ended stops
    assert (state, cancelled, stopped) == ("cancelled", 2, True), error
    assert error.startswith("timeout_s (1 s) passed before every task ended: 2 unfinished task(s) cancelled")
    state, succeeded, cancelled, error, results, stopped = seen["crowded"]  # what ended before the deadline is kept
    assert (state, succeeded, cancelled, results, stopped) == ("cancelled", 1, 3, [0.2], True), error
    assert error.startswith("timeout_s (10 s) passed before every task ended: 3 unfinished task(s) cancelled")
