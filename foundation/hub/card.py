"""Model cards: the README.md written next to every exported model.

A card is YAML front matter the Hub reads (``library_name``, ``tags``, ``base_model`` for fine-tunes,
``metrics`` names and, when an evaluation data set is named, a ``model-index`` with the scores) followed
by Markdown sections: description, usage, config, training recipe, data and metrics. The front matter is
built with :class:`huggingface_hub.ModelCardData`, so it is what the Hub and
``huggingface_hub.ModelCard.load`` expect (spec: https://huggingface.co/docs/hub/model-cards).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCardData

from foundation.config_schema import dataclass_to_dict
from foundation.errors import CheckpointError, ConfigError

__all__ = ["ModelCardInfo", "LIBRARY_NAME", "check_card_front_matter", "render_model_card", "write_model_card"]

LIBRARY_NAME = "foundation-suite"
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$")


@dataclass
class ModelCardInfo:
    """What a model card says beyond the model's own name and config.

    Args:
        description: free text shown under the title.
        tags: extra Hub tags (``"eeg"``, ``"fine-tuned"``); ``foundation-suite`` and the model name are
            always added.
        metrics: ``{metric name: value}`` measured on ``dataset_name``; finite numbers only.
        recipe_yaml: the training recipe as YAML text; shown verbatim, and must parse.
        data_summary: free text on the training data (sources, subjects, preprocessing).
        base_model: Hub id of the model this one was fine-tuned from.
        dataset_name: the evaluation data set the metrics were measured on; when set, the scores also
            go into the ``model-index`` front matter the Hub renders as an evaluation table.
        task_type: the Hub task id for ``model-index`` (e.g. ``"image-segmentation"``).
        license: a Hub license id (default ``"apache-2.0"``, the suite's).
        datasets: Hub data set ids or names the model was trained on (front matter ``datasets``).
        pipeline_tag: the Hub pipeline tag (default ``feature-extraction``).
        training_losses: last training losses, shown as training losses (never as metrics).
        preprocessing: what the model expects of new data (sampling rate, grid, image size, units,
            normalisation); shown in the card and written into ``config.json`` of a pretrained export.
        provenance: how the model was made (command line, versions, the suite's git commit); shown in the
            card and written into ``config.json`` of a pretrained export.
    """

    description: str = ""
    tags: tuple[str, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)
    recipe_yaml: str | None = None
    data_summary: str | None = None
    base_model: str | None = None
    dataset_name: str | None = None
    task_type: str = "feature-extraction"
    license: str | None = "apache-2.0"
    datasets: tuple[str, ...] = ()
    pipeline_tag: str = "feature-extraction"
    training_losses: dict[str, float] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.tags, str):
            raise ConfigError(f"ModelCardInfo.tags: expected a tuple of tags, got the string {self.tags!r}; "
                              f"write tags=({self.tags!r},)")
        self.tags = tuple(self.tags)
        for tag in self.tags:
            if not isinstance(tag, str) or not _TAG.match(tag):
                raise ConfigError(f"ModelCardInfo.tags: {tag!r} is not a valid Hub tag; use letters, digits, "
                                  "'-', '_', '.' or ':' (e.g. 'eeg', 'fine-tuned')")
        for name, value in self.metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"ModelCardInfo.metrics[{name!r}]: expected a finite number, got {value!r}")
        if self.recipe_yaml is not None:
            try:
                yaml.safe_load(self.recipe_yaml)
            except yaml.YAMLError as err:
                raise ConfigError(f"ModelCardInfo.recipe_yaml: not valid YAML ({err}); pass the recipe file's text") from err
        if self.metrics and self.dataset_name is not None and not self.task_type:
            raise ConfigError("ModelCardInfo.task_type: empty; give the Hub task id the metrics belong to")


def hub_id_or_none(source: str | None) -> str | None:
    """``source`` when it is a Hub id ``owner/name`` (not a local path), else None (the Hub's ``base_model``
    must name a Hub repository)."""
    if not source or source.startswith((".", "/", "~")) or source.count("/") != 1 or Path(source).exists():
        return None
    return source


USAGE_PLACEHOLDER = "<repo id or folder>"


def _front_matter(info: ModelCardInfo, model_name: str) -> ModelCardData:
    tags = list(dict.fromkeys([LIBRARY_NAME, model_name, *info.tags]))
    eval_results = None
    if info.metrics and info.dataset_name is not None:
        eval_results = [
            EvalResult(task_type=info.task_type, dataset_type=info.dataset_name, dataset_name=info.dataset_name,
                       metric_type=name, metric_value=float(value))
            for name, value in sorted(info.metrics.items())
        ]
    return ModelCardData(
        library_name=LIBRARY_NAME,
        tags=tags,
        base_model=hub_id_or_none(info.base_model),
        license=info.license,
        datasets=list(info.datasets) or None,
        pipeline_tag=info.pipeline_tag,
        metrics=sorted(info.metrics) or None,
        model_name=model_name if eval_results else None,
        eval_results=eval_results,
    )


def render_model_card(info: ModelCardInfo, model_name: str, config: Any, class_name: str | None = None) -> str:
    """Return the README.md text of a model card.

    Args:
        info: what to say beyond name and config.
        model_name: the registry name of the model (``"deeper-brain"``).
        config: the model's config dataclass (shown as JSON).
        class_name: the Python class for the usage snippet; defaults to the config class name without
            a trailing ``Config``.

    Returns:
        The card: ``---`` YAML front matter ``---`` then Markdown.
    """
    data = _front_matter(info, model_name)
    class_name = class_name or type(config).__name__.removesuffix("Config") or "Model"
    config_json = json.dumps(dataclass_to_dict(config) if dataclasses.is_dataclass(config) else config, indent=2)
    parts = [
        f"---\n{data.to_yaml()}\n---\n",
        f"# {model_name}\n",
        f"{info.description.strip()}\n" if info.description.strip() else "",
        (f"Fine-tuned from [{info.base_model}](https://huggingface.co/{info.base_model}).\n"
         if hub_id_or_none(info.base_model) else
         f"Fine-tuned from the local checkpoint `{info.base_model}`.\n" if info.base_model else ""),
        "## Usage\n",
        f"```python\nimport foundation\n\nmodel = foundation.load(\"{USAGE_PLACEHOLDER}\")  # a {class_name}, "
        f"in eval mode\n```\n",
        f"Saved with {LIBRARY_NAME}: `model.safetensors` holds the weights, `config.json` the config "
        f"(with `model_name: {model_name}`).\n",
        f"## Config\n\n```json\n{config_json}\n```\n",
    ]
    if info.recipe_yaml is not None:
        parts.append(f"## Training recipe\n\n```yaml\n{info.recipe_yaml.rstrip()}\n```\n")
    if info.preprocessing:
        rows = "\n".join(f"| {key} | {json.dumps(value)} |" for key, value in info.preprocessing.items())
        parts.append(f"## Preprocessing the model expects\n\nNew data must be prepared as the training data was "
                     f"(`foundation predict` checks it).\n\n| field | value |\n|---|---|\n{rows}\n")
    if info.data_summary:
        parts.append(f"## Data\n\n{info.data_summary.strip()}\n")
    if info.provenance:
        parts.append(f"## Provenance\n\n```json\n{json.dumps(info.provenance, indent=2, default=str)}\n```\n")
    if info.metrics:
        where = f" on {info.dataset_name}" if info.dataset_name else ""
        rows = "\n".join(f"| {name} | {value:.6g} |" for name, value in sorted(info.metrics.items()))
        parts.append(f"## Metrics\n\nMeasured{where}.\n\n| metric | value |\n|---|---|\n{rows}\n")
    if info.training_losses:
        rows = "\n".join(f"| {name} | {value:.6g} |" for name, value in sorted(info.training_losses.items()))
        parts.append(f"## Training losses\n\nAt the last training step (training data, not an evaluation)."
                     f"\n\n| loss | value |\n|---|---|\n{rows}\n")
    return "\n".join(p for p in parts if p)


def write_model_card(folder: str | Path, info: ModelCardInfo | None, model_name: str, config: Any,
                     class_name: str | None = None) -> Path:
    """Write ``folder/README.md`` (see :func:`render_model_card`); ``info=None`` writes a minimal card.

    Returns:
        The path written.
    """
    path = Path(folder) / "README.md"
    text = render_model_card(info or ModelCardInfo(), model_name, config, class_name)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)  # an existing card is replaced only once the new one is complete
    return path


def check_card_front_matter(path: str | Path) -> None:
    """Check that a README.md's front matter (if any) is a YAML mapping, as the Hub requires.

    Raises:
        CheckpointError: the front matter does not parse, or is not a mapping.
    """
    text = Path(path).read_text(encoding="utf-8")
    front = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    try:
        meta = yaml.safe_load(front[1]) if front else {}
    except yaml.YAMLError as err:
        raise CheckpointError(f"{path}: the front matter is not valid YAML ({err}); fix or regenerate the model "
                              "card") from err
    if not isinstance(meta, (dict, type(None))):
        raise CheckpointError(f"{path}: the front matter must be a YAML mapping, got {type(meta).__name__}; fix or "
                              "regenerate the model card")
