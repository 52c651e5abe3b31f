"""merge_residual: disabling the adapter and unloading still give W0 bit for bit, without a copy of W0."""

import pytest
import torch
from torch import nn

from sslora import SSLoRAConfig, get_sslora_model
from sslora.merge import fold, unfolded

from .helpers import make_layer
from .test_layer import _perturb


def _extra_bytes(layer) -> int:
    """Memory the merge keeps beside the layer's usual tensors."""
    return sum(t.numel() * t.element_size() for t in (layer._merge_index, layer._merge_values))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("conv", [False, True])
def test_disabled_after_merge_is_the_base_bit_for_bit(dtype, conv):
    torch.manual_seed(0)
    layer, _ = make_layer(96, 64, dtype=dtype, conv=conv, r=16, num_experts=4, top_k=2, scaling=4.0)
    _perturb(layer)
    x = torch.randn(2, 64, 3, 3, dtype=dtype) if conv else torch.randn(2, 5, 64, dtype=dtype)
    original = layer.base.weight.detach().clone()
    with torch.no_grad():
        base_out = layer.base(x)
        adapted = layer(x)
        layer.merge_residual()
        assert not torch.equal(layer.base.weight, original)
        tolerance = 1e-5 if dtype == torch.float32 else 3e-2
        torch.testing.assert_close(layer(x), adapted, atol=tolerance, rtol=tolerance)
        layer.disabled = True
        assert torch.equal(layer(x), base_out)
        layer.disabled = False
    weight_bytes = original.numel() * original.element_size()
    assert _extra_bytes(layer) < 0.1 * weight_bytes  # not a copy of W0
    assert layer.unwrap() is layer.base
    assert torch.equal(layer.base.weight.view(torch.int16 if dtype != torch.float32 else torch.int32),
                       original.view(torch.int16 if dtype != torch.float32 else torch.int32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_keeps_under_two_percent_of_the_weight(dtype):
    """Measured for a 576 x 576 layer (SmolLM2-135M's width), r = 32, N = 8: 0.60% of the entries
    kept in fp32, 0.39% in bf16, i.e. 1.2% of the weight's bytes (int32 index + value)."""
    torch.manual_seed(0)
    layer, _ = make_layer(576, 576, dtype=dtype, r=32, num_experts=8, top_k=2)
    weight_bytes = layer.base.weight.numel() * layer.base.weight.element_size()
    layer.merge_residual()
    assert _extra_bytes(layer) < 0.02 * weight_bytes


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fold_unfolds_exactly_even_for_a_large_residual(dtype):
    torch.manual_seed(0)
    weight = (torch.randn(256, 256) * 0.05).to(dtype)
    residual = torch.randn(256, 16) @ torch.randn(16, 256) * 1e-2  # |R| ~ |W| / 10: ~30% of entries kept
    original = weight.clone()
    index, values, _ = fold(weight, residual)
    assert 0 < index.numel() < weight.numel()
    assert torch.equal(unfolded(weight, residual, index, values), original)


def test_unwrap_warns_when_the_residual_changed_after_merge():
    layer, _ = make_layer(40, 48, r=8, num_experts=4, top_k=2)
    layer.merge_residual()
    with torch.no_grad():
        layer._merged_residual.res_A.mul_(1.5)
    with pytest.warns(UserWarning, match="restored base weight differs"):
        layer.unwrap()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_model_merge_disable_unload_exact(dtype):
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(48, 64), nn.ReLU(), nn.Linear(64, 40)).to(dtype)
    x = torch.randn(3, 7, 48, dtype=dtype)
    expected = base(x)
    originals = {k: v.clone() for k, v in base.state_dict().items()}
    model = get_sslora_model(base, SSLoRAConfig(target_modules=["0", "2"], r=8, num_experts=4))
    model.merge_residual()
    with torch.no_grad(), model.disable_adapter():
        assert torch.equal(model(x), expected)
    restored = model.unload()
    assert all(torch.equal(value, originals[key]) for key, value in restored.state_dict().items())


@pytest.mark.parametrize("init", ["zero", "principal"])
@pytest.mark.parametrize("fold_residual_first", [False, True])
def test_merge_and_unload_of_plain_lora_keeps_the_outputs(init, fold_residual_first):
    """N = 1 (plain LoRA, PiSSA-like): the merged base computes what the adapted model did."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(32, 48), nn.GELU(), nn.Linear(48, 16))
    model = get_sslora_model(base, SSLoRAConfig(target_modules=["0", "2"], r=8, num_experts=1, top_k=1, init=init),
                             use_cache=False)
    with torch.no_grad():
        for layer in model.sslora_layers().values():
            layer.experts.lora_B.normal_(0, 0.1)
    x = torch.randn(4, 32)
    with torch.no_grad():
        expected = model(x)
        if fold_residual_first:
            model.merge_residual()
        merged = model.merge_and_unload()
        assert not any(type(m).__name__ == "SSLoRALayer" for m in merged.modules())
        torch.testing.assert_close(merged(x), expected, atol=1e-5, rtol=1e-5)


def test_merge_and_unload_refuses_routed_experts():
    base = nn.Sequential(nn.Linear(32, 48))
    model = get_sslora_model(base, SSLoRAConfig(target_modules=["0"], r=8, num_experts=4, top_k=2), use_cache=False)
    with pytest.raises(ValueError, match="one expert per layer"):
        model.merge_and_unload()
    assert len(model.sslora_layers()) == 1  # nothing was changed
