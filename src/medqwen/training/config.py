"""Stages and experiments as data (YAML): what is trainable, on which data, with which schedule.

A stage file looks like::

    name: sslora_finetune
    trainable: [projector, adapter]      # model groups ("projector", "vision", "language") + "adapter"
    adapter: {kind: sslora, r: 32, num_experts: 8, top_k: 2}   # injected once, reused by later stages
    data:
      - {format: vqa_rad, path: "${data_root}/vqa_rad", split: train}
    lr: 2.0e-4
    epochs: 1            # or max_steps
    batch_size: 8

An experiment file names the model, the seed, the stages (inline or as paths relative to the file)
and the evaluation sets. `${data_root}` and `${config_dir}` are substituted when loading.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import yaml

from medqwen.errors import ConfigError, did_you_mean, unknown_keys
from medqwen.eval.evaluators import registered_tasks

MODEL_GROUPS = ("projector", "vision", "language")
ADAPTER_KINDS = ("sslora", "lora")
# PEFT / paper names of SSLoRAConfig fields, for did-you-mean hints
ADAPTER_KEY_ALIASES = {"rank": "r", "lora_r": "r", "n_experts": "num_experts", "experts": "num_experts", "k": "top_k",
                       "lora_dropout": "dropout", "lora_alpha": "scaling", "alpha": "scaling", "target": "target_modules"}


def _number(obj, name: str, *, low: float | None = None, high: float | None = None, low_open: bool = True,
            high_open: bool = True, optional: bool = False) -> None:
    value = getattr(obj, name)
    if optional and value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low}")
        if high is not None:
            bounds.append(f"{'<' if high_open else '<='} {high}")
        raise ConfigError(f"field {name!r} = {value!r} must be a finite number" + (" " + " and ".join(bounds) if bounds else "")
                          + (" or null" if optional else ""))


def _integer(obj, name: str, *, low: int, optional: bool = False) -> None:
    value = getattr(obj, name)
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"field {name!r} = {value!r} must be an integer >= {low}" + (" or null" if optional else ""))


@dataclass
class DataSpec:
    """One dataset: `format` is a reader name of medqwen.data (vqa_rad, slake, roco, ..., synthetic)."""

    format: str
    path: Optional[str] = None
    split: str = "train"
    limit: Optional[int] = None  # keep the first N samples (after a seeded shuffle)
    weight: Optional[float] = None  # mixture proportion when several datasets are mixed
    options: dict[str, Any] = field(default_factory=dict)  # passed to the reader
    task: str = "vqa"  # evaluation sets: a registered evaluator (medqwen.eval): vqa | caption | pope | rank
    name: Optional[str] = None  # evaluation sets: output file name (default: format_split[_task]); unique per experiment
    # bad rows and bad images (unreadable, truncated, too large) are skipped and counted instead of
    # stopping the run before it starts (the error lists them)
    skip_invalid: bool = False

    def __post_init__(self):
        if not isinstance(self.format, str) or not self.format:
            raise ConfigError(f"field 'format' = {self.format!r} must be a reader name")
        _integer(self, "limit", low=1, optional=True)
        _number(self, "weight", low=0.0, low_open=False, optional=True)
        if not isinstance(self.options, dict):
            raise ConfigError(f"field 'options' = {self.options!r} must be a mapping of reader options")
        if self.task not in registered_tasks():
            raise ConfigError(f"field 'task' = {self.task!r}{did_you_mean(self.task, registered_tasks())}; "
                              f"allowed: {registered_tasks()}")
        if self.name is not None and (not isinstance(self.name, str) or self.name in ("", ".", "..")
                                      or "/" in self.name or "\\" in self.name):
            raise ConfigError(f"field 'name' = {self.name!r} must be a file name (no '/')")
        if not isinstance(self.skip_invalid, bool):
            raise ConfigError(f"field 'skip_invalid' = {self.skip_invalid!r} must be true or false")

    @property
    def output_name(self) -> str:
        """An evaluation set's results and predictions file stem: ``name``, else format_split[_task]."""
        return self.name or f"{self.format}_{self.split}" + ("" if self.task == "vqa" else f"_{self.task}")


@dataclass
class StageConfig:
    name: str
    trainable: list[str]
    data: list[DataSpec]
    adapter: Optional[dict[str, Any]] = None
    lr: float = 1e-4
    lr_groups: dict[str, float] = field(default_factory=dict)  # peak lr per trainable group, e.g. {language: 2.0e-5}
    epochs: float = 1.0
    max_steps: Optional[int] = None
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    checkpoint_every: int = 50
    log_every: int = 1
    # at the end of the stage, fold its adapter (plain LoRA: one expert per layer) into the language
    # model's weights and drop it; later stages start from the merged model (and may attach a new adapter)
    merge_adapter: bool = False

    def __post_init__(self):
        if self.merge_adapter and self.adapter is None:
            raise ConfigError(f"stage {self.name!r}: field 'merge_adapter' needs field 'adapter' in the same stage")
        if not isinstance(self.trainable, list) or not self.trainable:
            raise ConfigError("field 'trainable' is empty: name at least one group")
        for group in self.trainable:
            if group not in MODEL_GROUPS + ("adapter",):
                raise ConfigError(f"field 'trainable' has {group!r}; allowed: {list(MODEL_GROUPS) + ['adapter']}")
        if not self.data:
            raise ConfigError("field 'data' is empty: name at least one dataset")
        self.data = [d if isinstance(d, DataSpec) else _build(DataSpec, d, f"data[{i}]") for i, d in enumerate(self.data)]
        if self.adapter is not None:
            check_adapter_spec(self.adapter)
        if not isinstance(self.lr_groups, dict):
            raise ConfigError(f"field 'lr_groups' must be a mapping of group -> lr, got {self.lr_groups!r}")
        for group, value in self.lr_groups.items():
            if group not in self.trainable:
                raise ConfigError(f"field 'lr_groups' names {group!r}, which is not in 'trainable' {self.trainable}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ConfigError(f"field 'lr_groups.{group}' = {value!r} must be a finite number > 0")
        _number(self, "lr", low=0.0)
        _number(self, "epochs", low=0.0)
        _number(self, "warmup_ratio", low=0.0, high=1.0, low_open=False)
        _number(self, "min_lr_ratio", low=0.0, high=1.0, low_open=False, high_open=False)
        _number(self, "weight_decay", low=0.0, low_open=False)
        _number(self, "max_grad_norm", low=0.0)
        for name in ("batch_size", "grad_accum", "checkpoint_every", "log_every"):
            _integer(self, name, low=1)
        _integer(self, "max_steps", low=1, optional=True)


@dataclass
class ExperimentConfig:
    model: str
    stages: list[StageConfig]
    seed: int = 0
    output_dir: str = "runs/experiment"
    eval: list[DataSpec] = field(default_factory=list)
    eval_batch_size: int = 16
    max_new_tokens: int = 12
    system_prompt: Optional[str] = "Answer the question about the medical image briefly."
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f"field 'model' = {self.model!r} must be a model name or path")
        if not self.stages:
            raise ConfigError("field 'stages' is empty or missing")
        _integer(self, "seed", low=0)
        _integer(self, "eval_batch_size", low=1)
        _integer(self, "max_new_tokens", low=1)
        if not isinstance(self.model_kwargs, dict):
            raise ConfigError(f"field 'model_kwargs' = {self.model_kwargs!r} must be a mapping")
        names: dict[str, int] = {}
        for i, spec in enumerate(self.eval):
            if spec.output_name in names:
                raise ConfigError(f"eval[{i}] and eval[{names[spec.output_name]}] both write '{spec.output_name}': "
                                  "give one a field 'name'")
            names[spec.output_name] = i


def _substitute(value: Any, variables: dict[str, str], where: str) -> Any:
    if isinstance(value, str):
        def repl(match):
            key = match.group(1)
            if key not in variables or variables[key] is None:
                raise ConfigError(f"{where}: ${{{key}}} is used but not set (pass --{key.replace('_', '-')})")
            return str(variables[key])

        return re.sub(r"\$\{(\w+)\}", repl, value)
    if isinstance(value, list):
        return [_substitute(v, variables, where) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, variables, where) for k, v in value.items()}
    return value


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: {unknown_keys('field', unknown, known)}")
    missing = [n for n, f in known.items() if n not in data and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise ConfigError(f"{where}: missing required field(s) {missing}")
    try:
        return cls(**data)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def parse_stage(data: Any, where: str) -> StageConfig:
    data = dict(data) if isinstance(data, dict) else data
    if isinstance(data, dict):
        data["data"] = [_build(DataSpec, d, f"{where}: data[{i}]") for i, d in enumerate(data.get("data") or [])]
    return _build(StageConfig, data, where)


def check_adapter_spec(spec: Any) -> None:
    """A stage's / method's `adapter:` mapping is valid (kind known, every SSLoRAConfig field valid)."""
    if not isinstance(spec, dict):
        raise ConfigError(f"field 'adapter' = {spec!r} must be a mapping")
    kind = spec.get("kind", "sslora")
    if kind not in ADAPTER_KINDS:
        raise ConfigError(f"field 'adapter.kind' = {kind!r}; allowed: {list(ADAPTER_KINDS)}")
    from sslora import SSLoRAConfig

    allowed = {f.name for f in fields(SSLoRAConfig) if f.init and f.name != "library_version"} | {"kind"}
    unknown = set(spec) - allowed
    if unknown:
        raise ConfigError(f"field 'adapter': {unknown_keys('key', unknown, allowed, ADAPTER_KEY_ALIASES)}")
    try:
        adapter_config(spec)
    except TypeError as err:  # a keyword SSLoRAConfig does not take after all
        raise ConfigError(f"field 'adapter': {err}".replace("SSLoRAConfig.__init__() got ", "")) from None
    except ValueError as err:
        raise ConfigError(f"field 'adapter': {err}") from None


def adapter_config(spec: dict[str, Any]):
    """Stage `adapter:` mapping -> SSLoRAConfig. kind 'lora' is plain LoRA through the same layer:
    one expert, top-1, zero init (A Kaiming, B = 0), no load-balancing loss, scale 2 by default."""
    from sslora import SSLoRAConfig

    spec = dict(spec)
    kind = spec.pop("kind", "sslora")
    if kind == "lora":
        spec = {"num_experts": 1, "top_k": 1, "init": "zero", "aux_loss_coef": 0.0, "scaling": 2.0, **spec}
    spec.setdefault("target_modules", "llama")
    return SSLoRAConfig(**spec)


def load_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    with open(path, encoding="utf-8") as handle:
        try:
            return yaml.safe_load(handle)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}:{line} invalid YAML: {getattr(err, 'problem', err)}") from err


def load_stage(path: str | Path, variables: dict[str, str] | None = None) -> StageConfig:
    path = Path(path)
    variables = {"config_dir": str(path.parent), **(variables or {})}
    return parse_stage(_substitute(load_yaml(path), variables, str(path)), str(path))


def load_experiment(path: str | Path, variables: dict[str, str] | None = None) -> ExperimentConfig:
    """Parse an experiment YAML (stages inline or as file paths relative to it)."""
    path = Path(path)
    variables = {"config_dir": str(path.parent), "data_root": os.environ.get("MEDQWEN_DATA_ROOT"), **(variables or {})}
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with fields model, stages, ...")
    raw = dict(raw)
    stages = []
    for i, entry in enumerate(raw.pop("stages", None) or []):
        if isinstance(entry, str):
            stage_path = (path.parent / _substitute(entry, variables, f"{path}: stages[{i}]")).resolve()
            stages.append(load_stage(stage_path, variables))
        else:
            stages.append(parse_stage(_substitute(entry, variables, str(path)), f"{path}: stages[{i}]"))
    if not stages:
        raise ConfigError(f"{path}: field 'stages' is empty or missing")
    raw = _substitute(raw, variables, str(path))
    raw["eval"] = [_build(DataSpec, d, f"{path}: eval[{i}]") for i, d in enumerate(raw.get("eval") or [])]
    return _build(ExperimentConfig, {**raw, "stages": stages}, str(path))
