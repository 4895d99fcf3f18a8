"""The offline demo, ``python -m training.demo --workdir DIR``: make sounds, pre-train the cpu-tiny
preset on them, export the weights and embed the sounds with ``hear-abt embed``. Needs no network
and no GPU (a minute or two on a laptop). Running it again in the same folder resumes (or reuses)
the earlier run instead of starting over.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf


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


def run_demo(workdir: Path, steps: int = 60) -> None:
    from hear_abt.cli import main as cli_main

    from . import export, prepare, pretrain
    from .run_dir import RunDir

    workdir.mkdir(parents=True, exist_ok=True)
    audio_dir, data_dir, run_dir, model_dir = (workdir / n for n in ("audio", "data", "run", "model"))
    print(f"[1/5] making demo sounds in {audio_dir}")
    paths = synth_clips(audio_dir)
    print("[2/5] preparing log-mel shards")
    prepare.main([str(audio_dir), str(data_dir), "--workers", "1"])
    print(f"[3/5] pre-training the cpu-tiny preset for {steps} steps")
    # The same command again: a finished run is reused, an interrupted one resumed.
    args = ["--run-dir", str(run_dir), "--preset", "cpu-tiny", f"steps={steps}", "batch_size=16"]
    args += ["--resume"] if RunDir(run_dir).run_file.is_file() else ["--data", str(data_dir)]
    if pretrain.main(args, hint_next=False) != 0:
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
    print(
        f"nearest_neighbour_same_kind: for each of the {len(kinds)} sounds, whether its nearest other sound "
        "(cosine of scene embeddings) is of the same kind (note, chirp, burst, tremolo); 0.25 is chance."
    )
    print(f"done. Loss curve: {run_dir / 'images' / 'loss_curve.png'}; weights: {model_dir}")
    exe = Path(sys.executable)
    print(
        "next: embed your own files with "
        f"`{exe.parent / 'hear-abt'} embed YOUR_FILES --weights {model_dir} --out emb.npz`, or check the HEAR "
        f"API with `{exe.parent / 'hear-validator'} hear_abt -m {model_dir}` (after installing the HEAR tools)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.demo", description=__doc__)
    parser.add_argument(
        "--workdir", default="demo_out", help="folder for the demo's audio, run, weights and embeddings"
    )
    parser.add_argument("--steps", type=int, default=60, help="pre-training steps of the cpu-tiny preset")
    args = parser.parse_args(argv)
    run_demo(Path(args.workdir).resolve(), steps=args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
