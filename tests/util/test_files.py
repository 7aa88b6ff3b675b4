"""write_atomically (all or nothing, even mid-write), fsync helpers, and file_lock across processes."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest

from pipeline.util import files
from pipeline.util.files import file_lock, fsync_dir, fsync_tree, write_atomically

_BIG = 4 * 1024 * 1024  # large enough that writing it takes several write() calls' worth of time
_WRITES = 30
_LOCK_WAIT_S = 10.0
_READER_START_S = 60.0  # a spawned interpreter importing this module, on a busy machine


def test_writes_text_and_bytes_and_replaces_the_old_file(tmp_path):
    target = tmp_path / "deep" / "er" / "models.config"  # parents are made
    assert write_atomically(target, "first") == target
    assert target.read_text() == "first"
    assert write_atomically(str(target), b"\x00second\xff") == target
    assert target.read_bytes() == b"\x00second\xff"
    assert sorted(p.name for p in target.parent.iterdir()) == ["models.config"]  # no temp file left behind


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "verdict.json"
    write_atomically(target, "old")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        write_atomically(target, "new" * 1000)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["verdict.json"]


def _read_until_stopped(path: str, sizes: set[int], ready: Event, stop: Event, seen: Queue) -> None:
    """Read ``path`` over and over; report every content that is not one whole version."""
    reads, torn = 0, []
    while not stop.is_set():
        with open(path, "rb") as handle:
            data = handle.read()
        reads += 1
        if len(data) not in sizes or data.count(data[:1]) != len(data):
            torn.append((len(data), data[:1], data[-1:]))
        ready.set()
    seen.put((reads, torn[:5]))


def test_a_reader_never_sees_a_partial_file(tmp_path):
    """Another process reads while this one rewrites: every read is one whole version (same byte, full size)."""
    target = tmp_path / "run.json"
    versions = [b"a" * _BIG, b"b" * (_BIG // 2), b"c" * (_BIG + 1)]
    write_atomically(target, versions[0])
    context = multiprocessing.get_context("spawn")  # no fork of a process that may run threads
    ready, stop, seen = context.Event(), context.Event(), context.Queue()
    reader = context.Process(target=_read_until_stopped,
                             args=(str(target), {len(v) for v in versions}, ready, stop, seen))
    reader.start()
    try:
        assert ready.wait(_READER_START_S), "the reader process did not start"
        for i in range(1, _WRITES + 1):
            write_atomically(target, versions[i % len(versions)])
    finally:
        stop.set()
        reads, torn = seen.get(timeout=_READER_START_S)
        reader.join(timeout=_READER_START_S)
    assert torn == []
    assert reads > 1


def test_fsync_tree_syncs_every_file_and_directory(tmp_path, monkeypatch):
    (tmp_path / "v1" / "variables").mkdir(parents=True)
    for name in ("v1/saved_model.pb", "v1/variables/data", "v1/variables/index"):
        (tmp_path / name).write_text(name)
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", recording_fsync)
    fsync_tree(tmp_path / "v1")
    root = tmp_path / "v1"
    expected = [root, root / "variables", root / "saved_model.pb", root / "variables" / "data",
                root / "variables" / "index"]
    assert sorted(synced) == sorted(str(p) for p in expected)


def test_fsync_dir_of_a_missing_directory_is_a_no_op(tmp_path):
    fsync_dir(tmp_path / "missing")
    fsync_dir(tmp_path)


_CHILD_TAKES_LOCK = """
import sys
from pipeline.util.files import file_lock
print("waiting", flush=True)
with file_lock(sys.argv[1]):
    print("locked", flush=True)
    if sys.argv[2] == "hold":
        sys.stdin.read()  # held until the parent closes our stdin (or kills us)
"""


def _child(lock: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _CHILD_TAKES_LOCK, str(lock), mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])


def test_the_lock_excludes_another_process_until_released(tmp_path):
    lock = tmp_path / "instance" / ".lock"  # parents are made
    with file_lock(lock):
        child = _child(lock, "release")
        try:
            assert child.stdout.readline().strip() == "waiting"
            with pytest.raises(subprocess.TimeoutExpired):
                child.wait(timeout=0.5)  # blocked on our lock, not done
        except BaseException:
            child.kill()
            raise
    out, _ = child.communicate(timeout=_LOCK_WAIT_S)  # ours released: it gets the lock and ends
    assert (child.returncode, out.strip()) == (0, "locked")


def test_the_lock_is_freed_when_its_holder_dies(tmp_path):
    lock = tmp_path / ".lock"
    child = _child(lock, "hold")
    try:
        assert [child.stdout.readline().strip() for _ in range(2)] == ["waiting", "locked"]
        acquired = threading.Event()

        def take() -> None:
            with file_lock(lock):
                acquired.set()

        taker = threading.Thread(target=take, daemon=True)
        taker.start()
        assert not acquired.wait(0.3)  # the child holds it
    finally:
        child.kill()
        child.wait(timeout=_LOCK_WAIT_S)
    assert acquired.wait(_LOCK_WAIT_S)  # the kernel freed the dead holder's lock
