"""A continual-learning sequence as data (YAML): one model, one method (adapter), tasks in order.

A sequence file::

    name: brain_pneumonia_vqarad
    model: medqwen-mini              # or start_from: a saved model folder (e.g. a stage-2 final/)
    seed: 0
    variables: {steps: 300, eval_n: 150}   # defaults of ${steps}, ${eval_n}, overridable (--var steps=20)
    method: methods/lora.yaml        # or inline {name, trainable, adapter}; --method overrides
    tasks:
      - name: brain_tumor
        train: [{format: image_folder, path: "${data_root}/brain_tumor_mri", split: train}]
        eval:  [{format: image_folder, path: "${data_root}/brain_tumor_mri", split: test, limit: "${eval_n}"}]
        metric: closed_rank          # likelihood ranking of the candidates | vqa (generation)
        steps: "${steps}"
        lr: 3.0e-4
        batch_size: 8

A method file::

    name: sslora
    trainable: [adapter]             # or [language] (full fine-tuning, no adapter)
    adapter: {kind: sslora, r: 32, num_experts: 8, top_k: 2, init: spectral, scaling: optimal}
    lr: null                         # a number overrides every task's lr

``${name}`` is replaced by ``variables`` (and ``data_root``, ``config_dir``); a value that is exactly
``"${name}"`` keeps the variable's type (an int stays an int). Errors name the file and the field.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import yaml

from medqwen.training.config import (MODEL_GROUPS, ConfigError, DataSpec, _build, check_adapter_spec,
                                     load_yaml)

METRICS = ("closed_rank", "vqa")
VQA_SCORES = ("closed_acc", "open_recall", "exact_match")
EXTERNAL = ("data_root", "config_dir")  # set from outside the file, never null


@dataclass
class TaskConfig:
    """One task: train data, evaluation data (fixed, seeded subsets) and the training budget."""

    name: str
    train: list[DataSpec]
    eval: list[DataSpec]
    metric: str = "closed_rank"
    score: str = "closed_acc"  # metric vqa: which vqa_scores value is the task's score
    steps: Optional[int] = None  # max_steps; or epochs
    epochs: Optional[float] = None
    lr: float = 3e-4
    batch_size: int = 8
    answer_type: Optional[str] = None  # keep only closed / open questions (train and eval)
    candidates: Optional[list[str]] = None  # closed_rank: keep samples whose answer is one of these; attach them
    warmup_ratio: float = 0.03
    checkpoint_every: int = 50


@dataclass
class MethodConfig:
    """What is trained through the whole sequence: model groups and/or one adapter."""

    name: str
    trainable: list[str]
    adapter: Optional[dict[str, Any]] = None
    lr: Optional[float] = None  # overrides every task's lr (e.g. full fine-tuning needs a smaller one)
    description: str = ""


@dataclass
class SequenceConfig:
    name: str
    tasks: list[TaskConfig]
    method: Optional[MethodConfig] = None
    model: str = "medqwen-mini"
    start_from: Optional[str] = None  # a saved model folder (with model/ inside, or the model/ folder)
    seed: int = 0
    data_seed: int = 0  # seeds the train/eval subsets: the same for every method and run seed
    output_dir: str = "runs/continual"
    system_prompt: Optional[str] = "Answer the question about the medical image briefly."
    eval_batch_size: int = 32
    max_new_tokens: int = 12
    blank_control: bool = True  # after training task i, also score task i with blank images
    keep_checkpoints: bool = False  # delete a task's mid-task checkpoints once its results are on disk
    variables: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # the file it was read from
    external: dict[str, Any] = field(default_factory=dict)  # data_root / config_dir as substituted (not fingerprinted)

    def fingerprint(self) -> str:
        """A hash of everything that changes the results (not output_dir/source/keep_checkpoints).

        ``start_from`` counts only as set or not: a path does not identify weights (a rebuilt recipe lands in the
        same folder; a moved one in another), so runs record the starting weights' sha256 beside the fingerprint.
        Paths under ``data_root`` and ``config_dir`` count relative to them: a record made on one machine is
        recognised on another."""
        data = asdict(self)
        for key in ("output_dir", "source", "keep_checkpoints", "variables", "external"):
            data.pop(key)
        data["start_from"] = data["start_from"] is not None
        text = json.dumps(data, sort_keys=True, default=str)
        for key in EXTERNAL:  # where the data and configs live is not part of the configuration
            value = self.external.get(key)
            if value:
                text = text.replace(json.dumps(str(value))[1:-1], "${" + key + "}")
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- parsing
def substitute(value: Any, variables: dict[str, Any], where: str) -> Any:
    """Replace ``${name}``; a string that is exactly one ``${name}`` takes the variable's value and type."""
    if isinstance(value, str):
        whole = re.fullmatch(r"\$\{(\w+)\}", value.strip())
        if whole:
            return _lookup(whole.group(1), variables, where)
        return re.sub(r"\$\{(\w+)\}", lambda m: str(_lookup(m.group(1), variables, where, inside_text=True)), value)
    if isinstance(value, list):
        return [substitute(v, variables, where) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, variables, where) for k, v in value.items()}
    return value


def _lookup(key: str, variables: dict[str, Any], where: str, inside_text: bool = False) -> Any:
    """A variable's value; declared variables may be null (e.g. ``limit: null`` = all), except inside text."""
    if key not in variables or (variables[key] is None and (key in EXTERNAL or inside_text)):
        flag = "--data-root" if key == "data_root" else f"--var {key}=..."
        raise ConfigError(f"{where}: ${{{key}}} is used but not set (pass {flag} or add it to 'variables')")
    return variables[key]


SCIENTIFIC = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """["steps=20", "eval_n=8"] -> {"steps": 20, "eval_n": 8} (values parsed as YAML scalars; --var)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--var {item!r}: expected NAME=VALUE")
        parsed = yaml.safe_load(value) if value.strip() else None
        if isinstance(parsed, str) and SCIENTIFIC.fullmatch(parsed.strip()):  # YAML 1.1 wants a dot in "1e-3"
            parsed = float(parsed)
        out[key.strip()] = parsed
    return out


def _check_number(where: str, name: str, value: Any, *, integer: bool, low: float, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or value < low:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{where}: field {name!r} = {value!r} must be {kind} >= {low}")


def parse_task(data: Any, where: str) -> TaskConfig:
    if isinstance(data, dict):
        data = dict(data)
        for key in ("train", "eval"):
            specs = data.get(key)
            if isinstance(specs, dict):
                specs = [specs]
            if not isinstance(specs, list) or not specs:
                raise ConfigError(f"{where}: field {key!r} must be a non-empty list of datasets")
            data[key] = [_build(DataSpec, d, f"{where}: {key}[{i}]") for i, d in enumerate(specs)]
    task = _build(TaskConfig, data, where)
    if not isinstance(task.name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", task.name):
        raise ConfigError(f"{where}: field 'name' = {task.name!r} must be letters, digits, '_', '-' or '.'")
    if task.metric not in METRICS:
        raise ConfigError(f"{where}: field 'metric' = {task.metric!r}; allowed: {list(METRICS)}")
    if task.metric == "vqa" and task.score not in VQA_SCORES:
        raise ConfigError(f"{where}: field 'score' = {task.score!r}; allowed: {list(VQA_SCORES)}")
    if (task.steps is None) == (task.epochs is None):
        raise ConfigError(f"{where}: give exactly one of the fields 'steps' and 'epochs'")
    _check_number(where, "steps", task.steps, integer=True, low=1, allow_none=True)
    _check_number(where, "epochs", task.epochs, integer=False, low=1e-9, allow_none=True)
    _check_number(where, "lr", task.lr, integer=False, low=1e-12)
    _check_number(where, "batch_size", task.batch_size, integer=True, low=1)
    _check_number(where, "checkpoint_every", task.checkpoint_every, integer=True, low=1)
    _check_number(where, "warmup_ratio", task.warmup_ratio, integer=False, low=0)
    if task.answer_type not in (None, "closed", "open"):
        raise ConfigError(f"{where}: field 'answer_type' = {task.answer_type!r}; allowed: closed, open, null")
    if task.candidates is not None and (not isinstance(task.candidates, list) or len(task.candidates) < 2):
        raise ConfigError(f"{where}: field 'candidates' must be a list of at least two answers")
    for value in task.candidates or []:
        if not isinstance(value, str):
            hint = " (YAML reads unquoted yes/no as booleans: write \"yes\", \"no\")" if isinstance(value, bool) else ""
            raise ConfigError(f"{where}: field 'candidates' has {value!r}, not a string{hint}")
    for i, spec in enumerate(task.train + task.eval):
        if spec.limit is not None:
            _check_number(f"{where}: data[{i}]", "limit", spec.limit, integer=True, low=1)
    return task


def parse_method(data: Any, where: str) -> MethodConfig:
    method = _build(MethodConfig, data, where)
    if not isinstance(method.trainable, list) or not method.trainable:
        raise ConfigError(f"{where}: field 'trainable' must be a non-empty list")
    for group in method.trainable:
        if group not in MODEL_GROUPS + ("adapter",):
            raise ConfigError(f"{where}: field 'trainable' has {group!r}; allowed: {list(MODEL_GROUPS) + ['adapter']}")
    if "adapter" in method.trainable and method.adapter is None:
        raise ConfigError(f"{where}: field 'trainable' names 'adapter' but field 'adapter' is missing")
    if method.adapter is not None:
        try:
            check_adapter_spec(method.adapter)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
    _check_number(where, "lr", method.lr, integer=False, low=1e-12, allow_none=True)
    return method


def load_method(path: str | Path) -> MethodConfig:
    path = Path(path)
    return parse_method(load_yaml(path), str(path))


def resolve_method(name_or_path: str | Path, sequence_file: str | Path | None = None) -> Path:
    """A method YAML path, or a bare name looked up in methods/ and ablations/ next to the sequence file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return path
    base = Path(sequence_file).parent if sequence_file else Path(".")
    for folder in ("methods", "ablations"):
        candidate = base / folder / f"{name_or_path}.yaml"
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for folder in ("methods", "ablations") for p in (base / folder).glob("*.yaml"))
    raise ConfigError(f"method {str(name_or_path)!r}: no such file and no {name_or_path}.yaml in {base}/methods or "
                      f"{base}/ablations; known: {known}")


def load_sequence(
    path: str | Path, *, data_root: str | None = None, method: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> SequenceConfig:
    """Parse a sequence YAML; ``method`` (a path or a name in methods/ or ablations/) replaces its method,
    ``overrides`` its ``variables``."""
    path = Path(path)
    raw = load_yaml(path)
    where = str(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with fields name, tasks, ...")
    raw = copy.deepcopy(raw)
    declared = raw.pop("variables", None) or {}
    if not isinstance(declared, dict):
        raise ConfigError(f"{where}: field 'variables' must be a mapping")
    unknown = sorted(set(overrides or {}) - set(declared) - {"data_root"})
    if unknown:
        raise ConfigError(f"{where}: --var {unknown} not among the file's variables {sorted(declared)}")
    values = {**declared, **(overrides or {})}
    variables = {"config_dir": str(path.parent.resolve()), "data_root": data_root, **values}
    tasks_raw = raw.pop("tasks", None)
    if not isinstance(tasks_raw, list) or not tasks_raw:
        raise ConfigError(f"{where}: field 'tasks' is empty or missing")
    tasks = [parse_task(substitute(t, variables, f"{where}: tasks[{i}]"), f"{where}: tasks[{i}]") for i, t in enumerate(tasks_raw)]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: field 'tasks': task names {names} are not unique")
    method_raw = raw.pop("method", None)
    if method is not None:
        method_cfg = load_method(resolve_method(method, path))
    elif isinstance(method_raw, str):
        method_cfg = load_method(resolve_method((path.parent / method_raw) if not Path(method_raw).is_absolute() else method_raw, path))
    elif method_raw is not None:
        method_cfg = parse_method(method_raw, f"{where}: method")
    else:
        raise ConfigError(f"{where}: field 'method' is missing (give it in the file or pass --method)")
    raw = substitute(raw, variables, where)
    known = {f.name for f in fields(SequenceConfig)} - {"tasks", "method", "variables", "source", "external"}
    extra = sorted(set(raw) - known)
    if extra:
        raise ConfigError(f"{where}: unknown field(s) {extra}; allowed: {sorted(known | {'tasks', 'method', 'variables'})}")
    if "name" not in raw:
        raise ConfigError(f"{where}: missing required field(s) ['name']")
    config = SequenceConfig(**raw, tasks=tasks, method=method_cfg, variables=values, source=where,
                            external={key: variables[key] for key in EXTERNAL})
    for name in ("seed", "data_seed"):
        _check_number(where, name, getattr(config, name), integer=True, low=0)
    for name in ("eval_batch_size", "max_new_tokens"):
        _check_number(where, name, getattr(config, name), integer=True, low=1)
    return config


def apply_limits(
    config: SequenceConfig, *, max_steps: int | None = None, max_train: int | None = None, max_eval: int | None = None,
) -> SequenceConfig:
    """A copy with every task's steps and every train / eval DataSpec's limit capped (smoke runs)."""
    import dataclasses

    tasks = []
    for task in copy.deepcopy(config.tasks):
        if max_steps is not None:
            task.steps, task.epochs = (max_steps if task.steps is None else min(task.steps, max_steps)), None
            task.checkpoint_every = min(task.checkpoint_every, task.steps)
        for specs, cap in ((task.train, max_train), (task.eval, max_eval)):
            for spec in specs:
                if cap is not None:
                    spec.limit = cap if spec.limit is None else min(spec.limit, cap)
        tasks.append(task)
    return dataclasses.replace(config, tasks=tasks)
