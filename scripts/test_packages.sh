#!/usr/bin/env bash
# System packages only the tests use: Debian's chromium (the MLflow UI is checked in a real
# browser) and postgresql (a real server for tracking.backend: postgresql://). Installed when
# root; otherwise the tests that need them say why they skip.
set -euo pipefail
PACKAGES=(chromium postgresql)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ]; then
  echo "test set-up: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # the package starts a cluster of its own on port 5432; the tests start their own servers
  command -v pg_ctlcluster >/dev/null && pg_lsclusters -h 2>/dev/null | while read -r ver name _; do
    pg_ctlcluster "$ver" "$name" stop || true
  done
else
  echo "test set-up: not root, so ${missing[*]} stay(s) missing; the tests that need them skip (sudo apt-get install -y ${missing[*]})"
fi
