"""Methods resolve through registries; a third adapter method fine-tunes through `run_finetune` by registration alone."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

import tests.adapters._scale_adapter  # noqa: F401  (registers the third adapter method "scale")
from foundation.adapters import LoraAdapterModel
from foundation.config import load_recipe
from foundation.errors import ConfigError
from foundation.eval.metrics import classification_metrics
from foundation.finetune.runner import FinetuneOptions, _split, run_finetune
from foundation.finetune.strategies import STRATEGIES, make_strategy, method_names
from foundation.finetune.strategies.adapter import AdapterFinetune
from foundation.finetune.strategies.full import FullFinetune
from foundation.finetune.strategies.probe import LinearProbe, MlpProbe
from foundation.finetune.task_model import predict
from tests.adapters._scale_adapter import ScaleAdapter
from tests.fixtures.toy_mae import ToyLabelledTokens

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "tests" / "fixtures" / "recipes" / "toy-classify.yaml"


def test_methods_resolve_through_the_two_registries():
    assert {"linear-probe", "mlp-probe", "full", "lora", "dopamine", "scale"} <= set(method_names())
    assert type(make_strategy("linear-probe")) is LinearProbe and type(make_strategy("mlp-probe")) is MlpProbe
    assert type(make_strategy("full")) is FullFinetune
    for name, cls in (("lora", LoraAdapterModel), ("scale", ScaleAdapter)):
        strategy = make_strategy(name)
        assert isinstance(strategy, AdapterFinetune) and strategy.adapter_cls is cls and strategy.name == name
    with pytest.raises(ConfigError, match="unknown method 'scal'; did you mean 'scale'"):
        make_strategy("scal")
    with pytest.raises(ConfigError, match="--method 'lora2' unknown; did you mean 'lora'"):
        FinetuneOptions(method="lora2")
    with pytest.raises(ValueError, match="'full' is (already registered|a built-in)"):
        STRATEGIES.register("full", FullFinetune)


def test_adapter_fields_are_checked_against_the_config_class():
    with pytest.raises(ConfigError, match=r"LoraAdapterConfig has no field 'rank'; valid: .*\br\b"):
        LoraAdapterModel.config_for("toy-mae", (), ("head",), {"rank": 4})
    cfg = LoraAdapterModel.config_for("deeperbrain", (), ("head",), {"r": 4})
    assert (cfg.preset, cfg.r, cfg.exclude_modules) == ("attention-mlp", 4, ("head",))
    cfg = LoraAdapterModel.config_for("deeperbrain", ("fc1",), ("head",), {})
    assert (cfg.preset, cfg.target_modules) == ("custom", ("fc1",))


def test_the_runner_and_strategies_never_branch_on_a_method_name():
    names = set(method_names())
    files = [ROOT / "foundation/finetune/runner.py", *sorted((ROOT / "foundation/finetune/strategies").glob("*.py"))]
    for file in files:
        tree = ast.parse(file.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                consts = [c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                assert not names & set(consts), (file.name, ast.unparse(node))
                assert not any(isinstance(c, ast.Attribute) and c.attr == "method"
                               for c in [node.left, *node.comparators]), (file.name, ast.unparse(node))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "endswith":
                raise AssertionError(f"{file.name}: {ast.unparse(node)}")


def test_a_third_adapter_method_fine_tunes_by_registration_alone(base, tmp_path):
    recipe = load_recipe(str(RECIPE))
    res = run_finetune(recipe, str(base), tmp_path, FinetuneOptions(method="scale", targets=("fc1", "fc2")))
    assert res["metrics"]["balanced_accuracy"] > 0.6, res["metrics"]  # chance is 1/3
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["peft_type"] == "SCALE"
    adapter, head = load_file(tmp_path / "adapter" / "adapter_model.safetensors"), load_file(tmp_path / "adapter" / "head.safetensors")
    assert adapter and all(k.endswith(".scale_gain") for k in adapter)
    assert any(not torch.equal(t, torch.ones_like(t)) for t in adapter.values())  # the gains trained
    assert res["trainable_params"] == sum(t.numel() for t in [*adapter.values(), *head.values()])
    # the fine-tune folder alone (config, adapter, head beside it) + the untouched checkpoint reproduce the metrics
    import foundation

    data = ToyLabelledTokens(recipe.data.config)
    _, test, _ = _split(data, FinetuneOptions(method="scale"), "classification")  # the runner's held-out split
    rebuilt = foundation.load(tmp_path / "adapter")
    assert isinstance(rebuilt, ScaleAdapter)
    torch.testing.assert_close(rebuilt.model.head.weight, head["weight"])
    prob, y = predict(rebuilt, DataLoader(test, batch_size=64))
    assert classification_metrics(y, prob) == pytest.approx(res["metrics"], abs=1e-6)


def test_the_sparsity_weight_needs_an_adapter_with_an_auxiliary_loss():
    from foundation.adapters import DopamineConfig, DopamineModel
    from foundation.finetune.task_model import Supervised, SupervisedConfig
    from tests.adapters._helpers import ToyNet

    x, y = torch.randn(4, 5, 8), torch.tensor([0, 1, 2, 0])
    objective = Supervised(SupervisedConfig(sparsity_weight=0.5))
    dop = DopamineModel(ToyNet(), DopamineConfig(target_modules=("mlp.fc1",), warmup_steps=0)).train()
    loss, _ = objective(dop, (x, y))
    plain, _ = Supervised(SupervisedConfig())(dop, (x, y))
    torch.testing.assert_close(loss, plain + 0.5 * dop.gate_activity())
    with pytest.raises(ConfigError, match="sparsity_weight is set but ToyNet has no auxiliary loss"):
        objective(ToyNet(), (x, y))
    with pytest.raises(ConfigError, match="sparsity_weight: expected >= 0"):
        SupervisedConfig(sparsity_weight=-1.0)


class _Grouped(torch.utils.data.Dataset):
    """Items with a subject each: ``groups()`` as the suite's datasets have it."""

    def __init__(self, subjects: list[str]) -> None:
        self.subjects = subjects

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, i: int):
        return {"x": torch.zeros(1), "label": torch.tensor(0)}

    def groups(self) -> list[str]:
        return self.subjects


def _job(train) -> object:
    from foundation.finetune.strategies.base import FinetuneJob
    from foundation.finetune.task_model import TaskModel, TaskModelConfig

    recipe = load_recipe(str(Path(__file__).resolve().parents[1] / "fixtures" / "recipes" / "toy-classify.yaml"))
    model = TaskModel.__new__(TaskModel)
    torch.nn.Module.__init__(model)
    model.config = TaskModelConfig(encoder="toy", num_outputs=2)
    return FinetuneJob(recipe=recipe, model=model, train=train, test=None, out=Path("."), opts=FinetuneOptions())


def test_probe_regularisation_is_chosen_by_folds_over_training_subjects(capsys):
    """The probes and the LP-FT head start choose C by CV folds that keep each training subject on one side
    (as eval.probe.fit_probe(groups=...)); with a class seen in one training subject only, by sample, said."""
    import numpy as np

    from foundation.eval.probe import fit_probe

    gen = torch.Generator().manual_seed(0)
    subjects = [f"s{k}" for k in range(8) for _ in range(6)]
    y = torch.tensor([int(k % 2) for k in range(8) for _ in range(6)])
    X = torch.randn(48, 5, generator=gen) + y[:, None] * 0.7
    subject_shift = torch.randn(8, 5, generator=gen)[torch.arange(48) // 6] * 2.0  # features that name the subject
    X = X + subject_shift
    train = torch.utils.data.Subset(_Grouped(["x"] * 4 + subjects), list(range(4, 52)))
    job = _job(train)
    assert job.train_groups == subjects
    got = job.fit_probe(X, y, X, y, kind="linear")
    want = fit_probe(X, y, X, y, kind="linear", seed=job.recipe.train.seed, groups=np.asarray(subjects))
    assert got.regularisation == want.regularisation and torch.equal(got.y_prob, want.y_prob)
    assert capsys.readouterr().err == ""

    lonely = ["a"] * 24 + [f"b{k}" for k in range(24)]  # class 0 (even subjects) ... mixed: one class in one subject
    y1 = torch.tensor([0] * 24 + [1] * 24)
    job1 = _job(torch.utils.data.Subset(_Grouped(lonely), list(range(48))))
    got = job1.fit_probe(X, y1, X, y1, kind="linear")
    want = fit_probe(X, y1, X, y1, kind="linear", seed=job1.recipe.train.seed)
    assert got.regularisation == want.regularisation
    assert "folds over samples, not subjects" in capsys.readouterr().err
