"""What a native library writes to stderr while it loads is logged at its own level, not left on stderr (where an
Airflow task's supervisor logs every line at ERROR)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid

import pytest

from pipeline.util import native_stderr
from pipeline.util.native_stderr import route_lines, route_native_startup

# What TensorFlow 2.21 writes on a machine without CUDA (taken from a task log), and a line of ours that is not one.
_TF_STARTUP = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795866550.332522   17747 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will "
    "not be used.",
    "E0000 00:00:1795866554.232246   17747 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed "
    "call to cuInit: UNKNOWN ERROR (303)",
    "I0000 00:00:1795869968.087714   29246 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate "
    "compiler flags.",
]
_REAL_ERROR = "E1128 12:45:26.758771   17747 saved_model_loader.cc:42] SavedModel load failed: no such file"
_REAL_WARNING = "W0000 00:00:1795866554.232246   17747 op_kernel.cc:7] something worth a look"


def _fake_native_module(tmp_path, monkeypatch, lines: list[str]) -> str:
    """A module whose import writes ``lines`` straight to file descriptor 2, as a C++ library does."""
    name = f"fake_native_{uuid.uuid4().hex[:8]}"
    written = ("\n".join(lines) + "\n").encode()
    (tmp_path / f"{name}.py").write_text(f"import os\nos.write(2, {written!r})\nLOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_startup_lines_leave_stderr_and_are_logged_below_error(tmp_path, monkeypatch, capfd, caplog):
    name = _fake_native_module(tmp_path, monkeypatch, ["plain text", *_TF_STARTUP, _REAL_WARNING, _REAL_ERROR])
    caplog.set_level(logging.DEBUG, logger=native_stderr.__name__)
    assert route_native_startup(name, after_import=None)

    module = __import__(name)

    assert module.LOADED
    assert capfd.readouterr().err == "plain text\n"  # not a C++ log line (nor after one): left on stderr as it was
    levels = {r.getMessage().split("\n")[0][-40:]: r.levelno for r in caplog.records}
    assert [r.levelno for r in caplog.records] == [logging.DEBUG] * 4 + [logging.WARNING, logging.ERROR]
    assert levels[_REAL_ERROR[-40:]] == logging.ERROR
    assert "AVX2 FMA" in caplog.records[3].getMessage()  # the continuation stays with its line


def test_the_hook_serves_one_import_and_the_module_keeps_its_own_loader(tmp_path, monkeypatch, capfd):
    name = _fake_native_module(tmp_path, monkeypatch, _TF_STARTUP)
    seen = []
    assert route_native_startup(name, after_import=seen.append)
    assert not route_native_startup(name)  # once per process

    module = __import__(name)

    assert seen == [module]
    assert type(module.__loader__).__name__ == "SourceFileLoader" and module.__spec__.loader is module.__loader__
    assert not any(type(f).__name__ == "_StartupFinder" and f.module == name for f in sys.meta_path)
    assert capfd.readouterr().err == ""


def test_an_import_that_fails_still_routes_what_it_wrote(tmp_path, monkeypatch, capfd, caplog):
    name = f"fake_native_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(f"import os\nos.write(2, {(_REAL_ERROR + chr(10)).encode()!r})\n"
                                         "raise ImportError('broken build')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    route_native_startup(name, after_import=None)

    with pytest.raises(ImportError, match="broken build"):
        __import__(name)

    assert capfd.readouterr().err == ""
    assert [r.levelno for r in caplog.records if r.name == native_stderr.__name__] == [logging.ERROR]


def test_an_already_imported_module_is_left_alone():
    assert not route_native_startup("logging")


def test_unknown_cpp_lines_keep_their_severity(caplog):
    caplog.set_level(logging.DEBUG, logger=native_stderr.__name__)
    route_lines("\n".join([_TF_STARTUP[1], "I1128 12:00:00.000001 1 model.cc:3] loaded", _REAL_ERROR]))
    assert [r.levelno for r in caplog.records] == [logging.DEBUG, logging.INFO, logging.ERROR]


@pytest.mark.slow
def test_importing_tensorflow_writes_nothing_to_stderr():
    code = ("from pipeline.util.native_stderr import route_native_startup\n"
            "assert route_native_startup()\n"
            "import tensorflow as tf\n"
            "tf.config.threading.set_intra_op_parallelism_threads(1)  # devices listed: the runtime is still open\n"
            "print((tf.constant(2) + 1).numpy())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"
    assert done.stderr == ""
