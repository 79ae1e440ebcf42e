"""Every benchmark on one cluster, one table each: `python bench/run_all.py [--quick] [--only NAME ...]`.

--quick is the smoke run (under a minute on a 2-core machine): 3 nodes, small jobs, few repeats.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import (  # noqa: E402
    alternating,
    balance,
    decisions,
    dispatch,
    fair_share,
    handle_jobs,
    handle_results,
    http_api,
    priority,
    priority_burst,
    quality,
    remote,
    throughput,
)
from bench.harness import bench_env  # noqa: E402

CLUSTER_BENCHMARKS = {"balance": balance.run, "throughput": throughput.run, "dispatch": dispatch.run,
                      "quality": quality.run, "priority": priority.run, "http": http_api.run, "remote": remote.run,
                      "handle_jobs": handle_jobs.run, "handle_results": handle_results.run,
                      "alternating": alternating.run, "fair_share": fair_share.run,
                      "priority_burst": priority_burst.run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", choices=["decisions", *CLUSTER_BENCHMARKS], default=None)
    args = parser.parse_args()
    wanted = args.only or ["decisions", *CLUSTER_BENCHMARKS]
    began = time.monotonic()
    print(f"grid-serve benchmarks ({'quick' if args.quick else 'full'}), {time.strftime('%Y-%m-%d %H:%M %Z')}")
    if args.quick:
        print("(quick: a smoke run; its jobs are too small to saturate the cluster, so MET/MISSED here "
              "says little about the targets: see the full run)")
    if "decisions" in wanted:
        print(decisions.run(args.quick).render(), flush=True)
    cluster_side = [name for name in wanted if name in CLUSTER_BENCHMARKS]
    if cluster_side:
        started = time.monotonic()
        with bench_env(args.quick) as env:
            print(f"\n(cluster and app up in {time.monotonic() - started:.0f}s)")
            for name in cluster_side:
                started = time.monotonic()
                print(CLUSTER_BENCHMARKS[name](env).render(), flush=True)
                print(f"\n({name}: {time.monotonic() - started:.0f}s)")
    print(f"\n(total {time.monotonic() - began:.0f}s)")


if __name__ == "__main__":
    main()
