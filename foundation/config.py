"""Recipes: YAML files loaded into validated dataclasses, with dotted ``--set`` overrides.

A recipe has the sections ``model``, ``data``, ``objective`` (each a registered
``name`` plus that component's config fields), ``train``, ``deepspeed`` and
``memory``, and an optional ``imports`` list of modules that register extra
components (a user's own model, a test fixture).

Example::

    recipe = load_recipe("deeperbrain-tiny", ["train.lr=3e-4", "deepspeed.zero_stage=2"])
"""
from __future__ import annotations

import copy
import importlib
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from foundation.config_schema import dataclass_from_dict, dataclass_to_dict
from foundation.errors import ConfigError, did_you_mean
from foundation.registry import DATASETS, MODELS, OBJECTIVES, Registry

__all__ = [
    "TrainConfig",
    "DeepSpeedConfig",
    "MemoryConfig",
    "Component",
    "RecipeConfig",
    "load_recipe",
    "list_recipes",
    "parse_overrides",
    "dataclass_from_dict",
    "dataclass_to_dict",
    "yaml_load",
]


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class TrainConfig:
    """Optimisation, schedule, logging and checkpointing of a run."""

    steps: int = field(default=100, metadata=_help("total optimizer steps of the run (the schedule spans them)"))
    micro_batch_size: int = field(default=8, metadata=_help("samples per rank per micro-step"))
    lr: float = field(default=3e-4, metadata=_help("peak learning rate of AdamW"))
    min_lr_ratio: float = field(default=0.0, metadata=_help("cosine floor as a fraction of lr"))
    warmup_steps: int = field(default=10, metadata=_help("linear warmup steps from 0 to lr"))
    weight_decay: float = field(default=0.05, metadata=_help("AdamW decoupled weight decay (not on norms/biases)"))
    betas: tuple[float, float] = field(default=(0.9, 0.95), metadata=_help("AdamW betas"))
    eps: float = field(default=1e-8, metadata=_help("AdamW epsilon"))
    seed: int = field(default=0, metadata=_help("seed of weights, data order and masking"))
    log_every: int = field(default=1, metadata=_help("optimizer steps between JSONL log lines"))
    checkpoint_every: int = field(default=50, metadata=_help("optimizer steps between checkpoints (0: only at the end)"))
    keep_last: int = field(default=3, metadata=_help("checkpoints kept on disk"))
    max_nonfinite_skips: int = field(default=0, metadata=_help("micro-batches with a non-finite loss skipped before the run stops"))
    num_workers: int = field(default=0, metadata=_help("DataLoader worker processes per rank"))
    shard_assignment: str = field(default="global", metadata=_help(
        "data order across ranks: 'global' (one shuffle of the whole corpus dealt out to the ranks: every rank "
        "reads every shard, and a resume on another rank count continues the same order) or 'rank' (each rank "
        "owns a run of cache shards and shuffles within them: a node needs only its ranks' shard files; a resume "
        "on another rank count reads each unread item once, in another order)"))
    tensorboard: bool = field(default=False, metadata=_help("also write TensorBoard event files"))
    progress_bar: bool = field(default=True, metadata=_help("tqdm progress bar on rank 0"))
    collective_timeout_s: float = field(default=1800.0, metadata=_help(
        "seconds a rank waits in a collective (all-reduce, barrier) for the others before the run stops with an "
        "error naming the ranks that did not answer; longer than any work one rank does alone (data preparation "
        "on rank 0, a checkpoint write)"))
    compile: bool = field(default=False, metadata=_help(
        "torch.compile the model and objective (the module DeepSpeed wraps); weights, checkpoints and export "
        "stay as without it"))
    sparsity_every: int = field(default=0, metadata=_help(
        "optimizer steps between measurements of the share of near-zero activations per activation layer on a "
        "fixed batch, appended to sparsity.jsonl (0: off)"))
    compile_mode: str = field(default="default", metadata=_help(
        "torch.compile mode: default, reduce-overhead, max-autotune or max-autotune-no-cudagraphs"))

    def __post_init__(self) -> None:
        modes = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
        if self.shard_assignment not in ("global", "rank"):
            raise ConfigError(f"train.shard_assignment: unknown value {self.shard_assignment!r}; "
                              f"{did_you_mean(self.shard_assignment, ('global', 'rank'))}")
        if self.compile_mode not in modes:
            raise ConfigError(f"train.compile_mode: unknown value {self.compile_mode!r}; valid: {', '.join(modes)}")
        for name in ("steps", "micro_batch_size", "log_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "checkpoint_every", "max_nonfinite_skips", "num_workers", "sparsity_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if self.collective_timeout_s <= 0:
            raise ConfigError(f"train.collective_timeout_s must be > 0 seconds, got {self.collective_timeout_s}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps > self.steps:
            raise ConfigError(f"train.warmup_steps ({self.warmup_steps}) exceeds train.steps ({self.steps})")


@dataclass
class DeepSpeedConfig:
    """The DeepSpeed section: ZeRO stage, precision, accumulation, clipping."""

    zero_stage: int = field(default=0, metadata=_help("ZeRO stage 0-3"))
    bf16: bool = field(default=False, metadata=_help("bf16 mixed precision (fp32 master weights)"))
    gradient_accumulation_steps: int = field(default=1, metadata=_help("micro-steps per optimizer step"))
    gradient_clipping: float = field(default=1.0, metadata=_help("global gradient-norm clip (0: off)"))
    extra: dict[str, Any] = field(default_factory=dict, metadata=_help("raw DeepSpeed config keys merged last (offload, comms...)"))

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"deepspeed.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.gradient_accumulation_steps < 1:
            raise ConfigError(f"deepspeed.gradient_accumulation_steps must be >= 1, got {self.gradient_accumulation_steps}")
        if self.gradient_clipping < 0:
            raise ConfigError(f"deepspeed.gradient_clipping must be >= 0, got {self.gradient_clipping}")
        owned = {"zero_optimization", "bf16", "fp16", "gradient_accumulation_steps", "gradient_clipping",
                 "train_micro_batch_size_per_gpu", "train_batch_size", "optimizer", "scheduler"}
        clash = sorted(owned & set(self.extra))
        if clash:
            raise ConfigError(
                f"deepspeed.extra sets {', '.join(clash)}, which the recipe sets elsewhere; use deepspeed.zero_stage, "
                "deepspeed.bf16, deepspeed.gradient_accumulation_steps, deepspeed.gradient_clipping and the train section"
            )


@dataclass
class MemoryConfig:
    """Activation-memory options."""

    act_bits: int | None = field(default=None, metadata=_help("store activations for backward in 8 bits (8) or as they are (null)"))

    def __post_init__(self) -> None:
        if self.act_bits not in (None, 8):
            raise ConfigError(f"memory.act_bits must be null or 8, got {self.act_bits}")


@dataclass
class Component:
    """A registered component (model, dataset or objective) and its typed config."""

    name: str
    config: Any

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclass_to_dict(self.config)}


@dataclass
class RecipeConfig:
    """A whole validated recipe."""

    name: str
    model: Component
    data: Component
    objective: Component
    train: TrainConfig = field(default_factory=TrainConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    imports: tuple[str, ...] = ()
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data in recipe layout (what :func:`load_recipe` reads back)."""
        out: dict[str, Any] = {"name": self.name}
        if self.imports:
            out["imports"] = list(self.imports)
        out.update(
            model=self.model.to_dict(),
            data=self.data.to_dict(),
            objective=self.objective.to_dict(),
            train=dataclass_to_dict(self.train),
            deepspeed=dataclass_to_dict(self.deepspeed),
            memory=dataclass_to_dict(self.memory),
        )
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


_SECTIONS = ("name", "imports", "model", "data", "objective", "train", "deepspeed", "memory")
_COMPONENTS: dict[str, Registry] = {"model": MODELS, "data": DATASETS, "objective": OBJECTIVES}


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``3e-4`` as a float (YAML 1.1 wants ``3.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_load(text: str, source: str = "<string>") -> Any:
    """Parse YAML with the suite's loader; a syntax error becomes a ConfigError naming the source and line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML ({err}); fix the syntax at the line shown") from err


def list_recipes() -> list[str]:
    """Names of the recipes shipped in ``foundation/recipes``."""
    return sorted(p.name[:-5] for p in resources.files("foundation.recipes").iterdir() if p.name.endswith(".yaml"))


def _read_recipe_text(name_or_path: str) -> tuple[str, str]:
    """The recipe's YAML text and where it came from: a path when it names a file (or ends in .yaml/.yml), else a
    shipped recipe name (a folder that happens to share a shipped recipe's name does not shadow it)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"recipe file {str(path)!r} does not exist; give a shipped recipe name "
                              f"({', '.join(list_recipes()) or 'none'}) or an existing YAML path")
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except UnicodeDecodeError as err:
            raise ConfigError(f"recipe file {str(path)!r} is not UTF-8 text ({err.reason} at byte {err.start}); "
                              "save it as UTF-8 YAML") from err
    shipped = resources.files("foundation.recipes").joinpath(f"{name_or_path}.yaml")
    if not shipped.is_file():
        where = f" ({str(path)!r} is a folder, not a recipe file)" if path.is_dir() else ""
        raise ConfigError(f"unknown recipe {name_or_path!r}{where}; {did_you_mean(name_or_path, list_recipes())} "
                          "(or give a path to a .yaml file)")
    return shipped.read_text(encoding="utf-8"), f"{name_or_path}.yaml"


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """Parse ``["train.lr=3e-4", ...]`` into ``[("train.lr", 0.0003), ...]`` (values read as YAML)."""
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w\-]*(\.[A-Za-z_][\w\-]*)*", key):
            raise ConfigError(f"override {item!r}: expected KEY.PATH=VALUE, e.g. train.lr=3e-4")
        parsed.append((key, yaml_load(raw, f"override {item!r}") if raw != "" else ""))
    return parsed


def _apply_override(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override --set {key}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _import_plugins(imports: tuple[str, ...], source: str) -> None:
    """Import the modules a recipe lists under ``imports`` (they register the user's own components)."""
    for module in imports:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ConfigError(f"recipe {source}, key imports: cannot import {module!r} ({err}); "
                              "install it or fix the module path") from err


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> RecipeConfig:
    """Load, override and validate a recipe.

    Args:
        name_or_path: a shipped recipe name (``"deeperbrain-tiny"``) or a path to a YAML file.
        overrides: dotted ``KEY=VALUE`` strings applied before validation.

    Returns:
        The validated :class:`RecipeConfig`.

    Raises:
        ConfigError: missing file, bad YAML, unknown section/key (with the
            nearest valid one), wrong type (with the expected type), unknown
            component name.
    """
    text, source = _read_recipe_text(name_or_path)
    raw = yaml_load(text, source)
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {source}: expected a mapping with sections {', '.join(_SECTIONS)}")
    raw = copy.deepcopy(raw)
    from_cli = set()
    for key, value in parse_overrides(list(overrides or [])):
        _apply_override(raw, key, value)
        from_cli.add(key.split(".")[0])
    return recipe_from_dict(raw, source, from_cli)


def recipe_from_dict(raw: dict[str, Any], source: str = "<dict>", from_cli: set[str] | None = None) -> RecipeConfig:
    """Validate plain recipe data (as read from YAML) into a :class:`RecipeConfig`."""
    from_cli = from_cli or set()

    def where(section: str) -> str:
        via = " (after --set overrides)" if section in from_cli else ""
        return f"recipe {source}{via}, key {section}"

    for key in raw:
        if key not in _SECTIONS:
            raise ConfigError(f"recipe {source}, key {key}: unknown section; {did_you_mean(str(key), _SECTIONS)}")
    imports = raw.get("imports", []) or []
    if not isinstance(imports, list) or not all(isinstance(m, str) for m in imports):
        raise ConfigError(f"{where('imports')}: expected a list of module names, got {imports!r}")
    _import_plugins(tuple(imports), source)
    components = {}
    for section, registry in _COMPONENTS.items():
        body = raw.get(section)
        if not isinstance(body, dict) or "name" not in body:
            raise ConfigError(f"{where(section)}: missing; add a '{section}:' section with a 'name:' "
                              f"(registered: {', '.join(registry.names()) or 'none'})")
        body = dict(body)
        name = body.pop("name")
        builder = registry.get(str(name), where=f"{where(section)}.name")
        components[section] = Component(name, dataclass_from_dict(builder.config_class, body, where(section)))
    name = raw.get("name", Path(source).stem)
    if not isinstance(name, str):
        raise ConfigError(f"{where('name')}: expected str, got {name!r}")
    return RecipeConfig(
        name=name,
        model=components["model"],
        data=components["data"],
        objective=components["objective"],
        train=dataclass_from_dict(TrainConfig, raw.get("train"), where("train")),
        deepspeed=dataclass_from_dict(DeepSpeedConfig, raw.get("deepspeed"), where("deepspeed")),
        memory=dataclass_from_dict(MemoryConfig, raw.get("memory"), where("memory")),
        imports=tuple(imports),
        source=source,
    )
