"""Benchmarks: grid-serve against plain Ray on the same work, in the same run (see BENCHMARKS.md)."""
