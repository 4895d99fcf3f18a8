"""Representation-health monitor: RankMe effective rank and per-dimension std against hand
computations, the metrics.csv columns and image, and that computing them never changes training."""

import math

import numpy as np
import pytest
import signals
import soundfile as sf
import torch

from training import engine, prepare
from training.config import build_config
from training.data import ShardDataset
from training.monitor import HEALTH_FIELDS, RANKME_EPS, Monitor, effective_rank, representation_health


def rank_by_hand(singular_values):
    s = np.asarray(singular_values, dtype=np.float64)
    p = s / s.sum() + RANKME_EPS
    return math.exp(-(p * np.log(p)).sum())


def test_identity_has_full_rank_and_rank_one_has_rank_one():
    assert effective_rank(torch.eye(64)) == pytest.approx(64, rel=1e-4)
    u, v = torch.randn(200, 1), torch.randn(1, 32)
    assert effective_rank(u @ v) == pytest.approx(1.0, abs=1e-3)
    assert effective_rank(torch.zeros(8, 4)) == pytest.approx(1.0, abs=1e-3)  # all-collapsed: finite


def test_rank_of_a_matrix_with_known_singular_values():
    # Z = U diag(s) V^T with random orthogonal U, V: the rank depends on s only.
    s = torch.tensor([4.0, 2.0, 1.0, 1.0, 0.0])
    u, _ = torch.linalg.qr(torch.randn(50, 5, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    z = u @ torch.diag(s.double()) @ v.T
    # p = (.5, .25, .125, .125, 0): entropy 1.75 bits, rank 2**1.75
    assert effective_rank(z) == pytest.approx(rank_by_hand(s), rel=1e-6)
    assert effective_rank(z) == pytest.approx(2**1.75, rel=1e-4)


def test_per_dimension_std_mean_and_min():
    y = torch.tensor([[0.0, 1.0, 5.0], [2.0, 1.0, 5.0], [4.0, 1.0, 11.0]])
    figures = representation_health(y, y * 2)
    assert figures["std_mean_encoder"] == pytest.approx((2.0 + 0.0 + math.sqrt(12.0)) / 3)
    assert figures["std_min_encoder"] == 0.0  # the constant dimension
    assert figures["rankme_projector"] == pytest.approx(figures["rankme_encoder"])  # scale-free
    assert math.isnan(representation_health(y, None)["rankme_projector"])


def test_monitor_writes_health_columns_tensorboard_and_an_image(tmp_path):
    monitor = Monitor(tmp_path)
    base = {"epoch": 0, "loss": 1.0, "on_diag": 0.5, "off_diag": 0.5, "lr_weights": 0.1, "lr_biases": 0.1}
    base.update(samples_per_s=10.0, embedding_std=0.1)
    monitor.log({"step": 1, **base})
    health = dict(zip(HEALTH_FIELDS, (12.5, 30.0, 0.7, 0.01)))
    monitor.log({"step": 2, **base, **health})
    monitor.images_at(2, torch.eye(4))
    monitor.close()
    rows = Monitor(tmp_path, resume_step=2).rows()
    assert rows[0]["rankme_encoder"] == "" and float(rows[1]["rankme_encoder"]) == 12.5
    assert (tmp_path / "images" / "health.png").stat().st_size > 0
    # A resumed monitor reloads the figures it draws, from the rows it keeps.
    assert Monitor(tmp_path, resume_step=2).health == [(2, 12.5, 30.0, 0.7, 0.01)]
    assert Monitor(tmp_path, resume_step=1).health == []


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("health")
    (root / "audio").mkdir()
    rng = np.random.default_rng(1)
    for i in range(24):
        kind = signals.KINDS[i % len(signals.KINDS)]
        sf.write(root / "audio" / f"{i:02d}.wav", signals.make_signal(kind, 1.5, rng), 16000)
    prepare.main([str(root / "audio"), str(root / "data"), "--workers", "1", "--no-progress"])
    return root / "data"


def train(data_dir, steps, health_between):
    cfg = build_config("cpu-tiny", ["batch_size=8", "rankme_clips=16"])
    state = engine.build(cfg, ShardDataset(data_dir), torch.device("cpu"), prefetch=0)
    figures = []
    for crops in state.sampler:
        engine.train_step(state, crops)
        if health_between:
            figures.append(engine.health_figures(state))
        if state.step == steps:
            break
    return state, figures


def test_health_figures_never_change_training(data_dir):
    plain, _ = train(data_dir, 3, health_between=False)
    watched, figures = train(data_dir, 3, health_between=True)
    for a, b in zip(plain.net.state_dict().values(), watched.net.state_dict().values()):
        assert torch.equal(a, b)  # weights and BatchNorm running statistics
    assert torch.equal(plain.aug_gen.get_state(), watched.aug_gen.get_state())
    assert watched.net.training
    assert all(1.0 <= f["rankme_encoder"] <= 16 and f["std_min_encoder"] >= 0 for f in figures)


def test_pretrain_writes_health_rows_at_its_cadence_and_the_end(data_dir, tmp_path):
    import csv

    from training import pretrain

    argv = [
        "--preset",
        "cpu-tiny",
        "--data",
        str(data_dir),
        "--run-dir",
        str(tmp_path / "run"),
        "--no-progress",
    ]
    assert (
        pretrain.main([*argv, "steps=5", "batch_size=8", "log_every=1", "rankme_every=2", "rankme_clips=16"])
        == 0
    )
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with_health = [int(r["step"]) for r in rows if r["rankme_encoder"]]
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5] and with_health == [2, 4, 5]
    assert all(1.0 <= float(r["rankme_projector"]) <= 16 for r in rows if r["rankme_encoder"])
    assert (tmp_path / "run" / "images" / "health.png").is_file()
