"""Files the models pages may serve: only under the pipeline home, never through ``..`` or a symlink that leaves it."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from pipeline.errors import NotFound, PipelineError

MODEL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")  # pipeline.config's model name pattern
SHA256 = re.compile(r"^[0-9a-f]{64}$")
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+:-]{0,249}$")  # training run ids and Airflow run ids
GATE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class Refused(PipelineError):
    """A path or name that could reach outside what the pages serve."""


def checked_name(value: str, pattern: re.Pattern[str], what: str) -> str:
    """``value`` if it matches ``pattern`` whole.

    Raises:
        Refused: it does not (a separator, ``..``, an odd character).
    """
    if not pattern.fullmatch(value):
        raise Refused(f"not a valid {what}: {value!r}")
    return value


def safe_file(root: Path, relative: str, home: Path) -> Path:
    """The regular file ``relative`` names under ``root``, which must lie in ``home``.

    ``relative`` is a URL path: no absolute path, no ``..`` or ``.`` segment, no backslash or NUL; and the file it
    resolves to (symlinks followed) must still be under ``root`` and under ``home``.

    Raises:
        Refused: the path tries to leave ``root`` (or ``root`` is not in ``home``).
        NotFound: there is no such regular file.
    """
    if not relative or "\\" in relative or "\x00" in relative or relative.startswith("/"):
        raise Refused(f"refused path {relative!r}")
    parts = PurePosixPath(relative).parts
    if any(part in ("..", ".") for part in relative.split("/")) or not parts:
        raise Refused(f"refused path {relative!r}")
    home_real = home.resolve()
    root_real = root.resolve()
    if not root_real.is_relative_to(home_real):
        raise Refused(f"{root} is outside the pipeline home {home}")
    target = (root_real / Path(*parts)).resolve()
    if not target.is_relative_to(root_real):
        raise Refused(f"{relative!r} leads outside {root} (a symlink?)")
    if not target.is_file():
        raise NotFound(f"no file {relative!r} under {root}")
    return target
