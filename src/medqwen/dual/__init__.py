"""CLIP-style dual encoders for zero-shot classification, adapted with SSLoRA / LoRA / full FT / full-rank MoE.

- :class:`DualEncoder` (base): the interface; ``clip_loss`` / ``siglip_loss``.
- :class:`HFDualEncoder`: transformers ``CLIPModel`` / ``SiglipModel``; ``tiny_clip`` / ``tiny_siglip`` for tests.
- :class:`MiniDualEncoder`: EfficientNet-Lite0 + all-MiniLM-L6-v2 from PyPI (``mini_dual_encoder``).
- :mod:`.adapters`: methods (aligned, heads, lora, sslora, full_ft, full_moe), targets, save / load.
- :mod:`.train`: alignment of the heads on frozen features, contrastive fine-tuning.
- :mod:`.params`: the parameter table of a BiomedCLIP-sized model.
- :mod:`.open_clip`: BiomedCLIP through open_clip (optional extra; needs torchvision and hub access).
"""

from .adapters import METHODS, MethodSpec, apply_method, load_finetuned, save_finetuned, tower_targets, trainable_count
from .base import DualEncoder, DualOutput, clip_loss, siglip_loss
from .full_moe import FullRankMoELayer, balance_loss, upcycle
from .hf import ByteTokenizer, HFDualEncoder, tiny_clip, tiny_siglip
from .mini import MiniDualEncoder, mini_dual_encoder, tiny_mini_dual
from .train import Pair, align_heads, task_pairs, train_pairs

__all__ = [
    "METHODS", "ByteTokenizer", "DualEncoder", "DualOutput", "FullRankMoELayer", "HFDualEncoder", "MethodSpec",
    "MiniDualEncoder", "Pair", "align_heads", "apply_method", "balance_loss", "clip_loss", "load_finetuned",
    "mini_dual_encoder", "save_finetuned", "siglip_loss", "task_pairs", "tiny_clip", "tiny_mini_dual",
    "tiny_siglip", "tower_targets", "train_pairs", "trainable_count", "upcycle",
]
