"""The tiny random CLIP / SigLIP path: wrap with SSLoRA (and the other methods), train, save, reload, evaluate."""

from __future__ import annotations

import math

import pytest
import torch

from medqwen.dual import (MethodSpec, apply_method, clip_loss, load_finetuned, save_finetuned, siglip_loss, task_pairs,
                          tiny_clip, tiny_siglip, tower_targets, trainable_count, train_pairs)
from medqwen.dual.adapters import unwrap
from medqwen.eval.zero_shot import zero_shot_scores

from .conftest import colour_task

SMALL = {"r": 8, "num_experts": 4, "top_k": 2}


def test_clip_loss_by_hand():
    e = torch.eye(2)
    t = torch.tensor(math.log(2.0))  # logits = 2 * I
    assert clip_loss(e, e, t).item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)
    # equal labels: each row's target is (1/2, 1/2): CE = -(log p_same + log p_other) / 2 = log(1 + e^2) - 1
    same = clip_loss(e, e, t, labels=torch.tensor([5, 5])).item()
    assert same == pytest.approx(math.log(1 + math.exp(2)) - 1, abs=1e-6)
    # distinct labels == plain InfoNCE
    assert clip_loss(e, e, t, labels=torch.tensor([0, 1])).item() == pytest.approx(clip_loss(e, e, t).item())


def test_siglip_loss_by_hand():
    e = torch.eye(2)
    t, b = torch.tensor(0.0), torch.tensor(-1.0)
    # positives: logit 1 - 1 = 0; negatives: 0 - 1 = -1, sign -1 -> log sigmoid(1)
    expected = -(2 * math.log(0.5) + 2 * math.log(1 / (1 + math.exp(-1)))) / 2
    assert siglip_loss(e, e, t, b).item() == pytest.approx(expected, abs=1e-6)


def test_targets_are_tower_linears_without_heads():
    model = tiny_clip()
    names = tower_targets(model, r=8)
    assert len(names) == 2 * 2 * 6  # 2 towers x 2 layers x (q, k, v, out_proj, fc1, fc2)
    assert not any("projection" in n for n in names)
    assert tower_targets(model, ["text"], r=8) == [n for n in names if ".text_model." in n]
    assert tower_targets(model, r=128) == []  # width 64 < r: nothing fits
    siglip = tiny_siglip()
    assert not any(".head" in n for n in tower_targets(siglip, r=8))


@pytest.mark.parametrize("method", ["sslora", "lora", "full_ft", "full_moe"])
def test_train_save_reload_identical(tmp_path, method):
    task = colour_task(n_per_class=2)
    spec = MethodSpec(method, seed=1, **SMALL)
    model = tiny_clip(seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trained = apply_method(model, spec)
    n_trainable = trainable_count(trained)
    assert 0 < n_trainable
    history = train_pairs(trained, task_pairs(task, seed=0), steps=3, batch_size=4, lr=1e-2, head_lr=1e-2, seed=0, log_every=1)
    assert len(history) == 3 and all(math.isfinite(h["loss"]) for h in history)
    heads = unwrap(trained).head_parameters()
    assert any(not torch.equal(before[n], p) for n, p in heads.items())  # heads trained too
    save_finetuned(trained, tmp_path / "run", spec)
    reloaded = load_finetuned(tiny_clip(seed=0), tmp_path / "run")
    images = [s.image for s in task.samples[:3]]
    from medqwen.data.schema import to_rgb

    pil = [to_rgb(im) for im in images]
    texts = ["a red image.", "blue."]
    assert torch.equal(trained.embed_images(pil), reloaded.embed_images(pil))
    assert torch.equal(trained.embed_texts(texts), reloaded.embed_texts(texts))
    scores = zero_shot_scores(reloaded, task)
    assert 0 <= scores["acc"] <= 1 and 0 <= scores["auc"] <= 1 and scores["n"] == len(task.samples)


def test_sslora_counts_and_frozen_base():
    model = tiny_clip()
    trained = apply_method(model, MethodSpec("sslora", train_heads=False, **SMALL))
    # 24 layers of 64x64 (q, k, v, out) or 128x64 / 64x128 (fc1, fc2), r = 8, N = 4 routers of n inputs
    per_block = 4 * (8 * 128 + 4 * 64) + (8 * 192 + 4 * 64) + (8 * 192 + 4 * 128)
    assert trainable_count(trained) == 4 * per_block
    assert all(not p.requires_grad for n, p in trained.named_parameters() if "projection" in n or "logit" in n)


def test_aligned_and_heads_methods():
    model = tiny_clip()
    assert trainable_count(apply_method(model, MethodSpec("aligned"))) == 0
    model = tiny_clip()
    heads = apply_method(model, MethodSpec("heads"))
    assert trainable_count(heads) == 2 * 64 * 32 + 1  # two bias-free 64 -> 32 projections + temperature


def test_full_moe_starts_as_the_base_model():
    task = colour_task(n_per_class=1)
    from medqwen.data.schema import to_rgb

    pil = [to_rgb(s.image) for s in task.samples]
    base = tiny_clip(seed=0)
    expected = base.embed_images(pil), base.embed_texts(["red", "a green image."])
    moe = apply_method(tiny_clip(seed=0), MethodSpec("full_moe", **SMALL))
    torch.testing.assert_close(moe.embed_images(pil), expected[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(moe.embed_texts(["red", "a green image."]), expected[1], atol=1e-5, rtol=0)


def test_siglip_sslora_train_and_reload(tmp_path):
    task = colour_task(n_per_class=2)
    spec = MethodSpec("sslora", **SMALL)
    trained = apply_method(tiny_siglip(seed=0), spec)
    history = train_pairs(trained, task_pairs(task), steps=2, batch_size=6, seed=0, log_every=1)
    assert all(math.isfinite(h["loss"]) for h in history)
    save_finetuned(trained, tmp_path, spec)
    reloaded = load_finetuned(tiny_siglip(seed=0), tmp_path)
    texts = ["red.", "a blue image."]
    assert torch.equal(trained.embed_texts(texts), reloaded.embed_texts(texts))
    scores = {k: v for k, v in zero_shot_scores(reloaded, task).items() if k != "seconds"}
    assert scores == {k: v for k, v in zero_shot_scores(trained, task).items() if k != "seconds"}
