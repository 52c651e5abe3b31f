"""How the trainer runs on several processes: the `accelerate.Accelerator` it builds and the
distributed types it refuses (FSDP, DeepSpeed) before any step. See README "Distributed training"."""

from __future__ import annotations

import os
from typing import Any

import torch


def launched_world_size() -> int:
    """Processes of this run as set by the launcher (torchrun, `accelerate launch`, mpirun); 1 if none."""
    for key in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 1


def make_accelerator(**kwargs: Any):
    """The trainer's `accelerate.Accelerator`.

    On a machine without GPUs, accelerate forms a (gloo) process group only when told to use the CPU:
    `Accelerator()` under torchrun (or `accelerate launch --multi_gpu`, which runs torchrun) sees
    LOCAL_RANK but no CUDA device and falls back to DistributedType.NO, so every rank ran as rank 0 of
    1 on all the data. With several launched processes and no CUDA we therefore pass `cpu=True`
    (DistributedType.MULTI_CPU, backend gloo)."""
    from accelerate import Accelerator

    check_distributed_type()  # before accelerate's own error (its FSDP plugin raises RuntimeError on CPUs)
    cpu = kwargs.pop("cpu", None)
    if cpu is None:
        cpu = launched_world_size() > 1 and not torch.cuda.is_available()
    return Accelerator(mixed_precision=kwargs.pop("mixed_precision", _mixed_precision()), cpu=cpu, **kwargs)


_SHARDED_TYPES = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DEEPSPEED", "ACCELERATE_USE_MEGATRON_LM": "MEGATRON_LM"}


def check_distributed_type(accelerator=None) -> None:
    """One process or DDP (MULTI_GPU / MULTI_CPU ...); FSDP and DeepSpeed are refused before training
    (from `accelerator.distributed_type`, or without one from the variables `accelerate launch` sets)."""
    if accelerator is not None:
        kind = getattr(accelerator.distributed_type, "value", str(accelerator.distributed_type))
    else:
        kind = next((k for env, k in _SHARDED_TYPES.items() if os.environ.get(env, "").lower() in ("true", "1")), "")
    if kind in _SHARDED_TYPES.values():
        raise ValueError(
            f"accelerate distributed type {kind} is not supported by the medqwen trainer: it writes checkpoints and "
            f"final weights from the main process's own parameters and optimizer state, which FSDP and DeepSpeed ZeRO-3 "
            f"shard (and ZeRO-1/2 the optimizer state), so they would be saved incomplete. Use data parallelism: "
            f"torchrun, or accelerate launch with configs/accelerate/ddp.yaml (GPUs) or cpu_2proc.yaml (CPUs) (README, 'Distributed training')")


def _mixed_precision() -> str:
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"  # bf16 is emulated (~90x slower) on CPUs without bf16 units: train in fp32
