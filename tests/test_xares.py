"""hear_abt.xares: the X-ARES encoder (X-ARES's own checker, frames = the HEAR timestamp embeddings, the
HEAR API's errors) and HEAR tasks written as X-ARES tasks, run through X-ARES's own pipeline.

The tests that use xares skip when it is not installed (``pip install 'hear-abt[xares]'``)."""

from __future__ import annotations

import importlib
import io
import json
import logging
import math
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import soundfile as sf
import torch
from checkpoints import make_checkpoint
from signals import make_signal

import hear_abt
from hear_abt import AudioInputError, WeightsError
from hear_abt.xares import (
    ABTEncoder,
    XaresTaskError,
    hear_task_config,
    write_hear_task,
    xares_decoding_problem,
)

SR = 16000
NO_XARES = "xares is not installed: pip install 'hear-abt[xares]' (or pip install xares)"


@pytest.fixture(scope="module")
def ntt_dir(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ntt"), channels=4, mlp_dim=16)


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("vit"), encoder="vitc_t", depth=1)


@pytest.fixture(scope="module")
def ntt(ntt_dir):
    return ABTEncoder(ntt_dir)


def _clips(n=2, seconds=1.3, seed=0):
    rng = np.random.default_rng(seed)
    kinds = ["harmonic", "chirp", "vowel", "noise_burst"]
    return torch.from_numpy(np.stack([make_signal(kinds[i % len(kinds)], seconds, rng) for i in range(n)]))


@pytest.fixture
def xares_globals():
    """X-ARES's TaskConfig/XaresSettings set torch's thread count, the seeds and logging.captureWarnings
    for the whole process: put them back after the test."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    logging.captureWarnings(False)


# ---- the encoder ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["ntt", "vit"])
def test_passes_xares_audio_encoder_checker(which, ntt_dir, vit_dir, xares_globals):
    checker = pytest.importorskip("xares.audio_encoder_checker", reason=NO_XARES)
    encoder = ABTEncoder(ntt_dir if which == "ntt" else vit_dir)
    assert checker.check_audio_encoder(encoder) is True


def test_attributes(ntt, ntt_dir):
    model = hear_abt.load_model(ntt_dir)
    assert type(ntt).__name__.endswith("Encoder") and isinstance(ntt, torch.nn.Module)
    assert ntt.sampling_rate == 16000 and type(ntt.sampling_rate) is int
    assert ntt.hop_size_in_ms == 50 and type(ntt.hop_size_in_ms) is int
    assert ntt.output_dim == model.timestamp_embedding_size and type(ntt.output_dim) is int
    assert not ntt.model.training


@pytest.mark.parametrize("which,options", [("ntt", {}), ("ntt", {"timestamp_mode": "fast"}), ("vit", {})])
def test_frames_are_the_hear_timestamp_embeddings(which, options, ntt_dir, vit_dir):
    source = ntt_dir if which == "ntt" else vit_dir
    audio = _clips(3, 1.3)
    hear = hear_abt.get_timestamp_embeddings(audio, hear_abt.load_model(source, **options))[0]
    frames = ABTEncoder(source, **options)(audio)
    assert frames.dtype == torch.float32 and frames.shape == hear.shape
    assert torch.equal(frames, hear)


def test_a_loaded_model_is_used_as_it_is(ntt_dir):
    model = hear_abt.load_model(ntt_dir, timestamp_mode="fast")
    encoder = ABTEncoder(model)
    assert encoder.model is model
    audio = _clips(2, 1.0)
    assert torch.equal(encoder(audio), hear_abt.get_timestamp_embeddings(audio, model)[0])


@pytest.mark.parametrize("n_samples", [1, 799, 800, 801, 16000, 16001, 50000, 160000])
def test_frames_cover_the_duration(ntt, n_samples):
    """T' = ceil(duration / hop): X-ARES's frame tasks size their labels the same way (ceil(sec / hop))."""
    frames = ntt(torch.zeros(1, n_samples))
    n = frames.shape[1]
    duration_ms = n_samples * 1000 / SR
    assert n == math.ceil(duration_ms / ntt.hop_size_in_ms)
    assert (n - 1) * ntt.hop_size_in_ms < duration_ms <= n * ntt.hop_size_in_ms


BAD_AUDIO = {
    "1-D": lambda: torch.zeros(16000),
    "3-D": lambda: torch.zeros(1, 1, 16000),
    "int16 numpy": lambda: np.zeros((1, 16000), dtype=np.int16),
    "int tensor": lambda: torch.zeros(1, 16000, dtype=torch.int32),
    "complex": lambda: torch.zeros(1, 16000, dtype=torch.complex64),
    "NaN": lambda: torch.tensor([[0.0, float("nan")] * 800]),
    "Inf": lambda: torch.tensor([[0.0, float("inf")] * 800]),
    "empty batch": lambda: torch.zeros(0, 16000),
    "zero length": lambda: torch.zeros(2, 0),
    "too loud": lambda: torch.full((1, 1600), 1e10),
    "list": lambda: [[0.0] * 1600],
}


@pytest.mark.parametrize("kind", sorted(BAD_AUDIO))
def test_bad_audio_gives_the_hear_api_error(ntt, ntt_dir, kind):
    with pytest.raises(AudioInputError) as hear:
        hear_abt.get_timestamp_embeddings(BAD_AUDIO[kind](), hear_abt.load_model(ntt_dir))
    with pytest.raises(AudioInputError) as ours:
        ntt(BAD_AUDIO[kind]())
    assert str(ours.value) == str(hear.value)


def test_bad_sources_give_the_load_model_errors(tmp_path, ntt_dir):
    missing = tmp_path / "no-such-folder" / "x.safetensors"
    for source in (missing, "not a hub id!"):
        with pytest.raises(WeightsError) as hear:
            hear_abt.load_model(source)
        with pytest.raises(WeightsError) as ours:
            ABTEncoder(source)
        assert str(ours.value) == str(hear.value)
    with pytest.raises(TypeError) as hear:
        hear_abt.load_model(ntt_dir, hop=25)
    with pytest.raises(TypeError) as ours:
        ABTEncoder(ntt_dir, hop=25)
    assert str(ours.value) == str(hear.value)
    with pytest.raises(ValueError, match="timestamp_mode"):
        ABTEncoder(ntt_dir, timestamp_mode="sometimes")
    with pytest.raises(TypeError, match="loaded model"):
        ABTEncoder(hear_abt.load_model(ntt_dir), window_batch=8)


def test_importing_it_imports_no_xares():
    code = "import sys, hear_abt.xares; print(sorted(m for m in sys.modules if m.split('.')[0] == 'xares'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- HEAR tasks as X-ARES tasks ---------------------------------------------------------------------------

KINDS = ("harmonic", "noise_burst", "clicks")  # the labels of the small task
PER_SPLIT = {"train": 4, "valid": 1, "test": 2}  # clips per label


def _hear_task(root, name="tiny-sounds", seconds=1.0, **metadata):
    """A HEAR-format scene multiclass task from numpy signals: 3 labels, 12 / 3 / 6 clips."""
    task = root / name
    rng = np.random.default_rng(0)
    meta = {
        "task_name": name,
        "embedding_type": "scene",
        "prediction_type": "multiclass",
        "split_mode": "trainvaltest",
        "splits": list(PER_SPLIT),
        "sample_duration": seconds,
        "evaluation": ["top1_acc"],
        **metadata,
    }
    for split, n in PER_SPLIT.items():
        (task / "16000" / split).mkdir(parents=True)
        labels = {}
        for i in range(n):
            for kind in KINDS:
                filename = f"{i:02d}.{kind}.wav"  # a dot in the stem: WebDataset keys cannot have one
                sf.write(
                    task / "16000" / split / filename, make_signal(kind, seconds, rng), SR, subtype="PCM_16"
                )
                labels[filename] = [kind]
        (task / f"{split}.json").write_text(json.dumps(labels))
    (task / "labelvocabulary.csv").write_text(
        "idx,label\n" + "".join(f"{i},{k}\n" for i, k in enumerate(KINDS))
    )
    (task / "task_metadata.json").write_text(json.dumps(meta))
    return task


def _tar_samples(path):
    with tarfile.open(path) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    keys = sorted({name.rsplit(".", 1)[0] for name in members})
    return {k: (members[f"{k}.wav"], json.loads(members[f"{k}.json"])) for k in keys}


def test_write_hear_task_layout(tmp_path):
    task = _hear_task(tmp_path)
    env = tmp_path / "env"
    task_file = write_hear_task(task, env)
    assert task_file == env / "tiny_sounds_task.py"
    out = env / "tiny_sounds"
    assert (out / ".audio_tar_ready").exists() and (env / "abt_encoder.py").exists()
    assert sorted(p.name for p in out.glob("*.tar")) == [
        "test-000000.tar",
        "train-000000.tar",
        "valid-000000.tar",
    ]
    info = json.loads((out / "hear_task.json").read_text())
    assert info["labels"] == list(KINDS) and info["folds"] is None
    assert info["clips"] == {s: n * len(KINDS) for s, n in PER_SPLIT.items()} and info["eval_size"] == 6
    samples = _tar_samples(out / "test-000000.tar")
    assert len(samples) == 6
    for key, (wav, label) in samples.items():
        assert "." not in key
        i, kind = key.split("_", 1)
        assert label == {"label": kind}
        assert wav == (task / "16000" / "test" / f"{i}.{kind}.wav").read_bytes()  # the file, unchanged
    # The files xares.run takes: one name ending in "_config" / "Encoder" each.
    text = task_file.read_text()
    assert "def tiny_sounds_config(encoder):" in text
    assert "from hear_abt.xares import ABTEncoder" in (env / "abt_encoder.py").read_text()


def test_write_hear_task_shards_and_folds(tmp_path):
    task = _hear_task(tmp_path, split_mode="new_split_kfold")
    write_hear_task(task, tmp_path / "env", "folds", shard_size=5)
    out = tmp_path / "env" / "folds"
    names = sorted(p.name for p in out.glob("*.tar"))
    assert names == [
        "wds-audio-fold-test-000000.tar",
        "wds-audio-fold-test-000001.tar",
        "wds-audio-fold-train-000000.tar",
        "wds-audio-fold-train-000001.tar",
        "wds-audio-fold-train-000002.tar",
        "wds-audio-fold-valid-000000.tar",
    ]
    assert sum(len(_tar_samples(out / n)) for n in names) == 21
    assert json.loads((out / "hear_task.json").read_text())["folds"] == ["train", "valid", "test"]


@pytest.mark.parametrize(
    "change,message",
    [
        ({"embedding_type": "event"}, "only scene multiclass"),
        ({"prediction_type": "multilabel"}, "only scene multiclass"),
        ({"splits": ["train", "test"]}, "train, valid, test"),
        ("two labels", "one known label per clip"),
        ("unknown label", "one known label per clip"),
        ("missing clip", "cannot be read"),
        ("no metadata", "not a HEAR task folder"),
    ],
)
def test_write_hear_task_rejects(tmp_path, change, message):
    task = _hear_task(tmp_path)
    if isinstance(change, dict):
        meta = json.loads((task / "task_metadata.json").read_text())
        (task / "task_metadata.json").write_text(json.dumps({**meta, **change}))
    elif change == "no metadata":
        (task / "task_metadata.json").unlink()
    else:
        labels = json.loads((task / "train.json").read_text())
        first = sorted(labels)[0]
        if change == "missing clip":
            (task / "16000" / "train" / first).unlink()
        else:
            labels[first] = ["harmonic", "clicks"] if change == "two labels" else ["trumpet"]
            (task / "train.json").write_text(json.dumps(labels))
    with pytest.raises(XaresTaskError, match=message):
        write_hear_task(task, tmp_path / "env")


def test_command_line(tmp_path, capsys):
    from hear_abt.xares import main

    task = _hear_task(tmp_path)
    assert main([str(task), str(tmp_path / "env"), "--name", "sounds"]) == 0
    out = capsys.readouterr().out
    assert "train 12, valid 3, test 6 clips" in out
    assert "-m xares.run env/abt_encoder.py env/sounds_task.py --max-jobs 0" in out
    assert main([str(tmp_path / "nowhere"), str(tmp_path / "env")]) == 2
    assert "not a HEAR task folder" in capsys.readouterr().err
    with pytest.raises(XaresTaskError, match="named like a package"):
        write_hear_task(task, tmp_path / "tasks")


def _soundfile_load(path, *args, **kwargs):
    """Stand-in for torchaudio.load (which needs TorchCodec + FFmpeg from torchaudio 2.9 on)."""
    data, sr = sf.read(path, dtype="float32", always_2d=True)
    return torch.from_numpy(data.T.copy()), sr


@pytest.fixture
def xares_can_decode(monkeypatch):
    """X-ARES decodes its tars with torchaudio.load: where that cannot (no TorchCodec/FFmpeg), read the
    WAVs with soundfile instead, so that the rest of X-ARES's pipeline runs as it is."""
    if xares_decoding_problem() is not None:
        import torchaudio

        monkeypatch.setattr(torchaudio, "load", _soundfile_load)
    assert xares_decoding_problem() is None


def test_xares_runs_the_written_task_end_to_end(
    tmp_path, monkeypatch, ntt_dir, xares_globals, xares_can_decode
):
    pytest.importorskip("xares.task", reason=NO_XARES)
    from xares.task import XaresTask
    from xares.utils import attr_from_py_path

    write_hear_task(_hear_task(tmp_path), tmp_path / "env")
    # As xares.run loads them: the one "...Encoder" of the encoder file, the one "..._config" of the task file.
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.setenv("HEAR_ABT_WEIGHTS", str(ntt_dir))
    encoder = attr_from_py_path("env/abt_encoder.py", endswith="Encoder")()
    assert isinstance(encoder, ABTEncoder)
    config = attr_from_py_path("env/tiny_sounds_task.py", endswith="_config")(encoder)
    config.num_encoder_workers = 0  # encode in this process
    config.epochs = 3
    task = XaresTask(config)
    task.make_encoded_tar()

    # What X-ARES stored for each test clip: the clip's HEAR timestamp embeddings, and its label.
    model = hear_abt.load_model(ntt_dir)
    test_tar = next(
        (tmp_path / "env" / "tiny_sounds" / "embeddings" / "ABTEncoder").glob("wds-encoded-test*.tar")
    )
    with tarfile.open(test_tar) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    stored = [n for n in members if n.endswith(".npy")]
    assert len(stored) == 6
    for name in stored:
        frames = torch.from_numpy(np.load(io.BytesIO(members[name])))
        label = json.loads(members[name[: -len(".npy")] + ".json"])["label"]
        i = name.split("_", 1)[0]
        audio, _ = sf.read(tmp_path / "tiny-sounds" / "16000" / "test" / f"{i}.{label}.wav", dtype="float32")
        expected = hear_abt.get_timestamp_embeddings(torch.from_numpy(audio)[None], model)[0][0]
        assert frames.shape == (20, encoder.output_dim)
        torch.testing.assert_close(frames, expected, rtol=1e-5, atol=1e-5)

    mlp_score, mlp_size = task.run_mlp()
    knn_score, knn_size = task.run_knn()
    assert 0.0 <= mlp_score <= 1.0 and 0.0 <= knn_score <= 1.0
    assert mlp_size == knn_size == 6


def test_task_config_refuses_a_setup_that_cannot_decode(tmp_path, monkeypatch, ntt, xares_globals):
    pytest.importorskip("xares.task", reason=NO_XARES)
    import torchaudio

    def no_torchcodec(*args, **kwargs):
        raise ImportError("TorchCodec is required for load_with_torchcodec.")

    write_hear_task(_hear_task(tmp_path), tmp_path / "env")
    monkeypatch.setattr(torchaudio, "load", no_torchcodec)
    config = hear_task_config(None, tmp_path / "env", "tiny_sounds")  # xares.run's download stage: no encoder
    assert config.output_dim == 3 and config.metric == "accuracy" and config.test_split == "test"
    with pytest.raises(XaresTaskError, match="TorchCodec and FFmpeg"):
        hear_task_config(ntt, tmp_path / "env", "tiny_sounds")
