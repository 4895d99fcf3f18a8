"""ModelConfig / FrontendConfig / NormStats: every field type- and range-checked before anything is built."""

from __future__ import annotations

import json

import pytest

from hear_abt.config import ConfigError, FrontendConfig, ModelConfig, NormStats


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("sample_rate", 0, "frontend.sample_rate = 0 is out of range"),
        ("sample_rate", 16000.0, "frontend.sample_rate must be an integer"),
        ("n_fft", 2**40, "frontend.n_fft = 1099511627776 is out of range"),
        ("n_fft", "1024", "frontend.n_fft must be an integer, got '1024' (str)"),
        ("win_length", 0, "frontend.win_length = 0 is out of range"),
        ("hop_length", -160, "frontend.hop_length = -160 is out of range"),
        ("n_mels", 10**6, "frontend.n_mels = 1000000 is out of range"),
        ("n_mels", True, "frontend.n_mels must be an integer, got True (bool)"),
        ("f_min", float("nan"), "frontend.f_min must be finite"),
        ("f_max", None, "frontend.f_max must be a number"),
        ("log_offset", 0.0, "frontend.log_offset = 0.0 is out of range (0.0, 1.0]"),
        ("log_offset", -1e-7, "frontend.log_offset"),
        ("window_frames", 0, "frontend.window_frames = 0 is out of range"),
    ],
)
def test_frontend_fields(field, value, message):
    with pytest.raises(ConfigError) as err:
        FrontendConfig(**{field: value})
    assert message in str(err.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mean=float("nan")), "norm.mean must be finite"),
        (dict(mean=float("inf")), "norm.mean must be finite"),
        (dict(std=float("inf")), "norm.std must be finite"),
        (dict(std=0.0), "norm.std = 0.0 is out of range"),
        (dict(std=-1.0), "norm.std = -1.0 is out of range"),
        (dict(std=1e-9), "too small"),
        (dict(mean="-5"), "norm.mean must be a number"),
        (dict(mean=1e30), "norm.mean = 1e+30 is out of range"),
    ],
)
def test_norm_stats_fields(kwargs, message):
    with pytest.raises(ConfigError) as err:
        NormStats(**kwargs)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "encoder, kwargs, message",
    [
        ("audiontt", {"channels": 10**6}, "encoder_kwargs['channels'] = 1000000 is out of range"),
        ("audiontt", {"channels": -4}, "encoder_kwargs['channels'] = -4 is out of range"),
        ("audiontt", {"channels": "64"}, "encoder_kwargs['channels'] must be an integer"),
        ("audiontt", {"dropout": 1.5}, "encoder_kwargs['dropout'] = 1.5 is out of range"),
        ("audiontt", {"dropout": float("nan")}, "encoder_kwargs['dropout'] must be finite"),
        ("audiontt", {"channels": 4000, "mlp_dim": 60000}, "more than the 500,000,000 allowed"),
        ("audiontt", {"chanels": 64}, "unexpected keyword argument 'chanels'"),
        ("audiontt", {"n_mels": 64}, "multiple values"),
        ("vitc_t", {"depth": 10**6}, "encoder_kwargs['depth'] = 1000000 is out of range"),
        ("vitc_t", {"heads": 5}, "not divisible by 5 heads"),
        ("vitc_t", {"patch": [16, 0]}, "encoder_kwargs['patch'][1] = 0 is out of range"),
        ("vitc_t", {"patch": {"f": 16}}, "must be a number, bool, string or short list"),
        ("no_such_encoder", {}, "unknown encoder 'no_such_encoder'"),
    ],
)
def test_encoder_and_its_kwargs(encoder, kwargs, message):
    with pytest.raises(ConfigError) as err:
        ModelConfig(encoder=encoder, encoder_kwargs=kwargs)
    assert message in str(err.value)


def test_model_config_field_types():
    with pytest.raises(ConfigError, match="encoder_kwargs must be a dict"):
        ModelConfig(encoder_kwargs=[("channels", 8)])
    with pytest.raises(ConfigError, match="frontend must be a FrontendConfig"):
        ModelConfig(frontend={"n_mels": 64})
    with pytest.raises(ConfigError, match="format_version = 0 is out of range"):
        ModelConfig(format_version=0)
    with pytest.raises(ConfigError, match="a config must be a JSON object, got list"):
        ModelConfig.from_dict([1, 2])
    good = json.loads(ModelConfig().to_json())
    with pytest.raises(ConfigError, match="'frontend' has unknown fields \\['nfft'\\]"):
        ModelConfig.from_dict({**good, "frontend": {"nfft": 1024}})
    with pytest.raises(ConfigError, match="'norm' must be an object"):
        ModelConfig.from_dict({**good, "norm": [0, 1]})
    with pytest.raises(ConfigError, match="no 'encoder' field"):
        ModelConfig.from_dict({k: v for k, v in good.items() if k != "encoder"})


def test_valid_configs_still_build_and_round_trip():
    for config in (
        ModelConfig(),
        ModelConfig(encoder="vitc_b"),
        ModelConfig(encoder="audiontt", encoder_kwargs={"channels": 8, "mlp_dim": 32, "dropout": 0.0}),
        ModelConfig(encoder="vitc_t", encoder_kwargs={"depth": 1}, norm=NormStats(-5.0, 3.0)),
    ):
        assert ModelConfig.from_json(config.to_json()) == config


def test_shape_only_builds_stay_out_of_torch_dynamo():
    """Checking a config dry-builds its encoder on the meta device; ops without meta kernels there go
    through torch's Python references, which import torch._dynamo and triton: seconds per load, and a
    segfault in a process that imported TensorFlow first (as hear-validator does). None may be used."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from hear_abt.config import ModelConfig\n"
        "from hear_abt.encoders import list_encoders\n"
        "for name in list_encoders():\n"
        "    ModelConfig(encoder=name)\n"
        "sys.exit(3 if 'torch._dynamo' in sys.modules else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"torch._dynamo was imported by a config check: {done.stderr[-1500:]}"
