#!/usr/bin/env bash
# The cluster's MLflow tracking server (cluster.yaml starts it on the head): MLflow's basic-auth
# app, with the config and key scripts/cluster_secrets.sh made, artifacts proxied to the head's disk.
# Usage: tracking_server.sh STORE HOST PORT [WORKERS]
set -euo pipefail
store=$1 host=$2 port=$3 workers=${4:-4}
runs=$HOME/rankhouse-runs
export MLFLOW_AUTH_CONFIG_PATH=$runs/mlflow-auth.ini
MLFLOW_FLASK_SERVER_SECRET_KEY=$(cat "$runs/mlflow-secret-key")
export MLFLOW_FLASK_SERVER_SECRET_KEY
exec "$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/mlflow" server --app-name basic-auth --backend-store-uri "$store" \
  --artifacts-destination "$runs/artifacts" --host "$host" --port "$port" --workers "$workers"
