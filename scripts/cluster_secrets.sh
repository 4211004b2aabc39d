#!/usr/bin/env bash
# The cluster's secrets, made on the head node at `ray up` (cluster.yaml's head_setup_commands):
# each a file of mode 600 in the home folder, never in the repository; made once, then kept.
#   ~/.ray/auth_token              Ray's token (RAY_AUTH_MODE=token on every node); copied to the
#                                  workers by cluster.yaml's cluster_synced_files
#   ~/.mlflow/credentials          the tracking server's user and password, which every MLflow client
#                                  reads (the driver, and the trials on the workers: copied there too)
#   ~/rankhouse-runs/mlflow-auth.ini   the tracking server's basic-auth config: that user is its admin
#   ~/rankhouse-runs/mlflow-secret-key the tracking server's key for its CSRF tokens
#   ~/.pgpass                      the PostgreSQL role rankhouse's password (the head's alone: the
#                                  driver's Optuna record and the tracking server's store use it)
# Prints the PostgreSQL password on request (`--pg-password`), for the command that sets it.
set -euo pipefail
umask 077
secret() { python3 -c 'import secrets; print(secrets.token_hex(32))'; }
mkdir -p ~/.ray ~/.mlflow ~/rankhouse-runs

[ -s ~/.ray/auth_token ] || printf %s "$(secret)" > ~/.ray/auth_token  # no newline: the token is the whole file

if [ ! -s ~/.mlflow/credentials ]; then
  printf '[mlflow]\nmlflow_tracking_username = rankhouse\nmlflow_tracking_password = %s\n' "$(secret)" \
    > ~/.mlflow/credentials
fi
password=$(sed -n 's/^mlflow_tracking_password = //p' ~/.mlflow/credentials)
# default_permission NO_PERMISSIONS: a user the admin did not grant sees nothing
cat > ~/rankhouse-runs/mlflow-auth.ini <<INI
[mlflow]
default_permission = NO_PERMISSIONS
database_uri = sqlite:///$HOME/rankhouse-runs/mlflow-auth.db
admin_username = rankhouse
admin_password = $password
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI

[ -s ~/rankhouse-runs/mlflow-secret-key ] || printf %s "$(secret)" > ~/rankhouse-runs/mlflow-secret-key
[ -s ~/.pgpass ] || echo "127.0.0.1:5432:rankhouse:rankhouse:$(secret)" > ~/.pgpass
chmod 600 ~/.ray/auth_token ~/.mlflow/credentials ~/rankhouse-runs/mlflow-auth.ini \
  ~/rankhouse-runs/mlflow-secret-key ~/.pgpass
if [ "${1:-}" = "--pg-password" ]; then
  cut -d: -f5 ~/.pgpass
fi
