#!/usr/bin/env python3
"""Check the Ray cluster and the grid app against a cluster config (same as `grid validate`).

Usage: python scripts/validate_ray_cluster.py [--config config/cluster.yaml] [--address URL]
"""

import sys

from grid_serve.cli import main

if __name__ == "__main__":
    sys.exit(main(["validate", *sys.argv[1:]]))
