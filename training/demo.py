"""The offline demo behind ``hear-abt demo``: make sounds, pre-train the cpu-tiny preset on them,
export the weights and embed the sounds. Needs no network and no GPU (a minute or two on a laptop).

Running it again in the same folder resumes (or reuses) the earlier run instead of starting over.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000


def synth_clips(out_dir: Path, n_per_kind: int = 16, seed: int = 0) -> list[Path]:
    """Four kinds of 2-3 s sounds (harmonic notes, chirps, noise bursts, tremolo tones), written at
    assorted sample rates and channel counts so that the loader's resampling and mixing are used."""
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind in ("note", "chirp", "burst", "tremolo"):
        for i in range(n_per_kind):
            sr = int(rng.choice([16000, 22050, 44100]))
            t = np.arange(int(sr * rng.uniform(2.0, 3.0))) / sr
            f0 = 110.0 * 2 ** rng.uniform(0, 3)
            if kind == "note":
                wave = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6)) * np.exp(
                    -t * rng.uniform(1, 3)
                )
            elif kind == "chirp":
                f1 = f0 * rng.uniform(2, 6)
                wave = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * t[-1])))
            elif kind == "burst":
                wave = rng.standard_normal(t.size) * (np.sin(2 * np.pi * rng.uniform(2, 6) * t) > 0.3)
            else:
                wave = np.sin(2 * np.pi * f0 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(4, 12) * t))
            wave = 0.3 * wave / (np.abs(wave).max() + 1e-9) + 0.003 * rng.standard_normal(t.size)
            data = np.stack([wave, wave * rng.uniform(0.5, 1.0)], axis=1) if rng.random() < 0.5 else wave
            path = out_dir / f"{kind}_{i:02d}.wav"
            sf.write(path, data.astype(np.float32), sr)
            paths.append(path)
    return paths


def run_demo(workdir: Path, steps: int = 200) -> None:
    from hear_abt.cli import main as cli_main

    from . import export, prepare, pretrain

    workdir.mkdir(parents=True, exist_ok=True)
    audio_dir, data_dir, run_dir, model_dir = (workdir / n for n in ("audio", "data", "run", "model"))
    print(f"[1/5] making demo sounds in {audio_dir}")
    paths = synth_clips(audio_dir)
    print("[2/5] preparing log-mel shards")
    prepare.main([str(audio_dir), str(data_dir), "--workers", "1"])
    print(f"[3/5] pre-training the cpu-tiny preset for {steps} steps")
    resume = (run_dir / pretrain.RUN_FILE).is_file()
    args = ["--run-dir", str(run_dir)]
    args += (
        ["--resume"]
        if resume
        else ["--preset", "cpu-tiny", "--data", str(data_dir), "--max-steps", str(steps), "batch_size=16"]
    )
    if pretrain.main(args) != 0:
        raise SystemExit("pre-training failed; see the message above")
    print(f"[4/5] exporting weights to {model_dir}")
    export.export(run_dir, model_dir)
    out = workdir / "embeddings.npz"
    print(f"[5/5] embedding {len(paths)} files -> {out}")
    cli_main(["embed", *map(str, paths), "--out", str(out), "--weights", str(model_dir), "--quiet"])

    emb = np.load(out)
    scene = emb["scene_embeddings"]
    kinds = [Path(f).stem.split("_")[0] for f in emb["files"]]
    unit = scene / np.linalg.norm(scene, axis=1, keepdims=True)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    same_kind = np.mean([kinds[i] == kinds[int(sim[i].argmax())] for i in range(len(kinds))])
    losses = [float(r.split(",")[2]) for r in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    print(
        json.dumps(
            {
                "scene_embeddings": list(scene.shape),
                "timestamp_embeddings": list(emb["timestamp_embeddings"].shape),
                "loss_first_to_last": [round(losses[0], 2), round(losses[-1], 2)] if losses else None,
                "nearest_neighbour_same_kind": round(float(same_kind), 3),
                "chance": 0.25,
            },
            indent=2,
        )
    )
    print(f"done. Loss curve: {run_dir / 'images' / 'loss_curve.png'}; weights: {model_dir}")
