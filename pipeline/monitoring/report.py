"""The report of one monitor run: a page with its plots, ``<home>/reports/<model>/monitor/<run_id>/``.

``index.html`` (verdict, window, every test against its threshold, the GX expectations), ``features.png`` (each
input feature: reference vs window), ``predictions.png`` (predicted classes: reference vs window) and
``history.png`` (the recent runs: the largest KS distance, prediction JS and live accuracy). The models pages
serve the directory (``/reports/<model>/monitor/<run_id>/<file>``) and the monitor task's extra link opens it.
matplotlib's Agg canvas only (no display, no pyplot state).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.settings import Paths
from pipeline.util.files import write_atomically

if TYPE_CHECKING:
    from pipeline.release.registry import MonitorRun

REPORT_FILES = ("index.html", "features.png", "predictions.png", "history.png")
_DPI = 90


def report_dir(paths: Paths, model: str, run_id: str) -> Path:
    return paths.home / "reports" / model / "monitor" / run_id


def write_report(directory: Path, title: str, summary: str, figures: Mapping[str, Any],
                 reference_features: Mapping[str, Any], window_features: Mapping[str, Any],
                 history: Sequence[MonitorRun]) -> Path:
    """Write the page and its plots into ``directory``; returns the page's path."""
    directory.mkdir(parents=True, exist_ok=True)
    write_atomically(directory / "features.png", _features_png(reference_features, window_features))
    write_atomically(directory / "predictions.png", _predictions_png(figures))
    write_atomically(directory / "history.png", _history_png(history))
    return write_atomically(directory / "index.html", _page(title, summary, figures))


def _page(title: str, summary: str, figures: Mapping[str, Any]) -> str:
    verdict = figures.get("verdict") or {}
    rows = []
    for test in verdict.get("features") or []:
        rows.append(_row(test["name"], f"KS {test['statistic']:.3f}, p {test['p_corrected']:.2g} (Holm)",
                         f"mean {test['reference_mean']:.3g} → {test['window_mean']:.3g}", test["drifted"]))
    for test in verdict.get("distributions") or []:
        rows.append(_row(test["name"], f"JS {test['js']:.4f}, χ² p {test['p_value']:.2g}", f"{test['count']} counted",
                         test["drifted"]))
    accuracy = verdict.get("accuracy") or {}
    if accuracy.get("accuracy") is not None:
        expected = accuracy.get("expected")
        rows.append(_row("live accuracy", f"{accuracy['accuracy']:.3f} over {accuracy['labelled']} labels",
                         "expected " + ("-" if expected is None else f"{expected:.3f}"), accuracy.get("dropped")))
    gx_rows = "".join(
        f"<tr><td>{html.escape(e['feature'])}</td><td>{html.escape(e['expectation'])}</td>"
        f"<td>[{e['low']:.4g}, {e['high']:.4g}]</td><td>{_number(e['observed'])}</td>"
        f"<td>{'pass' if e['success'] else '<b>FAIL</b>'}</td></tr>" for e in figures.get("expectations") or [])
    facts = "".join(f"<tr><th align='left'>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                    for k, v in (figures.get("facts") or {}).items())
    images = "".join(f"<p><img src='{name}' alt='{name}'></p>" for name in REPORT_FILES[1:])
    gx_error = figures.get("expectations_error")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:1.5em}td,th{padding:2px 8px}.bad{color:#b00}</style></head>"
            f"<body><h1>{html.escape(title)}</h1><p><b>{html.escape(summary)}</b></p><table>{facts}</table>"
            "<h2>Tests</h2><table><tr><th>test</th><th>figure</th><th>detail</th><th>verdict</th></tr>"
            f"{''.join(rows) or '<tr><td colspan=4>not judged</td></tr>'}</table>"
            "<h2>Great Expectations</h2>"
            + (f"<p class='bad'>not run: {html.escape(str(gx_error))}</p>" if gx_error else "")
            + "<table><tr><th>feature</th><th>expectation</th><th>bounds</th><th>observed</th><th></th></tr>"
            f"{gx_rows}</table>{images}</body></html>")


def _row(name: str, figure: str, detail: str, bad: Any) -> str:
    verdict = "<b class='bad'>drift</b>" if bad else "ok"
    return (f"<tr><td>{html.escape(name)}</td><td>{html.escape(figure)}</td><td>{html.escape(detail)}</td>"
            f"<td>{verdict}</td></tr>")


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    return buffer.getvalue()


def _features_png(reference: Mapping[str, Any], window: Mapping[str, Any]) -> bytes:
    import numpy as np

    names = list(reference)
    columns = 3
    rows = max(1, -(-len(names) // columns))
    figure = _figure(4 * columns, 2.6 * rows)
    figure.suptitle("input features: training snapshot (reference) vs live window")
    for index, name in enumerate(names):
        axes = figure.add_subplot(rows, columns, index + 1)
        ref = np.asarray(reference[name], dtype=np.float64)
        live = np.asarray(window.get(name, ()), dtype=np.float64)
        both = np.concatenate([ref, live]) if live.size else ref
        bins = np.histogram_bin_edges(both, bins=30) if both.size and np.ptp(both) > 0 else 10
        axes.hist(ref, bins=bins, density=True, alpha=0.5, label="reference", color="tab:blue")
        if live.size:
            axes.hist(live, bins=bins, density=True, alpha=0.5, label="live", color="tab:orange")
        axes.set_title(name, fontsize=9)
        axes.tick_params(labelsize=7)
        if index == 0:
            axes.legend(fontsize=7)
    return _png(figure)


def _predictions_png(figures: Mapping[str, Any]) -> bytes:
    figure = _figure(8, 3)
    axes = figure.add_subplot(1, 1, 1)
    tests = {d["name"]: d for d in (figures.get("verdict") or {}).get("distributions") or []}
    test = tests.get("predicted classes")
    if not test or not test.get("reference"):
        axes.text(0.5, 0.5, "no predictions in the window", ha="center", va="center", transform=axes.transAxes)
        return _png(figure)
    classes = list(test["reference"])
    positions = range(len(classes))
    axes.bar([p - 0.2 for p in positions], [test["reference"][c] for c in classes], width=0.4, label="reference")
    axes.bar([p + 0.2 for p in positions], [test["window"].get(c, 0) for c in classes], width=0.4, label="live")
    axes.set_xticks(list(positions), [str(c) for c in (figures.get("class_names") or classes)], fontsize=8)
    axes.set_ylabel("share of predictions")
    axes.set_title(f"predicted classes (JS {test['js']:.4f})")
    axes.legend(fontsize=8)
    return _png(figure)


def _history_png(history: Sequence[MonitorRun]) -> bytes:
    figure = _figure(8, 3)
    axes = figure.add_subplot(1, 1, 1)
    runs = list(reversed(history))  # oldest first
    series: dict[str, list[tuple[int, float]]] = {"max KS distance": [], "prediction JS": [], "live accuracy": []}
    for index, run in enumerate(runs):
        verdict = run.figures.get("verdict") or {}
        ks = [f["statistic"] for f in verdict.get("features") or []]
        if ks:
            series["max KS distance"].append((index, max(ks)))
        for test in verdict.get("distributions") or []:
            if test["name"] == "predicted classes":
                series["prediction JS"].append((index, test["js"]))
        accuracy = (verdict.get("accuracy") or {}).get("accuracy")
        if accuracy is not None:
            series["live accuracy"].append((index, accuracy))
        if run.decision in ("drift", "alarm"):
            axes.axvline(index, color="tab:red", alpha=0.25 if run.decision == "drift" else 0.6)
    for name, points in series.items():
        if points:
            axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    axes.set_xlabel("monitor runs, oldest first (red: drifted windows; dark red: alarms)")
    axes.set_ylim(0, 1.05)
    axes.grid(True, alpha=0.3)
    if any(series.values()):
        axes.legend(fontsize=8)
    return _png(figure)
