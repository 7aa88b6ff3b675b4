"""Run ids that no other run shares: a lock's owner is a run id, so two runs must never get the same one."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime


def unique_run_id(prefix: str = "manual") -> str:
    """``<prefix>__<UTC time to the microsecond>_<12 random hex digits>``: sortable by time for people, and unique
    however many runs start in the same instant (48 random bits beside the clock)."""
    return f"{prefix}__{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}_{uuid.uuid4().hex[:12]}"
