"""The models pages in the Airflow UI: a FastAPI app that Airflow's API server mounts (``plugins/pipeline_ui.py``).

:mod:`pipeline.ui.app` builds the app, :mod:`pipeline.ui.views` gathers what the pages show (from
:func:`pipeline.release.status.model_status`, the registry and the reports on disk), :mod:`pipeline.ui.links` maps a
release's tasks to their reports (the plugin's extra links). It reads release state and triggers ``model_rollback``
through Airflow; the release pipeline never imports it.
"""
