"""Folding the residual W_res into a frozen base weight, W0 <- W0 - W_res, so that it can be undone
bit for bit without keeping a copy of W0.

Rounding makes fl(fl(W0 - R) + R) differ from W0 in the entries where W0 - R falls into a coarser
binade or the sum is an exact tie: about as often as |R| / |W0| (a residual a tenth the size of the
weight: one entry in ten; SSLoRA's, about 1 / (rho N) of r of the min(m, n) components: well under
one in a hundred). Those entries are recorded at merge time, (index, original value), and written
back after the sum (measured in tests/sslora/test_merge.py).
The product R = res_B @ res_A must come out the same bits when undoing: it does on the device and
dtype it was merged on; `checksum` detects the rest.
"""

from __future__ import annotations

import torch


def _bits(weight: torch.Tensor) -> torch.Tensor:
    """The weight's bit patterns as integers (a view), so that -0.0 != 0.0 and NaN == NaN."""
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return weight.view(ints[weight.element_size()])


def checksum(weight: torch.Tensor) -> int:
    """Order-independent integer sum of the bit patterns: any changed entry changes it (barring a
    compensating change elsewhere)."""
    return int(_bits(weight).reshape(-1).to(torch.int64).sum())


def _with(weight: torch.Tensor, residual: torch.Tensor, sign: int) -> torch.Tensor:
    """fl(weight + sign * residual), computed in the wider of the two dtypes and rounded once."""
    dtype = torch.promote_types(weight.dtype, residual.dtype)
    return weight.to(dtype).add(residual.to(dtype).view(weight.shape), alpha=sign).to(weight.dtype)


@torch.no_grad()
def fold(weight: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """weight <- fl(W0 - residual), in place. Returns what `unfolded` needs: the flat indices (K,)
    and original values (K,) of the entries that adding the residual back does not round to W0, and
    the checksum of W0. (No other merged value does better: within one binade fl(W0 - R) + R rounds
    back unless it is a tie, which rounds to the even neighbour whatever the merged value.)"""
    original_sum = checksum(weight)
    merged = _with(weight, residual, -1)
    wrong = (_bits(_with(merged, residual, +1)) != _bits(weight)).reshape(-1).nonzero().squeeze(1)
    values = weight.reshape(-1)[wrong].clone()
    weight.copy_(merged)
    if weight.numel() < 2**31:  # half the index memory
        wrong = wrong.to(torch.int32)
    return wrong, values, original_sum


@torch.no_grad()
def unfolded(weight: torch.Tensor, residual: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The original weight, out of place: fl(weight + residual) with the recorded entries written back."""
    restored = _with(weight, residual, +1)
    restored.view(-1)[index] = values
    return restored


@torch.no_grad()
def merge_single_expert(layer) -> None:
    """Fold a one-expert layer (plain LoRA, N = 1: its gate is 1 for every token) into its base
    weight, in place: W0 <- W0 - W_res + s B A. A routed layer (N > 1) is token-dependent and
    cannot be merged."""
    if layer.experts.num_experts != 1:
        raise ValueError(f"merge_and_unload needs one expert per layer (plain LoRA); this layer has "
                         f"{layer.experts.num_experts} routed experts, whose gates depend on the token")
    weight = layer.base.weight
    delta = layer.scaling * (layer.experts.lora_B.float() @ layer.experts.lora_A.float())  # (m, n)
    if layer.residual is not None:  # not yet folded in by merge_residual
        delta = delta - layer.residual.weight().float()
    weight.copy_((weight.float() + delta.view(weight.shape)).to(weight.dtype))
