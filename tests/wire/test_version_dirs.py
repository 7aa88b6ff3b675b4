"""The version-directory contract: which names are versions, and publishing the next one.

Stray directories are what an operator (or an attacker with write access to the base path) leaves there: a name
with a non-ASCII digit (``str.isdigit()`` takes ``²``), leading zeros, a trailing newline, a number past int64.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.wire import version_dirs as vd

_STRAY = ["²", "1²", "٣", "007", "12\n", " 3", "+4", "-5", "1e3", "99999999999999999999", "9223372036854775808"]


@pytest.mark.parametrize("name", _STRAY)
def test_stray_names_are_not_versions(name: str) -> None:
    assert vd.parse_version(name) is None
    assert not vd.is_version_name(name)


@pytest.mark.parametrize("name,version", [("0", 0), ("1", 1), ("42", 42), ("9223372036854775807", 2**63 - 1)])
def test_versions_up_to_int64(name: str, version: int) -> None:
    assert vd.parse_version(name) == version


def _base_with_strays(tmp_path: Path) -> Path:
    base = tmp_path / "m"
    for name in ["1", "3", *_STRAY, ".tmp-export-x"]:
        (base / name).mkdir(parents=True)
    (base / "7").write_text("a file, not a version directory")
    return base


def test_scan_ignores_stray_directories(tmp_path: Path) -> None:
    base = _base_with_strays(tmp_path)
    assert vd.scan_versions(base) == [1, 3]
    assert vd.list_versions(base) == [1, 3]
    assert vd.scan_versions(tmp_path / "missing") is None


def test_publish_numbers_past_stray_directories(tmp_path: Path) -> None:
    base = _base_with_strays(tmp_path)
    staged = base / f"{vd.TMP_PREFIX}run"
    staged.mkdir()
    assert vd.publish(base, staged, "run-a") == (4, True)
    assert vd.read_high_water(base) == 4
    assert (base / "4").is_dir()


def test_publish_refuses_to_number_past_int64(tmp_path: Path) -> None:
    base = tmp_path / "m"
    (base / str(vd.MAX_VERSION)).mkdir(parents=True)
    staged = base / f"{vd.TMP_PREFIX}run"
    staged.mkdir()
    with pytest.raises(ConfigError, match="no version can follow it"):
        vd.publish(base, staged, "run-a")
    assert staged.is_dir()  # nothing lost: the export is still there to move elsewhere


def test_a_garbage_high_water_mark_counts_as_none(tmp_path: Path) -> None:
    base = tmp_path / "m"
    base.mkdir()
    for text in ["", "x", "99999999999999999999999", "²"]:
        (base / vd.LAST_VERSION_FILE).write_text(text)
        assert vd.read_high_water(base) == 0
