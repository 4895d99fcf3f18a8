"""Training settings: presets, checks before anything is built, --help per preset, per-rank seeds."""

from pathlib import Path

import pytest

from training import engine, pretrain
from training.config import DEFAULT_PRESET, PRESETS, build_config
from training.optim import lr_factor


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_is_valid(preset):
    cfg = build_config(preset)
    assert cfg.validate() is cfg


def test_cpu_hour_is_the_searched_recipe_and_the_first_one_stays():
    cfg = build_config("cpu-hour")
    assert cfg.encoder_kwargs == {"channels": 32, "mlp_dim": 512}
    assert (cfg.projector_hidden, cfg.projector_out, cfg.batch_size, cfg.steps) == (2048, 256, 128, 360)
    # The run length is a setting, not an epoch cap plus a flag.
    assert engine.run_length(cfg, steps_per_epoch=7) == 360
    assert engine.run_length(build_config("cpu-tiny"), steps_per_epoch=7) == 20 * 7
    # The search's trial 10, as the journal records it: every searched setting, exactly.
    journal = Path(__file__).resolve().parents[1] / "docs" / "studies" / "realsuite-tpe.jsonl"
    trial10 = searched_params(journal, 10)
    assert trial10["lambd"] == cfg.lambd
    assert {k: v for k, v in trial10.items() if k != "lambd"} == {
        f"augment.{k}": getattr(cfg.augment, k)
        for k in ("mixup_ratio", "wave_gain_p", "wave_eq_p", "wave_reverb_p", "wave_pitch_p")
        + ("wave_pitch_semitones", "wave_stretch_p")
    }
    # The search varied only those: with them and steps=360, cpu-hour-1440 is the trial's base exactly.
    overrides = [f"{k}={v!r}" for k, v in trial10.items()] + ["steps=360"]
    assert build_config("cpu-hour-1440", overrides) == cfg
    first = build_config("cpu-hour-1440")
    assert (first.steps, first.augment.mixup_ratio, first.lambd, first.augment.wave_pitch_p) == (
        1440,
        0.4,
        0.005,
        0,
    )


def searched_params(journal: Path, number: int) -> dict:
    """A trial's parameters from an exported study journal (`abt_eval.sweep_archive export`: JSON lines,
    one `op_code` 4 record per trial, in trial order), checking that it is the study's best."""
    import json

    trials = [op for op in map(json.loads, journal.read_text().splitlines()) if op["op_code"] == 4]
    best = max((t for t in trials if t["value"] is not None), key=lambda t: t["value"])
    assert best is trials[number]
    return trials[number]["params"]


def test_overrides_leave_the_preset_untouched():
    """A dotted override writes into a nested dict; the next build must not see it."""
    assert build_config("cpu-tiny", ["encoder_kwargs.channels=64"]).encoder_kwargs["channels"] == 64
    assert build_config("cpu-tiny").encoder_kwargs == {"channels": 16, "mlp_dim": 256}
    assert build_config("cpu-hour", ["augment.wave_gain_p=0.5"]).augment.wave_gain_p == 0.5
    assert build_config("cpu-hour").augment.wave_gain_p < 0.06


@pytest.mark.parametrize(
    "override, message",
    [
        ("batch_size=1", "batch_size=1 is out of range"),
        ("optimizer=adam", "optimizer=adam has no paper defaults"),
        ("optimizer=rmsprop", "optimizer='rmsprop' is out of range"),
        ("batch_size=true", "batch_size=True has the wrong type"),
        ("lr_weights=-1", "lr_weights=-1 is out of range"),
        ("precision=fp8", "precision='fp8' is out of range"),
        ("optimizer=sgd", "optimizer=sgd has no paper defaults"),
        ("warmup_fraction=2", "warmup_fraction=2 is out of range"),
        ("steps=2.5", "steps=2.5 has the wrong type"),
        ("probe_every=5", "probe_every needs probe_task"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_built(override, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_config("cpu-tiny", [override])


def test_help_lists_the_chosen_presets_values(capsys):
    with pytest.raises(SystemExit):
        pretrain.parse_args(["--preset", "cpu-hour", "--run-dir", "x", "--help"])
    out = capsys.readouterr().out
    assert "Settings of preset 'cpu-hour'" in out and "steps = 360" in out and "batch_size = 128" in out
    with pytest.raises(SystemExit):
        pretrain.parse_args(["--run-dir", "x", "--help"])
    assert f"Settings of preset '{DEFAULT_PRESET}'" in capsys.readouterr().out


def test_rank_seeds_differ_across_ranks_and_streams_and_are_stable():
    seeds = {(r, s): engine.rank_seed(0, r, s) for r in range(4) for s in ("torch", "augment", "python")}
    assert len(set(seeds.values())) == len(seeds)
    assert engine.rank_seed(0, 1, "augment") == seeds[1, "augment"]
    assert all(0 <= v < 2**63 for v in seeds.values())


def test_schedule_warms_up_then_decays_to_the_end_factor():
    cfg = build_config("cpu-tiny")
    assert cfg.lr_end_factor == 0.001  # Barlow Twins ends its cosine at 1/1000 of the peak rate
    total, warmup = 100, 10
    assert lr_factor(0, total, warmup, cfg.lr_end_factor) == 0.0
    assert lr_factor(warmup, total, warmup, cfg.lr_end_factor) == 1.0
    assert lr_factor(total, total, warmup, cfg.lr_end_factor) == pytest.approx(0.001)
    middle = lr_factor(55, total, warmup, cfg.lr_end_factor)  # half-way through the cosine
    assert middle == pytest.approx(0.001 + 0.999 * 0.5)


@pytest.mark.parametrize(
    "override, message",
    [
        ("rankme_every=-1", "rankme_every=-1 is out of range"),
        ("rankme_clips=1", "rankme_clips=1 is out of range"),
        ("augment.wave_gain_p=1.5", "wave_gain_p must be a probability"),
        ("augment.wave_stretch_rate=[0, 1]", "wave_stretch_rate must satisfy"),
        ("augment.wave_eq_bands=1", "wave_eq_bands must be >= 2"),
    ],
)
def test_health_and_waveform_settings_are_checked(override, message):
    with pytest.raises(ValueError, match=message):
        build_config("cpu-tiny", [override])


def test_new_augmentation_settings_default_to_the_paper_and_parse_from_the_command_line():
    cfg = build_config("cpu-tiny")
    assert not cfg.augment.rrc_time_only and cfg.augment.rrc_freq_scale == (0.6, 1.5)
    assert all(getattr(cfg.augment, f"wave_{b}_p") == 0 for b in ("gain", "eq", "reverb", "pitch", "stretch"))
    cfg = build_config(
        "cpu-tiny",
        ["augment.rrc_time_only=true", "augment.wave_reverb_p=0.3", "augment.wave_reverb_rt60=[0.1, 0.5]"],
    )
    assert cfg.augment.rrc_time_only and cfg.augment.wave_reverb_p == 0.3
    assert cfg.augment.wave_reverb_rt60 == (0.1, 0.5)
    assert "augment.rrc_time_only = False" in pretrain.settings_help("cpu-tiny")
