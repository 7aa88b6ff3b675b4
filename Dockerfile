# The pipeline image: Airflow 3 with our package, its pinned dependencies, the DAGs and the configs.
# Every Airflow container of docker-compose.yml and of the Helm chart (k8s/airflow/values.yaml) runs it,
# and so do training containers (pipeline/containers.py).
#   docker build -t mlops-pipeline:0.1.0 .
# BASE_IMAGE chooses what it builds on: the official Airflow image by default; where Docker Hub cannot be reached,
# the Debian-built stand-in of dockerfiles/local/airflow-base.Dockerfile (`python -m pipeline.localdocker images`).
# PIP_EXTRA_ARGS reaches pip (e.g. `--no-index --find-links http://...`, a local wheelhouse).
ARG BASE_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${BASE_IMAGE}
ARG PIP_EXTRA_ARGS=""

# Paths the pipeline reads (pipeline/settings.py): configs baked in, state on volumes mounted at runtime.
ENV PIPELINE_HOME=/opt/pipeline/var \
    PIPELINE_CONFIG_DIR=/opt/pipeline/configs \
    PIPELINE_POD_TEMPLATE=/opt/pipeline/k8s/training-pod.yaml \
    PIP_NO_CACHE_DIR=1

USER root
RUN mkdir -p /opt/pipeline/var/models /opt/pipeline/var/serving \
    && chown -R airflow:0 /opt/pipeline \
    && chmod -R g+rwX /opt/pipeline
USER airflow

# The pinned dependencies first (constraints.txt pins apache-airflow to the base image's version), in a layer of
# their own: a change to our code rebuilds only the small layer after it.
COPY --chown=airflow:0 constraints.txt requirements.txt /opt/pipeline/src/
RUN pip install ${PIP_EXTRA_ARGS} -c /opt/pipeline/src/constraints.txt -r /opt/pipeline/src/requirements.txt
COPY --chown=airflow:0 pyproject.toml README.md /opt/pipeline/src/
COPY --chown=airflow:0 pipeline /opt/pipeline/src/pipeline
RUN pip install ${PIP_EXTRA_ARGS} --no-deps /opt/pipeline/src \
    && python -c "import pipeline.config, pipeline.containers"

COPY --chown=airflow:0 configs /opt/pipeline/configs
COPY --chown=airflow:0 k8s/training-pod.yaml /opt/pipeline/k8s/training-pod.yaml
COPY --chown=airflow:0 dags /opt/airflow/dags
# The models pages and the reports' links (plugins/pipeline_ui.py): Airflow's default plugins folder.
COPY --chown=airflow:0 plugins /opt/airflow/plugins
