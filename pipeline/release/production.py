"""Production's vocabulary: the ``stable`` and ``canary`` labels, what production serves, and how it changes.

Production pins versions with a ``specific`` policy and names them with labels. The life of a release:

    before         versions {…, S}        labels {stable: S}
    promote        versions {…, S, N}     labels {stable: S, canary: N}   (N loads beside S first)
    canary passes  versions {S, N}        labels {stable: N}              (S stays loaded: instant rollback)
    canary fails   versions {…, S}        labels {stable: S}              (N unloaded; stable never moved)

Promotion, finalize, the canary rollback, on-call rollback and the monitor all change production through
:func:`change_production`, which never lets a request fail.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pipeline.release.context import PRODUCTION, Release
from pipeline.release.serving_state import ServedState, change_served_state, served_state

STABLE = "stable"
CANARY = "canary"


def production_state(release: Release) -> ServedState:
    """What production's ``models.config`` says it serves for the model (reads a file; starts nothing)."""
    return served_state(release.backend(PRODUCTION), release.model)


def change_production(release: Release, versions: Sequence[int], labels: Mapping[str, int]) -> ServedState:
    """Make production serve exactly ``versions`` with ``labels`` (none: stop serving the model at all)."""
    return change_served_state(release.backend(PRODUCTION), release.model, release.base_path, versions, labels,
                               release.config.serving.load_deadline_s, registry=release.registry)
