"""An unreachable Hub: HubError naming the endpoint, no token in the message, local files untouched."""
from __future__ import annotations

import pytest

from foundation.errors import HubError
from foundation.hub import download_folder, push_folder
from tests._support.hub_fixtures import TEST_TOKEN
from tests.hub._helpers import ToyNet, folder_digest, randomized


def test_push_to_a_dead_endpoint_names_it_and_leaves_the_folder(dead_endpoint, tmp_path):
    folder = tmp_path / "export"
    randomized().save_pretrained(folder)
    before = folder_digest(folder)
    with pytest.raises(HubError, match=rf"push to 'lab/toy' on {dead_endpoint.url}: cannot reach the Hub") as info:
        push_folder(folder, "lab/toy", token=TEST_TOKEN)
    assert "HF_ENDPOINT" in str(info.value) and TEST_TOKEN not in str(info.value)
    assert folder_digest(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "hf_home"]


def test_model_push_to_hub_to_a_dead_endpoint(dead_endpoint):
    with pytest.raises(HubError, match=rf"on {dead_endpoint.url}: cannot reach the Hub"):
        randomized().push_to_hub("lab/toy")


def test_download_from_a_dead_endpoint_names_it(dead_endpoint):
    with pytest.raises(HubError, match=rf"download 'lab/toy' at revision 'main' on {dead_endpoint.url}"):
        ToyNet.from_pretrained("lab/toy", revision="main", cache_dir=dead_endpoint.fresh_cache())
    with pytest.raises(HubError, match=rf"download 'lab/toy' on {dead_endpoint.url}: cannot reach the Hub and nothing is cached \(ConnectError"):
        download_folder("lab/toy", cache_dir=dead_endpoint.fresh_cache())


def test_local_files_only_with_an_empty_cache(dead_endpoint):
    with pytest.raises(HubError, match="download from the local cache 'lab/toy' on .*: not in the local cache"):
        ToyNet.from_pretrained("lab/toy", local_files_only=True, cache_dir=dead_endpoint.fresh_cache())
