"""Push to the loopback Hub and load back through the real huggingface_hub client over HTTP."""
from __future__ import annotations

import pytest
import torch
from huggingface_hub import HfApi, ModelCard

from foundation.errors import CheckpointError, ConfigError, HubError
from foundation.hub import CONFIG_NAME, WEIGHTS_NAME, ModelCardInfo, download_folder, push_folder
from tests.hub._helpers import ToyConfig, ToyNet, inputs, randomized


def _exact(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_push_then_download_into_fresh_cache_gives_identical_outputs(hub_endpoint, tmp_path):
    config = ToyConfig(hidden=(9, 4))
    model = randomized(config)
    card = ModelCardInfo(description="pushed", metrics={"acc": 0.75}, dataset_name="synthetic")
    sha = model.push_to_hub("lab/toy", commit_message="first export", card=card)
    assert len(sha) == 40 and hub_endpoint.server.repos["lab/toy"].branches["main"] == sha

    cache = hub_endpoint.fresh_cache()
    loaded = ToyNet.from_pretrained("lab/toy", cache_dir=cache)
    assert loaded.config == config
    _exact(loaded(inputs(config)), model(inputs(config)))
    assert (cache / "models--lab--toy" / "snapshots" / sha / WEIGHTS_NAME).is_file()

    routes = {(method, path) for method, path in hub_endpoint.server.requests}
    for route in [("POST", "/api/repos/create"), ("POST", "/api/validate-yaml"),
                  ("POST", "/api/models/lab/toy/preupload/main"), ("POST", "/api/models/lab/toy/commit/main"),
                  ("GET", "/api/models/lab/toy/revision/main"), ("HEAD", f"/lab/toy/resolve/{sha}/{WEIGHTS_NAME}"),
                  ("GET", f"/lab/toy/resolve/{sha}/{WEIGHTS_NAME}")]:
        assert route in routes, route

    snapshot = download_folder("lab/toy", cache_dir=hub_endpoint.fresh_cache())
    assert sorted(p.name for p in snapshot.iterdir()) == ["README.md", CONFIG_NAME, WEIGHTS_NAME]
    remote_card = ModelCard.load(snapshot / "README.md")
    assert remote_card.data.library_name == "foundation-suite" and remote_card.data.eval_results[0].metric_value == 0.75


def test_revisions_load_the_right_weights(hub_endpoint, tmp_path):
    first, second = randomized(seed=1), randomized(seed=2)
    export = tmp_path / "export"
    first.save_pretrained(export)
    sha1 = push_folder(export, "lab/rev", commit_message="v1")
    second.save_pretrained(export)
    sha2 = push_folder(export, "lab/rev", commit_message="v2")
    assert sha1 != sha2
    x = inputs()
    _exact(ToyNet.from_pretrained("lab/rev", revision=sha1, cache_dir=hub_endpoint.fresh_cache())(x), first(x))
    _exact(ToyNet.from_pretrained("lab/rev", revision="main", cache_dir=hub_endpoint.fresh_cache())(x), second(x))
    # one shared cache: the first commit stays addressable after main moved on
    shared = hub_endpoint.fresh_cache()
    _exact(ToyNet.from_pretrained("lab/rev", cache_dir=shared)(x), second(x))
    _exact(ToyNet.from_pretrained("lab/rev", revision=sha1, cache_dir=shared)(x), first(x))
    assert hub_endpoint.server.repos["lab/rev"].branches["main"] == sha2


def test_push_to_a_branch_leaves_main_alone(hub_endpoint, tmp_path):
    main_model, dev_model = randomized(seed=3), randomized(seed=4)
    main_sha = main_model.push_to_hub("lab/branchy")
    dev_sha = dev_model.push_to_hub("lab/branchy", revision="dev")
    x = inputs()
    _exact(ToyNet.from_pretrained("lab/branchy", revision="dev", cache_dir=hub_endpoint.fresh_cache())(x), dev_model(x))
    _exact(ToyNet.from_pretrained("lab/branchy", cache_dir=hub_endpoint.fresh_cache())(x), main_model(x))
    assert hub_endpoint.server.repos["lab/branchy"].branches == {"main": main_sha, "dev": dev_sha}


def test_push_folder_validates_before_any_request(hub_endpoint, tmp_path):
    with pytest.raises(CheckpointError, match="no such folder"):
        push_folder(tmp_path / "missing", "lab/x")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / CONFIG_NAME).write_text("{}")
    with pytest.raises(CheckpointError, match=r"not an exported model; expected config\.json plus model\.safetensors"):
        push_folder(tmp_path / "half", "lab/x")
    randomized().save_pretrained(tmp_path / "ok")
    with pytest.raises(ConfigError, match="repo id 'not a repo' is not valid"):
        push_folder(tmp_path / "ok", "not a repo")
    assert hub_endpoint.server.requests == []


def test_private_push_refuses_an_existing_public_repo(hub_endpoint, tmp_path):
    randomized().save_pretrained(tmp_path / "m")
    push_folder(tmp_path / "m", "lab/public")
    before = hub_endpoint.server.repos["lab/public"].branches["main"]
    with pytest.raises(HubError, match="exists and is public but private=True"):
        push_folder(tmp_path / "m", "lab/public", private=True)
    assert hub_endpoint.server.repos["lab/public"].branches["main"] == before
    push_folder(tmp_path / "m", "lab/secret", private=True)
    assert hub_endpoint.server.repos["lab/secret"].private


def test_unknown_repo_and_revision_raise_hub_errors(hub_endpoint, tmp_path):
    with pytest.raises(HubError, match=rf"'lab/nothing' on {hub_endpoint.url}: repository not found"):
        ToyNet.from_pretrained("lab/nothing", cache_dir=hub_endpoint.fresh_cache())
    with pytest.raises(HubError, match=r"if 'exports/toy' was meant as a local folder: .*exports/toy does not exist"):
        ToyNet.from_pretrained("exports/toy", cache_dir=hub_endpoint.fresh_cache())
    randomized().push_to_hub("lab/known")
    with pytest.raises(HubError, match=r"at revision 'nope' on .*: revision not found"):
        ToyNet.from_pretrained("lab/known", revision="nope", cache_dir=hub_endpoint.fresh_cache())


def test_repo_without_weights_is_a_checkpoint_error(hub_endpoint, tmp_path):
    folder = tmp_path / "cfg-only"
    folder.mkdir()
    (folder / CONFIG_NAME).write_text('{"model_name": "hub-toy"}')
    HfApi().create_repo("lab/cfg-only")
    HfApi().upload_folder(repo_id="lab/cfg-only", folder_path=folder)
    with pytest.raises(CheckpointError, match=r"Hub repo lab/cfg-only@[0-9a-f]{40} .*no model\.safetensors"):
        ToyNet.from_pretrained("lab/cfg-only", cache_dir=hub_endpoint.fresh_cache())


def test_invalid_card_front_matter_is_refused_before_any_request(hub_endpoint, tmp_path):
    randomized().save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "README.md").write_text("---\ntags: [unclosed\n---\n# card\n")
    with pytest.raises(CheckpointError, match=r"README\.md: the front matter is not valid YAML"):
        push_folder(tmp_path / "m", "lab/card")
    assert hub_endpoint.server.requests == []


def test_server_error_becomes_hub_error_and_leaves_the_branch(hub_endpoint, tmp_path, monkeypatch):
    from tests._support.hub_server import _HttpError

    randomized(seed=5).save_pretrained(tmp_path / "m")
    sha = push_folder(tmp_path / "m", "lab/flaky")
    randomized(seed=6).save_pretrained(tmp_path / "m")

    def failing_commit(repo_id, rev, raw):
        raise _HttpError(500, "storage backend unavailable")

    monkeypatch.setattr(hub_endpoint.server, "commit", failing_commit)
    with pytest.raises(HubError, match=rf"push to 'lab/flaky' on {hub_endpoint.url}: HTTP 500"):
        push_folder(tmp_path / "m", "lab/flaky")
    assert hub_endpoint.server.repos["lab/flaky"].branches["main"] == sha


def test_a_download_cut_off_once_is_resumed_to_the_exact_weights(hub_endpoint):
    model = randomized(seed=5)
    model.push_to_hub("lab/cut")
    hub_endpoint.server.cut_downloads[WEIGHTS_NAME] = 1  # the first GET of the weights stops halfway
    loaded = ToyNet.from_pretrained("lab/cut", cache_dir=hub_endpoint.fresh_cache())
    _exact(loaded(inputs()), model(inputs()))
    assert hub_endpoint.server.cut_downloads[WEIGHTS_NAME] == 0
    gets = [p for m, p in hub_endpoint.server.requests if m == "GET" and p.endswith(WEIGHTS_NAME)]
    assert len(gets) >= 2  # the cut one and the resumed one


def test_a_download_that_keeps_failing_is_a_hub_error_and_nothing_partial_loads(hub_endpoint):
    randomized(seed=6).push_to_hub("lab/cut-always")
    hub_endpoint.server.cut_downloads[WEIGHTS_NAME] = 1000
    cache = hub_endpoint.fresh_cache()
    with pytest.raises(HubError, match=r"download .lab/cut-always.*peer closed connection without sending complete"):
        ToyNet.from_pretrained("lab/cut-always", cache_dir=cache)
    snapshots = list(cache.glob("models--lab--cut-always/snapshots/*/*"))
    assert WEIGHTS_NAME not in {p.name for p in snapshots}  # no partial weights file in a snapshot
    hub_endpoint.server.cut_downloads[WEIGHTS_NAME] = 0
    ToyNet.from_pretrained("lab/cut-always", cache_dir=cache)  # the same cache recovers once the Hub serves it
