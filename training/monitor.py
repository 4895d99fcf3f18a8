"""What a run shows while it trains: progress bar, TensorBoard scalars, a CSV log, and images of the
cross-correlation matrix and the loss curve."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from hear_abt.fileio import atomic_open

CSV_FIELDS = [
    "step",
    "epoch",
    "loss",
    "on_diag",
    "off_diag",
    "lr_weights",
    "lr_biases",
    "samples_per_s",
    "embedding_std",
]


def embedding_std(z: torch.Tensor) -> float:
    """Mean per-dimension std of L2-normalised embeddings: ~1/sqrt(D) when healthy, 0 at collapse."""
    z = torch.nn.functional.normalize(z.detach().float(), dim=1)
    return float(z.std(dim=0).mean())


class Monitor:
    """Rank-0 logging to ``run_dir``: metrics.csv, tb/ (TensorBoard) and images/."""

    def __init__(self, run_dir: Path, resume_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = run_dir
        self.csv_path = run_dir / "metrics.csv"
        self.images = run_dir / "images"
        self.images.mkdir(parents=True, exist_ok=True)
        self._truncate_csv(resume_step)
        self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step + 1 if resume_step else None)

    def _truncate_csv(self, step: int) -> None:
        """Drop rows logged after the checkpoint a resumed run restarts from (they will be redone).

        Rewritten atomically: an interrupt here never loses the rows that are kept.
        """
        rows = self.rows() if self.csv_path.exists() else []
        with atomic_open(self.csv_path, "w") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(r for r in rows if int(float(r["step"])) <= step)
        probe_path = self.run_dir / "probe.csv"
        if probe_path.exists():
            with open(probe_path, newline="") as f:
                probe_rows = list(csv.reader(f))
            with atomic_open(probe_path, "w") as f:
                csv.writer(f).writerows([probe_rows[0]] + [r for r in probe_rows[1:] if int(r[0]) <= step])

    def rows(self) -> list[dict[str, str]]:
        with open(self.csv_path, newline="") as f:
            return list(csv.DictReader(f))

    def log(self, row: dict[str, float]) -> None:
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=CSV_FIELDS).writerow(row)
        step = int(row["step"])
        for key, value in row.items():
            if key not in ("step", "epoch"):
                self.writer.add_scalar(f"train/{key}", value, step)

    def log_probe(self, step: int, task: str, score: float) -> None:
        path = self.run_dir / "probe.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["step", "task", "score"])
            writer.writerow([step, task, score])
        self.writer.add_scalar(f"probe/{task}", score, step)

    def images_at(self, step: int, c: torch.Tensor) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n = min(128, c.shape[0])
        fig, ax = plt.subplots(figsize=(5, 4.5))
        im = ax.imshow(c[:n, :n].float().cpu().numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_title(f"cross-correlation C, first {n} dims\nstep {step}", fontsize=10)
        fig.colorbar(im, ax=ax)
        fig.savefig(self.images / f"crosscorr_step{step:07d}.png", dpi=100, bbox_inches="tight")
        self.writer.add_figure("images/cross_correlation", fig, step)
        plt.close(fig)

        rows = self.rows()
        if rows:
            fig, ax = plt.subplots(figsize=(6, 4))
            steps = [int(float(r["step"])) for r in rows]
            ax.plot(steps, [float(r["loss"]) for r in rows], label="loss")
            ax.plot(steps, [float(r["on_diag"]) for r in rows], label="invariance term", alpha=0.7)
            ax.set_xlabel("step")
            ax.set_yscale("log")
            ax.legend()
            ax.set_title("Barlow Twins loss")
            fig.savefig(self.images / "loss_curve.png", dpi=100, bbox_inches="tight")
            self.writer.add_figure("images/loss_curve", fig, step)
            plt.close(fig)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
