"""Local weights: folder / .safetensors / training checkpoint, strict loading, integrity, versions."""

import argparse
import json

import pytest
import torch
from safetensors.torch import save_file

import hear_abt
from hear_abt.config import FORMAT_VERSION, ModelConfig, NormStats
from hear_abt.embedder import ABTEmbedder
from hear_abt.weights import (
    CONFIG_NAME,
    TRAINING_CHECKPOINT_FORMAT,
    WEIGHTS_ENV,
    WEIGHTS_NAME,
    WeightsError,
    load_checkpoint,
    save_pretrained,
)

CONFIG = ModelConfig(encoder="vitc_t", encoder_kwargs={"depth": 1}, norm=NormStats(-4.0, 2.0))


@pytest.fixture()
def state():
    torch.manual_seed(1)
    return ABTEmbedder(CONFIG).encoder.state_dict()


@pytest.fixture()
def folder(tmp_path, state):
    return save_pretrained(tmp_path / "ckpt", CONFIG, state)


def test_round_trip_keeps_config_and_tensors(folder, state):
    ckpt = load_checkpoint(folder)
    assert ckpt.config == CONFIG
    assert ckpt.state_dict.keys() == state.keys()
    assert all(torch.equal(ckpt.state_dict[k], state[k]) for k in state)
    meta = json.loads((folder / CONFIG_NAME).read_text())
    assert meta["format_version"] == FORMAT_VERSION and len(meta["weights_sha256"]) == 64


def test_loaded_model_reproduces_the_saved_encoder(folder, state):
    model = hear_abt.load_model(folder)
    reference = ABTEmbedder(CONFIG)
    reference.encoder.load_state_dict(state)
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(x), reference.eval().encoder(x))


def test_single_safetensors_file_carries_its_config(folder, tmp_path):
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes((folder / WEIGHTS_NAME).read_bytes())
    assert load_checkpoint(lone).config == CONFIG


def test_training_checkpoint_file_loads_without_unpickling_code(tmp_path, state):
    path = tmp_path / "last.pt"
    torch.save(
        {"format": TRAINING_CHECKPOINT_FORMAT, "model_config": CONFIG.to_dict(), "encoder": state}, path
    )
    assert hear_abt.load_model(path).config == CONFIG


def test_pickled_objects_are_refused(tmp_path, state):
    path = tmp_path / "evil.pt"

    # An argparse.Namespace (what the original code pickled) is not on the weights_only allow-list.
    args = argparse.Namespace(lr=0.1)
    torch.save(
        {
            "format": TRAINING_CHECKPOINT_FORMAT,
            "model_config": CONFIG.to_dict(),
            "encoder": state,
            "args": args,
        },
        path,
    )
    with pytest.raises(WeightsError, match="cannot read training checkpoint"):
        load_checkpoint(path)


def test_missing_tensor_is_an_error(tmp_path, state):
    state = dict(state)
    state.pop(next(iter(state)))
    folder = save_pretrained(tmp_path / "missing", CONFIG, state)
    with pytest.raises(WeightsError, match="Missing key"):
        hear_abt.load_model(folder)


def test_unexpected_tensor_is_an_error(tmp_path, state):
    folder = save_pretrained(tmp_path / "extra", CONFIG, {**state, "stray.weight": torch.zeros(3)})
    with pytest.raises(WeightsError, match="Unexpected key"):
        hear_abt.load_model(folder)


def test_corrupt_weights_fail_the_checksum(folder):
    blob = bytearray((folder / WEIGHTS_NAME).read_bytes())
    blob[-10] ^= 0xFF  # flip bits inside a tensor: only the checksum can see it
    (folder / WEIGHTS_NAME).write_bytes(bytes(blob))
    with pytest.raises(WeightsError, match="corrupt or truncated"):
        load_checkpoint(folder)


def test_truncated_lone_safetensors_is_an_error(folder, tmp_path):
    lone = tmp_path / "cut.safetensors"
    lone.write_bytes((folder / WEIGHTS_NAME).read_bytes()[:-1000])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_checkpoint(lone)


def test_config_from_a_newer_format_is_refused(folder):
    meta = json.loads((folder / CONFIG_NAME).read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (folder / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="newer than this hear-abt"):
        load_checkpoint(folder)


def test_folder_without_weights_names_the_missing_file(tmp_path):
    (tmp_path / CONFIG_NAME).write_text("{}")
    with pytest.raises(WeightsError, match="model.safetensors is missing"):
        load_checkpoint(tmp_path)


def test_nonexistent_path_is_not_mistaken_for_a_hub_id(tmp_path):
    with pytest.raises(WeightsError, match="neither an existing file"):
        load_checkpoint(tmp_path / "nope" / "x")


def test_environment_variable_redirects_a_bare_load(folder, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, str(folder))
    assert hear_abt.load_model().config == CONFIG


def test_mismatched_shapes_are_an_error(tmp_path, state):
    path = tmp_path / "bad.safetensors"
    bad = {k: torch.zeros(1) if k == "cls_token" else v for k, v in state.items()}
    save_file(bad, path, metadata={"hear_abt_config": CONFIG.to_json()})
    with pytest.raises(WeightsError, match="size mismatch"):
        hear_abt.load_model(path)
