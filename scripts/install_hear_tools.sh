#!/usr/bin/env bash
# Install the HEAR 2021 community tools (hearvalidator, heareval) into a modern Python (3.11).
#
# Their published metadata cannot be resolved there: heareval 2021.1.3 pins numpy==1.19.2 and
# numba==0.48 (no builds for Python 3.11) and hearvalidator >= 2021.0.3 declares Python < 3.9.
# So install the two packages without their dependencies and then add what they really import.
#
# Usage:  PYTHON=.venv/bin/python scripts/install_hear_tools.sh
#   PYTHON      interpreter to install into (default: python)
#   NO_TF=1     skip tensorflow-cpu (both tools `import tensorflow` at top level, so they will not
#               start without it; but on a GPU machine tensorflow-cpu makes heareval's embeddings
#               runner refuse to start: "GPUs not available in tensorflow, but found by pytorch")
# Do not run `pip check` afterwards: it always complains about the pins ignored here.
set -euo pipefail

PYTHON="${PYTHON:-python}"
PIP=("$PYTHON" -m pip install --disable-pip-version-check)

"${PIP[@]}" --no-deps --ignore-requires-python \
    "hearvalidator==2021.0.6" "heareval==2021.1.3"

needs=(
    "pytorch-lightning<2"
    torchinfo
    intervaltree
    more-itertools
    pandas
    python-slugify
    click
    tqdm
    scikit-learn
    sed-eval
    dcase-util
    "setuptools<81"   # dcase_util and pytorch-lightning import pkg_resources
    pynvml            # heareval.gpu_max_mem imports it when torch sees a GPU
)
if [[ "${NO_TF:-0}" != "1" ]]; then
    needs+=(tensorflow-cpu)
fi
"${PIP[@]}" "${needs[@]}"

# Smoke check: both tools import.
TF_CPP_MIN_LOG_LEVEL=2 "$PYTHON" - <<'PY'
import importlib.metadata as md
import heareval.embeddings.runner  # noqa: F401
import heareval.predictions.runner  # noqa: F401
import hearvalidator  # noqa: F401
for p in ("hearvalidator", "heareval", "pytorch-lightning", "tensorflow-cpu", "torch", "numpy"):
    try:
        print(f"{p}=={md.version(p)}")
    except md.PackageNotFoundError:
        print(f"{p}: not installed")
PY
