"""`foundation finetune` options: --adapter-set and its shorthands become the adapter's config fields."""
from __future__ import annotations

import pytest

from foundation.cli import _adapter_fields, build_parser
from foundation.errors import ConfigError


def _args(*extra: str):
    return build_parser().parse_args(["finetune", "--from", "me/x", "--recipe", "r.yaml", *extra])


def test_adapter_set_values_are_read_as_yaml_and_shorthands_fill_fields():
    args = _args("--method", "dopamine", "--adapter-set", "tau_init=-0.5", "--adapter-set", "hard_in_eval=false",
                 "--adapter-set", "exclude_modules=[a, b]", "--skip-targets", "mlp.fc2")
    assert _adapter_fields(args) == {"tau_init": -0.5, "hard_in_eval": False, "exclude_modules": ["a", "b"],
                                     "skip_modules": ("mlp.fc2",)}
    assert _adapter_fields(_args("--lora-r", "4")) == {"r": 4}
    assert _adapter_fields(_args()) == {}  # no shorthand given: no field set (the method's defaults hold)


def test_malformed_adapter_set_is_refused():
    with pytest.raises(ConfigError, match=r"--adapter-set 'r': expected FIELD=VALUE"):
        _adapter_fields(_args("--adapter-set", "r"))
