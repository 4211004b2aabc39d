#!/usr/bin/env bash
# Set up rankhouse on a fresh Debian/Ubuntu machine: system packages, then .venv with the project.
# Idempotent; `make` calls it when pyproject.toml is newer than the venv's stamp.
set -euo pipefail
cd "$(dirname "$0")/.."

# ffmpeg: museval's import needs ffmpeg/ffprobe on PATH (stempeg checks at import).
# libfluidsynth3 + fluid-soundfont-gm: the corpus renderer (FluidR3_GM General MIDI soundfont).
# libsndfile1: soundfile. espeak-ng/sox are not used.
PACKAGES=(ffmpeg libfluidsynth3 fluid-soundfont-gm libsndfile1)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: missing system packages: ${missing[*]}; run: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

# Python >= 3.11: $PYTHON, else python3.11, else python3 (Ubuntu 24.04 ships 3.12)
PY=${PYTHON:-}
for candidate in python3.11 python3; do
  [ -n "$PY" ] && break
  command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' && PY=$candidate
done
if [ -z "$PY" ]; then
  echo "setup: need Python >= 3.11; install it (sudo apt-get install -y python3) or set PYTHON=/path/to/python" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -c 'import ensurepip' 2>/dev/null; then  # Debian splits venv support out of python3
    pkg="python3-venv"
    [ "$(id -u)" = 0 ] && { apt-get install -y -qq "$pkg" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$pkg" >/dev/null; }; } \
      || { echo "setup: $PY cannot create a venv; run: sudo apt-get install -y $pkg" >&2; exit 1; }
  fi
  echo "setup: creating .venv with $PY"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: on this machine's kind the CPU build comes from local disk.
# TORCH_INDEX_URL picks the build, e.g. https://download.pytorch.org/whl/cu128 (cluster.yaml does)
.venv/bin/python -m pip install -q "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
.venv/bin/python -m pip install -q -e ".[test]"
