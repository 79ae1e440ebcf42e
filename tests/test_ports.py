"""Port probes answer "does something listen there?": a stopped server's TIME-WAIT connections
do not count (issue: `grid down && grid up --local` failed for a minute)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import httpx
import psutil
import pytest

from grid_serve.local_cluster import LOOPBACK, free_port, listener_on
from tests.test_cli import grid


def leave_server_side_time_wait() -> int:
    """A loopback server that closed its end of a connection first, then stopped listening:
    what a stopped HTTP server leaves behind. Returns its port."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((LOOPBACK, 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection((LOOPBACK, port))
    accepted, _ = server.accept()
    accepted.close()  # the server closes first, so the TIME-WAIT lands on the server's port
    assert client.recv(1) == b""
    client.close()
    server.close()
    return port


def test_a_port_left_in_time_wait_is_free() -> None:
    port = leave_server_side_time_wait()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as naive:  # the old probe: no SO_REUSEADDR
        with pytest.raises(OSError):
            naive.bind((LOOPBACK, port))
    assert listener_on(port) is None
    assert free_port(port) == port


def test_a_listening_port_is_taken_and_names_its_process() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((LOOPBACK, 0))
        server.listen()
        port = server.getsockname()[1]
        assert listener_on(port) == f"pid {os.getpid()} ({' '.join(psutil.Process().cmdline())[:60]})"
        assert free_port(port) != port


def test_up_names_what_holds_the_port(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind((LOOPBACK, 0))
        server.listen()
        port = server.getsockname()[1]
        done = grid("up", "--local", "--port", str(port), env={"GRID_HOME": str(tmp_path)})
    assert done.returncode == 2
    assert done.stderr.startswith(f"grid: error: port {port} on 127.0.0.1 is in use by pid {os.getpid()} (")


SMALL_CLUSTER = """name: two
nodes:
  - {name: a, host: a, role: master, cpu_count: 1, gpu_count: 0, memory_gb: 1}
  - {name: b, host: b, role: worker, cpu_count: 1, gpu_count: 0, memory_gb: 1}
"""


@pytest.mark.cluster
def test_down_then_up_local_at_once_comes_up_on_the_same_port(tmp_path: Path) -> None:
    config = tmp_path / "cluster.yaml"
    config.write_text(SMALL_CLUSTER)
    env = {"GRID_HOME": str(tmp_path / "home"), "GRID_ADDRESS": ""}
    port = free_port()
    up = ["up", "--local", "--config", str(config), "--port", str(port)]
    try:
        assert grid(*up, env=env).returncode == 0
        elsewhere = grid(*up, env={**env, "GRID_HOME": str(tmp_path / "other-home")})
        assert elsewhere.returncode == 2
        assert f"port {port} on 127.0.0.1 is in use by a Ray Serve proxy, pid " in elsewhere.stderr
        with httpx.Client(base_url=f"http://{LOOPBACK}:{port}", timeout=30) as client:  # keep-alive traffic
            for _ in range(5):
                assert client.get("/v1/health").status_code == 200
            assert grid("down", env=env).returncode == 0
        again = grid(*up, env=env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert f"grid-serve is up: HTTP API http://127.0.0.1:{port}" in again.stdout
    finally:
        grid("down", env=env)
