"""What a run shows while it trains: progress bar, TensorBoard scalars, a CSV log, and images of the
cross-correlation matrix, the loss curve and the representation's health (effective rank and
per-dimension std of the embeddings of a fixed batch, :func:`representation_health`).

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
    # Representation health on a fixed batch (blank in rows where it was not computed).
    "rankme_encoder",
    "rankme_projector",
    "std_mean_encoder",
    "std_min_encoder",
]
HEALTH_FIELDS = CSV_FIELDS[-4:]
RANKME_EPS = 1e-7


def embedding_std(z: torch.Tensor) -> float:
    """Mean per-dimension std of L2-normalised embeddings: ~1/sqrt(D) when healthy, 0 at collapse."""
    z = torch.nn.functional.normalize(z.detach().float(), dim=1)
    return float(z.std(dim=0).mean())


def effective_rank(z: torch.Tensor, eps: float = RANKME_EPS) -> float:
    """RankMe (Garrido et al., ICML 2023): ``exp(-sum p_k log p_k)`` with ``p_k = s_k / |s|_1 + eps``
    over the singular values ``s_k`` of the (N, D) embedding matrix, uncentred as in the paper.

    Between 1 (one direction: collapse) and min(N, D) (all singular values equal). In float64, so
    that tiny singular values of a collapsed matrix do not come out as rounding noise.
    """
    s = torch.linalg.svdvals(z.detach().double())
    p = s / s.sum().clamp_min(torch.finfo(torch.float64).tiny) + eps
    return float(torch.exp(-(p * p.log()).sum()))


def representation_health(encoder_out: torch.Tensor, projector_out: torch.Tensor | None) -> dict[str, float]:
    """The health figures of :data:`HEALTH_FIELDS` for embeddings of one fixed batch.

    The per-dimension std is of the raw encoder embeddings: its minimum shows dimensions that have
    died (constant over inputs) even while the mean looks healthy.
    """
    y = encoder_out.detach().float()
    std = y.std(dim=0)
    return {
        "rankme_encoder": effective_rank(y),
        "rankme_projector": effective_rank(projector_out) if projector_out is not None else float("nan"),
        "std_mean_encoder": float(std.mean()),
        "std_min_encoder": float(std.min()),
    }


def _health_of(row: dict[str, str]) -> tuple[float, ...] | None:
    """(step, *figures) of a metrics.csv row that holds health figures, else None."""
    if not row.get(HEALTH_FIELDS[0]):
        return None
    return (int(float(row["step"])), *(float(row[k]) for k in HEALTH_FIELDS))


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
        # (step, *HEALTH_FIELDS) of every row that has them: the health figure's data.
        self.health = [h for h in map(_health_of, self.rows()) if h is not None]
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
        """Append a metrics row; the health columns may be left out (written blank)."""
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=CSV_FIELDS).writerow(row)
        step = int(row["step"])
        self.curve.append((step, float(row["loss"]), float(row["on_diag"])))
        if HEALTH_FIELDS[0] in row:
            self.health.append((step, *(float(row[k]) for k in HEALTH_FIELDS)))
        for key, value in row.items():
            if key not in ("step", "epoch"):
                self.writer.add_scalar(f"{'health' if key in HEALTH_FIELDS else 'train'}/{key}", value, step)

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
        self._painting = self._painter.submit(self._draw, step, corner, list(self.curve), list(self.health))

    def _draw(self, step: int, corner, curve: list[tuple[int, float, float]], health: list[tuple]) -> None:
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
        if health:
            self._draw_health(step, health)
        self.writer.flush()

    def _draw_health(self, step: int, health: list[tuple]) -> None:
        """Effective rank (left) and per-dimension std (right) of the fixed batch's embeddings."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        steps, rank_enc, rank_proj, std_mean, std_min = (list(col) for col in zip(*health))
        fig = Figure(figsize=(10, 4))
        FigureCanvasAgg(fig)
        left, right = fig.subplots(1, 2)
        left.plot(steps, rank_enc, label="encoder")
        if not all(np.isnan(rank_proj)):
            left.plot(steps, rank_proj, label="projector")
        left.set(xlabel="step", title="effective rank (RankMe), fixed batch")
        left.legend()
        right.plot(steps, std_mean, label="mean")
        right.plot(steps, std_min, label="min")
        right.set(xlabel="step", title="per-dimension std of encoder embeddings")
        right.legend()
        fig.savefig(self.images / "health.png", dpi=100, bbox_inches="tight")
        self._add_image("images/health", fig, step)

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
