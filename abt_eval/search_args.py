"""The command-line options ``abt_eval.sweep`` and ``abt_eval.ablate`` share: what to pre-train on, the
base settings, the linear evaluation's task(s), the output folder and the device (docs/search.md)."""

from __future__ import annotations

import argparse


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
    return ap
