"""What a run shows while it trains: progress bar, TensorBoard scalars, a CSV log, and images of the
cross-correlation matrix and the loss curve.

Images are drawn on a background thread from data the monitor already holds (the loss curve from
its in-memory history, not by re-reading metrics.csv), so rank 0 never holds up the other ranks.
"""

from __future__ import annotations

import concurrent.futures
import csv
from pathlib import Path

import numpy as np
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
        # (step, loss, invariance term) of every logged row: the loss curve's data.
        self.curve: list[tuple[int, float, float]] = [
            (int(float(r["step"])), float(r["loss"]), float(r["on_diag"])) for r in self.rows()
        ]
        self._painter = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="monitor-images")
        self._painting: concurrent.futures.Future | None = None

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
        self.curve.append((step, float(row["loss"]), float(row["on_diag"])))
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
        """Draw the cross-correlation matrix ``c`` and the loss curve, in the background.

        Only the top-left corner of ``c`` is copied to the CPU here; a previous drawing still going
        on is waited for first (images are minutes apart, so this never queues up).
        """
        n = min(128, c.shape[0])
        corner = c[:n, :n].detach().float().cpu().numpy()
        self.wait()
        self._painting = self._painter.submit(self._draw, step, corner, list(self.curve))

    def _draw(self, step: int, corner, curve: list[tuple[int, float, float]]) -> None:
        # The object-oriented API (no pyplot): figures owned by this thread, no global state.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        n = corner.shape[0]
        fig = Figure(figsize=(5, 4.5))
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        im = ax.imshow(corner, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_title(f"cross-correlation C, first {n} dims\nstep {step}", fontsize=10)
        fig.colorbar(im, ax=ax)
        fig.savefig(self.images / f"crosscorr_step{step:07d}.png", dpi=100, bbox_inches="tight")
        self._add_image("images/cross_correlation", fig, step)

        if curve:
            fig = Figure(figsize=(6, 4))
            FigureCanvasAgg(fig)
            ax = fig.subplots()
            steps = [r[0] for r in curve]
            ax.plot(steps, [r[1] for r in curve], label="loss")
            ax.plot(steps, [r[2] for r in curve], label="invariance term", alpha=0.7)
            ax.set_xlabel("step")
            ax.set_yscale("log")
            ax.legend()
            ax.set_title("Barlow Twins loss")
            fig.savefig(self.images / "loss_curve.png", dpi=100, bbox_inches="tight")
            self._add_image("images/loss_curve", fig, step)
        self.writer.flush()

    def _add_image(self, tag: str, fig, step: int) -> None:
        # SummaryWriter.add_figure imports pyplot (global state, a GUI backend perhaps): render here.
        fig.canvas.draw()
        rgba = np.asarray(fig.canvas.buffer_rgba())
        self.writer.add_image(tag, rgba[..., :3], step, dataformats="HWC")

    def wait(self) -> None:
        """Wait for the drawing in progress, if any (raising its error)."""
        painting, self._painting = self._painting, None
        if painting is not None:
            painting.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._painter.shutdown(wait=True)
            self.writer.close()
