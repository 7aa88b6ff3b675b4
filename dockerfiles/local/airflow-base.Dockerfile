# A stand-in for apache/airflow:3.3.2-python3.11 where Docker Hub cannot be reached: Debian bookworm's Python 3.11
# (the base image pipeline/localdocker/images.py makes with mmdebstrap) laid out as the official image is, as far
# as the project's Dockerfile and docker-compose.yml rely on it: user `airflow` (50000, group 0), AIRFLOW_HOME at
# /opt/airflow, a Python whose `pip install` the airflow user may run, and an /entrypoint that runs `airflow ...`.
# Airflow itself comes with the project's pinned set (the Dockerfile installs it).
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
ENV AIRFLOW_HOME=/opt/airflow \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    LANG=C.UTF-8
COPY airflow-entrypoint.sh /entrypoint
RUN useradd --uid 50000 --gid 0 --create-home --home-dir /home/airflow airflow \
    && python3 -m venv /opt/venv \
    && mkdir -p /opt/airflow/dags /opt/airflow/logs /opt/airflow/plugins \
    && chown -R airflow:0 /opt/venv /opt/airflow \
    && chmod -R g+rwX /opt/venv /opt/airflow \
    && chmod 0755 /entrypoint
WORKDIR /opt/airflow
USER airflow
ENTRYPOINT ["/usr/bin/dumb-init", "--", "/entrypoint"]
CMD []
