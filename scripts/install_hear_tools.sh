#!/usr/bin/env bash
# Install the HEAR 2021 tools (hearvalidator, heareval) into the project's venv: a thin wrapper around
# `python -m abt_eval.hear_tools install` (the list of what they need is the `hear-tools` extra in
# pyproject.toml; docs/evaluation.md says why).
#
# Usage:  scripts/install_hear_tools.sh [--no-tf] [--dry-run]
#   PYTHON      interpreter to install into (default: .venv/bin/python of this checkout; never a global one)
#   NO_TF=1     same as --no-tf: skip tensorflow-cpu (see docs/evaluation.md)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
if [[ ! -x "$PYTHON" ]]; then
    echo "error: $PYTHON not found: create the venv first (README, command 1) or set PYTHON=" >&2
    exit 2
fi
args=("$@")
if [[ "${NO_TF:-0}" == "1" ]]; then args+=(--no-tf); fi
exec "$PYTHON" -m abt_eval.hear_tools install "${args[@]}"
