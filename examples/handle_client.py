"""A separate Ray job using grid-serve through its Serve handle, with its own function.

Start the app first (`grid up --local`), then: python examples/handle_client.py
Handle callers may run their own functions (HTTP callers only registered tasks).
"""

from __future__ import annotations

import asyncio

from grid_serve.client import HandleClient


def word_count(text: str) -> dict:
    """A user function: runs on whichever node grid-serve picks, and says which."""
    from grid_serve.tasks import where_am_i

    return {"words": len(text.split()), "node": where_am_i()["node"]}


async def main() -> None:
    grid = HandleClient.connect()  # joins the Ray cluster `grid up` started (or $RAY_ADDRESS)
    texts = [["the quick brown fox"], ["jumps over"], ["the lazy dog"], ["and runs"], ["far away"], ["again"]]
    status = await grid.submit_job({"task": "word_count", "args": texts, "strategy": "spread", "wait": True},
                                   fn=word_count)
    counts = [outcome.result["words"] for outcome in status.results]
    print(f"word counts: {counts}")
    print(f"per node: {status.per_node}")
    cluster = await grid.cluster_status()
    print(f"nodes: {[node.name for node in cluster.nodes if node.alive]}")


if __name__ == "__main__":
    asyncio.run(main())
