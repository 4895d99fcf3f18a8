"""benchmarks/gpu_check.py runs end to end on the CPU with tiny sizes, so that the GPU check cannot rot."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_on_the_cpu_and_prints_finite_figures(tmp_path):
    out = tmp_path / "figures.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny"]
    cmd += ["--json", str(out), "--work", str(tmp_path / "work")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Summary" in proc.stdout
    rows = {(r["section"], r["name"]): r for r in json.loads(out.read_text())["rows"]}

    def number(section, name):
        value = rows[(section, name)]["value"]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (section, name, value)
        assert name in proc.stdout  # printed, not only in the JSON
        return value

    number("reader", "CropSampler crops/s (batch 8 x 96 frames)")
    for preset in ("audioset-audiontt", "audioset-vitc-b"):
        number("train", f"{preset} bf16 samples/s")
        number("train", f"{preset} reader/train ratio")
    fp32 = number("precision", "audioset-audiontt loss after 2 steps, fp32")
    bf16 = number("precision", "audioset-audiontt loss after 2 steps, bf16")
    rel = rows[("precision", "relative difference after N steps")]["value"]
    assert math.isfinite(rel) and abs(rel - abs(bf16 - fp32) / fp32) < 1e-9 and rel < 0.05
    for name in (
        "audiontt timestamps faithful x real time",
        "audiontt timestamps fast x real time",
        "audiontt scene x real time",
        "vitc_t timestamps faithful x real time",
        "vitc_t scene x real time",
    ):
        number("hear", name)
        assert "NON-FINITE" not in rows[("hear", name)]["note"]
    assert rows[("torchrun", "pretrain, 3 steps, nproc_per_node=1")]["value"] == "ok"
    assert rows[("torchrun", "gloo process group + DDP train_step")]["value"] == "ok"
    heareval = rows[("heareval", "embeddings runner")] if ("heareval", "embeddings runner") in rows else None
    if heareval is not None:
        assert heareval["value"] == "skipped" and "not installed" in heareval["note"]
    else:
        assert rows[("heareval", "embeddings runner, speech-words (small)")]["value"] == "ok"
