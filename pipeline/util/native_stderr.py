"""TensorFlow's C++ start-up lines, logged at their own level instead of landing on stderr.

An Airflow task's stderr reaches its log line by line at ERROR (the task supervisor's ``task.stderr``). Loading
TensorFlow 2.21 on a machine without a GPU writes there, whatever ``TF_CPP_MIN_LOG_LEVEL`` says::

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:1795866550.332522   17747 cudart_stub.cc:31] Could not find cuda drivers on your machine, ...
    (both twice: two of TensorFlow's libraries, each with its own absl)
    E0000 00:00:1795866554.232246   17747 cuda_platform.cc:52] failed call to cuInit: ... UNKNOWN ERROR (303)
    (when its devices are first listed)

absl writes everything logged before ``absl::InitializeLog()``, which TensorFlow never calls, to stderr at any
level; ``TF_CPP_MIN_LOG_LEVEL=2`` (the stack's) only stops ``cpu_feature_guard``'s notice, ``3`` would drop the
cuInit line by hiding every C++ error, and ``CUDA_VISIBLE_DEVICES=""`` stops none of them (measured on
TensorFlow 2.21, CPU only).

:func:`route_native_startup` installs an import hook: the first import of ``tensorflow`` and the listing of its
devices right after it run with file descriptor 2 captured, and then each captured line is logged through
:mod:`logging` (which reaches the task log at its own level): the known start-up notices of a machine without
CUDA at DEBUG, any other absl/glog line (``I``/``W``/``E``/``F`` + date) at its severity, and whatever else was
written (not a C++ log line) goes back to stderr unchanged. Nothing else about the import changes.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

TENSORFLOW = "tensorflow"
# absl's and glog's prefix: severity, MMDD, time (before absl::InitializeLog(): 0000 00:00:<epoch seconds>), thread
# id, file:line] message.
_NATIVE_LINE = re.compile(r"^(?P<severity>[IWEF])\d{4} [\d:.]+\s+\d+ (?P<source>[^\s:\]]+):\d+\] ")
_SEVERITIES = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
_ABSL_PRE_INIT = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# What loading TensorFlow says on a machine without CUDA (or with its GPU build's stubs): nothing to act on.
STARTUP_SOURCES: frozenset[str] = frozenset({
    "cudart_stub.cc",  # Could not find cuda drivers on your machine, GPU will not be used.
    "cuda_platform.cc",  # failed call to cuInit (no driver)
    "cuda_diagnostics.cc",  # what the missing driver would have been
    "cuda_executor.cc",
    "cpu_feature_guard.cc",  # This TensorFlow binary is optimized to use available CPU instructions ...
    "cuda_dnn.cc", "cuda_fft.cc", "cuda_blas.cc",  # Unable to register cuDNN/cuFFT/cuBLAS factory ...
})

_installed: set[str] = set()
_install_lock = threading.Lock()


def route_native_startup(module: str = TENSORFLOW,
                         after_import: Callable[[ModuleType], object] | None = None) -> bool:
    """Capture what ``module``'s first import writes to stderr and log it (see the module doc); once per process.

    Args:
        module: The top-level module to watch.
        after_import: Also run with stderr captured, right after the import (default for TensorFlow: list its
            devices, where CUDA is initialized).

    Returns:
        True when the hook was installed now; False when it already was, or ``module`` is already imported (its
        start-up lines are written by then).
    """
    if after_import is None and module == TENSORFLOW:
        after_import = _list_devices
    with _install_lock:
        if module in _installed or module in sys.modules:
            return False
        _installed.add(module)
        sys.meta_path.insert(0, _StartupFinder(module, after_import))
    return True


def _list_devices(tensorflow: ModuleType) -> object:
    return tensorflow.config.list_physical_devices()


class _StartupFinder(importlib.abc.MetaPathFinder):
    """Finds ``module`` as the other finders do, once, and hands its spec a loader that captures stderr."""

    def __init__(self, module: str, after_import: Callable[[ModuleType], object] | None) -> None:
        self.module = module
        self.after_import = after_import

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.module:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # one import only; and the lookup below must not find this finder again
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _CapturingLoader(spec.loader, self.after_import)
        return spec


class _CapturingLoader(importlib.abc.Loader):
    """Runs the real loader (and ``after_import``) with file descriptor 2 captured, then routes what was written."""

    def __init__(self, loader: importlib.abc.Loader, after_import: Callable[[ModuleType], object] | None) -> None:
        self._loader = loader
        self._after_import = after_import

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, ...: the real loader's
        return getattr(self._loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader  # the module itself only ever sees its real loader
        module.__loader__ = self._loader

        def load() -> None:
            self._loader.exec_module(module)
            if self._after_import is not None:
                try:
                    self._after_import(module)
                except Exception:  # noqa: BLE001 - a step to trigger start-up lines early, never worth failing for
                    log.debug("after importing %s", module.__name__, exc_info=True)

        run_with_stderr_routed(load)


def run_with_stderr_routed(call: Callable[[], object], logger: logging.Logger = log) -> None:
    """Run ``call`` with file descriptor 2 captured, then route each captured line (see :func:`route_lines`).

    If stderr cannot be captured (no file descriptor 2), ``call`` runs as it is.
    """
    _flush_stderr()
    try:
        saved = os.dup(2)
    except OSError:
        call()
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            call()
        finally:
            _flush_stderr()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            route_lines(sink.read().decode("utf-8", "replace"), logger)


def route_lines(text: str, logger: logging.Logger = log) -> None:
    """Log what a native library wrote: known start-up notices at DEBUG, other C++ log lines at their severity
    (a line without a prefix right after one continues it); anything else is written back to stderr as it was."""
    other: list[str] = []
    record: list[Any] | None = None  # [level, lines] of the C++ log line being read
    for line in text.splitlines():
        match = _NATIVE_LINE.match(line)
        if match or line == _ABSL_PRE_INIT:
            _emit(logger, record)
            if match is None:
                record = [logging.DEBUG, [line]]
            else:
                known = match["source"] in STARTUP_SOURCES
                record = [logging.DEBUG if known else _SEVERITIES[match["severity"]], [line]]
        elif record is not None and line.strip():
            record[1].append(line)
        else:
            _emit(logger, record)
            record = None
            if line.strip():
                other.append(line)
    _emit(logger, record)
    if other:
        os.write(2, ("\n".join(other) + "\n").encode())


def _emit(logger: logging.Logger, record: list[Any] | None) -> None:
    if record is not None:
        logger.log(record[0], "%s", "\n".join(record[1]))


def _flush_stderr() -> None:
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):  # no stderr, or a closed one
        pass
