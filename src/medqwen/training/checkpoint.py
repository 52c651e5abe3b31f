"""Atomic, pickle-free training checkpoints: trainable weights, optimizer, RNG states, data position.

Layout of `checkpoint-<step>/` (written to a temporary folder, then renamed in one step):
    trainable.safetensors   every trainable parameter (projector, adapter experts/routers, ...)
    adapter/                the SSLoRA adapter (save_pretrained), when one is attached
    optimizer.safetensors   optimizer state tensors; optimizer.json its scalars and param groups
    rng.safetensors         torch RNG state; trainer_state.json step, data position, python/numpy RNG, metrics
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STATE_NAME = "trainer_state.json"


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a state_dict into tensors (safetensors) and JSON-able scalars."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"scalars": scalars, "param_groups": state["param_groups"]}


def optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, key = flat.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    py_state = random.getstate()
    np_state = np.random.get_state()
    return (
        {"torch": torch.get_rng_state()},
        {
            "python": [py_state[0], list(py_state[1]), py_state[2]],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        },
    )


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(
    directory: str | Path,
    *,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    adapter=None,
    keep: int = 2,
) -> Path:
    """Write checkpoint-<state['step']> atomically under `directory`; prune to the newest `keep`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    bad = sorted(name for name, tensor in trainable.items() if not bool(torch.isfinite(tensor.detach()).all()))
    if bad:  # never replace good checkpoints with a broken one
        raise ValueError(f"refusing to save checkpoint at step {state['step']}: non-finite values in {bad[:5]}")
    final = directory / f"checkpoint-{state['step']:07d}"
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=".tmp-checkpoint-"))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
        opt_tensors, opt_meta = optimizer_to_flat(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
        rng_tensors, rng_meta = rng_state()
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        (tmp / STATE_NAME).write_text(json.dumps({**state, "rng": rng_meta}, indent=1))
        if adapter is not None:
            adapter.save_pretrained(tmp / "adapter")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in sorted(directory.glob("checkpoint-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of an interrupted save are ignored)."""
    return sorted(p for p in Path(directory).glob("checkpoint-*") if (p / STATE_NAME).is_file())


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint (temporary folders of an interrupted save are ignored)."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def load_checkpoint(path: str | Path, *, parameters: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore trainable weights, optimizer and RNG in place; returns the trainer state."""
    path = Path(path)
    weights = load_file(str(path / "trainable.safetensors"))
    missing, unexpected = sorted(set(parameters) - set(weights)), sorted(set(weights) - set(parameters))
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        for name, param in parameters.items():
            param.copy_(weights[name])
    optimizer_from_flat(optimizer, load_file(str(path / "optimizer.safetensors")), json.loads((path / "optimizer.json").read_text()))
    state = json.loads((path / STATE_NAME).read_text())
    set_rng_state(load_file(str(path / "rng.safetensors")), state.pop("rng"))
    return state
