#!/bin/bash
# The part of the official Airflow image's entrypoint that docker-compose.yml relies on: migrate the database when
# _AIRFLOW_DB_MIGRATE is true, run bash/python as given, `airflow ...` as is, and anything else as an `airflow` subcommand.
set -euo pipefail
if [[ "${_AIRFLOW_DB_MIGRATE:-false}" == "true" ]]; then
  airflow db migrate
fi
case "${1:-}" in
  "") exec bash ;;
  bash|python|python3|sh) exec "$@" ;;
  airflow) shift; exec airflow "$@" ;;
  *) exec airflow "$@" ;;
esac
