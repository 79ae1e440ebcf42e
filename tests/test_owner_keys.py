"""The CLI's owner keys file (`$GRID_HOME/owner-keys.json`): two `grid` commands at once keep
each other's keys, the file is never half written, and only its owner can read it, from its
first byte on. Real processes, a real file system."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from pathlib import Path

from grid_serve.client import OwnerKeys

WRITERS, KEYS_EACH = 3, 25


def remember_many(path: str, writer: int, start: multiprocessing.synchronize.Event) -> None:
    os.umask(0)  # the worst umask: a file created with its mode would be world-readable
    start.wait()
    for i in range(KEYS_EACH):
        OwnerKeys(Path(path)).remember(f"job/{writer}-{i}", f"key-{writer}-{i}")  # one command each time


def test_commands_writing_at_once_keep_every_key(tmp_path: Path) -> None:
    path = tmp_path / "grid" / "owner-keys.json"
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    writers = [context.Process(target=remember_many, args=(str(path), n, start)) for n in range(WRITERS)]
    for writer in writers:
        writer.start()
    start.set()
    for writer in writers:
        writer.join(120)
        assert writer.exitcode == 0
    kept = json.loads(path.read_text())
    assert len(kept) == WRITERS * KEYS_EACH
    assert OwnerKeys(path).headers("job/2-24") == {"x-grid-owner-key": "key-2-24"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir() if p.name.startswith("owner-keys.json") and p != path] in (
        [], ["owner-keys.json.lock"])  # no temporary file left behind


def test_the_file_is_private_from_its_creation(tmp_path: Path) -> None:
    """Created with mode 600 (never the umask's mode first, then chmod-ed): watched from the
    first open of every file the write makes."""
    path = tmp_path / "owner-keys.json"
    old_umask = os.umask(0)
    made: list[tuple[str, int]] = []
    real_open = os.open

    def watching_open(file: str, flags: int, mode: int = 0o777, *args: object, **kwargs: object) -> int:
        fd = real_open(file, flags, mode, *args, **kwargs)
        if flags & os.O_CREAT:
            made.append((os.fspath(file), stat.S_IMODE(os.fstat(fd).st_mode)))
        return fd

    try:
        os.open = watching_open  # type: ignore[assignment]
        OwnerKeys(path).remember("job/a", "secret")
    finally:
        os.open = real_open  # type: ignore[assignment]
        os.umask(old_umask)
    assert made and all(mode == 0o600 for name, mode in made if "lock" not in name), made
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert OwnerKeys(path).headers("job/a") == {"x-grid-owner-key": "secret"}


def test_a_later_command_keeps_what_an_earlier_one_wrote_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "owner-keys.json"
    first, second = OwnerKeys(path), OwnerKeys(path)  # both read the (empty) file before either writes
    first.remember("job/one", "k1")
    second.remember("job/two", "k2")
    assert json.loads(path.read_text()) == {"job/one": "k1", "job/two": "k2"}
