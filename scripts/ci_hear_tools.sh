#!/usr/bin/env bash
# The real community tools on real weights, served by the local Hub stand-in:
#   1. pre-train the cpu-tiny AudioNTT briefly on the dev suite's sounds and export it (training path);
#      make a random-init ViT_C-B checkpoint (the vitc_b module's architecture);
#   2. publish both on a local Hub stand-in (tests/hub_server.py) and point HF_ENDPOINT at it;
#   3. hear-validator on hear_abt, hear_abt.audiontt and hear_abt.vitc_b, each loading its weights
#      from the stand-in through HEAR_ABT_WEIGHTS (a bare load_model(), as the validator calls it);
#   4. heareval's embeddings + predictions runners on the small dev-suite tasks (one scene, one event),
#      through abt_eval.hear_eval, which collects the scores into a table.
# Usage: scripts/ci_hear_tools.sh   (after `python -m abt_eval.hear_tools install`)
#   PYTHON        the venv's interpreter (default: .venv/bin/python of this checkout); hear-validator is
#                 taken from the same bin folder
#   HEAR_CI_WORK  a folder for its files (kept); by default a temporary one (~1 GB), removed after a
#                 successful run unless HEAR_CI_KEEP=1 (kept after a failure, for its logs)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
VALIDATOR="$(dirname "$PYTHON")/hear-validator"
[[ -x "$VALIDATOR" ]] || { echo "error: $VALIDATOR not found: run $PYTHON -m abt_eval.hear_tools install" >&2; exit 2; }
if [[ -n "${HEAR_CI_WORK:-}" ]]; then
    WORK="$HEAR_CI_WORK"
    mkdir -p "$WORK"
    REMOVE_WORK=0
else
    WORK="$(mktemp -d)"
    if [[ "${HEAR_CI_KEEP:-0}" == 1 ]]; then REMOVE_WORK=0; else REMOVE_WORK=1; fi
fi
HUB_PID=
cleanup() {  # stop the Hub stand-in; a temporary work dir is ~1 GB: runs must not pile them up in /tmp
    local rc=$?
    [[ -n "$HUB_PID" ]] && kill "$HUB_PID" 2>/dev/null || true
    if (( REMOVE_WORK && rc == 0 )); then rm -rf "$WORK"; else echo "work dir kept: $WORK"; fi
}
trap cleanup EXIT
export TF_CPP_MIN_LOG_LEVEL=2 HF_HUB_DISABLE_TELEMETRY=1 HF_HOME="$WORK/hf-home"
echo "work dir: $WORK"

step() { echo; echo "---- $* ($(date -u +%H:%M:%S))"; }

step "dev suite (small) and a short pre-training run"
"$PYTHON" -m abt_eval.devsuite "$WORK/tasks" --small --tasks speech-words,events
"$PYTHON" -m training.prepare "$WORK/tasks" "$WORK/data" --workers 2 --no-progress
"$PYTHON" -m training.pretrain --preset cpu-tiny --data "$WORK/data" --run-dir "$WORK/run" \
    --no-progress steps=40 batch_size=16 log_every=10
"$PYTHON" -m training.export "$WORK/run" "$WORK/models/tiny"
"$PYTHON" - "$WORK/models/vitc-b" <<'PY'
import sys
import torch
from hear_abt.config import ModelConfig
from hear_abt.embedder import ABTEmbedder
from hear_abt.weights import save_pretrained
torch.manual_seed(0)
config = ModelConfig(encoder="vitc_b", provenance={"note": "random init, for API checks only"})
save_pretrained(sys.argv[1], config, ABTEmbedder(config).encoder.state_dict())
PY

step "local Hub stand-in"
mkdir -p "$WORK/hub/hear-abt-ci/tiny-audiontt/v1" "$WORK/hub/hear-abt-ci/random-vitc-b/v1"
cp "$WORK/models/tiny/config.json" "$WORK/models/tiny/model.safetensors" "$WORK/hub/hear-abt-ci/tiny-audiontt/v1/"
cp "$WORK/models/vitc-b/config.json" "$WORK/models/vitc-b/model.safetensors" "$WORK/hub/hear-abt-ci/random-vitc-b/v1/"
"$PYTHON" tests/hub_server.py "$WORK/hub" > "$WORK/hub.log" 2>&1 &
HUB_PID=$!
for _ in $(seq 100); do grep -q HF_ENDPOINT= "$WORK/hub.log" && break; sleep 0.1; done
export "$(grep -o 'HF_ENDPOINT=.*' "$WORK/hub.log")"
echo "HF_ENDPOINT=$HF_ENDPOINT"

step "hear-validator"
HEAR_ABT_WEIGHTS=hear-abt-ci/tiny-audiontt@v1 "$VALIDATOR" hear_abt
HEAR_ABT_WEIGHTS=hear-abt-ci/tiny-audiontt@v1 "$VALIDATOR" hear_abt.audiontt
HEAR_ABT_WEIGHTS=hear-abt-ci/random-vitc-b@v1 "$VALIDATOR" hear_abt.vitc_b
# The same weights from a local folder, through the validator's -m option.
"$VALIDATOR" hear_abt -m "$WORK/models/tiny"

step "heareval embeddings + predictions runners"
"$PYTHON" -m abt_eval.hear_eval --tasks-dir "$WORK/tasks" --out "$WORK/eval" \
    --model tiny=hear-abt-ci/tiny-audiontt@v1 --grid faster
"$PYTHON" -m abt_eval.hear_eval --tasks-dir "$WORK/tasks" --out "$WORK/eval-fast" --tasks events \
    --model tiny=hear-abt-ci/tiny-audiontt@v1 --grid faster --model-options '{"timestamp_mode": "fast"}'
echo "HEAR tool checks passed"
