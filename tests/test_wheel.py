"""The distribution as users get it: a wheel built from the tree works outside the repository, and the
three packages depend on each other in one direction only (hear_abt <- training <- abt_eval)."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "-q",
            "-w",
            str(out),
        ],
        check=True,
        capture_output=True,
        cwd=out,
    )
    (wheel,) = out.glob("hear_abt-*.whl")
    root = out / "unpacked"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(root)
    return root


def run_from_wheel(root: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``python *args`` in ``cwd`` (outside the repository) with the wheel's files first on the path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(root)
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def test_wheel_ships_every_package_and_its_modules(wheel_root):
    for package in ("hear_abt", "hear_abt/encoders", "training", "abt_eval"):
        shipped = {p.name for p in (wheel_root / package).glob("*.py")}
        in_tree = {p.name for p in (REPO / package).glob("*.py")}
        assert shipped == in_tree, f"{package}: missing from the wheel: {sorted(in_tree - shipped)}"
    (meta,) = wheel_root.glob("hear_abt-*.dist-info/METADATA")
    text = meta.read_text()
    import hear_abt

    assert f"Version: {hear_abt.__version__}" in text  # the version has one home: hear_abt.__version__
    assert "Provides-Extra: eval" in text and "Provides-Extra: hear-tools" in text


def test_commands_run_from_the_wheel_outside_the_repository(wheel_root, tmp_path):
    from hear_abt.config import ModelConfig
    from hear_abt.embedder import ABTEmbedder
    from hear_abt.weights import save_pretrained

    torch.manual_seed(0)
    config = ModelConfig(encoder_kwargs={"channels": 8, "mlp_dim": 32})
    save_pretrained(tmp_path / "model", config, ABTEmbedder(config).encoder.state_dict())
    import numpy as np
    import soundfile as sf

    sf.write(tmp_path / "a.wav", (0.1 * np.sin(np.arange(24000) / 10)).astype(np.float32), 24000)

    where = run_from_wheel(
        wheel_root,
        tmp_path,
        "-c",
        "import hear_abt, training, abt_eval; print(hear_abt.__file__, training.__file__, abt_eval.__file__)",
    )
    assert where.returncode == 0, where.stderr
    assert all(str(wheel_root) in f for f in where.stdout.split()), where.stdout  # not the checkout's files

    embed = run_from_wheel(
        wheel_root,
        tmp_path,
        "-m",
        "hear_abt.cli",
        "embed",
        "a.wav",
        "--weights",
        "model",
        "--out",
        "emb.npz",
        "--quiet",
    )
    assert embed.returncode == 0, embed.stderr
    with np.load(tmp_path / "emb.npz") as emb:
        assert emb["scene_embeddings"].shape == (1, config_dim(config))

    for module in ("training.pretrain", "abt_eval.hear_eval", "abt_eval.devsuite", "training.prepare"):
        shown = run_from_wheel(wheel_root, tmp_path, "-m", module, "--help")
        assert shown.returncode == 0 and "usage:" in shown.stdout, f"{module}: {shown.stderr[-2000:]}"
    compat = run_from_wheel(wheel_root, tmp_path, "-m", "abt_eval.heareval_compat")
    assert "usage" in (compat.stdout + compat.stderr).lower()


def config_dim(config) -> int:
    from hear_abt.embedder import ABTEmbedder

    return ABTEmbedder(config).scene_embedding_size


@pytest.mark.parametrize(
    "module, forbidden",
    [
        ("hear_abt", ("training", "abt_eval")),
        ("hear_abt.cli", ("training", "abt_eval")),
        ("hear_abt.audiontt", ("training", "abt_eval")),
        ("training.pretrain", ("abt_eval",)),
        ("training.demo", ("abt_eval",)),
    ],
)
def test_packages_import_in_one_direction_only(module, forbidden):
    code = (
        f"import sys, {module}; bad = sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r}); "
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"importing {module} pulls in {done.stdout.strip()} {done.stderr[-500:]}"
