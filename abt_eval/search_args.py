"""The command-line options ``abt_eval.sweep`` and ``abt_eval.ablate`` share: what to pre-train on, the
base settings, the linear evaluation's task(s) and probe seeds, the output folder and the device
(docs/search.md); and the linear evaluation over several probe seeds both run."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace


def shared_options(out_help: str, overrides_help: str) -> argparse.ArgumentParser:
    """A parent parser (``argparse.ArgumentParser(parents=[...])``) with the shared options; the two
    texts say what the output folder holds and what the ``key=value`` settings apply to."""
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--data", required=True, help="pre-training data (`python -m training.prepare`)")
    ap.add_argument(
        "--task",
        required=True,
        action="append",
        help="HEAR scene task folder for the linear evaluation; repeat it to score the mean over tasks",
    )
    ap.add_argument("--out", required=True, help=out_help)
    ap.add_argument(
        "--preset",
        default="fsd50k-ablation",
        help="base training preset (default: fsd50k-ablation, the paper's App. B/C settings)",
    )
    ap.add_argument("overrides", nargs="*", metavar="key=value", help=overrides_help)
    ap.add_argument("--eval-max-clips", type=int, default=None, help="at most this many clips per split")
    ap.add_argument(
        "--no-eval-crop", action="store_true", help="embed whole clips (default: crop to crop_frames)"
    )
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    ap.add_argument(
        "--probe-seeds",
        type=int,
        default=1,
        help="score with N linear-probe seeds (SEED, SEED+1, ...) on the same embeddings: the score is "
        "their mean, and the report says which runs are indistinguishable from the best (paired t)",
    )
    return ap


def probe_seed_list(seed: int, n: int) -> list[int]:
    """The probe seeds of ``--probe-seeds n`` for a run of ``seed``: ``seed``, ``seed + 1``, ..."""
    if n < 1:
        raise ValueError(f"--probe-seeds must be >= 1, got {n}")
    return [seed + i for i in range(n)]


def seeded_linear_eval(model, task, settings, seeds: Sequence[int], device) -> list:
    """``training.linear_eval`` of ``model`` on ``task`` once per probe seed: the embeddings once (their
    crops seeded by ``settings.seed``), then the classifier with each seed (its initialisation, batch
    order and any carved validation split). ``seeds == [settings.seed]`` is exactly ``evaluate``."""
    import torch

    from training.linear_eval import embed_task, score_embeddings

    s = settings.validate()
    device = torch.device(device)
    model.to(device).eval()
    embeddings = embed_task(model, task, device, s)
    return [score_embeddings(embeddings, task, replace(s, seed=seed)) for seed in seeds]
