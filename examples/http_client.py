"""grid-serve over plain HTTP: any language can do this; here with the typed Python client.

Start the app first (`grid up --local`), then: python examples/http_client.py
"""

from __future__ import annotations

from grid_serve.client import GridClient
from grid_serve.errors import GridError


def main() -> None:
    with GridClient() as client:  # $GRID_ADDRESS, else the app `grid up` started
        print(f"health: {client.health()['status']}")
        print(f"tasks: {', '.join(task['name'] for task in client.list_tasks())}")
        done = client.submit_job({"task": "compute_task", "count": 30, "strategy": "spread", "wait": True})
        print(f"spread 30: {done.per_node}")
        queued = client.submit_job({"task": "sleep_task", "args": [[i, 0.2] for i in range(6)],
                                    "strategy": "load_balanced"})
        print(f"submitted job {queued.job_id} ({queued.state})")
        finished = client.wait_job(queued.job_id)
        print(f"job {finished.job_id}: {finished.state}, {finished.succeeded} succeeded, per node {finished.per_node}")
        try:
            client.submit_job({"task": "compute_task", "strategy": "node_specific", "node": "gpu9"})
        except GridError as error:
            print(f"rejected ({error.status}, field {error.field}): {error.message}")


if __name__ == "__main__":
    main()
