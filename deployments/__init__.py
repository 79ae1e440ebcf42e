"""The Ray Serve layer: thin, stateful adapters around the pure `grid_serve` core."""
