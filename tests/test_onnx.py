"""ONNX export (hear_abt.onnx_export): both graphs give the HEAR API's answers for both encoders, many
lengths and batch sizes; they run without torch; bad input gives the HEAR API's errors."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

for _module in ("onnx", "onnxscript", "onnxruntime"):
    pytest.importorskip(_module, reason=f"ONNX export tests need {_module}: pip install 'hear-abt[onnx]'")

from checkpoints import make_checkpoint  # noqa: E402

import hear_abt  # noqa: E402
from hear_abt import (  # noqa: E402
    AudioInputError,
    WeightsError,
    cli,  # noqa: E402
)
from hear_abt import onnx_export as ox  # noqa: E402

SR = 16000
RTOL = 1e-4  # the bound: max|onnx - torch| <= 1e-4 * max|torch|, per clip


@pytest.fixture(scope="module")
def ntt(tmp_path_factory):
    """A tiny AudioNTT checkpoint exported by ``hear-abt export-onnx`` (verified)."""
    root = tmp_path_factory.mktemp("onnx_ntt")
    weights = make_checkpoint(root / "weights", "audiontt", channels=8, mlp_dim=32)
    assert cli.main(["export-onnx", str(weights), str(root / "onnx")]) == 0
    return hear_abt.load_model(weights), ox.load_onnx(root / "onnx"), root


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    """A tiny ViT_C checkpoint, exported from a loaded model (left in the mode it was in)."""
    root = tmp_path_factory.mktemp("onnx_vit")
    model = hear_abt.load_model(make_checkpoint(root / "weights", "vitc_t", depth=2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    paths = ox.export_onnx(model, root / "onnx")
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    model.eval()
    assert set(paths) == {"scene", "timestamps"}
    return model, ox.load_onnx(root / "onnx"), root


@pytest.fixture(params=["ntt", "vit"])
def pair(request):
    return request.getfixturevalue(request.param)


def check_parity(model, onnx_model, audio):
    scene = hear_abt.get_scene_embeddings(audio, model).numpy()
    emb, ts = hear_abt.get_timestamp_embeddings(audio, model)
    o_scene = onnx_model.scene_embeddings(audio)
    o_emb, o_ts = onnx_model.timestamp_embeddings(audio)
    assert o_scene.dtype == o_emb.dtype == o_ts.dtype == np.float32
    assert o_scene.shape == scene.shape and o_emb.shape == tuple(emb.shape)
    np.testing.assert_array_equal(o_ts, ts.numpy())  # timestamps in ms: identical
    errors = ox.relative_error(o_scene, scene), ox.relative_error(o_emb, emb.numpy())
    assert max(errors) <= RTOL, errors
    return errors


@pytest.mark.parametrize(
    "batch,n_samples",
    [
        (1, 1),  # one sample: one timestamp, scene padded to one window
        (2, 5000),  # shorter than a 950 ms window
        (3, SR),  # 1 s
        (2, int(3.3 * SR)),  # 3.3 s
        (1, 10 * SR),  # 10 s
        (2, 15361),  # one sample past a whole number of ViT chunks
        (4, 801),  # one sample past the first timestamp hop
    ],
)
def test_graphs_equal_the_hear_api(pair, batch, n_samples):
    model, onnx_model, _ = pair
    rng = np.random.default_rng(n_samples)
    check_parity(model, onnx_model, ox.parity_audio(rng, batch, n_samples))


def test_pure_tones_and_silence_within_the_bound(pair):
    """Where float32 STFTs differ most (far-off mel bins hold only rounding noise): why the graphs'
    front-end is float64."""
    model, onnx_model, _ = pair
    t = np.arange(int(2.2 * SR)) / SR
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    audio = np.stack([tone, np.where(t < 1.1, tone, 0.0), np.zeros_like(t)]).astype(np.float32)
    check_parity(model, onnx_model, audio)


def test_each_clip_is_independent_of_its_batch(ntt):
    model, onnx_model, _ = ntt
    audio = ox.parity_audio(np.random.default_rng(0), 3, 20000)
    alone = onnx_model.timestamp_embeddings(audio[1:2])[0]
    np.testing.assert_allclose(onnx_model.timestamp_embeddings(audio)[0][1:2], alone, rtol=1e-5, atol=1e-6)


def test_runner_feeds_large_batches_in_groups(ntt, tmp_path):
    model, onnx_model, root = ntt
    small = ox.OnnxEmbedder(root / "onnx", budget_samples=3000)  # one 2000-sample clip per run
    audio = ox.parity_audio(np.random.default_rng(1), 3, 2000)
    np.testing.assert_allclose(small.scene_embeddings(audio), onnx_model.scene_embeddings(audio), rtol=1e-6)
    emb, ts = small.timestamp_embeddings(audio)
    assert emb.shape == (3, 3, model.timestamp_embedding_size) and ts.shape == (3, 3)


def test_the_graphs_take_audio_and_say_what_they_return(pair):
    import onnx

    model, onnx_model, root = pair
    for name, outputs in (("scene", ox.SCENE_OUTPUTS), ("timestamps", ox.TIMESTAMP_OUTPUTS)):
        graph = onnx.load(str(root / "onnx" / f"{name}.onnx"))
        dims = {
            v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(graph.graph.input) + list(graph.graph.output)
        }
        assert [i.name for i in graph.graph.input] == ["audio"]
        assert [o.name for o in graph.graph.output] == list(outputs)
        assert dims["audio"] == ["batch", "samples"]
        assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert any(n.op_type == "STFT" for n in graph.graph.node)  # the front-end is inside the graph
        meta = {p.key: p.value for p in graph.metadata_props}
        assert json.loads(meta["hear_abt_config"])["encoder"] == model.config.encoder
    d = model.scene_embedding_size
    assert dims["timestamp_embeddings"] == ["batch", "n_timestamps", d] and dims["timestamps"] == [
        "batch",
        "n_timestamps",
    ]
    assert onnx_model.sample_rate == SR
    assert onnx_model.scene_embedding_size == onnx_model.timestamp_embedding_size == d
    assert sorted(p.name for p in (root / "onnx").iterdir()) == ["scene.onnx", "timestamps.onnx"]


RUN_WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None  # any import of torch now fails
import numpy as np, onnxruntime as ort
audio = np.load(sys.argv[2])
scene = ort.InferenceSession(sys.argv[1] + "/scene.onnx").run(None, {"audio": audio})[0]
emb, ts = ort.InferenceSession(sys.argv[1] + "/timestamps.onnx").run(None, {"audio": audio})
np.savez(sys.argv[3], scene=scene, emb=emb, ts=ts)
"""


def test_graphs_run_with_onnxruntime_alone(pair, tmp_path):
    _, onnx_model, root = pair
    audio = ox.parity_audio(np.random.default_rng(2), 2, 12345)
    np.save(tmp_path / "audio.npy", audio)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            RUN_WITHOUT_TORCH,
            str(root / "onnx"),
            str(tmp_path / "audio.npy"),
            str(tmp_path / "out.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with np.load(tmp_path / "out.npz") as got:
        np.testing.assert_array_equal(got["scene"], onnx_model.scene_embeddings(audio))
        emb, ts = onnx_model.timestamp_embeddings(audio)
        np.testing.assert_array_equal(got["emb"], emb)
        np.testing.assert_array_equal(got["ts"], ts)


BAD_AUDIO = [
    torch.zeros(16000),
    np.zeros(16000, dtype=np.float32),
    torch.zeros(1, 1, 16000),
    torch.zeros(1, 16000, dtype=torch.int16),
    np.zeros((1, 16000), dtype=np.int16),
    torch.zeros(1, 16000, dtype=torch.complex64),
    torch.zeros(0, 16000),
    np.zeros((2, 0), dtype=np.float32),
    torch.tensor([[0.0, float("nan"), 0.0]]),
    np.array([[0.0, 0.0], [0.0, np.inf]], dtype=np.float32),
    np.array([[0.0, 1e12, 0.0]], dtype=np.float32),
    [[0.0, 0.1]],
]


@pytest.mark.parametrize("audio", BAD_AUDIO, ids=lambda a: f"{type(a).__name__}{getattr(a, 'shape', '')}")
def test_bad_audio_gives_the_hear_api_errors(ntt, audio):
    model, onnx_model, _ = ntt
    for ours, theirs in (
        (onnx_model.scene_embeddings, hear_abt.get_scene_embeddings),
        (onnx_model.timestamp_embeddings, hear_abt.get_timestamp_embeddings),
    ):
        with pytest.raises(AudioInputError) as want:
            theirs(audio, model)
        with pytest.raises(AudioInputError) as got:
            ours(audio)
        assert str(got.value) == str(want.value)


def test_float64_audio_gives_the_float32_answer(ntt):
    _, onnx_model, _ = ntt
    audio = ox.parity_audio(np.random.default_rng(3), 2, 4000)
    np.testing.assert_array_equal(
        onnx_model.scene_embeddings(audio.astype(np.float64)), onnx_model.scene_embeddings(audio)
    )


def test_bad_weights_and_folders_are_clear_errors(ntt, tmp_path, capsys):
    missing = tmp_path / "no_such_checkpoint"
    with pytest.raises(WeightsError) as want:
        hear_abt.load_model(missing)
    with pytest.raises(WeightsError) as got:
        ox.export_onnx(missing, tmp_path / "out")
    assert str(got.value) == str(want.value)
    assert ox.main([str(missing), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert cli.main(["export-onnx", str(missing), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"error: {want.value}\n"
    assert not (tmp_path / "out").exists()

    a_file = tmp_path / "file"
    a_file.write_text("x")
    weights = ntt[2] / "weights"
    with pytest.raises(ox.OnnxExportError, match="not a folder"):
        ox.export_onnx(weights, a_file)
    with pytest.raises(SystemExit, match="^error: .*not a folder"):
        ox.main([str(weights), str(a_file)])
    with pytest.raises(ox.OnnxExportError, match="opset"):
        ox.export_onnx(weights, tmp_path / "out", opset=16)
    with pytest.raises(FileNotFoundError, match="hear-abt export-onnx"):
        ox.load_onnx(tmp_path)
    with pytest.raises(ValueError, match="budget_samples"):
        ox.OnnxEmbedder(ntt[2] / "onnx", budget_samples=0)


def test_a_failed_export_leaves_an_earlier_one_as_it_was(ntt, tmp_path, monkeypatch):
    out = tmp_path / "onnx"
    shutil.copytree(ntt[2] / "onnx", out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def fail(*args, **kwargs):
        raise ox.OnnxExportError("exporting timestamps.onnx failed: simulated")

    monkeypatch.setattr(ox, "_export_graph", fail)
    with pytest.raises(ox.OnnxExportError, match="simulated"):
        ox.export_onnx(ntt[2] / "weights", out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no staging folder left either


def test_missing_packages_are_named(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a)
    )
    with pytest.raises(ox.OnnxExportError, match=r"onnxscript.*hear-abt\[onnx\]"):
        ox.export_onnx(tmp_path / "weights", tmp_path / "out")


def test_import_needs_no_onnx_packages():
    code = (
        "import sys\n"
        "for m in ('onnx', 'onnxscript', 'onnxruntime'): sys.modules[m] = None\n"
        "import hear_abt.onnx_export as ox\n"
        "print(ox.SCENE_FILE)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=os.environ
    )
    assert done.returncode == 0 and "scene.onnx" in done.stdout, done.stderr[-2000:]
