"""heareval's predictions runner with another probe seed (``abt_eval.hear_eval --seeds N``).

    python -m abt_eval.seeded_predictions SEED EMBEDDINGS/MODULE/TASK [--grid faster] [...]

heareval 2021.1.3 has no seed option: ``task_predictions`` calls ``seed_everything(42)`` (Lightning's:
Python's ``random``, numpy and torch) before it shuffles the hyper-parameter grid and trains the probes.
Here that call is pointed at SEED instead, then the runner goes through ``abt_eval.heareval_compat``
(its fixes and the arguments after SEED unchanged). Everything random in the probe training therefore
follows SEED: the grid points drawn, the initialisation, the batch order, dropout.
"""

from __future__ import annotations

import sys

from . import heareval_compat


def use_seed(seed: int) -> None:
    """Make heareval's ``task_predictions`` seed everything with ``seed`` instead of its 42."""
    from heareval.predictions import task_predictions
    from pytorch_lightning import seed_everything

    def seeded(_heareval_seed: int, workers: bool = False) -> int:
        return seed_everything(seed, workers=workers)

    task_predictions.seed_everything = seeded
    print(f"[seeded_predictions] probe seed {seed} (heareval's own: 42)", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or not argv[0].lstrip("-").isdigit():
        sys.exit(f"usage: python -m abt_eval.seeded_predictions SEED TASK_DIR [ARGS...]\n\n{__doc__}")
    use_seed(int(argv[0]))
    heareval_compat.main(["predictions", *argv[1:]])


if __name__ == "__main__":
    main()
