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
    CONFIG_SHA_KEY,
    TRAINING_CHECKPOINT_FORMAT,
    WEIGHTS_ENV,
    WEIGHTS_NAME,
    WeightsError,
    load_weights,
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
    ckpt = load_weights(folder)
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
    assert load_weights(lone).config == CONFIG


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
        load_weights(path)


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
        load_weights(folder)


def test_truncated_lone_safetensors_is_an_error(folder, tmp_path):
    lone = tmp_path / "cut.safetensors"
    lone.write_bytes((folder / WEIGHTS_NAME).read_bytes()[:-1000])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_weights(lone)


def test_config_from_a_newer_format_is_refused(folder):
    meta = json.loads((folder / CONFIG_NAME).read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (folder / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="newer than this hear-abt"):
        load_weights(folder)


def test_folder_without_weights_names_the_missing_file(tmp_path):
    (tmp_path / CONFIG_NAME).write_text("{}")
    with pytest.raises(WeightsError, match="model.safetensors is missing"):
        load_weights(tmp_path)


def test_nonexistent_path_is_not_mistaken_for_a_hub_id(tmp_path):
    with pytest.raises(WeightsError, match="neither an existing file"):
        load_weights(tmp_path / "nope" / "x")


def test_environment_variable_redirects_a_bare_load(folder, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, str(folder))
    assert hear_abt.load_model().config == CONFIG


def test_mismatched_shapes_are_an_error(tmp_path, state):
    path = tmp_path / "bad.safetensors"
    bad = {k: torch.zeros(1) if k == "cls_token" else v for k, v in state.items()}
    save_file(bad, path, metadata={"hear_abt_config": CONFIG.to_json()})
    with pytest.raises(WeightsError, match="size mismatch"):
        hear_abt.load_model(path)


# ------------------------------------------------------------------ hostile configs and tensors


def _edit_config(folder, edit):
    meta = json.loads((folder / CONFIG_NAME).read_text())
    edit(meta)
    (folder / CONFIG_NAME).write_text(json.dumps(meta))


def test_config_json_carries_a_config_checksum_and_an_edit_is_caught(folder):
    meta = json.loads((folder / CONFIG_NAME).read_text())
    assert len(meta[CONFIG_SHA_KEY]) == 64
    _edit_config(
        folder, lambda m: m["norm"].update(mean=-3.0)
    )  # plausible, well-formed, but not what was trained
    with pytest.raises(WeightsError, match="edited or corrupted"):
        load_weights(folder)


def test_old_folder_without_config_checksum_loads_and_an_edit_is_still_caught(folder):
    _edit_config(folder, lambda m: m.pop(CONFIG_SHA_KEY))  # as written before config_sha256 existed
    assert load_weights(folder).config == CONFIG
    _edit_config(folder, lambda m: m["norm"].update(std=2.5))
    with pytest.raises(WeightsError, match="differs from the config stored inside model.safetensors"):
        load_weights(folder)


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda m: m["encoder_kwargs"].update(dim=10**7), "encoder_kwargs['dim']"),
        (lambda m: m["encoder_kwargs"].update(depth="1"), "encoder_kwargs['depth'] must be an integer"),
        (lambda m: m["frontend"].update(n_fft=2**40), "frontend.n_fft"),
        (lambda m: m["frontend"].update(n_mels=10**6), "frontend.n_mels"),
        (lambda m: m["frontend"].update(hop_length=0), "frontend.hop_length"),
        (lambda m: m["norm"].update(mean=float("nan")), "norm.mean must be finite"),
        (lambda m: m["norm"].update(std=float("inf")), "norm.std must be finite"),
        (lambda m: m.update(encoder_kwargs={"depth": 1, "bogus": 3}), "unexpected keyword argument 'bogus'"),
        (lambda m: m["frontend"].update(bogus=3), "unknown fields ['bogus']"),
    ],
)
def test_absurd_or_mistyped_config_fields_are_named_before_anything_is_built(folder, edit, field):
    _edit_config(folder, lambda m: (m.pop(CONFIG_SHA_KEY), edit(m)))
    with pytest.raises(WeightsError, match="invalid hear-abt config") as err:
        load_weights(folder)
    assert field in str(err.value)


def test_config_that_is_not_an_object_is_a_clear_error(folder):
    (folder / CONFIG_NAME).write_text("[1, 2, 3]")
    with pytest.raises(WeightsError, match="expected a JSON object, got list"):
        load_weights(folder)


def test_lone_safetensors_with_non_json_metadata_is_a_clear_error(tmp_path, state):
    path = tmp_path / "bad-meta.safetensors"
    save_file(state, path, metadata={"hear_abt_config": "{not json"})
    with pytest.raises(WeightsError, match="metadata is not valid JSON"):
        load_weights(path)


def test_training_checkpoint_missing_its_keys_is_a_clear_error(tmp_path, state):
    path = tmp_path / "partial.pt"
    torch.save({"format": TRAINING_CHECKPOINT_FORMAT, "encoder": state}, path)
    with pytest.raises(WeightsError, match=r"lacks \['model_config'\]"):
        load_weights(path)


@pytest.mark.parametrize(
    "make_bad, message",
    [
        (lambda t: t.to(torch.int64), "is torch.int64, but the encoder needs floating point"),
        (lambda t: t > 0, "is torch.bool, but the encoder needs floating point"),
        (lambda t: t.index_fill(0, torch.tensor([0]), float("nan")), "NaN/Inf"),
        (lambda t: t.index_fill(0, torch.tensor([0]), float("inf")), "NaN/Inf"),
    ],
)
def test_wrong_dtype_and_non_finite_weights_are_refused(tmp_path, state, make_bad, message):
    name = "norm.weight"
    bad = {k: make_bad(v) if k == name else v for k, v in state.items()}
    folder = save_pretrained(tmp_path / "bad", CONFIG, bad)
    with pytest.raises(WeightsError, match=message) as err:
        hear_abt.load_model(folder)
    assert name in str(err.value)


def test_nan_normalisation_statistics_are_refused_in_every_format(tmp_path, state):
    meta = json.loads(CONFIG.to_json())
    meta["norm"]["std"] = float("nan")
    path = tmp_path / "nan-norm.safetensors"
    save_file(state, path, metadata={"hear_abt_config": json.dumps(meta)})
    with pytest.raises(WeightsError, match="norm.std must be finite"):
        load_weights(path)
    pt = tmp_path / "nan-norm.pt"
    torch.save({"format": TRAINING_CHECKPOINT_FORMAT, "model_config": meta, "encoder": state}, pt)
    with pytest.raises(WeightsError, match="norm.std must be finite"):
        load_weights(pt)


def test_parse_hub_id_accepts_the_hubs_forms_and_refuses_the_rest():
    from hear_abt.hub import hub_id_problem, parse_hub_id

    assert parse_hub_id("org/name") == ("org/name", None)
    assert parse_hub_id("my-org/abt_v1.2@v1") == ("my-org/abt_v1.2", "v1")
    assert parse_hub_id("org/name@refs/pr/1") == ("org/name", "refs/pr/1")
    assert parse_hub_id("org/name@" + "0123456789abcdef" * 2 + "01234567") == (
        "org/name",
        "0123456789abcdef" * 2 + "01234567",
    )
    assert parse_hub_id("o" * 96 + "/" + "n" * 96) is not None  # the Hub's limit, exactly
    for bad in [
        "org/..",
        "org/name@../x",
        "org/name@a/../b",
        "org/name@/x",
        "org//name",
        "org/",
        "/org/name",
        "o" * 97 + "/n",
        "org/n@a b",
        "org/name@",
        "name",
        "org/name.git",
        "org/.hidden",
    ]:
        assert parse_hub_id(bad) is None, bad
        assert hub_id_problem(bad), bad


def test_unreadable_local_path_says_so(tmp_path):
    (tmp_path / "broken").symlink_to(tmp_path / "missing")
    with pytest.raises(WeightsError, match=r"exists but cannot be read: broken symlink\?"):
        load_weights(tmp_path / "broken")
    with pytest.raises(WeightsError, match=r"exists but cannot be read: broken symlink\?"):
        load_weights(tmp_path / "broken" / "config.json")
