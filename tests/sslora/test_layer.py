import itertools

import pytest
import torch

from sslora import reference_forward
from sslora.router import load_balancing_loss

from .helpers import make_layer

MATRIX = list(
    itertools.product(
        [(40, 48), (96, 64)],  # (m, n)
        [(1, 1, 4), (4, 2, 8), (8, 2, 32), (4, 4, 16)],  # (N, k, r)
        ["spectral", "zero", "random"],
    )
)


def _params(layer):
    return [layer.router.weight, layer.experts.lora_A, layer.experts.lora_B]


@pytest.mark.parametrize("shape, nkr, init", MATRIX)
def test_fast_path_matches_reference_fp32(shape, nkr, init):
    (m, n), (big_n, k, r) = shape, nkr
    layer, _ = make_layer(m, n, r=r, num_experts=big_n, top_k=k, init=init, scaling=4.0)
    _perturb(layer)
    x = torch.randn(3, 7, n, requires_grad=True)
    _check_against_reference(layer, x, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("nkr", [(4, 2, 8), (8, 2, 32)])
def test_fast_path_matches_reference_bf16(nkr):
    big_n, k, r = nkr
    layer, _ = make_layer(96, 64, dtype=torch.bfloat16, r=r, num_experts=big_n, top_k=k, scaling=4.0)
    _perturb(layer)
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16, requires_grad=True)
    _check_against_reference(layer, x, atol=3e-2, rtol=3e-2)


def test_fast_path_matches_reference_conv1x1():
    layer, _ = make_layer(24, 16, conv=True, r=8, num_experts=4, top_k=2, scaling=2.0)
    _perturb(layer)
    x = torch.randn(2, 16, 3, 5, requires_grad=True)
    assert layer(x).shape == (2, 24, 3, 5)
    _check_against_reference(layer, x, atol=1e-5, rtol=1e-4)


def _perturb(layer):
    """Move the experts off their init so the test exercises the trained state too."""
    with torch.no_grad():
        for p in _params(layer):
            p.add_(torch.randn_like(p) * 0.05)


def _check_against_reference(layer, x, atol, rtol):
    upstream = torch.randn_like(layer(x))
    results = []
    for forward in (layer.forward, lambda inp: reference_forward(layer, inp)):
        x.grad = None
        for p in _params(layer):
            p.grad = None
        out = forward(x)
        (out * upstream).sum().backward()
        results.append((out.detach(), x.grad.clone(), [p.grad.clone() for p in _params(layer)]))
    (fast, fast_dx, fast_grads), (ref, ref_dx, ref_grads) = results
    torch.testing.assert_close(fast, ref, atol=atol, rtol=rtol)
    torch.testing.assert_close(fast_dx, ref_dx, atol=atol, rtol=rtol)
    for got, want in zip(fast_grads, ref_grads):
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


@pytest.mark.parametrize("init", ["spectral", "principal", "minor", "random"])
def test_single_expert_initial_output_equals_base(init):
    layer, _ = make_layer(40, 48, r=8, num_experts=1, top_k=1, init=init, scaling=6.0)
    x = torch.randn(4, 9, 48)
    torch.testing.assert_close(layer(x), layer.base(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("init", ["spectral", "principal", "minor", "random"])
def test_residual_is_expected_update_so_uniform_routing_gives_w0(init):
    layer, config = make_layer(40, 48, r=16, num_experts=4, top_k=2, init=init, scaling=3.0)
    a, b, d, s = layer.experts.lora_A, layer.experts.lora_B, 4, layer.scaling
    expert_updates = [s * b[:, j * d : (j + 1) * d] @ a[j * d : (j + 1) * d] for j in range(4)]
    w_res = layer.residual.weight()
    torch.testing.assert_close(w_res, sum(expert_updates) / 4, atol=1e-6, rtol=1e-5)
    # equivalent weight with every R_i = E[R_i] = 1/N is exactly W0 (not token by token under top-k)
    w0 = layer.base.weight
    equivalent = w0 - w_res + sum(u / 4 for u in expert_updates)
    torch.testing.assert_close(equivalent, w0, atol=1e-6, rtol=1e-5)
    # ... but only in expectation: each token uses its own top-k experts, so per token it differs
    x = torch.randn(2, 48)
    assert (layer(x) - layer.base(x)).abs().max() > 1e-3


def test_base_weight_never_modified_by_training():
    layer, _ = make_layer(40, 48, r=8, num_experts=4, top_k=2)
    original = layer.base.weight.clone()
    opt = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(5, 48)).pow(2).mean().backward()
        opt.step()
    assert torch.equal(layer.base.weight, original)
    assert layer.base.weight.grad is None


def test_unselected_experts_get_zero_gradient():
    layer, _ = make_layer(40, 48, r=16, num_experts=8, top_k=2, init="spectral")
    x = torch.randn(1, 48)
    layer(x).sum().backward()
    _, chosen, _ = layer.router(x)
    chosen = set(chosen.flatten().tolist())
    d = 2
    for j in range(8):
        rows = slice(j * d, (j + 1) * d)
        grads = [layer.experts.lora_A.grad[rows], layer.experts.lora_B.grad[:, rows], layer.router.weight.grad[j]]
        if j in chosen:
            assert all(g.abs().sum() > 0 for g in grads)
        else:
            assert all(torch.count_nonzero(g) == 0 for g in grads)


def test_every_adapter_parameter_gets_a_gradient_tensor():
    """DDP without find_unused_parameters: grads exist (possibly zero) for every expert."""
    layer, _ = make_layer(40, 48, r=16, num_experts=8, top_k=1)
    layer(torch.randn(1, 48)).sum().backward()
    assert all(p.grad is not None for p in (layer.router.weight, layer.experts.lora_A, layer.experts.lora_B))


def test_aux_loss_ignores_padding():
    layer, _ = make_layer(40, 48, r=8, num_experts=4, top_k=2)
    layer.train()
    x = torch.randn(2, 6, 48)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]])
    layer.context.attention_mask = mask
    with layer.context.collect_aux_losses() as losses:
        layer(x)
    [masked] = losses
    garbage = x.clone()
    garbage[mask == 0] = torch.randn(int((mask == 0).sum()), 48) * 100
    with layer.context.collect_aux_losses() as losses:
        layer(garbage)
    torch.testing.assert_close(losses[0], masked)
    valid_tokens = x[mask.bool()]
    logits = valid_tokens @ layer.router.weight.T
    torch.testing.assert_close(masked, load_balancing_loss(logits, logits.topk(2).indices, 4))


def test_aux_loss_uniform_routing_is_one_and_off_in_eval():
    logits = torch.zeros(8, 4)
    indices = torch.tensor([[0, 1], [2, 3]] * 4)
    assert load_balancing_loss(logits, indices, 4).item() == pytest.approx(1.0)
    layer, _ = make_layer(40, 48, r=8, num_experts=4, top_k=2)
    layer.eval()
    with layer.context.collect_aux_losses() as losses:
        layer(torch.randn(3, 48))
    assert losses == []


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_routing_stats_count_tokens_and_gates(mode):
    layer, _ = make_layer(40, 48, r=8, num_experts=4, top_k=2)
    layer.train(mode == "train")
    x = torch.randn(10, 48)
    layer(x)
    assert layer.expert_counts.sum().item() == 0  # off unless asked for
    layer.record_stats = True
    with torch.no_grad():
        layer(x)
    gates, _, _ = layer.router(x)
    torch.testing.assert_close(layer.expert_counts, (gates > 0).float().sum(0))
    torch.testing.assert_close(layer.gate_sums, gates.sum(0))
    assert layer.expert_counts.sum().item() == 20  # 10 tokens x top-2


@pytest.mark.parametrize("init", ["spectral", "zero"])
def test_dropout_path_matches_reference_in_eval(init):
    """With dropout the residual and router see the clean input: a separate (unfused) code path."""
    layer, _ = make_layer(40, 48, r=8, num_experts=4, top_k=2, init=init, dropout=0.1)
    _perturb(layer)
    layer.eval()
    x = torch.randn(2, 5, 48, requires_grad=True)
    _check_against_reference(layer, x, atol=1e-5, rtol=1e-4)
    layer.train()
    torch.manual_seed(1)
    noisy = layer(x)
    assert not torch.allclose(noisy, reference_forward(layer.eval(), x))


def test_hooked_or_subclassed_base_sees_its_own_output():
    """The adapter adds into a plain nn.Linear's output in place; a forward hook must still see the
    base output, and a Linear subclass (e.g. a quantised one) gets an out-of-place sum."""

    class MyLinear(torch.nn.Linear):
        pass

    x = torch.randn(2, 3, 48, requires_grad=True)
    for case in ("hook", "subclass"):
        layer, _ = make_layer(40, 48, r=8, num_experts=4, top_k=2)
        _perturb(layer)
        if case == "subclass":
            sub = MyLinear(48, 40)
            sub.load_state_dict(layer.base.state_dict())
            sub.requires_grad_(False)
            layer.base = sub
        seen = []
        layer.base.register_forward_hook(lambda module, args, output: seen.append((output, output.clone())))
        _check_against_reference(layer, x, atol=1e-5, rtol=1e-4)
        assert all(torch.equal(output, copy) for output, copy in seen)


def test_gradients_when_only_the_adapter_needs_them():
    """First adapted layer of a frozen network: x has no grad, the adapter does (in-place path)."""
    layer, _ = make_layer(40, 48, r=8, num_experts=4, top_k=2)
    _perturb(layer)
    x = torch.randn(2, 5, 48)
    upstream = torch.randn(2, 5, 40)
    grads = []
    for forward in (layer.forward, lambda inp: reference_forward(layer, inp)):
        for p in _params(layer):
            p.grad = None
        (forward(x) * upstream).sum().backward()
        grads.append([p.grad.clone() for p in _params(layer)])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_autocast_bf16_on_an_fp32_layer():
    """Mixed precision (what accelerate's bf16 does on GPUs; CPU autocast here): forward and
    backward run and stay close to the fp32 reference."""
    layer, _ = make_layer(40, 48, r=8, num_experts=4, top_k=2)
    _perturb(layer)
    x = torch.randn(2, 5, 48, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and all(p.grad is not None for p in _params(layer))
    torch.testing.assert_close(out.float(), reference_forward(layer, x), atol=5e-2, rtol=5e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer.router.logits(x.reshape(-1, 48)).dtype == torch.float32  # the router stays fp32
