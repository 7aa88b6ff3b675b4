"""What the models pages show, as plain data: read from ``model_status``, the registry, the verdict files and the
reports on disk. No web framework here; :mod:`pipeline.ui.app` renders these dicts.

Every release module is imported inside the functions: the app is loaded by Airflow's API server, and the release
context pulls in numpy and gRPC, which only a page view should pay for.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import NotFound, PipelineError
from pipeline.settings import Paths, config_dir
from pipeline.ui import links
from pipeline.ui.files import GATE, MODEL_NAME, RUN_ID, SHA256, checked_name

if TYPE_CHECKING:
    from pipeline.config import ModelConfig
    from pipeline.release.context import Release
    from pipeline.release.registry import Registry, VersionRecord

DEFAULT_HISTORY = 50  # registry history rows on a model's page ("all" shows every one)
_GATE_ORDER = ("evaluate", "staging", "canary", "live_shadow")
DATA_DOCS_SUBDIR = "validation"  # pipeline.data.validate writes the Data Docs site here, in the snapshot dir
DATA_DOCS_INDEX = "index.html"


@dataclass
class Pages:
    """The models pages' data over one pipeline home (one registry connection pool for every request)."""

    paths: Paths
    _registry: Registry | None = field(default=None, repr=False)
    _guard: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Parsed once, read again when their file changes: model configs, release contexts, verdicts' outcomes.
    _configs: dict[str, tuple[int, ModelConfig]] = field(default_factory=dict, repr=False)
    _releases: dict[str, tuple[tuple[int, int], Release]] = field(default_factory=dict, repr=False)
    _blessed: dict[Path, tuple[tuple[int, int], bool]] = field(default_factory=dict, repr=False)

    @property
    def registry(self) -> Registry:
        with self._guard:
            if self._registry is None:
                from pipeline.release.registry import Registry

                self._registry = Registry(self.paths.registry_url)
            return self._registry

    def models(self) -> list[str]:
        """Every model with a config file (a release DAG each)."""
        from pipeline.config import list_models

        return list_models()

    def config(self, model: str) -> ModelConfig:
        """The model's config.

        Raises:
            NotFound: no such model (or not a valid name).
        """
        from pipeline.config import load_model_config

        if not MODEL_NAME.fullmatch(model) or model not in self.models():
            raise NotFound(f"no model {model!r} (known: {', '.join(self.models()) or 'none'})")
        stamp = _stamp(config_dir() / "models" / f"{model}.yaml")
        with self._guard:
            cached = self._configs.get(model)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        config = load_model_config(model)
        with self._guard:
            self._configs[model] = (stamp, config)
        return config

    def release(self, model: str) -> Release:
        """The model's release context, kept while its config and the serving profile stay the same (it keeps
        the serving backends it has built)."""
        from pipeline.release.context import Release
        from pipeline.serving.profiles import profile_name, profile_path

        config, registry = self.config(model), self.registry
        stamp = (_stamp(config_dir() / "models" / f"{model}.yaml"), _stamp(profile_path(profile_name())))
        with self._guard:
            cached = self._releases.get(model)
            if cached is None or cached[0] != stamp:
                cached = (stamp, Release(config, self.paths, registry))
                self._releases[model] = cached
        return cached[1]

    # ---- the pages ------------------------------------------------------------------------------------------

    def overview(self) -> list[dict[str, Any]]:
        """One row per model: what each server serves, the live split, stable, the rollback target, the last change."""
        from pipeline.release.status import model_status

        rows = []
        for model in self.models():
            try:
                rows.append({"model": model, "status": model_status(self.release(model), history=1), "error": None})
            except (PipelineError, OSError) as exc:  # one broken model must not hide the others
                rows.append({"model": model, "status": None, "error": str(exc)})
        return rows

    def model_page(self, model: str, history: int | None = DEFAULT_HISTORY) -> dict[str, Any]:
        """Everything about one model: servers, live split and phases, versions with reports, history, rollback."""
        from pipeline.release.status import model_status

        release = self.release(model)
        status = model_status(release, history=history if history is not None else 10**9)
        transitions = self.registry.history(model)
        records = self.registry.versions(model)
        on_disk = set(status["on_disk"])
        versions = [self._version_row(release, record, record.version in on_disk) for record in reversed(records)]
        phases = [{**phase, "gate": _phase_gate(phase["phase"])} for phase in status["live"]["phases"]]
        return {
            "model": model,
            "status": status,
            "versions": versions,
            "phases": phases,
            "history_total": len(transitions),
            "rollback": self._rollback_choices(release, records, status),
        }

    def rollback_targets(self, model: str) -> list[int]:
        """The versions a rollback of ``model`` may go to now (what the page's form offers)."""
        page = self.model_page(model, history=0)
        return [choice["version"] for choice in page["rollback"]["choices"]]

    def verdict(self, model: str, version: int, gate: str) -> dict[str, Any]:
        """One gate's verdict on a version, its figures set against their thresholds.

        Raises:
            NotFound: no such model, version or verdict file.
        """
        checked_name(gate, GATE, "gate")
        config = self.config(model)
        path = self.verdict_path(model, version, gate)
        if path is None or not path.is_file():
            raise NotFound(f"{model} version {version} has no {gate} verdict yet")
        verdict = json.loads(path.read_text())
        figures = verdict.get("figures") or {}
        view: dict[str, Any] = {
            "model": model, "version": version, "gate": gate, "path": str(path),
            "status": verdict.get("status") or ("BLESSED" if verdict.get("blessed") else "NOT_BLESSED"),
            "reasons": verdict.get("reasons") or [], "live": gate.startswith("live_"),
        }
        if view["live"]:
            view.update(_live_figures(figures))
        else:
            view["rows"] = threshold_rows(gate, figures, config)
        return view

    def verdict_path(self, model: str, version: int, gate: str) -> Path | None:
        """Where ``gate``'s verdict on ``version`` is (evaluate: the training run's ``evaluation.json``)."""
        if gate == "evaluate":
            run_dir = self._run_dir(self._record(model, version))
            return None if run_dir is None else run_dir / "evaluation.json"
        return self.paths.serving_dir / "verdicts" / model / str(version) / f"{gate}.json"

    def live_phases(self, model: str, version: int) -> list[Any]:
        """The version's live phases (registry records), oldest first."""
        self.config(model)
        return [p for p in reversed(self.registry.live_phases(model)) if p.version == version]

    def data_docs_dir(self, model: str, sha256: str) -> Path:
        """The Data Docs site of a data snapshot."""
        return self.paths.data_dir / model / checked_name(sha256, SHA256, "snapshot sha256") / DATA_DOCS_SUBDIR

    def training_dir(self, model: str, run_id: str) -> Path:
        """A training run's directory (its plots and metrics)."""
        return self.paths.runs_dir / model / checked_name(run_id, RUN_ID, "training run id")

    def version_of_run(self, model: str, airflow_run_id: str) -> VersionRecord | None:
        """The newest version an Airflow run registered (None when it registered none)."""
        found = [r for r in self.registry.versions(model) if r.airflow_run_id == airflow_run_id]
        return found[-1] if found else None

    # ---- pieces -------------------------------------------------------------------------------------------

    def _record(self, model: str, version: int) -> VersionRecord:
        return self.registry.get_version(model, version)

    def _run_dir(self, record: VersionRecord) -> Path | None:
        if not record.training_run_id or not RUN_ID.fullmatch(record.training_run_id):
            return None
        return self.paths.runs_dir / record.model / record.training_run_id

    def _version_row(self, release: Release, record: VersionRecord, on_disk: bool) -> dict[str, Any]:
        reports: list[dict[str, str]] = []
        sha = record.data_sha256 or ""
        if SHA256.fullmatch(sha) and (self.data_docs_dir(record.model, sha) / DATA_DOCS_INDEX).is_file():
            reports.append({"kind": links.DATA_DOCS, "name": "Data Docs", "sha256": sha})
        run_dir = self._run_dir(record)
        if run_dir is not None:
            for kind, file_name in links.TRAINING_FILES.items():
                if (run_dir / file_name).is_file():
                    reports.append({"kind": kind, "name": links.LINK_NAMES[kind], "run_id": run_dir.name,
                                    "file": file_name})
        return {
            "version": record.version, "state": str(record.state), "on_disk": on_disk,
            "created": f"{record.created_at:%Y-%m-%d %H:%MZ}", "data": sha[:10], "run": record.airflow_run_id,
            "training_run": record.training_run_id,
            "metrics": {k: round(v, 4) for k, v in record.metrics.items() if isinstance(v, (int, float))},
            "reports": reports, "verdicts": self._verdicts(record, run_dir),
        }

    def _verdicts(self, record: VersionRecord, run_dir: Path | None) -> list[dict[str, str]]:
        found: dict[str, Path] = {}
        if run_dir is not None and (run_dir / "evaluation.json").is_file():
            found["evaluate"] = run_dir / "evaluation.json"
        directory = self.paths.serving_dir / "verdicts" / record.model / str(record.version)
        if directory.is_dir():
            found.update({p.stem: p for p in directory.glob("*.json") if GATE.fullmatch(p.stem)})
        return [{"gate": gate, "status": "BLESSED" if self._is_blessed(found[gate]) else "NOT_BLESSED"}
                for gate in sorted(found, key=_gate_sort_key)]

    def _is_blessed(self, path: Path) -> bool:
        """A verdict file's outcome (read again only when the file was replaced: verdicts are written atomically)."""
        try:
            info = path.stat()
        except OSError:
            return False
        stamp = (info.st_mtime_ns, info.st_size)
        with self._guard:
            cached = self._blessed.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            blessed = bool(json.loads(path.read_text()).get("blessed"))
        except (OSError, ValueError):
            blessed = False
        with self._guard:
            self._blessed[path] = (stamp, blessed)
        return blessed

    def _rollback_choices(self, release: Release, records: list[VersionRecord], status: dict[str, Any]
                          ) -> dict[str, Any]:
        """Versions a rollback may go to (:func:`pipeline.release.rollback.rollback_targets`, the rules the
        rollback itself checks), newest first, with their state and figures; the default is the CLI's."""
        from pipeline.release.rollback import rollback_targets

        stable = status["stable"]
        by_version = {r.version: r for r in records}
        choices = [{"version": v, "state": str(by_version[v].state), "metrics": by_version[v].metrics}
                   for v in rollback_targets(release, stable)]
        default = status["last_good_before_stable"]
        return {"choices": choices, "stable": stable,
                "default": default if any(c["version"] == default for c in choices) else None}


def _stamp(path: Path) -> int:
    """When ``path`` last changed (0: it does not exist)."""
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def _phase_gate(phase: str) -> str:
    """The verdict gate of a live phase (``shadow`` -> ``live_shadow``, ``5%`` -> ``live_canary_5pct``)."""
    from pipeline.live.phases import PhaseSpec

    return f"live_{PhaseSpec(phase, 0.0, 0.0).task_id}"


def _gate_sort_key(gate: str) -> tuple[int, int, str]:
    if gate in _GATE_ORDER:
        return (_GATE_ORDER.index(gate), 0, gate)
    digits = "".join(ch for ch in gate if ch.isdigit())
    return (len(_GATE_ORDER), int(digits) if digits else 0, gate)


# ---- figures against thresholds -----------------------------------------------------------------------------------


def threshold_rows(gate: str, figures: dict[str, Any], config: ModelConfig) -> list[dict[str, Any]]:
    """Each figure of a staging, canary or evaluate verdict beside the threshold it is held to (from the model's
    config as it is now), and whether it meets it; figures without a threshold come last."""
    limits: dict[str, tuple[str, float | tuple[float, float]]] = {
        "served_accuracy": (">=", config.gates.min_value),
        "failed_requests": ("<=", 0),
        "latency_p95_ms": ("<=", config.serving.latency_budget_p95_ms),
        "golden_max_abs_diff_rest": ("<=", config.serving.golden_tolerance),
        "golden_max_abs_diff_grpc": ("<=", config.serving.golden_tolerance),
        "malformed_status": ("in", (400, 499)),
        "agreement": (">=", config.release.canary_min_agreement),
    }
    if gate == "evaluate":
        limits = {"candidate": (">=", float(figures.get("floor", config.gates.min_value)))}
        if isinstance(figures.get("baseline"), (int, float)):
            regression = float(figures.get("max_regression", config.gates.max_regression))
            limits["delta"] = (">=", -regression)
    rows, rest = [], []
    for name, value in figures.items():
        if name in limits:
            comparison, limit = limits[name]
            rows.append({"name": name, "value": _show(value), "comparison": comparison, "limit": _show(limit),
                         "passed": _meets(value, comparison, limit)})
        else:
            rest.append({"name": name, "value": _show(value), "comparison": "", "limit": "", "passed": None})
    return rows + rest


def _meets(value: Any, comparison: str, limit: float | tuple[float, float]) -> bool | None:
    if not isinstance(value, (int, float)):
        return None
    if isinstance(limit, tuple):
        return limit[0] <= value <= limit[1]
    return value >= limit if comparison == ">=" else value <= limit


def _show(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, tuple):
        return f"{value[0]}-{value[1]}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)[:300]
    return str(value)


def _live_figures(figures: dict[str, Any]) -> dict[str, Any]:
    """A live phase's analysis (:attr:`pipeline.live.analysis.Analysis.figures`) as tables."""
    checks = [{"name": c.get("name"), "value": _show(c.get("value")), "comparison": c.get("comparison"),
               "limit": _show(c.get("limit")), "passed": c.get("passed"), "note": c.get("note", "")}
              for c in figures.get("checks") or []]
    tests = [{"name": name, "hits": t.get("hits"), "trials": t.get("trials"), "p0": _show(t.get("p0")),
              "p1": _show(t.get("p1")), "llr": _show(t.get("log_likelihood_ratio")),
              "bounds": f"{_show(t.get('log_lower'))} .. {_show(t.get('log_upper'))}", "outcome": t.get("outcome"),
              "note": t.get("note", "")}
             for name, t in (figures.get("tests") or {}).items()]
    variants = []
    for variant in ("stable", "canary"):
        v = figures.get(variant) or {}
        variants.append({"variant": variant, "served": v.get("served"), "mirrored": v.get("mirrored"),
                         "error_rate": _show(v.get("error_rate")), "p95_latency_ms": _show(v.get("p95_latency_ms")),
                         "accuracy": _show(v.get("accuracy")), "labelled": v.get("labelled")})
    paired = figures.get("paired") or {}
    root_cause = figures.get("root_cause") or {}
    return {"checks": checks, "tests": tests, "variants": variants,
            "paired": {"requests": paired.get("requests"), "agreement": _show(paired.get("agreement")),
                       "class_divergence": _show(paired.get("class_divergence"))},
            "decision": figures.get("decision"), "elapsed_s": _show(figures.get("elapsed_s")),
            "bake_s": _show(figures.get("bake_s")), "root_cause": root_cause.get("summary")}
