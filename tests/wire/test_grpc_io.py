"""grpc's I/O path: where servers and clients start, GRPC_EXPERIMENTS defaults before grpc loads, never over the operator."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.wire.grpc_io import CLASSIC_IO, ENV_VAR, classic_io_env, prefer_classic_io


def test_the_classic_path_is_the_default():
    environ: dict[str, str] = {}
    assert prefer_classic_io(environ) == CLASSIC_IO
    assert environ == {ENV_VAR: CLASSIC_IO}


@pytest.mark.parametrize("operator_value", ["", "-event_engine_client", "event_engine_client,event_engine_listener"])
def test_a_value_the_operator_set_is_kept(operator_value):
    environ = {ENV_VAR: operator_value}
    assert prefer_classic_io(environ) == operator_value
    assert environ == {ENV_VAR: operator_value}


def _fresh_interpreter(code: str, **env: str) -> str:
    environ = {key: value for key, value in os.environ.items() if key != ENV_VAR}
    result = subprocess.run([sys.executable, "-c", code], env={**environ, **env}, capture_output=True, text=True,
                            timeout=120, check=True)
    return result.stdout.strip()


def test_importing_the_library_leaves_the_environment_alone():
    code = ("import os, pipeline.serving.client, pipeline.embedded_server, pipeline.release.context\n"
            "print(os.environ.get('GRPC_EXPERIMENTS'))")
    assert _fresh_interpreter(code) == "None"


def test_the_cli_and_the_server_set_it_before_grpc_is_loaded():
    code = ("import sys, os\n"
            "import pipeline.cli, pipeline.embedded_server.model_server\n"
            "print('grpc' in sys.modules, os.environ.get('GRPC_EXPERIMENTS'))\n")
    assert _fresh_interpreter(code) == "False None"  # nothing set, nothing loaded by importing the entry points
    for entry in ("from pipeline.cli import main; main(['--help'])",
                  "from pipeline.embedded_server import main; main(['--help'])"):
        code = ("import sys, os\n"
                "try:\n"
                f"    {entry}\n"
                "except SystemExit:\n"
                "    pass\n"
                "print(os.environ.get('GRPC_EXPERIMENTS'))")
        assert _fresh_interpreter(code).splitlines()[-1] == CLASSIC_IO, entry


def test_child_processes_get_the_default_and_keep_an_operator_value():
    assert classic_io_env({"PATH": "/bin"}) == {"PATH": "/bin", ENV_VAR: CLASSIC_IO}
    assert classic_io_env({ENV_VAR: ""}) == {ENV_VAR: ""}


def test_an_empty_value_keeps_grpcs_own_defaults():
    code = ("import os\n"
            "from pipeline.cli import main\n"
            "try:\n"
            "    main(['--help'])\n"
            "except SystemExit:\n"
            "    pass\n"
            "print(repr(os.environ['GRPC_EXPERIMENTS']))")
    assert _fresh_interpreter(code, GRPC_EXPERIMENTS="").splitlines()[-1] == "''"
