"""Weights from the Hub through the real huggingface_hub code, against the local stand-in."""

import time

import pytest
import torch

import hear_abt
from hear_abt.config import ModelConfig, NormStats
from hear_abt.embedder import ABTEmbedder
from hear_abt.weights import (
    CONFIG_NAME,
    DEFAULT_HUB_WEIGHTS,
    WEIGHTS_ENV,
    WEIGHTS_NAME,
    WeightsError,
    save_pretrained,
)

REPO = "abt-test/tiny-vit"
CONFIG = ModelConfig(encoder="vitc_t", encoder_kwargs={"depth": 1}, norm=NormStats(-5.0, 3.0))


@pytest.fixture
def published(hf_hub_env, tmp_path):
    torch.manual_seed(0)
    folder = save_pretrained(tmp_path / "ckpt", CONFIG, ABTEmbedder(CONFIG).encoder.state_dict())
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        hf_hub_env.server.add_file(REPO, "v1", name, (folder / name).read_bytes())
    return hf_hub_env


def scene(model):
    return hear_abt.get_scene_embeddings(torch.linspace(-0.1, 0.1, 16000)[None], model)


def test_hub_id_with_revision_downloads_and_matches_local(published, tmp_path):
    model = hear_abt.load_model(f"{REPO}@v1")
    assert model.config == CONFIG
    local = hear_abt.load_model(tmp_path / "ckpt")
    assert torch.equal(scene(model), scene(local))
    assert published.server.count("GET", WEIGHTS_NAME) == 1


def test_second_load_uses_the_cache_and_works_offline(published):
    hear_abt.load_model(f"{REPO}@v1")
    hear_abt.load_model(f"{REPO}@v1")
    assert published.server.count("GET", WEIGHTS_NAME) == 1  # no second download
    published.server.stop()
    published.set_offline(True)
    assert hear_abt.load_model(f"{REPO}@v1").config == CONFIG


def test_environment_variable_can_name_a_hub_id(published, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, f"{REPO}@v1")
    assert hear_abt.load_model().config == CONFIG


def test_unknown_repo_revision_and_file_are_clear_errors(published):
    with pytest.raises(WeightsError, match="not found"):
        hear_abt.load_model("abt-test/no-such-repo")
    with pytest.raises(WeightsError, match="revision 'v9' does not exist"):
        hear_abt.load_model(f"{REPO}@v9")
    published.server.add_file("abt-test/not-a-model", "main", "README.md", b"hello")
    with pytest.raises(WeightsError, match="not a hear-abt checkpoint"):
        hear_abt.load_model("abt-test/not-a-model")


def test_no_network_and_empty_cache_explains_what_to_do(published):
    published.server.stop()
    with pytest.raises(WeightsError, match=WEIGHTS_ENV):
        hear_abt.load_model(f"{REPO}@v1")
    published.set_offline(True)
    with pytest.raises(WeightsError, match="not in the local cache"):
        hear_abt.load_model(f"{REPO}@v1")


def test_corrupt_download_is_caught_by_the_checksum(published):
    published.server.corrupt(REPO, "v1", WEIGHTS_NAME, mode="flip")
    with pytest.raises(WeightsError, match="corrupt or truncated"):
        hear_abt.load_model(f"{REPO}@v1")


def test_bare_load_model_without_released_weights_says_how_to_get_some(hf_hub_env, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    with pytest.raises(WeightsError) as err:
        hear_abt.load_model()
    message = str(err.value)
    assert DEFAULT_HUB_WEIGHTS["audiontt"].split("@")[0] in message
    assert "training.pretrain" in message and WEIGHTS_ENV in message


def test_bare_load_model_fails_at_once_without_asking_the_hub(hf_hub_env, monkeypatch, capsys):
    import hear_abt.audiontt
    import hear_abt.vitc_b

    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    for load in (hear_abt.load_model, hear_abt.audiontt.load_model, hear_abt.vitc_b.load_model):
        with pytest.raises(WeightsError, match="No released hear-abt .* weights exist yet") as err:
            load()
        assert "has not been published" in str(err.value) and WEIGHTS_ENV in str(err.value)
    assert sum(hf_hub_env.server.requests.values()) == 0  # no request, hence no retries either
    from hear_abt.cli import main

    assert main(["info"]) == 2
    assert "No released hear-abt audiontt weights exist yet" in capsys.readouterr().err


def test_hub_404_says_the_repo_does_not_exist(published):
    with pytest.raises(WeightsError, match="'abt-test/no-such-repo' does not exist") as err:
        hear_abt.load_model("abt-test/no-such-repo@v1")
    assert "training.pretrain" in str(err.value)  # and what to do instead


# ------------------------------------------------------------------ hostile Hub ids and local paths

BAD_HUB_IDS = [
    ("abt-test/..", "path component"),
    ("../tiny-vit", "starts with '.'"),
    ("abt-test/tiny-vit@../../../../etc", "'..' path component"),
    ("abt-test/tiny-vit@v1/../../x", "'..' path component"),
    ("abt-test/tiny-vit@/etc/passwd", "starts or ends with '/'"),
    ("abt-test/tiny-vit@refs//pr", "empty component"),
    ("abt-test/tiny-vit@", "revision after '@' is empty"),
    ("abt-test//tiny-vit", "empty component"),
    ("/abt-test/tiny-vit", "starts with '/'"),
    ("abt-test/" + "x" * 97, "97 characters; the Hub allows at most 96"),
    ("o" * 200 + "/tiny-vit", "200 characters; the Hub allows at most 96"),
    ("abt-test/tiny vit", "character(s) ' ' that the Hub does not allow"),
    ("abt-test/tiny-vit@v1;rm", "character(s) ';'"),
    ("abt-test/t\u00efny", "that the Hub does not allow"),
    ("abt-test/tiny--vit", "-- or .."),  # huggingface_hub.utils.validate_repo_id's words
    ("abt-test/a/b", "exactly one '/'"),
]


@pytest.mark.parametrize("text,problem", BAD_HUB_IDS)
def test_malformed_hub_ids_are_refused_before_any_request(published, text, problem):
    with pytest.raises(WeightsError, match="valid Hub id") as err:
        hear_abt.load_model(text)
    assert problem in str(err.value)
    assert sum(published.server.requests.values()) == 0


@pytest.mark.parametrize(
    "repo_id,revision,problem",
    [
        ("abt-test/tiny-vit", "../../outside", "'..' path component"),
        ("abt-test/tiny-vit", "/abs", "starts or ends with '/'"),
        ("abt-test/..", None, "path component"),
        ("abt-test/" + "y" * 120, None, "at most 96"),
    ],
)
def test_load_hub_itself_validates_before_any_request(published, repo_id, revision, problem):
    from hear_abt.hub import load_hub

    with pytest.raises(WeightsError, match="invalid Hub id") as err:
        load_hub(repo_id, revision, "test")
    assert problem in str(err.value)
    assert sum(published.server.requests.values()) == 0


def test_commit_and_pr_style_revisions_stay_valid(published):
    commit = published.server.commit(REPO, "v1")
    assert hear_abt.load_model(f"{REPO}@{commit}").config == CONFIG  # a 40-hex commit id
    with pytest.raises(WeightsError, match="revision 'refs/pr/1' does not exist"):  # asked, not refused
        hear_abt.load_model(f"{REPO}@refs/pr/1")
    assert published.server.count(contains="refs") > 0


def test_broken_symlink_or_loop_is_a_local_error_never_a_hub_request(published, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "abt-test").mkdir()
    (tmp_path / "abt-test" / "tiny-vit").symlink_to(tmp_path / "gone")  # Hub-shaped, broken
    with pytest.raises(WeightsError, match=r"exists but cannot be read: broken symlink\?"):
        hear_abt.load_model("abt-test/tiny-vit")
    (tmp_path / "loop").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop")
    with pytest.raises(WeightsError, match="exists but cannot be read: a symlink loop"):
        hear_abt.load_model("loop/model")  # the loop is a parent of a Hub-shaped text
    with pytest.raises(WeightsError, match="symlink loop"):
        hear_abt.load_model("loop")
    (tmp_path / "dead").symlink_to(tmp_path / "nowhere")
    with pytest.raises(WeightsError, match=r"broken symlink\?"):
        hear_abt.load_model("dead/name@v1")
    assert sum(published.server.requests.values()) == 0
    # Hub-shaped text with nothing on disk does go to the Hub.
    assert hear_abt.load_model(f"{REPO}@v1").config == CONFIG


# ------------------------------------------------------------------ an unreachable Hub, with real back-off

# huggingface_hub retries a failed metadata request of a file it has not cached 5 times with back-off
# (1+2+4+8+8 s; 60 s timeout each): a refused connection took ~24 s to report, a hung Hub minutes.
FAST = 8.0


def _timed_load(source):
    """(model or None, WeightsError or None, seconds taken)."""
    start = time.perf_counter()
    try:
        model, err = hear_abt.load_model(source), None
    except WeightsError as error:
        model, err = None, error
    return model, err, time.perf_counter() - start


def test_refused_connection_is_reported_within_seconds(published, real_backoff):
    published.server.stop()
    model, err, seconds = _timed_load(f"{REPO}@v1")
    assert model is None and seconds < FAST, seconds
    message = str(err)
    assert f"the Hub at {published.endpoint} cannot be reached" in message
    assert "not in the local cache" in message and WEIGHTS_ENV in message


def test_hung_hub_is_reported_after_one_metadata_timeout(published, real_backoff, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 1)  # the library's knob for metadata requests
    published.server.stall()
    model, err, seconds = _timed_load(f"{REPO}@v1")
    assert model is None and seconds < FAST, seconds
    assert "cannot be reached" in str(err) and "not in the local cache" in str(err)


def test_cached_model_loads_within_seconds_with_the_hub_down_or_hung(published, real_backoff, monkeypatch):
    from huggingface_hub import constants

    hear_abt.load_model(f"{REPO}@v1")  # now in the cache
    published.server.stop()
    model, err, seconds = _timed_load(f"{REPO}@v1")
    assert err is None and model.config == CONFIG and seconds < FAST, seconds
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 1)
    published.server.stall()
    model, err, seconds = _timed_load(f"{REPO}@v1")
    assert err is None and model.config == CONFIG and seconds < FAST, seconds
    published.server.start()  # back up: asked again, nothing downloaded twice
    assert hear_abt.load_model(f"{REPO}@v1").config == CONFIG
    assert published.server.count("GET", WEIGHTS_NAME) == 1


def test_hub_answering_server_errors_is_reported_within_seconds_and_the_cache_still_serves(
    published, real_backoff
):
    published.server.outage(503)
    model, err, seconds = _timed_load(f"{REPO}@v1")
    assert model is None and seconds < FAST, seconds
    assert "cannot be reached" in str(err) and "503" in str(err)
    published.server.outage(None)
    hear_abt.load_model(f"{REPO}@v1")  # now in the cache
    published.server.outage(503)
    model, err, seconds = _timed_load(f"{REPO}@v1")
    assert err is None and model.config == CONFIG and seconds < FAST, seconds


def test_cached_commit_loads_without_any_request(published):
    commit = published.server.commit(REPO, "v1")
    hear_abt.load_model(f"{REPO}@{commit}")
    n = len(published.server.log)
    assert hear_abt.load_model(f"{REPO}@{commit}").config == CONFIG
    assert len(published.server.log) == n
