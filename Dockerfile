# The pipeline image: Airflow 3 with our package, its pinned dependencies, the DAGs and the configs.
# Every Airflow container of docker-compose.yml and of the Helm chart (k8s/airflow/values.yaml) runs it,
# and so do training containers (pipeline/containers.py).
#   docker build -t mlops-pipeline:0.1.0 .
FROM apache/airflow:3.3.2-python3.11

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

# Our package and its dependencies at the versions constraints.txt pins (TensorFlow, TF Serving API,
# the docker and cncf-kubernetes providers); apache-airflow itself is pinned there to the base image's version.
COPY --chown=airflow:0 constraints.txt pyproject.toml README.md /opt/pipeline/src/
COPY --chown=airflow:0 pipeline /opt/pipeline/src/pipeline
RUN pip install -c /opt/pipeline/src/constraints.txt /opt/pipeline/src \
    && python -c "import pipeline.config, pipeline.containers"

COPY --chown=airflow:0 configs /opt/pipeline/configs
COPY --chown=airflow:0 k8s/training-pod.yaml /opt/pipeline/k8s/training-pod.yaml
COPY --chown=airflow:0 dags /opt/airflow/dags
# The models pages and the reports' links (plugins/pipeline_ui.py): Airflow's default plugins folder.
COPY --chown=airflow:0 plugins /opt/airflow/plugins
