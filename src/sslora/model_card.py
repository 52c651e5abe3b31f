"""Model cards for saved adapters: a README.md with Hugging Face Hub YAML front matter, like PEFT's.

:func:`write_model_card` writes ``README.md`` next to ``adapter_config.json``: front matter with
``library_name``, ``base_model``, ``tags`` (``sslora``, ``peft``, ``lora``, ``mixture-of-experts``,
``base_model:adapter:<base>``), ``datasets``, the method's settings, the trainable parameter count,
the training data and steps and, when results are known, a ``model-index`` block in the Hub's
format; then a Markdown body with the same facts as tables and how to load the adapter.

A README.md that this module did not write (no marker line) keeps its text: only its front matter
is updated (our keys set, tags merged). One that it wrote is rewritten from the arguments.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from ._io import atomic_write_text

CARD_NAME = "README.md"
MARKER = "<!-- This model card was written by sslora.model_card.write_model_card. -->"
TAGS = ["sslora", "peft", "lora", "mixture-of-experts"]
# Settings shown first, in this order; every other config key follows alphabetically.
_SETTING_ORDER = ["r", "num_experts", "top_k", "expert_rank", "init", "segment_slice", "scaling", "scaling_rank",
                  "eta", "rho", "aux_loss_coef", "dropout", "target_modules", "exclude_modules", "seed"]
_NOT_SETTINGS = {"library_version", "layers"}


def base_model_name(model: Any) -> str | None:
    """A name for a base model: a string as is; a medqwen VLM's ``base_config["name"]``; a Hugging
    Face model's ``config._name_or_path`` or ``name_or_path``; else None."""
    if model is None or isinstance(model, str):
        return model or None
    base_config = getattr(model, "base_config", None)
    if isinstance(base_config, Mapping) and base_config.get("name"):
        return str(base_config["name"])
    config = getattr(model, "config", None)
    for candidate in (getattr(config, "_name_or_path", None), getattr(model, "name_or_path", None)):
        if isinstance(candidate, str) and candidate:
            return candidate
    return None


def write_model_card(
    directory: str | os.PathLike,
    config_dict: Mapping[str, Any],
    *,
    base_model: Any = None,
    trainable_params: int | tuple[int, int] | Mapping[str, int] | None = None,
    training: Mapping[str, Any] | None = None,
    results: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``directory/README.md`` describing an SSLoRA adapter; returns its path.

    Args:
        directory: the adapter folder (created if missing).
        config_dict: the adapter's settings, e.g. ``SSLoRAConfig.to_dict()`` or the JSON in
            ``adapter_config.json``.
        base_model: the base model's name or hub id, or the model itself (see :func:`base_model_name`).
        trainable_params: trainable parameter count, ``(trainable, total)`` as returned by
            ``SSLoRAModel.trainable_parameters()``, or ``{"trainable": ..., "total": ...}``.
        training: what it was trained on: ``datasets`` (names), ``steps``, and any other facts
            (stages, learning rate, epochs, ...), shown as given.
        results: evaluation results, ``{dataset_name: {metric: value}}`` (a ``task`` entry in a
            dataset's dict names its Hub task type) or one flat ``{metric: value}``; non-numeric
            values are left out of the ``model-index``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CARD_NAME
    base = base_model_name(base_model)
    settings = _settings(config_dict)
    params = _params(trainable_params)
    training = _plain(dict(training or {}))
    evaluations = _results(results)

    meta: dict[str, Any] = {"library_name": "sslora"}
    if base:
        meta["base_model"] = base
    meta["tags"] = TAGS + ([f"base_model:adapter:{base}"] if base else [])
    datasets = _dataset_names(training.get("datasets"))
    if datasets:
        meta["datasets"] = datasets
    meta["sslora"] = settings
    if params:
        meta["trainable_parameters"] = params["trainable"]
        if "total" in params:
            meta["total_parameters"] = params["total"]
    if training:
        meta["training"] = training
    if evaluations:
        meta["model-index"] = [{
            "name": directory.resolve().name or "sslora-adapter",
            "results": [
                {"task": {"type": ev["task"]}, "dataset": {"name": ev["dataset"], "type": ev["dataset"]},
                 "metrics": [{"type": k, "value": v, "name": k} for k, v in ev["metrics"].items() if k != "n"]}
                for ev in evaluations if any(k != "n" for k in ev["metrics"])
            ],
        }]
        if not meta["model-index"][0]["results"]:
            del meta["model-index"]

    body = _body(base, settings, params, training, evaluations)
    if path.is_file():
        old_meta, old_body = split_front_matter(path.read_text(encoding="utf-8"))
        if MARKER not in old_body:  # someone's own card: keep the text, update the metadata
            tags = list(dict.fromkeys([*(old_meta.get("tags") or []), *meta["tags"]]))
            meta = {**old_meta, **meta, "tags": tags}
            body = old_body
    text = "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=120) + "---\n\n" + body
    atomic_write_text(path, text)
    return path


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """(front matter as a dict, the rest) of a README; ({}, text) when there is none or it is invalid."""
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end != -1:
            try:
                meta = yaml.safe_load(text[4:end]) or {}
            except yaml.YAMLError:
                return {}, text
            if isinstance(meta, dict):
                return meta, text[end + 4:].lstrip("\n")
    return {}, text


# ---------------------------------------------------------------------- pieces
def _plain(value: Any) -> Any:
    """Values YAML can write safely: numpy / torch scalars to numbers, tuples to lists, paths to str."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalar
        try:
            return _plain(value.item())
        except (TypeError, ValueError, RuntimeError):
            pass
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def _settings(config: Mapping[str, Any]) -> dict[str, Any]:
    config = {k: v for k, v in _plain(dict(config)).items() if k not in _NOT_SETTINGS}
    if "r" in config and config.get("num_experts"):
        config["expert_rank"] = int(config["r"]) // int(config["num_experts"])
    ordered = {k: config[k] for k in _SETTING_ORDER if k in config}
    ordered.update({k: config[k] for k in sorted(config) if k not in ordered})
    return ordered


def _params(value: Any) -> dict[str, int]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {k: int(value[k]) for k in ("trainable", "total") if value.get(k) is not None}
    if isinstance(value, (tuple, list)):
        return {"trainable": int(value[0]), **({"total": int(value[1])} if len(value) > 1 else {})}
    return {"trainable": int(value)}


def _dataset_names(datasets: Any) -> list[str]:
    if not datasets:
        return []
    if isinstance(datasets, (str, Mapping)):
        datasets = [datasets]
    names = []
    for item in datasets:
        if isinstance(item, Mapping):
            item = item.get("name") or item.get("format") or item.get("path")
        if item:
            names.append(str(item))
    return list(dict.fromkeys(names))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _results(results: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if not results:
        return []
    results = _plain(dict(results))
    if all(_is_number(v) or not isinstance(v, Mapping) for v in results.values()):
        results = {"evaluation": results}  # one flat {metric: value}
    out = []
    for name, metrics in results.items():
        if not isinstance(metrics, Mapping):
            continue
        task = str(metrics.get("task") or "other")
        numbers = {k: v for k, v in metrics.items() if k != "task" and _is_number(v)}
        if numbers:
            out.append({"dataset": str(name), "task": task, "metrics": numbers})
    return out


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_format(v) for v in value) if all(not isinstance(v, (list, dict)) for v in value) \
            else yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    if isinstance(value, dict):
        return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return str(value)


def _cell(value: Any) -> str:
    return _format(value).replace("|", "\\|").replace("\n", " ")


def _body(base: str | None, settings: dict, params: dict, training: dict, evaluations: list[dict]) -> str:
    from . import __version__

    n, k, r = settings.get("num_experts"), settings.get("top_k"), settings.get("r")
    lines = [MARKER, "", f"# SSLoRA adapter{f' for `{base}`' if base else ''}", ""]
    lines += [
        "A Sparse Spectral LoRA (SSLoRA) adapter: in every adapted linear layer, "
        f"{n} LoRA experts of rank {settings.get('expert_rank')} (total rank {r}) initialised from "
        f"disjoint segments of the frozen weight's SVD (`init: {settings.get('init')}`), "
        f"a top-{k} router choosing experts per token, and a frozen residual that keeps the initial "
        "model equal to the base model in expectation over routing.", "",
        "## Method settings", "", "| setting | value |", "|---|---|",
    ]
    lines += [f"| `{key}` | {_cell(value)} |" for key, value in settings.items()]
    if params:
        lines += ["", "## Trainable parameters", ""]
        trainable = params["trainable"]
        if "total" in params and params["total"]:
            lines.append(f"{trainable:,} trainable of {params['total']:,} parameters "
                         f"({100 * trainable / params['total']:.4f}%).")
        else:
            lines.append(f"{trainable:,} trainable parameters (experts and routers).")
    if training:
        lines += ["", "## Training", "", "| | |", "|---|---|"]
        lines += [f"| {_cell(key)} | {_cell(value)} |" for key, value in training.items()]
    if evaluations:
        lines += ["", "## Evaluation", "", "| dataset | task | metric | value |", "|---|---|---|---:|"]
        for ev in evaluations:
            for metric, value in ev["metrics"].items():
                lines.append(f"| {_cell(ev['dataset'])} | {_cell(ev['task'])} | {_cell(metric)} | {_cell(value)} |")
    lines += [
        "", "## How to load", "", "```python", "from sslora import SSLoRAModel", "",
        f"base = ...  # the base model{f' ({base})' if base else ''}, built as it was for training",
        'model = SSLoRAModel.from_pretrained(base, "path/to/this/folder")  # no SVD is recomputed',
        "```", "", "## Framework versions", "", f"- sslora {__version__}",
    ]
    try:
        import torch

        lines.append(f"- torch {torch.__version__}")
    except ImportError:  # pragma: no cover
        pass
    return "\n".join(lines) + "\n"
