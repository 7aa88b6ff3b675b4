"""Locks left by a release that died: taken in a child process that then exits without releasing them."""

from __future__ import annotations

import multiprocessing
import os

from pipeline.release.registry import Registry

_FORK = multiprocessing.get_context("fork")  # the child needs no re-import; it opens its own Registry


def _take_and_die(url: str, model: str, owner: str, environ: dict[str, str]) -> None:
    os.environ.update(environ)
    Registry(url).acquire_lock(model, owner, timeout_s=5)
    os._exit(0)  # as a SIGKILL would: no cleanup, the lock stays


def lock_of_a_dead_release(registry_url: str, model: str, owner: str, airflow: dict[str, str] | None = None) -> int:
    """Leave ``model``'s lock held by ``owner`` in a process that is gone; returns that process's pid."""
    child = _FORK.Process(target=_take_and_die, args=(registry_url, model, owner, airflow or {}))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0, f"the lock-taking child exited with {child.exitcode}"
    assert child.pid is not None
    return child.pid
