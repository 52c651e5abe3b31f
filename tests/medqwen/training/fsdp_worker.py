"""FSDP2 (`torch.distributed.fsdp.fully_shard`) on CPU with gloo: tiny MedQwen-mini + SSLoRA.

Run by test_distributed.py as ``torchrun --standalone --nproc_per_node 2 fsdp_worker.py OUT``; also
importable (``train``) for the one-process reference. Not the trainer: accelerate never selects FSDP
for CPU processes (DistributedType.MULTI_CPU is not upgraded to FSDP), and the trainer refuses FSDP
(see README "Distributed training"). What it shows: the adapter is injected into the full, unsharded
model (spectral SVD of the full weights, computed by rank 0 and read from the SVD cache by the
others), every decoder layer and the root are sharded across the two processes, the projector and the
adapter train, and the gathered full weights equal a one-process run with the global batch.
"""
from __future__ import annotations

import json
import os
import sys

import torch

STEPS, BATCH, LR = 3, 2, 2e-3  # per-rank batch; the reference uses BATCH * world
ADAPTER = {"kind": "sslora", "r": 8, "num_experts": 4, "top_k": 2, "init": "spectral", "aux_loss_coef": 0.0,
           "target_modules": "llama", "seed": 0}


def build(cache_dir: str | None = None, first=None):
    """tiny-mini + SSLoRA, projector and adapter trainable. `first`: a main-process-first context."""
    from contextlib import nullcontext

    from medqwen.models import tiny_mini
    from medqwen.training.config import adapter_config
    from sslora import get_sslora_model

    vlm = tiny_mini(seed=0)
    with first() if first is not None else nullcontext():
        model = get_sslora_model(vlm, adapter_config(ADAPTER), cache_dir=cache_dir)
    vlm.set_trainable(["projector"])
    model.set_adapter_trainable(True)
    return model


def train(model, samples, *, rank: int = 0, world: int = 1, batch: int = BATCH, steps: int = STEPS) -> list[float]:
    """`steps` AdamW steps; step s uses samples [s*batch*world, (s+1)*batch*world), rank r every
    world-th of them. The loss is the token mean over all ranks' answer tokens."""
    import torch.distributed as dist

    from medqwen.models.base import IGNORE_INDEX
    from medqwen.training.batches import make_batch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR)
    model.train()
    losses = []
    for step in range(steps):
        glob = samples[step * batch * world : (step + 1) * batch * world]
        inputs = make_batch(model.base_model, glob[rank::world], with_answers=True, cache=None)
        tokens = torch.tensor([float((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())])
        total = tokens.clone()
        if world > 1:
            dist.all_reduce(total)
        loss = model(**inputs).loss
        (loss * tokens / total * world).backward()  # FSDP averages the gradients over the ranks
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mean = (loss.detach() * tokens / total)
        if world > 1:
            dist.all_reduce(mean)
        losses.append(float(mean))
    return losses


def full_trainable(model) -> dict[str, torch.Tensor]:
    """Name -> full (gathered) tensor of every trainable parameter (a collective under FSDP)."""
    from torch.distributed.tensor import DTensor

    return {n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
            for n, p in model.named_parameters() if p.requires_grad}


def main() -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from medqwen.data.synthetic import make_synthetic_vqa
    from medqwen.training.trainer import make_accelerator

    out, data = sys.argv[1], sys.argv[2]
    acc = make_accelerator()  # the trainer's process group: gloo, MULTI_CPU
    rank, world = acc.process_index, acc.num_processes
    samples = list(make_synthetic_vqa(data, n_images=8)["train"])
    model = build(os.environ.get("SSLORA_CACHE"), first=acc.main_process_first)
    mesh = init_device_mesh("cpu", (world,))
    for layer in model.base_model.lm.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    sharded = {n: list(p.to_local().shape) for n, p in model.named_parameters() if isinstance(p, DTensor) and p.requires_grad}
    losses = train(model, samples, rank=rank, world=world)
    weights = full_trainable(model)
    print(f"rank {rank} of {world}: {len(sharded)} trainable DTensor parameters, losses {losses}", flush=True)
    if rank == 0:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in weights.items()}, os.path.join(out, "fsdp_trainable.safetensors"))
        with open(os.path.join(out, "fsdp.json"), "w") as handle:
            json.dump({"losses": losses, "sharded": sharded, "world_size": world}, handle)
    dist.barrier()


if __name__ == "__main__":
    main()
