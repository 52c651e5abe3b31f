"""The parameter table: counts on a tiny hand-checkable dual encoder, and the BiomedCLIP-sized shapes."""

from __future__ import annotations

import pytest
from torch import nn

from medqwen.dual.params import MetaDualEncoder, biomedclip_sized, parameter_table, targeted_modules


def tiny(device: str = "meta") -> MetaDualEncoder:
    import torch

    with torch.device(device):
        image = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 4))  # the 16 -> 4 layer is < r
        text = nn.Sequential(nn.Linear(16, 16, bias=False))
        return MetaDualEncoder(image, text, nn.Linear(16, 4), nn.Linear(16, 4))


def test_tiny_table_by_hand():
    (row,) = parameter_table(tiny, num_experts=4, top_k=2, rows_spec=[(("image", "text"), 8)])
    # layers: image.0 (m=32, n=16), image.1 (m=16, n=32), text.0 (16 x 16, no bias); image.2 (4 x 16) has min(m, n) < r
    # SSLoRA: r (m + n) + N n;  LoRA: r (m + n);  MoE: N (m n + m [bias]) + N n
    sslora = (8 * 48 + 4 * 16) + (8 * 48 + 4 * 32) + (8 * 32 + 4 * 16)
    lora = 8 * 48 + 8 * 48 + 8 * 32
    moe = (4 * (512 + 32) + 4 * 16) + (4 * (512 + 16) + 4 * 32) + (4 * 256 + 4 * 16)
    base = (16 * 32 + 32) + (32 * 16 + 16) + (16 * 4 + 4) + 256 + 2 * (16 * 4 + 4) + 1
    assert (sslora, lora, moe, base) == (1280, 1024, 5568, 1533)
    assert row["layers"] == 3 and row["base_params"] == base
    assert (row["sslora_params"], row["lora_params"], row["full_moe_params"]) == (sslora, lora, moe)
    assert row["sslora_pct"] == pytest.approx(100 * sslora / base)
    assert row["full_moe_over_sslora"] == pytest.approx(moe / sslora)


def test_tiny_table_same_on_real_tensors():
    on_cpu = parameter_table(lambda: tiny("cpu"), num_experts=4, top_k=2, rows_spec=[(("image",), 8)])
    on_meta = parameter_table(tiny, num_experts=4, top_k=2, rows_spec=[(("image",), 8)])
    assert on_cpu == on_meta


def test_biomedclip_sized_shapes():
    model = biomedclip_sized()
    assert sum(p.numel() for p in model.image_encoder.parameters()) == 85_799_424  # ViT-B/16 at 224 (CLIP layout)
    assert sum(p.numel() for p in model.text_encoder.parameters()) == 109_482_240  # BERT-base, 30,522 tokens, pooler
    assert targeted_modules() == sorted([
        "image_encoder: mlp.fc1", "image_encoder: mlp.fc2", "image_encoder: self_attn.k_proj",
        "image_encoder: self_attn.out_proj", "image_encoder: self_attn.q_proj", "image_encoder: self_attn.v_proj",
        "text_encoder: intermediate.dense", "text_encoder: output.dense", "text_encoder: self.key",
        "text_encoder: self.query", "text_encoder: self.value"])
