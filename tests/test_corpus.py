"""abt_eval.corpus: the synthetic pre-training corpus (format, determinism, resume, disjointness)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from sounds import needs_sound_programs

from abt_eval import corpus, devsuite, sounds
from hear_abt.config import SAMPLE_RATE

pytestmark = needs_sound_programs(*corpus.SOUNDFONTS)

HOURS = 0.01  # 4 clips: one block, so one clip of each kind


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "a"
    meta = corpus.build_corpus(out, hours=HOURS, seed=3, jobs=1, progress=False)
    return out, meta


def _wavs(out: Path) -> list[Path]:
    return sorted((out / "audio").glob("*.wav"))


def test_clip_format_and_balance(tiny):
    out, meta = tiny
    wavs = _wavs(out)
    assert len(wavs) == meta["clips"] == 4 and meta["written_this_run"] == 4
    assert sorted(p.name.split("-")[1][:-4] for p in wavs) == sorted(corpus.KINDS)
    assert not list((out / "audio").glob("*.tmp"))
    for p in wavs:
        info = sf.info(str(p))
        assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
        assert info.frames == 10 * SAMPLE_RATE
        x, _ = sf.read(str(p), dtype="float32")
        assert np.isfinite(x).all() and 0.25 < np.abs(x).max() <= 1.0
        assert np.sqrt(np.mean(x**2)) > 1e-3, f"{p.name} is nearly silent"
    on_disk = json.loads((out / "corpus.json").read_text())
    assert on_disk["complete"] and on_disk["settings"]["seed"] == 3
    assert [d["filename"] for d in on_disk["clip_designs"]] == [p.name for p in wavs]
    assert sum(on_disk["summary"]["clips_per_kind"].values()) == 4


def test_same_seed_same_bytes_and_design_is_per_clip(tiny, tmp_path):
    out, _ = tiny
    other = tmp_path / "b"
    corpus.build_corpus(other, hours=HOURS, seed=3, jobs=2, progress=False)
    for p in _wavs(out):
        assert (other / "audio" / p.name).read_bytes() == p.read_bytes(), p.name
    # a clip's design depends on (seed, index) only, not on the corpus size
    assert corpus.design_clip(3, 2) == corpus.design_clip(3, 2)
    assert corpus.design_clip(3, 2) != corpus.design_clip(4, 2)


def test_resume_writes_nothing_then_only_the_missing_clip(tiny, tmp_path):
    out, _ = tiny
    copy = tmp_path / "c"
    shutil.copytree(out, copy)
    before = {p.name: p.stat().st_mtime_ns for p in _wavs(copy)}
    meta = corpus.build_corpus(copy, hours=HOURS, seed=3, jobs=1, progress=False)
    assert meta["written_this_run"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in _wavs(copy)} == before
    victim = next(p for p in _wavs(copy) if "music" in p.name or "mix" in p.name)
    victim.unlink()
    (copy / "audio" / "c999999-x.wav.tmp").write_bytes(b"partial")  # left by an interrupted run
    meta = corpus.build_corpus(copy, hours=HOURS, seed=3, jobs=1, progress=False)
    assert meta["written_this_run"] == 1
    assert victim.read_bytes() == (out / "audio" / victim.name).read_bytes()
    assert not list((copy / "audio").glob("*.tmp"))
    with pytest.raises(SystemExit):  # another seed in the same folder would mix two corpora
        corpus.build_corpus(copy, hours=HOURS, seed=4, jobs=1, progress=False)


def _texts(design: dict) -> list[str]:
    if design["kind"] == "speech":
        return [u["text"] for u in design["utterances"]]
    if design["kind"] == "mix":
        return [t for c in design["components"] for t in _texts(c)]
    return []


def test_disjoint_from_the_suite(tiny):
    out, meta = tiny
    suite_words = {w.lower() for w in devsuite.WORDS + devsuite.EVENT_WORDS}
    designs = [corpus.design_clip(s, i) for s in range(3) for i in range(200)]
    texts = [t for d in designs + meta["clip_designs"] for t in _texts(d)]
    assert len(texts) > 100
    tokens = {tok.lower() for t in texts for tok in t.split()}
    assert not tokens & suite_words
    voices = {
        v["voice"]
        for d in designs
        for c in ([d] if d["kind"] != "mix" else d["components"])
        if c["kind"] == "speech"
        for v in c["voices"]
    }
    assert voices and not any(v.split("+")[0].startswith("en") for v in voices)
    # the suite's soundfont is never used, and is refused if asked for
    used = json.loads((out / "corpus.json").read_text())["settings"]["soundfonts"]
    suite = Path(sounds.DEFAULT_SOUNDFONT).resolve()
    assert used and all(Path(s).resolve() != suite for s in used)
    with pytest.raises(SystemExit):
        corpus.check_soundfonts([sounds.DEFAULT_SOUNDFONT])
