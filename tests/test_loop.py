"""The training loop's parts, on real prepared data (numpy signals): no host sync inside a step, a
checkpoint that rebuilds the mixup bank exactly, cadences by steps and minutes, stop signals."""

from __future__ import annotations

import itertools
import os
import signal
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from training import engine, loop
from training.augment import MixupBank
from training.config import build_config
from training.data import ShardDataset
from training.prepare import prepare

TINY = ["batch_size=8", "projector_hidden=64", "projector_out=32", "augment.mixup_bank_size=20"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """24 clips of tones, chirps and decaying noise (no system programs needed)."""
    root = tmp_path_factory.mktemp("loopdata")
    rng = np.random.default_rng(0)
    t = np.arange(24000) / 16000
    for i in range(24):
        if i % 3 == 0:
            wave = np.sin(2 * np.pi * (200 + 40 * i) * t)
        elif i % 3 == 1:
            wave = np.sin(2 * np.pi * (100 + 900 * t) * t * (1 + i / 10))
        else:
            wave = rng.standard_normal(t.size) * np.exp(-4 * t)
        sf.write(root / f"clip_{i:02d}.wav", (0.3 * wave).astype(np.float32), 16000)
    prepare(root, root / "data", workers=1, progress=False)
    return ShardDataset(root / "data")


def build(dataset, *extra):
    return engine.build(build_config("cpu-tiny", [*TINY, *extra]), dataset, torch.device("cpu"))


def test_a_step_never_reads_a_device_value(dataset, monkeypatch):
    """Every Python-level read of a tensor's value (item, bool, float, int, tolist) is a host sync on a
    GPU; a step must make none (the old non-finite check between forward and backward made one).
    (``numpy()`` is left out: the reader fills its CPU batches through it, and on a GPU tensor it raises.)"""
    state = build(dataset)
    batches = iter(loop.steps(state))
    next(batches)  # the first step may set things up
    reads = []
    for name in ("item", "__bool__", "__float__", "__int__", "tolist"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, _name=name, **k):
            reads.append(_name)
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    for _ in range(3):
        next(batches)
    assert reads == []
    monkeypatch.undo()
    engine.check_finite(state)  # reading the flag is the one sync, where the loop chooses


def test_a_non_finite_loss_is_recorded_with_its_step_and_raised_by_check_finite(dataset):
    state = build(dataset)
    steps = loop.steps(state)
    next(steps)
    next(steps)
    engine.check_finite(state)
    with torch.no_grad():
        next(p for p in state.net.projector.parameters()).fill_(float("nan"))
    next(steps)  # step index 2 computes a NaN loss
    next(steps)
    with pytest.raises(engine.NonFiniteLoss, match="loss is nan at step 2"):
        engine.check_finite(state)


def test_the_checkpoint_rebuilds_each_mixup_bank_from_batch_positions(dataset):
    """Resume from a checkpoint taken mid-run: the rebuilt bank, the next steps and the saved record
    are those of the run that went on, bitwise; the saved bank is a few positions, not its data."""
    a = build(dataset)
    run_a = loop.steps(a)
    for _ in range(5):  # 40 pushes into a 20-row bank: it has wrapped around
        next(run_a)
    ranks = [engine.rank_state(a)]
    saved = engine.checkpoint_state(a, {}, ranks)
    mixup = saved["ranks"][0]["augment"]["mixup"]
    assert "bank" not in mixup and mixup["history"] == [[[0, 2], 8], [[1, 0], 8], [[1, 1], 8]]
    bank_before = a.augmenter.mixup._bank.clone()
    # The process's RNGs are global, shared by both states: run a on, then resume b from the checkpoint.
    losses_a = [next(run_a).out.loss for _ in range(4)]
    b = build(dataset)
    engine.load_checkpoint_state(b, saved)
    assert torch.equal(bank_before, b.augmenter.mixup._bank)
    assert (b.augmenter.mixup._ptr, len(b.augmenter.mixup)) == (0, 20)
    losses_b = [r.out.loss for r in itertools.islice(loop.steps(b), 4)]
    assert all(torch.equal(x, y) for x, y in zip(losses_a, losses_b))
    for pa, pb in zip(a.net.parameters(), b.net.parameters()):
        assert torch.equal(pa, pb)
    assert torch.equal(a.augmenter.mixup._bank, b.augmenter.mixup._bank)


def test_the_mixup_bank_replays_partial_and_oversized_pushes():
    gen = torch.Generator().manual_seed(0)
    batches = {i: torch.randn(n, 1, 4, 6, generator=gen) for i, n in enumerate([3, 5, 12, 2, 4])}
    for upto in range(1, len(batches) + 1):
        bank = MixupBank(size=10)
        for i in range(upto):
            bank.push(batches[i], tag=[i])
        state = bank.state_dict()
        rebuilt = MixupBank(size=10)
        rebuilt.load_state_dict(state, lambda tag: batches[tag[0]])
        assert torch.equal(bank._bank, rebuilt._bank), upto
        assert (bank._ptr, len(bank)) == (rebuilt._ptr, len(rebuilt))
        assert sum(rows for _, rows in state["history"]) - state["history"][0][1] < 10  # only what is needed
    with pytest.raises(ValueError, match="pass inputs_for"):
        MixupBank(size=10).load_state_dict(state)
    untagged = MixupBank(size=10)
    untagged.push(batches[0])
    assert untagged.state_dict()["bank"].shape == (3, 1, 4, 6)  # without tags: the data, as before


def test_a_small_batch_per_rank_is_warned_about(dataset):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = build_config("cpu-tiny", TINY)
        with pytest.raises(ValueError):  # rank 0 of 4 in no process group: the warning comes first
            engine.build(cfg, dataset, torch.device("cpu"), rank=0, world_size=4)
    assert any("2 samples per rank" in str(w.message) for w in caught)


def test_cadence_by_steps_and_by_minutes():
    now = [0.0]
    by_steps = loop.Cadence(every=3, minutes=0, clock=lambda: now[0])
    assert [s for s in range(1, 10) if by_steps.due(s)] == [3, 6, 9]
    by_time = loop.Cadence(every=0, minutes=1.0, clock=lambda: now[0])
    fired = []
    for step in range(1, 8):
        now[0] += 25.0  # a step every 25 s: due at 50 s... no, at >= 60 s since the last
        if by_time.due(step):
            fired.append(step)
    assert fired == [3, 6]  # 75 s, then 150 s (75 s after 75 s)
    never = loop.Cadence(every=0, minutes=0, clock=lambda: now[0])
    now[0] += 1e9
    assert not never.due(100)


def test_stop_signals_are_requests_and_a_second_ctrl_c_interrupts():
    with loop.StopSignals() as signals:
        assert not signals.requested and signals.number == 0
        os.kill(os.getpid(), signal.SIGUSR1)
        assert signals.received == "SIGUSR1" and signals.number == signal.SIGUSR1
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received == "SIGUSR1"  # the first one is the reason
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored on exit
    with loop.StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.received == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
