"""Eval-mode calls (the inference path: no balance loss, statistics only when asked for; the optional
per-token expert gather) against `reference_forward`, and eval outputs after adapter tensors change."""

import itertools

import pytest
import torch

from sslora import reference_forward

from .helpers import make_layer
from .test_layer import _perturb

MATRIX = list(
    itertools.product(
        [(40, 48), (96, 64)],  # (m, n)
        [(1, 1, 4), (4, 2, 8), (8, 2, 32), (4, 4, 16), (4, 1, 8)],  # (N, k, r)
        ["spectral", "zero"],
        ["dense", "gather"],
    )
)


def _eval_layer(m, n, *, path="dense", **kwargs):
    layer, _ = make_layer(m, n, **kwargs)
    _perturb(layer)
    layer.eval()
    layer.gather_max_tokens = 10**9 if path == "gather" else 0
    return layer


def _expect_reference(layer, x, atol=1e-5, rtol=1e-4):
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference_forward(layer, x), atol=atol, rtol=rtol)


@pytest.mark.parametrize("shape, nkr, init, path", MATRIX)
@pytest.mark.parametrize("tokens", [(1,), (2, 1), (3, 7)])
def test_inference_matches_reference(shape, nkr, init, path, tokens):
    (m, n), (big_n, k, r) = shape, nkr
    layer = _eval_layer(m, n, path=path, r=r, num_experts=big_n, top_k=k, init=init, scaling=4.0)
    x = torch.randn(*tokens, n)
    with layer.context.collect_aux_losses() as losses:
        _expect_reference(layer, x)
    assert losses == [] and layer.expert_counts.sum() == 0


@pytest.mark.parametrize("path", ["dense", "gather"])
def test_inference_bf16_conv_dropout_merged(path):
    layer = _eval_layer(96, 64, path=path, dtype=torch.bfloat16, r=8, num_experts=4, top_k=2, scaling=4.0)
    _expect_reference(layer, torch.randn(2, 5, 64, dtype=torch.bfloat16), atol=3e-2, rtol=3e-2)
    conv = _eval_layer(24, 16, path=path, conv=True, r=8, num_experts=4, top_k=2, scaling=2.0)
    x = torch.randn(2, 16, 3, 5)
    assert conv(x).shape == (2, 24, 3, 5)
    _expect_reference(conv, x)
    dropped = _eval_layer(40, 48, path=path, r=8, num_experts=4, top_k=2, dropout=0.2)
    _expect_reference(dropped, torch.randn(4, 48))  # dropout is the identity in eval
    merged = _eval_layer(40, 48, path=path, r=8, num_experts=4, top_k=2)
    x = torch.randn(3, 48)
    with torch.no_grad():
        before = merged(x)
        merged.merge_residual()
        torch.testing.assert_close(merged(x), before, atol=1e-5, rtol=1e-4)
        _expect_reference(merged, x)


@pytest.mark.parametrize("nkr", [(1, 1, 8), (4, 2, 8)])
@pytest.mark.parametrize("variant", ["fp32", "bf16", "dropout", "conv"])
def test_eval_outputs_do_not_depend_on_autograd(nkr, variant):
    """Same products in the same order whether or not gradients are on (dense path)."""
    big_n, k, r = nkr
    dtype = torch.bfloat16 if variant == "bf16" else torch.float32
    kwargs = dict(r=r, num_experts=big_n, top_k=k, scaling=3.7, dtype=dtype)
    layer = _eval_layer(24, 32, conv=variant == "conv", dropout=0.1 if variant == "dropout" else 0.0, **kwargs)
    x = torch.randn(2, 32, 3, 3) if variant == "conv" else torch.randn(2, 9, 32, dtype=dtype)
    with_grad = layer(x)
    assert with_grad.requires_grad
    with torch.no_grad():
        assert torch.equal(layer(x), with_grad.detach())


def test_gather_only_without_adapter_gradients():
    layer = _eval_layer(40, 48, path="gather", r=8, num_experts=4, top_k=2)
    layer(torch.randn(3, 48)).sum().backward()  # trainable adapter, grad on: the dense path
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (layer.experts.lora_A, layer.experts.lora_B))
    for p in layer.parameters():
        p.requires_grad_(False)
    x = torch.randn(3, 48, requires_grad=True)  # frozen adapter: gathered, still differentiable in x
    (g,) = torch.autograd.grad(layer(x).sum(), x)
    (g_ref,) = torch.autograd.grad(reference_forward(layer, x).sum(), x)
    torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-4)


def test_routing_stats_on_the_inference_path():
    for path, (big_n, k) in itertools.product(["dense", "gather"], [(4, 2), (1, 1)]):
        layer = _eval_layer(40, 48, path=path, r=8, num_experts=big_n, top_k=k)
        layer.record_stats = True
        x = torch.randn(2, 5, 48)
        layer.context.attention_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
        with torch.no_grad():
            layer(x)
        gates, _, _ = layer.router(x[layer.context.attention_mask.bool()])
        torch.testing.assert_close(layer.expert_counts, (gates > 0).float().sum(0))
        torch.testing.assert_close(layer.gate_sums, gates.sum(0))
        assert layer.expert_counts.sum().item() == 7 * k  # padding excluded


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.5),
        lambda ps: torch.optim.AdamW(ps, lr=0.05, foreach=True),
        lambda ps: torch.optim.AdamW(ps, lr=0.05, fused=True),  # does not bump version counters
    ],
    ids=["sgd", "adamw-foreach", "adamw-fused"],
)
@pytest.mark.parametrize("path", ["dense", "gather"])
def test_eval_after_optimizer_step(make_optimizer, path):
    layer = _eval_layer(40, 48, path=path, r=8, num_experts=4, top_k=2)
    x = torch.randn(6, 48)
    with torch.no_grad():
        before = layer(x)
    optimizer = make_optimizer([p for p in layer.parameters() if p.requires_grad])
    layer(x).pow(2).sum().backward()  # a step taken while the layer stays in eval mode
    optimizer.step()
    with torch.no_grad():
        assert not torch.allclose(layer(x), before)
    _expect_reference(layer, x)


def test_eval_after_load_state_dict_and_data_writes():
    layer = _eval_layer(40, 48, r=8, num_experts=4, top_k=2)
    other = _eval_layer(40, 48, r=8, num_experts=4, top_k=2)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p))
    x = torch.randn(5, 48)
    with torch.no_grad():
        layer(x)
    layer.load_state_dict(other.state_dict())
    _expect_reference(layer, x)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), other(x))
    layer.load_state_dict({k: v.clone() * 0.5 for k, v in other.state_dict().items()}, assign=True)  # new tensors
    _expect_reference(layer, x)
    layer.experts.lora_A.data.mul_(3)  # .data bypasses version counters
    _expect_reference(layer, x)
    layer.double()
    _expect_reference(layer, x.double(), atol=1e-6, rtol=1e-5)  # the reference routes in fp32


def test_training_mode_without_grad_keeps_training_semantics():
    """train() + no_grad (e.g. evaluation inside a training loop) still computes the balance loss."""
    layer, _ = make_layer(40, 48, r=8, num_experts=4, top_k=2)
    layer.train()
    with torch.no_grad(), layer.context.collect_aux_losses() as losses:
        layer(torch.randn(3, 48))
    assert len(losses) == 1
    layer.eval()
    with layer.context.collect_aux_losses() as losses:
        layer(torch.randn(3, 48))
    assert losses == []
