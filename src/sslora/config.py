"""SSLoRAConfig: every choice of the method, validated, saved as JSON beside the weights."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Union

INIT_MODES = ("spectral", "principal", "minor", "random", "zero")
SEGMENT_SLICES = ("head", "tail")
SCALING_RANKS = ("total", "expert")
CONFIG_NAME = "adapter_config.json"
# Keys SSLoRAModel.save_pretrained writes into adapter_config.json beside the fields (per-layer
# scaling and shape, checked on load); any other unknown key is a typo and is refused.
METADATA_KEYS = ("layers",)


class ConfigError(ValueError):
    """An invalid SSLoRA configuration: a field value, an unknown key, or an adapter_config.json that
    does not match its weights. The one error type sslora raises for settings."""

# Names of the linear layers of a Qwen2.5-VL decoder (and of most Llama-style decoders).
_DECODER_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# The Qwen2.5-VL vision tower: fused attention qkv / proj and its gated MLP, under `visual`.
PRESETS: dict[str, dict] = {
    "qwen2_5_vl": {"target_modules": _DECODER_PROJECTIONS, "exclude_modules": r".*\bvisual\b.*"},
    "qwen2_5_vl+vision": {
        "target_modules": _DECODER_PROJECTIONS + ["attn.qkv", "attn.proj"],
        "exclude_modules": r".*\bmerger\b.*",
    },
    "llama": {"target_modules": _DECODER_PROJECTIONS, "exclude_modules": None},
}


@dataclass
class SSLoRAConfig:
    """Configuration of a Sparse Spectral LoRA adapter (see docs/design.md §1 for the maths)."""

    r: int = field(default=32, metadata={"help": "Total rank r, shared by the N experts (d = r / N each)."})
    num_experts: int = field(default=8, metadata={"help": "Number of experts N per adapted layer."})
    top_k: int = field(
        default=2,
        metadata={"help": "Experts active per token (k <= N). Gates are a softmax over the k kept logits, so at "
                  "k = 1 every gate is 1 and the router learns from the balance loss only."},
    )
    target_modules: Union[list[str], str, None] = field(
        default="qwen2_5_vl",
        metadata={
            "help": "Which modules to adapt: a list of names (a module matches if its qualified name equals "
            "an entry or ends with '.' + entry), a regex (full match on the qualified name), or a preset "
            f"name from {sorted(PRESETS)}."
        },
    )
    exclude_modules: Union[list[str], str, None] = field(
        default=None, metadata={"help": "Names or regex of modules never adapted (same matching rules)."}
    )
    init: str = field(default="spectral", metadata={"help": f"Expert initialisation, one of {INIT_MODES}."})
    segment_slice: str = field(
        default="head",
        metadata={"help": "spectral init: take the first ('head') or last ('tail') d components of each segment."},
    )
    scaling: Union[float, str] = field(
        default="optimal",
        metadata={"help": "Scale s of the expert updates: a positive number, or 'optimal' = sqrt(3 n eta / r_s)."},
    )
    eta: float = field(
        default=0.1,
        metadata={"help": "Learning-rate ratio eta in the optimal scaling rule (only used when scaling='optimal')."},
    )
    scaling_rank: str = field(
        default="total",
        metadata={"help": "Rank r_s in the optimal rule: 'total' (r, the paper) or 'expert' (d, the reference code)."},
    )
    rho: float = field(default=10.0, metadata={"help": "Damping rho > 0 of the spectral factors: s*B*A = U S V^T / rho."})
    aux_loss_coef: float = field(
        default=0.01, metadata={"help": "Weight of the load-balancing loss (0 disables it)."}
    )
    add_aux_loss_to_loss: bool = field(
        default=True,
        metadata={"help": "Add aux_loss_coef * load-balancing loss to `outputs.loss` in training mode (HF Trainer)."},
    )
    autocast_adapter_dtype: bool = field(
        default=True,
        metadata={
            "help": "Keep the adapter (experts, residual factors) in fp32 when the adapted layer is bf16 / fp16, "
            "as PEFT's autocast_adapter_dtype: small optimizer updates of bf16 weights round away. False stores "
            "them in the layer's dtype (the router is fp32 either way)."
        },
    )
    fold_residual: bool = field(
        default=False,
        metadata={
            "help": "Fold the frozen residual W_res into the base weight once, when the adapter is built or "
            "loaded (W0 <- W0 - W_res, the way PiSSA stores its residual model): one rank-r pass less per "
            "layer in training and inference, the same outputs up to rounding. The base weight changes in "
            "place; disable_adapter(), unload() and save_pretrained() still see W0 bit for bit. "
            "Off: the base weight is never written."
        },
    )
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter input, in [0, 1)."})
    router_init_std: float = field(default=0.02, metadata={"help": "Std of the router's normal init (Mixtral)."})
    seed: int = field(default=0, metadata={"help": "Seed of router init, random segments and zero init."})
    library_version: str = field(default="", metadata={"help": "Filled in on save; informative only."})

    def __post_init__(self):
        _require_int(self, "r", minimum=1)
        _require_int(self, "num_experts", minimum=1)
        _require_int(self, "top_k", minimum=1)
        if self.top_k > self.num_experts:
            raise ConfigError(f"SSLoRAConfig.top_k={self.top_k} must be <= num_experts={self.num_experts}")
        if self.r % self.num_experts:
            raise ConfigError(
                f"SSLoRAConfig.r={self.r} must be divisible by num_experts={self.num_experts} (d = r / N per expert)"
            )
        _require_choice(self, "init", INIT_MODES)
        _require_choice(self, "segment_slice", SEGMENT_SLICES)
        _require_choice(self, "scaling_rank", SCALING_RANKS)
        if isinstance(self.scaling, str):
            if self.scaling != "optimal":
                raise ConfigError(
                    f"SSLoRAConfig.scaling={self.scaling!r} must be a positive number or 'optimal'"
                )
        elif isinstance(self.scaling, bool) or not isinstance(self.scaling, (int, float)) or not self.scaling > 0:
            raise ConfigError(f"SSLoRAConfig.scaling={self.scaling!r} must be a positive number or 'optimal'")
        else:
            self.scaling = float(self.scaling)
        for name, low, high in (("eta", 0.0, math.inf), ("rho", 0.0, math.inf)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not low < value < high:
                raise ConfigError(f"SSLoRAConfig.{name}={value!r} must be a number > 0")
        if not isinstance(self.aux_loss_coef, (int, float)) or self.aux_loss_coef < 0:
            raise ConfigError(f"SSLoRAConfig.aux_loss_coef={self.aux_loss_coef!r} must be a number >= 0")
        if not isinstance(self.autocast_adapter_dtype, bool):
            raise ConfigError(f"SSLoRAConfig.autocast_adapter_dtype={self.autocast_adapter_dtype!r} must be true or false")
        if not isinstance(self.fold_residual, bool):
            raise ConfigError(f"SSLoRAConfig.fold_residual={self.fold_residual!r} must be true or false")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError(f"SSLoRAConfig.dropout={self.dropout!r} must be in [0, 1)")
        if isinstance(self.target_modules, str) and self.target_modules in PRESETS:
            preset = PRESETS[self.target_modules]
            self.target_modules = list(preset["target_modules"])
            if self.exclude_modules is None:
                self.exclude_modules = preset["exclude_modules"]
        if self.target_modules is None or (isinstance(self.target_modules, (list, tuple)) and not self.target_modules):
            raise ConfigError("SSLoRAConfig.target_modules must name at least one module (list, regex or preset)")
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)

    @property
    def expert_rank(self) -> int:
        """d = r / N."""
        return self.r // self.num_experts

    def scaling_for(self, in_features: int) -> float:
        """The scale s used by a layer with `in_features` inputs (n in the paper's formula)."""
        if self.scaling != "optimal":
            return float(self.scaling)
        rank = self.r if self.scaling_rank == "total" else self.expert_rank
        return math.sqrt(3.0 * in_features * self.eta / rank)

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, directory: str | os.PathLike, extra: dict | None = None) -> None:
        from ._io import atomic_write_text

        payload = {**self.to_dict(), **(extra or {})}
        atomic_write_text(os.path.join(directory, CONFIG_NAME), json.dumps(payload, indent=2, sort_keys=True))

    @classmethod
    def from_dict(cls, data: dict) -> "SSLoRAConfig":
        """The config of a dict of fields (e.g. a loaded adapter_config.json; its metadata keys,
        ``METADATA_KEYS``, are skipped). An unknown key is an error: a misspelt field must not
        silently fall back to its default."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known) - set(METADATA_KEYS))
        if unknown:
            hints = "".join(_did_you_mean(key, known) for key in unknown[:3])
            raise ConfigError(f"unknown SSLoRAConfig field(s) {unknown}{hints}; allowed: {sorted(known)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, directory: str | os.PathLike) -> tuple["SSLoRAConfig", dict]:
        """Returns the config and the whole JSON payload (which also holds per-layer metadata)."""
        path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {CONFIG_NAME} in {directory!s}: not an SSLoRA adapter directory")
        with open(path, encoding="utf-8") as handle:
            try:
                data = json.load(handle)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
        try:
            return cls.from_dict(data), data
        except (TypeError, ValueError) as err:  # name the file: the field check alone does not
            raise ConfigError(f"{path}: {err}") from err


def _did_you_mean(word: str, choices: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _require_int(config, name: str, minimum: int) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"SSLoRAConfig.{name}={value!r} must be an integer >= {minimum}")


def _require_choice(config, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in allowed:
        raise ConfigError(f"SSLoRAConfig.{name}={value!r} must be one of {list(allowed)}")
