"""The live canary of one version as a picture: the weight steps over time, and the live figures of each phase.

matplotlib's Agg canvas (no display, no pyplot state): safe in the API server's threads.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime
from typing import Any

_DPI = 100


def _elapsed(at: datetime, start: datetime, unit_s: float) -> float:
    return (at - start).total_seconds() / unit_s


def _check_limit(figures: dict[str, Any], name: str) -> float | None:
    for check in figures.get("checks") or []:
        if check.get("name") == name and isinstance(check.get("limit"), (int, float)):
            return float(check["limit"])
    return None


def live_canary_png(phases: Sequence[Any], title: str) -> bytes:
    """A PNG of the live phases (registry ``LivePhase`` records, oldest first).

    Top: the share of live traffic answered by the canary (solid) and mirrored to it (dashed), phase by phase.
    Bottom: each phase's agreement with stable and live accuracy of both versions at its last look, the agreement
    limit the phase was held to, and the canary's error rate; a failed phase is marked with a red cross.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 5.5))
    FigureCanvasAgg(figure)
    weights, live = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1.4]})
    figure.suptitle(title)
    if not phases:
        weights.text(0.5, 0.5, "no live phase recorded", ha="center", va="center", transform=weights.transAxes)
        return _png(figure)
    start = min(p.started_at for p in phases)
    span_s = (max(p.updated_at for p in phases) - start).total_seconds()
    unit_s, unit = (60.0, "minutes") if span_s > 600 else (1.0, "seconds")
    series: dict[str, list[tuple[float, float]]] = {"agreement": [], "canary accuracy": [], "stable accuracy": [],
                                                     "canary error rate": []}
    for phase in phases:
        x0, x1 = _elapsed(phase.started_at, start, unit_s), _elapsed(phase.updated_at, start, unit_s)
        x1 = max(x1, x0 + 0.01 * max(span_s / unit_s, 1.0))  # a phase decided at its first look still shows
        weights.plot([x0, x1], [phase.canary_percent] * 2, color="tab:blue", linewidth=3,
                     label="answered by canary %" if phase is phases[0] else None)
        weights.plot([x0, x1], [phase.mirror_percent] * 2, color="tab:gray", linestyle="--",
                     label="mirrored %" if phase is phases[0] else None)
        weights.annotate(f"{phase.phase}: {phase.decision}", (x0, phase.canary_percent), xytext=(2, 6),
                         textcoords="offset points", fontsize=8,
                         color="tab:red" if phase.decision in ("fail", "undecided") else "black")
        figures = phase.figures or {}
        points = {"agreement": (figures.get("paired") or {}).get("agreement"),
                  "canary accuracy": (figures.get("canary") or {}).get("accuracy"),
                  "stable accuracy": (figures.get("stable") or {}).get("accuracy"),
                  "canary error rate": (figures.get("canary") or {}).get("error_rate")}
        for name, value in points.items():
            if isinstance(value, (int, float)):
                series[name].append((x1, float(value)))
        limit = _check_limit(figures, "agreement")
        if limit is not None:  # the agreement the phase was held to, over the phase
            live.plot([x0, x1], [limit] * 2, color="tab:blue", linestyle="--", linewidth=1,
                      label="agreement limit" if phase is phases[0] else None)
        if phase.decision in ("fail", "undecided"):
            live.axvline(x1, color="tab:red", alpha=0.4)
            live.plot([x1], [0.02], marker="x", color="tab:red", markersize=10)
    styles = {"agreement": ("tab:blue", "-", "o"), "canary accuracy": ("tab:orange", "-", "s"),
              "stable accuracy": ("tab:green", "-", "^"), "canary error rate": ("tab:red", ":", "v")}
    for name, points_of in series.items():
        if points_of:
            colour, line, marker = styles[name]
            live.plot([p[0] for p in points_of], [p[1] for p in points_of], color=colour, linestyle=line,
                      marker=marker, label=name)
    weights.set_ylabel("% of live traffic")
    weights.set_ylim(bottom=0, top=max(max(p.canary_percent for p in phases), max(p.mirror_percent for p in phases),
                                       5) * 1.25)
    weights.grid(True, alpha=0.3)
    weights.legend(loc="upper left", fontsize=8)
    live.set_ylabel("share")
    live.set_ylim(-0.02, 1.05)
    live.set_xlabel(f"{unit} since the first phase started (figures at each phase's last look)")
    live.grid(True, alpha=0.3)
    if any(series.values()):
        live.legend(loc="lower left", fontsize=8)
    else:
        live.text(0.5, 0.5, "no live figures recorded", ha="center", va="center", transform=live.transAxes)
    return _png(figure)


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    return buffer.getvalue()
