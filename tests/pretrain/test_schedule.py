import math

import pytest

from foundation.pretrain.schedule import warmup_cosine


def test_warmup_is_linear_and_reaches_peak():
    vals = [warmup_cosine(s, 100, 10) for s in range(11)]
    assert vals[:10] == pytest.approx([(s + 1) / 11 for s in range(10)])
    assert vals[10] == pytest.approx(1.0)


def test_cosine_matches_closed_form_and_floor():
    for s in range(10, 101):
        expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 10) / 90))
        assert warmup_cosine(s, 100, 10, 0.1) == pytest.approx(expected)
    assert warmup_cosine(500, 100, 10, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(0, 50, 0) == pytest.approx(1.0)
