"""What each environment serves, as Airflow Assets: one per model and environment.

``Asset(name="mnist_production", uri="pipeline://serving/production/mnist")`` and ``mnist_staging``: every change of
what an environment serves for the model (staging deploy, a first release's canary label, finalize, any rollback:
automatic, on-call, the monitor's, ``pipeline rollback`` from a shell) posts an event of its asset whose ``extra``
names the version, labels, accuracy, run and reason (:mod:`pipeline.release.served_events`). Airflow's Assets view
is then the history of each environment.

``Asset(name="mnist_raw_data", uri="pipeline://raw-data/mnist")``: a new data version of the model (ingested files
or live labels, :mod:`pipeline.data.landing`); its events start ``mnist_release`` (data-aware scheduling).

Airflow knows an asset once a parsed DAG declares it: the DAGs name these as the inlets of the tasks that read
what is served (:func:`served_inlets`). Light: names are plain strings; Airflow is imported only to build Assets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import Asset

STAGING = "staging"
PRODUCTION = "production"
ENVIRONMENTS = (STAGING, PRODUCTION)
GROUP = "serving"  # the assets' group in Airflow's Assets view

# Where a change was made (an event's extra ``origin``): inside an Airflow task, or outside (CLI, scripts, tests).
AIRFLOW = "airflow"
SHELL = "shell"
# Changes that take a version off production. Made in a DAG, its callbacks alert; made outside Airflow, the
# production_changes DAG that every production event starts alerts (pipeline.notify).
ROLLBACK_CHANGES = ("rollback", "canary_rollback", "live_canary_rollback")

# Release tasks that read what an environment serves: validate_staging judges what staging serves, evaluate
# compares against production's stable version.
_RELEASE_INLETS = {"validate_staging": STAGING, "evaluate": PRODUCTION}


def asset_name(model: str, environment: str) -> str:
    """``<model>_<environment>``, e.g. ``mnist_production``."""
    _check(environment)
    return f"{model}_{environment}"


def asset_uri(model: str, environment: str) -> str:
    """``pipeline://serving/<environment>/<model>``."""
    _check(environment)
    return f"pipeline://serving/{environment}/{model}"


def served_asset(model: str, environment: str) -> Asset:
    """The Airflow Asset of what ``environment`` serves for ``model``."""
    from airflow.sdk import Asset

    return Asset(name=asset_name(model, environment), uri=asset_uri(model, environment), group=GROUP,
                 extra={"model": model, "environment": environment})


def served_inlets(model: str, task_id: str) -> list[Asset]:
    """The served assets a release task reads (its ``inlets``; none for most tasks)."""
    environment = _RELEASE_INLETS.get(task_id)
    return [served_asset(model, environment)] if environment else []


def raw_data_asset_name(model: str) -> str:
    """``<model>_raw_data``: new labelled data of the model (its events start ``<model>_release``)."""
    return f"{model}_raw_data"


def raw_data_asset_uri(model: str) -> str:
    """``pipeline://raw-data/<model>``."""
    return f"pipeline://raw-data/{model}"


def raw_data_asset(model: str) -> Asset:
    """The Airflow Asset whose events announce a new data version of ``model`` (:mod:`pipeline.data.landing`)."""
    from airflow.sdk import Asset

    return Asset(name=raw_data_asset_name(model), uri=raw_data_asset_uri(model))


def rollbacks_made_outside_airflow(extras: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Of served-change events' extras, the rollbacks made outside Airflow (``pipeline rollback`` from a shell, the
    automatic rollback of ``pipeline release``): nothing in Airflow has alerted about those yet."""
    return [extra for extra in extras
            if extra.get("change") in ROLLBACK_CHANGES and extra.get("origin") == SHELL]


def _check(environment: str) -> None:
    if environment not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {environment!r} (known: {list(ENVIRONMENTS)})")
