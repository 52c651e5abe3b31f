"""Parameter budget of SSLoRA vs LoRA vs a full-rank upcycled MoE on a dual encoder (the paper's table).

Counts come from the real modules built on the meta device (shapes only, no memory): SSLoRA /
LoRA through ``sslora.get_sslora_model`` (its trainable parameters: experts r(m + n) per layer, plus
an N x n router when N > 1), the MoE through :func:`medqwen.dual.full_moe.upcycle` (N copies of
weight and bias, N(mn + m), plus the N x n router). Percentages are of the base model's parameters.

:func:`biomedclip_sized` builds BiomedCLIP's shapes from configs in code (Zhang et al. 2023,
``microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``): a ViT-B/16 image tower at 224 px
(``CLIPVisionModel``: 12 blocks, width 768, MLP 3072; it has CLIP's extra pre-LayerNorm, 1,536
parameters that timm's ViT lacks, and no patch-embedding bias, 768 fewer), a PubMedBERT-base text
tower (``BertModel``, 12 layers, width 768, vocabulary 30,522, with its pooler), a bias-free linear
image projection 768 -> 512, open_clip's bias-free MLP text projection 768 -> 640 -> 512, and the
temperature.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .adapters import MethodSpec, apply_method, tower_targets, trainable_count
from .base import DualEncoder

PAPER = {"sslora_pct": 2.24, "full_moe_pct": 760.0, "ratio": 339.0}


class MetaDualEncoder(DualEncoder):
    """Towers + heads with the DualEncoder names, for counting only (no forward)."""

    head_names = ("image_head.", "text_head.", "logit_scale")
    image_tower_name = "image_encoder"
    text_tower_name = "text_encoder"

    def __init__(self, image_tower: nn.Module, text_tower: nn.Module, image_head: nn.Module, text_head: nn.Module):
        super().__init__()
        self.image_encoder, self.text_encoder = image_tower, text_tower
        self.image_head, self.text_head = image_head, text_head
        self.logit_scale = nn.Parameter(torch.zeros(()))


def biomedclip_sized(device: str = "meta") -> MetaDualEncoder:
    """BiomedCLIP's shapes (see the module docstring), on ``device`` (default meta: no memory)."""
    from transformers import BertConfig, BertModel, CLIPVisionConfig, CLIPVisionModel

    vision = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              image_size=224, patch_size=16)
    text = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072, max_position_embeddings=512)
    with torch.device(device):
        return MetaDualEncoder(
            CLIPVisionModel(vision), BertModel(text),
            nn.Linear(768, 512, bias=False),
            nn.Sequential(nn.Linear(768, 640, bias=False), nn.GELU(), nn.Linear(640, 512, bias=False)),
        )


def budget(build, spec: MethodSpec) -> dict:
    """Trainable count of ``spec`` on a fresh model from ``build()`` (adapter / copies + routers only: no heads)."""
    model = build()
    base = sum(p.numel() for p in model.parameters())
    targets = tower_targets(model, spec.towers, r=spec.r)
    trained = apply_method(model, MethodSpec(**{**spec.__dict__, "train_heads": False}))
    return {"base": base, "trainable": trainable_count(trained), "layers": len(targets)}


DEFAULT_ROWS = ((("image", "text"), 32), (("image",), 32), (("text",), 32), (("image", "text"), 16), (("image", "text"), 8))


def parameter_table(build=biomedclip_sized, *, num_experts: int = 8, top_k: int = 2,
                    rows_spec: Sequence[tuple[Sequence[str], int]] = DEFAULT_ROWS) -> list[dict]:
    """One row per (targeted towers, total rank r): SSLoRA / LoRA / full-rank MoE trainable counts, % of
    base and the MoE / SSLoRA ratio (which depends only on the layer shapes, r and N)."""
    rows = []
    for towers, r in rows_spec:
        common = {"r": r, "num_experts": num_experts, "top_k": top_k, "towers": list(towers)}
        counts = {m: budget(build, MethodSpec(m, **common)) for m in ("sslora", "lora", "full_moe")}
        base = counts["sslora"]["base"]
        row = {"towers": "+".join(towers), "r": r, "num_experts": num_experts, "top_k": top_k,
               "layers": counts["sslora"]["layers"], "base_params": base}
        for method, c in counts.items():
            row[f"{method}_params"] = c["trainable"]
            row[f"{method}_pct"] = 100.0 * c["trainable"] / base
        row["full_moe_over_sslora"] = counts["full_moe"]["trainable"] / counts["sslora"]["trainable"]
        rows.append(row)
    return rows


def targeted_modules(build=biomedclip_sized, towers: Sequence[str] = ("image", "text"), r: int = 32) -> list[str]:
    """Distinct leaf names of the targeted layers (e.g. ``q_proj``, ``query``, ``fc1``), for stating the targets."""
    names = tower_targets(build(), list(towers), r=r)
    return sorted({n.split(".", 1)[0] + ": " + n.rsplit(".", 2)[-2] + "." + n.rsplit(".", 1)[-1] for n in names})
