"""Turn a training run into the Hub-style folder ``hear_abt.load_model`` reads, and optionally push it.

    python -m training.export RUN_DIR OUT_DIR [--checkpoint FILE] [--push-to-hub ORG/NAME [--private]]

OUT_DIR gets config.json + model.safetensors (encoder only; the projector is a training device) and
a model card README.md with the training settings, data and loss curve.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import torch

from hear_abt.config import ModelConfig
from hear_abt.fileio import atomic_write_text
from hear_abt.weights import WeightsError, save_pretrained

from .checkpoint import load_training_checkpoint
from .run_dir import LAST_NAME, RunDir


def model_card(
    config: ModelConfig,
    state: dict,
    run: dict,
    manifest: dict | None,
    has_curve: bool,
    embed_dim: int,
    repo_id: str,
) -> str:
    encoder = config.encoder
    # A HEAR module of its own where one exists (hear_abt.audiontt, ...), else the generic one.
    module = f"hear_abt.{encoder}" if importlib.util.find_spec(f"hear_abt.{encoder}") else "hear_abt"
    data = "unknown"
    if manifest:
        totals = manifest.get("totals", {})
        data = f"{run.get('data')} ({totals.get('clips', '?')} clips, {totals.get('hours', 0):.2f} hours)"
    lines = [
        "---",
        "library_name: hear-abt",
        "tags: [audio, self-supervised-learning, barlow-twins, hear]",
        "---",
        f"# Audio Barlow Twins: {encoder}",
        "",
        f"Encoder weights pre-trained with Audio Barlow Twins for {state['step']} of {state['total_steps']} steps "
        f"(preset `{run.get('preset')}`).",
        "",
        "## Use",
        "",
        "```python",
        f"import {module} as abt",
        f"model = abt.load_model('{repo_id}')  # or a local folder",
        "scene = abt.get_scene_embeddings(audio_16k, model)  # (n_sounds, n_samples) float32",
        "```",
        "",
        f"Scene and timestamp embeddings have {embed_dim} dimensions (timestamps every 50 ms, 950 ms windows). "
        "Front-end: 16 kHz log-mel, "
        f"{config.frontend.n_mels} bins, normalised by the pre-training data's mean {config.norm.mean:.4f} and std "
        f"{config.norm.std:.4f}.",
        "",
        "## Training data",
        "",
        data,
        "",
        "## Training settings",
        "",
        "```json",
        json.dumps(state["train_config"], indent=2),
        "```",
    ]
    if has_curve:
        lines += ["", "## Loss curve", "", "![loss curve](loss_curve.png)"]
    return "\n".join(lines) + "\n"


def export(run_dir: Path, out_dir: Path, checkpoint: Path | None = None, repo_id: str = "ORG/NAME") -> Path:
    rd = RunDir(run_dir)
    ckpt_path = checkpoint or rd.last
    if not ckpt_path.is_file():
        raise SystemExit(f"no checkpoint at {ckpt_path}; has the run written one yet?")
    state = load_training_checkpoint(ckpt_path)
    run = rd.read_run() if rd.run_file.is_file() else {}
    config = ModelConfig.from_dict(state["model_config"])
    provenance = {**config.provenance, "step": state["step"], "total_steps": state["total_steps"]}
    config = ModelConfig(
        config.encoder, config.encoder_kwargs, config.frontend, config.norm, provenance=provenance
    )
    save_pretrained(out_dir, config, state["encoder"])

    # Prove the folder loads through the public API before anyone downloads it.
    import hear_abt

    model = hear_abt.load_model(out_dir)
    with torch.no_grad():
        emb = hear_abt.get_scene_embeddings(torch.zeros(1, config.frontend.sample_rate), model)
    if not torch.isfinite(emb).all():
        raise WeightsError(f"exported model in {out_dir} gives non-finite embeddings")

    manifest_path = Path(run.get("data", "")) / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if run.get("data") and manifest_path.is_file() else None
    curve = run_dir / "images" / "loss_curve.png"
    if curve.is_file():
        shutil.copyfile(curve, out_dir / "loss_curve.png")
    card = model_card(config, state, run, manifest, curve.is_file(), model.scene_embedding_size, repo_id)
    atomic_write_text(out_dir / "README.md", card)
    return out_dir


def push(out_dir: Path, repo_id: str, private: bool) -> str:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(
        folder_path=str(out_dir), repo_id=repo_id, commit_message="Upload hear-abt checkpoint"
    )
    return info.oid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", help="the --run-dir of a training run")
    parser.add_argument("out_dir", help="folder to write (config.json, model.safetensors, README.md)")
    parser.add_argument(
        "--checkpoint", help=f"a specific checkpoint file (default: RUN_DIR/checkpoints/{LAST_NAME})"
    )
    parser.add_argument(
        "--push-to-hub", metavar="ORG/NAME", help="also upload the folder to this Hugging Face Hub repo"
    )
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    args = parser.parse_args(argv)
    out_dir = export(
        Path(args.run_dir).resolve(),
        Path(args.out_dir).resolve(),
        Path(args.checkpoint).resolve() if args.checkpoint else None,
        args.push_to_hub or "ORG/NAME",
    )
    print(f"exported {out_dir}")
    if args.push_to_hub:
        commit = push(out_dir, args.push_to_hub, args.private)
        print(
            f"pushed to {args.push_to_hub} at commit {commit}; load it with hear_abt.load_model('{args.push_to_hub}@{commit}')"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
