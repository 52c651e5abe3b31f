"""`sslora params` (parameter budget on the meta device) and `sslora init` (precompute the spectral init)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from .config import PRESETS, SSLoRAConfig
from .inject import _features, find_targets
from .typed_cli import build_parser, run


def load_sslora_config(path: str | Path, **overrides) -> SSLoRAConfig:
    """SSLoRAConfig from a YAML or JSON file: its fields at top level or under an `sslora:` key."""
    import yaml

    path = Path(path)
    with open(path, encoding="utf-8") as handle:
        try:
            data = yaml.safe_load(handle) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: invalid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of SSLoRAConfig fields, got {type(data).__name__}")
    data = data.get("sslora", data)
    unknown = set(data) - set(SSLoRAConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"{path}: unknown SSLoRAConfig field(s) {sorted(unknown)}")
    return SSLoRAConfig(**{**data, **{k: v for k, v in overrides.items() if v is not None}})


def _hf_model_class(config_dict: dict, source: str):
    import transformers

    architectures = config_dict.get("architectures") or []
    for name in architectures:
        if hasattr(transformers, name):
            return getattr(transformers, name)
    raise ValueError(f"{source}: field 'architectures' = {architectures!r} names no class known to transformers")


def build_meta_model(model_config: str | Path) -> nn.Module:
    """A Hugging Face model from its config.json on the meta device: shapes only, no memory."""
    import transformers

    path = Path(model_config)
    if path.is_dir():
        path = path / "config.json"
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if "model_type" not in data:
        raise ValueError(f"{path}: missing field 'model_type'")
    config = transformers.CONFIG_MAPPING[data["model_type"]](**{k: v for k, v in data.items() if k != "model_type"})
    with torch.device("meta"):
        return _hf_model_class(data, str(path))._from_config(config)


def parameter_budget(model: nn.Module, config: SSLoRAConfig) -> dict[str, int]:
    """Parameter counts of SSLoRA vs plain LoRA of the same rank vs a full-rank upcycled MoE."""
    targets = find_targets(model, config)
    base = sum(p.numel() for p in model.parameters())
    sslora = lora = full_moe = 0
    for _, module in targets:
        m, n = _features(module)
        router = config.num_experts * n if config.num_experts > 1 else 0  # N = 1: no router (plain LoRA)
        sslora += config.r * (m + n) + router
        lora += config.r * (m + n)
        full_moe += config.num_experts * m * n + router  # N trainable copies of W0 + the router
    return {"base": base, "sslora": sslora, "lora": lora, "full_moe": full_moe, "layers": len(targets)}


def params(
    model_config: Path,
    target_modules: list[str] | None = None,
    r: int = 32,
    num_experts: int = 8,
    top_k: int = 2,
    include_vision: bool = False,
) -> dict[str, int]:
    """Print the parameter budget of an SSLoRA adapter for a model config, built on the meta device.

    Args:
        model_config: a Hugging Face config.json (or the folder holding it).
        target_modules: module names to adapt (default: the Qwen2.5-VL / Llama decoder projections).
        r: total rank.
        num_experts: experts per layer N.
        top_k: experts active per token.
        include_vision: also adapt the vision tower (Qwen2.5-VL preset 'qwen2_5_vl+vision').
    """
    model = build_meta_model(model_config)
    preset = "qwen2_5_vl+vision" if include_vision else "qwen2_5_vl"
    exclude = PRESETS["qwen2_5_vl"]["exclude_modules"] if target_modules and not include_vision else None
    config = SSLoRAConfig(
        r=r, num_experts=num_experts, top_k=top_k, target_modules=target_modules or preset, exclude_modules=exclude
    )
    budget = parameter_budget(model, config)
    base, rows = budget["base"], [
        ("frozen base model", budget["base"]),
        (f"SSLoRA {top_k}-of-{num_experts}, r={r} (experts + routers)", budget["sslora"]),
        (f"plain LoRA, r={r}", budget["lora"]),
        (f"full-rank upcycled MoE, {num_experts} copies + routers", budget["full_moe"]),
    ]
    print(f"model: {Path(model_config)}  ({type(model).__name__}, {budget['layers']} adapted layers)")
    print(f"{'method':<52} {'parameters':>16} {'% of base':>10} {'x SSLoRA':>9}")
    for label, count in rows:
        print(f"{label:<52} {count:>16,} {100 * count / base:>9.3f}% {count / budget['sslora']:>8.1f}x")
    total = base + budget["sslora"]
    print(f"trainable={budget['sslora']} total={total} percent={100 * budget['sslora'] / total:.4f}")
    return budget


def init(model: str, config: Path, out: Path, cache_dir: Path | None = None) -> None:
    """Precompute the spectral init of a model once and save it as an adapter directory.

    Args:
        model: a local Hugging Face model folder (or a hub id when online).
        config: YAML/JSON with SSLoRAConfig fields (top level or under `sslora:`).
        out: output adapter directory (adapter_config.json + adapter_model.safetensors).
        cache_dir: SVD cache folder (default $SSLORA_CACHE or ~/.cache/sslora).
    """
    from .model import get_sslora_model

    sslora_config = load_sslora_config(config)
    start = time.perf_counter()
    base = load_hf_model(model)
    wrapped = get_sslora_model(base, sslora_config, cache_dir=cache_dir)
    wrapped.save_pretrained(out)
    cache = wrapped.init_cache
    print(
        f"saved spectral init of {len(wrapped.sslora_layers())} layers to {out} in {time.perf_counter() - start:.1f}s "
        f"(SVD computed: {cache.misses}, read from cache: {cache.hits})"
    )


def load_hf_model(model: str) -> nn.Module:
    path = Path(model)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: give a local Hugging Face model folder")
    with open(config_path, encoding="utf-8") as handle:
        data = json.load(handle)
    return _hf_model_class(data, str(config_path)).from_pretrained(str(path), torch_dtype=torch.float32)


COMMANDS = {"params": params, "init": init}


def parser():
    """The `sslora` command line (a jsonargparse parser; see sslora.typed_cli)."""
    return build_parser("sslora", "Sparse Spectral LoRA tools", COMMANDS)


def main(argv: list[str] | None = None) -> None:
    try:
        run(parser(), COMMANDS, argv)
    except (ValueError, FileNotFoundError) as err:
        print(f"sslora: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err


if __name__ == "__main__":
    main()
