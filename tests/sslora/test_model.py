import itertools
import json
import os
import pickle

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import sslora
from sslora import SSLoRAConfig, SSLoRAModel, get_sslora_model
from sslora.layer import SSLoRALayer

from .helpers import TinyMLP, qwen_image_inputs, tiny_qwen2_5_vl

TARGETS = ["fc_in", "fc_mid", "fc_out"]
CONFIG_MATRIX = [
    dict(init=init, num_experts=n, top_k=k, r=r, scaling=scaling)
    for init, (n, k, r), scaling in itertools.product(
        ["spectral", "principal", "minor", "random", "zero"], [(1, 1, 8), (4, 2, 8), (8, 2, 16)], [2.0, "optimal"]
    )
]


def _fresh_mlp():
    torch.manual_seed(0)
    return TinyMLP()


@pytest.mark.parametrize("kwargs", CONFIG_MATRIX, ids=lambda k: "-".join(str(v) for v in k.values()))
def test_config_matrix_train_save_load(kwargs, tmp_path):
    config = SSLoRAConfig(target_modules=TARGETS, aux_loss_coef=0.01, **kwargs)
    model = get_sslora_model(_fresh_mlp(), config)
    assert len(model.sslora_layers()) == 3
    x = torch.randn(3, 5, 48)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        loss = model(x).pow(2).mean() + model.aux_loss()
        loss.backward()
        opt.step()
    model.eval()
    expected = model(x)
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]  # + model card
    reloaded = SSLoRAModel.from_pretrained(_fresh_mlp(), tmp_path).eval()
    assert torch.equal(reloaded(x), expected)


def test_from_pretrained_never_computes_svd_nor_unpickles(tmp_path, monkeypatch):
    model = get_sslora_model(_fresh_mlp(), SSLoRAConfig(target_modules=TARGETS, r=8, num_experts=4))
    model.save_pretrained(tmp_path)

    def forbidden(*args, **kwargs):
        raise AssertionError("called during from_pretrained")

    monkeypatch.setattr("sslora.spectral.exact_svd", forbidden)
    monkeypatch.setattr("sslora.cache.exact_svd", forbidden)
    monkeypatch.setattr(torch.linalg, "svd", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    reloaded = SSLoRAModel.from_pretrained(_fresh_mlp(), tmp_path)
    x = torch.randn(2, 48)
    assert torch.equal(reloaded(x), model(x))
    payload = json.loads((tmp_path / "adapter_config.json").read_text())
    assert payload["library_version"] == sslora.__version__
    assert set(payload["layers"]) == set(model.sslora_layers())


def test_from_pretrained_is_frozen_unless_trainable(tmp_path):
    model = get_sslora_model(_fresh_mlp(), SSLoRAConfig(target_modules=TARGETS, r=8, num_experts=4))
    model.save_pretrained(tmp_path)
    assert SSLoRAModel.from_pretrained(_fresh_mlp(), tmp_path).trainable_parameters()[0] == 0
    trainable = SSLoRAModel.from_pretrained(_fresh_mlp(), tmp_path, is_trainable=True).trainable_parameters()[0]
    assert trainable == model.trainable_parameters()[0]


def test_from_pretrained_on_wrong_model_names_the_problem(tmp_path):
    get_sslora_model(_fresh_mlp(), SSLoRAConfig(target_modules=TARGETS, r=8, num_experts=4)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="target_modules entry 'fc_in' matches nothing"):
        SSLoRAModel.from_pretrained(nn.Sequential(nn.Linear(48, 48)), tmp_path)
    with pytest.raises(FileNotFoundError, match="not an SSLoRA adapter directory"):
        SSLoRAModel.from_pretrained(_fresh_mlp(), tmp_path / "missing")


def test_svd_cache_hit_on_second_init(tmp_path):
    config = SSLoRAConfig(target_modules=TARGETS, r=8, num_experts=4)
    first = get_sslora_model(_fresh_mlp(), config, cache_dir=tmp_path)
    assert (first.init_cache.hits, first.init_cache.misses) == (0, 3)
    second = get_sslora_model(_fresh_mlp(), config, cache_dir=tmp_path)
    assert (second.init_cache.hits, second.init_cache.misses) == (3, 0)
    x = torch.randn(4, 48)
    assert torch.equal(first(x), second(x))
    other_weights = get_sslora_model(TinyMLP(), config, cache_dir=tmp_path)  # new random init -> new keys
    assert other_weights.init_cache.misses == 3


def test_disable_adapter_equals_base_and_unload_restores_bits():
    base = _fresh_mlp()
    x = torch.randn(3, 48)
    expected = base(x)
    originals = {k: v.clone() for k, v in base.state_dict().items()}
    model = get_sslora_model(base, SSLoRAConfig(target_modules=TARGETS, r=8, num_experts=4))
    assert not torch.equal(model(x), expected)
    with model.disable_adapter():
        assert torch.equal(model(x), expected)
    model.merge_residual()
    assert not torch.equal(model.base_model.fc_in.base.weight, originals["fc_in.weight"])  # the residual is in W0
    with model.disable_adapter():
        assert torch.equal(model(x), expected)  # and is taken out again, exactly
    restored = model.unload()
    assert not any(isinstance(m, SSLoRALayer) for m in restored.modules())
    for key, value in restored.state_dict().items():
        assert torch.equal(value, originals[key]), key
    assert torch.equal(restored(x), expected)


def test_merge_residual_keeps_outputs_and_saved_adapter(tmp_path):
    model = get_sslora_model(_fresh_mlp(), SSLoRAConfig(target_modules=TARGETS, r=8, num_experts=4))
    x = torch.randn(3, 48)
    before = model(x)
    model.save_pretrained(tmp_path / "a")
    model.merge_residual()
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path / "b")
    a = load_file(tmp_path / "a" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_trainable_parameter_counts():
    model = get_sslora_model(_fresh_mlp(), SSLoRAConfig(target_modules=TARGETS, r=8, num_experts=4))
    trainable, total = model.trainable_parameters()
    shapes = [(64, 48), (64, 64), (40, 64)]  # (m, n)
    assert trainable == sum(8 * (m + n) + 4 * n for m, n in shapes)
    assert total == trainable + sum(p.numel() for p in _fresh_mlp().parameters())
    lora = get_sslora_model(_fresh_mlp(), SSLoRAConfig(target_modules=TARGETS, r=8, num_experts=1, top_k=1, init="zero"))
    assert lora.trainable_parameters()[0] == sum(8 * (m + n) for m, n in shapes)  # N = 1 is exactly LoRA


def test_aux_loss_added_to_hf_loss_and_zero_when_disabled():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)
    ids = torch.randint(0, 64, (2, 6))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    for coef in (0.5, 0.0):
        torch.manual_seed(0)
        model = get_sslora_model(Qwen2ForCausalLM(cfg), SSLoRAConfig(target_modules="llama", r=8, num_experts=4, aux_loss_coef=coef))
        model.train()
        out = model(input_ids=ids, attention_mask=mask, labels=ids)
        aux = model.aux_loss()
        if coef == 0:
            assert aux.item() == 0 and model._context.aux_losses() == []
        else:
            assert aux.item() > 0
            with model.disable_adapter():
                plain = model.base_model(input_ids=ids, attention_mask=mask, labels=ids).loss
            assert out.loss.item() != pytest.approx(plain.item())
    model.eval()
    generated = model.generate(input_ids=ids[:1], max_new_tokens=3, do_sample=False)  # pass-through
    assert generated.shape == (1, 9)
    assert model.config.vocab_size == 64


@pytest.mark.parametrize(
    "targets, message",
    [
        (["fc_nope"], "entry 'fc_nope' matches nothing"),
        (["embed"], "matches unsupported modules:\n  embed: Embedding is not supported"),
        (r"fc_.*|pointwise", "pointwise: only 1x1 Conv2d"),
    ],
)
def test_bad_targets_raise_clear_errors(targets, message):
    model = TinyMLP(conv=True)
    model.pointwise = nn.Conv2d(4, 8, kernel_size=3)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        get_sslora_model(model, SSLoRAConfig(target_modules=targets, r=8, num_experts=4))


def test_layer_too_small_for_rank():
    model = nn.Sequential(nn.Linear(48, 12))
    with pytest.raises(ValueError, match=r"module '0' \(12x48\) is too small for the requested rank: .* 12 // 4 = 3 < d = r / N = 4"):
        get_sslora_model(model, SSLoRAConfig(target_modules=["0"], r=16, num_experts=4))


def test_double_injection_is_refused():
    model = get_sslora_model(_fresh_mlp(), SSLoRAConfig(target_modules=TARGETS, r=8, num_experts=4))
    with pytest.raises(ValueError, match="already holds SSLoRA layers"):
        get_sslora_model(model.base_model, SSLoRAConfig(target_modules=TARGETS, r=8, num_experts=4))


def test_conv1x1_model_round_trip(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 32, 1), nn.ReLU(), nn.Conv2d(32, 8, 1))
    wrapped = get_sslora_model(model, SSLoRAConfig(target_modules=["0", "2"], r=8, num_experts=4))
    x = torch.randn(2, 16, 5, 5)
    wrapped.save_pretrained(tmp_path)
    torch.manual_seed(0)
    fresh = nn.Sequential(nn.Conv2d(16, 32, 1), nn.ReLU(), nn.Conv2d(32, 8, 1))
    assert torch.equal(SSLoRAModel.from_pretrained(fresh, tmp_path)(x), wrapped(x))


@pytest.mark.parametrize("preset, vision_layers", [("qwen2_5_vl", 0), ("qwen2_5_vl+vision", 2 * 5)])
def test_tiny_qwen2_5_vl(preset, vision_layers, tmp_path):
    base = tiny_qwen2_5_vl()
    inputs = qwen_image_inputs(base)
    base_out = base(**inputs).logits
    model = get_sslora_model(tiny_qwen2_5_vl(), SSLoRAConfig(target_modules=preset, r=8, num_experts=4))
    names = list(model.sslora_layers())
    assert sum("visual" in n for n in names) == vision_layers
    assert sum("language_model" in n for n in names) == 2 * 7
    with model.disable_adapter():
        assert torch.equal(model(**inputs).logits, base_out)
    model.train()
    out = model(**inputs, labels=inputs["input_ids"])
    out.loss.backward()
    assert all(layer.experts.lora_B.grad is not None for layer in model.sslora_layers().values())
    model.eval()
    expected = model(**inputs).logits
    model.save_pretrained(tmp_path)
    reloaded = SSLoRAModel.from_pretrained(tiny_qwen2_5_vl(), tmp_path)
    assert torch.equal(reloaded(**inputs).logits, expected)
    with pytest.warns(UserWarning, match="no routing statistics recorded"):
        assert all(sum(s["counts"]) == 0 for s in reloaded.routing_stats().values())
    reloaded.record_routing_stats()
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, expected)  # grad off: same bits
    stats = reloaded.routing_stats()
    assert len(stats) == len(names) and all(len(s["counts"]) == 4 for s in stats.values())
    assert all(sum(s["counts"]) > 0 for s in stats.values())
