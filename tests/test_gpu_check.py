"""benchmarks/gpu_check.py runs end to end on the CPU with tiny sizes, so that the GPU check cannot rot.

What a CPU run can show is asserted as figures (finite positive rates, the 2-rank gloo comparison
within its tolerance, a pretrain run that trains and a requeued one that finishes); what it cannot
(NCCL, SyncBatchNorm, host syncs, 2 GPUs) must be reported as not tested, not as passed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a minute or more: the whole GPU check on the CPU

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
PRESETS = ("audioset-audiontt", "audioset-vitc-b")
# Every section that runs on its own (syncs is measured inside train), in gpu_check's order.
RUN_SECTIONS = ("train", "torchrun", "requeue", "ddp", "precision", "waveaug", "hear", "heareval", "variants")


def run_check(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "figures.json"
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--json", str(out)]
    cmd += ["--work", str(tmp_path / "work"), *extra]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "Summary" in proc.stdout
    rows = {(r["section"], r["name"]): r for r in json.loads(out.read_text())["rows"]}
    return proc, rows


def test_gpu_check_runs_on_the_cpu_and_reports_real_figures(tmp_path):
    # A generous budget and subprocess limit: on a loaded 2-core machine (a test run beside a sweep) no
    # section may be skipped or cut for time; the default 240 s per subprocess is sized for a GPU.
    proc, rows = run_check(tmp_path, "--budget-seconds", "1500", "--subprocess-timeout", "1200")
    out = proc.stdout

    def number(section, name, positive=True):
        value = rows[(section, name)]["value"]
        assert isinstance(value, float) and math.isfinite(value), (section, name, value)
        assert value > 0 if positive else value >= 0, (section, name, value)
        assert name in out  # printed, not only in the JSON
        return value

    def text(section, name):
        return rows[(section, name)]["value"], rows[(section, name)]["note"]

    def ok(section, name):
        value, note = text(section, name)
        assert value == "ok", (section, name, value, note)  # the note says why, when it is not

    for preset in PRESETS:
        rate = number("train", f"{preset} samples/s")
        reader = number("train", f"{preset} reader crops/s")
        assert abs(number("train", f"{preset} reader/train ratio") - reader / rate) < 1e-6 * reader / rate
        assert number("train", f"{preset} host waited for reader", positive=False) <= 100
        assert "fp32" in rows[("train", f"{preset} samples/s")]["note"]  # precision=auto on the CPU
        assert text("syncs", f"{preset} host syncs per step")[0] == "n/a (CUDA only)"

    # pretrain under torchrun, without --device, chose the CPU by itself.
    value, note = text("torchrun", "pretrain nproc_per_node=1, 3 steps")
    assert value == "ok" and "device cpu, world size 1" in note, note
    value, note = text("torchrun", "pretrain nproc_per_node=2, 3 steps")
    assert value == "NOT TESTED" and "needs >= 2 GPUs" in note
    launches = [ln for ln in out.splitlines() if ln.strip().startswith("$ ") and "training.pretrain" in ln]
    assert len(launches) == 2 and not any("--device" in ln for ln in launches), launches

    value, note = text("requeue", "SIGTERM -> exit 75 + checkpoint")
    assert value == "ok" and "stopped after step" in note, note
    ok("requeue", "same command (--auto-resume) finishes")

    # DDP: NCCL not tested without 2 GPUs, said so; the CPU gloo comparison ran and agrees.
    value, note = text("ddp", "nccl 2 ranks vs 1 process")
    assert value == "NOT TESTED" and "needs >= 2 GPUs" in note
    assert "DDP over NCCL is NOT tested with fewer than 2 GPUs" in out
    value, note = text("ddp", "gloo 2 ranks vs 1 process (CPU)")
    assert value == "ok", note
    assert "BatchNorm + Dropout in eval mode" in note and "tolerance 0.0001" in note
    for name in ("gloo loss rel. error", "gloo gradient rel. error", "gloo worst tensor gradient rel. error"):
        assert number("ddp", name, positive=False) <= 1e-4

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

    if ("heareval", "embeddings runner") in rows:
        value, note = text("heareval", "embeddings runner")
        assert value == "skipped" and "not installed" in note
    else:
        ok("heareval", "embeddings runner, speech-words (small)")

    for preset in PRESETS:
        number("variants", f"{preset} samples/s, channels_last=true")
        value, note = text("variants", f"{preset} samples/s, compile=true")
        assert value == "skipped" and "--variants" in note  # off on the CPU by default, and said so

    for name in ("front-end only, one view of 8 x 96 frames", "all five, one view of 8 x 96 frames"):
        number("waveaug", name)
    both, note = text("waveaug", "both views, all five blocks")
    assert both > 0 and "of a audioset-audiontt step's time per sample" in note

    for section in RUN_SECTIONS:
        number("time", section, positive=False)
        assert f"({section}: " in out  # elapsed time printed per section
    assert not any(r["value"] == "skipped" and "budget" in r["note"] for r in rows.values())


def test_sections_past_the_budget_are_skipped_with_a_message(tmp_path):
    proc, rows = run_check(tmp_path, "--budget-seconds", "0")
    skipped = {s for (s, name), r in rows.items() if name == "section" and r["value"] == "skipped"}
    assert skipped == set(RUN_SECTIONS)
    assert all("budget" in rows[(s, "section")]["note"] for s in skipped)
    assert "budget: 0 s left" in proc.stdout
