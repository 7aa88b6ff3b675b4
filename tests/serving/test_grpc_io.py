"""grpc's I/O path: importing pipeline.serving defaults GRPC_EXPERIMENTS before grpc loads, never over the operator."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.serving.grpc_io import CLASSIC_IO, ENV_VAR, prefer_classic_io


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


def test_importing_the_client_sets_it_before_grpc_is_loaded():
    code = ("import sys, os\n"
            "import pipeline.serving\n"
            "print('grpc' in sys.modules, os.environ.get('GRPC_EXPERIMENTS'))\n"
            "import pipeline.serving.client\n"
            "print('grpc' in sys.modules)")
    assert _fresh_interpreter(code).splitlines() == [f"False {CLASSIC_IO}", "True"]


def test_an_empty_value_keeps_grpcs_own_defaults():
    code = "import os, pipeline.serving.client; print(repr(os.environ['GRPC_EXPERIMENTS']))"
    assert _fresh_interpreter(code, GRPC_EXPERIMENTS="") == "''"
