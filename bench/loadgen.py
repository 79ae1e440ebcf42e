"""A small HTTP load generator, run in its own process so it does not share the driver's GIL.

    python -m bench.loadgen URL [--method POST --body '{"a": 1}'] [--seconds 3] [--concurrency 16] [--warmup 1]

Prints one JSON line: requests, errors, requests/s, p50 and p99 latency in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import httpx


async def _worker(client: httpx.AsyncClient, method: str, url: str, body: object, until: float,
                  latencies: list[float], errors: list[int]) -> None:
    while time.perf_counter() < until:
        began = time.perf_counter()
        try:
            response = await client.request(method, url, json=body)
            ok = response.status_code < 400
        except httpx.HTTPError:
            ok = False
        if ok:
            latencies.append(time.perf_counter() - began)
        else:
            errors.append(1)


async def load(url: str, method: str, body: object, seconds: float, concurrency: int,
               warmup_s: float = 0.0) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[int] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        if warmup_s:  # connections open, server paths hot; not counted
            until = time.perf_counter() + warmup_s
            await asyncio.gather(*[_worker(client, method, url, body, until, [], []) for _ in range(concurrency)])
        began = time.perf_counter()
        until = began + seconds
        await asyncio.gather(*[_worker(client, method, url, body, until, latencies, errors)
                               for _ in range(concurrency)])
        elapsed = time.perf_counter() - began
    ordered = sorted(latencies)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")  # noqa: E731
    return {"requests": len(latencies), "errors": len(errors), "rps": len(latencies) / elapsed,
            "p50_ms": statistics.median(ordered) * 1000 if ordered else float("nan"), "p99_ms": pick(0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body", default=None, help="JSON body")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=0.0, help="seconds of unmeasured load first")
    args = parser.parse_args()
    body = json.loads(args.body) if args.body else None
    print(json.dumps(asyncio.run(load(args.url, args.method.upper(), body, args.seconds, args.concurrency,
                                       args.warmup))))


if __name__ == "__main__":
    main()
