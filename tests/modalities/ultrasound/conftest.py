from __future__ import annotations

import pytest

from tests.modalities.ultrasound._helpers import make_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A generated corpus of 6 tasks x 8 images in the challenge layout; returns its csv_files folder."""
    return make_corpus(tmp_path_factory.mktemp("us_corpus"))
