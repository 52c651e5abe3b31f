"""MedQwen-mini: a LLaVA-style VLM from small pretrained parts that load offline on CPU.

    image (PIL) -> resize 224x224, RGB, ImageNet mean/std -> EfficientNet-Lite0.extract_features
    (frozen, eval mode) -> (1280, 7, 7) -> 49 visual tokens -> MLP projector (1280 -> hidden ->
    576, GELU; trainable) -> spliced into SmolLM2-135M-Instruct's input embeddings.

Image splicing: every image becomes 49 copies of a reserved special token (default
``<empty_output>``, a single-id StarCoder-era token SmolLM2 never emits in chat); ``forward``
replaces the embeddings at those positions, in order, with the projected image features. The
token's own embedding and LM-head row are never used, so no vocabulary resize is needed.

Efficiency: with labels, the LM head (49k x 576, ~20% of compute) is applied only at labelled
positions, and ``logits`` is None (``answer_logits`` holds the labelled positions' logits); pass
``full_logits=True`` to get (B, L, V) as well. Frozen image features can be cached:
``encode_images`` -> (N, 49, 1280), then ``build_inputs(..., image_features=...)``.

Global token: ``global_token=True`` appends one more image token, the mean of the 49 feature
vectors through the same projector (the pooled feature a linear probe reads), so 50 image tokens.

Blank-image control: ``blank_images=True`` on ``forward`` / ``generate`` zeroes the image
features before the projector (same sequence, no visual information).

Defaults: only the projector is trainable after construction (``set_trainable`` changes that);
the vision tower always stays in eval mode (BatchNorm statistics and drop-connect frozen), even
when its parameters are trainable.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from .base import VisionLanguageModel
from .outputs import VLMOutput, lm_output, positions_from_mask
from .tiny import TinyConvEncoder, build_tokenizer, seeded

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
DEFAULT_IMAGE_TOKEN = "<empty_output>"

FeaturesArg = Tensor | Sequence[Tensor | None] | None


def preprocess_images(images: Sequence[Image.Image], size: int = 224) -> Tensor:
    """PIL images (any mode; grayscale -> RGB) -> (N, 3, size, size) float32, ImageNet-normalised.

    Images are resized (bicubic) to size x size without cropping: medical findings can sit
    near the border.
    """
    arrays = [
        np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
        for im in images
    ]
    x = (np.stack(arrays) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(x.astype(np.float32)).permute(0, 3, 1, 2).contiguous()


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channel dimension of (..., C) token features (statistics over all tokens)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class MedQwenMini(VisionLanguageModel):
    """Frozen conv image encoder + MLP projector + causal LM (see the module docstring).

    Batch keys (from ``build_inputs``): input_ids (B, L), attention_mask (B, L), labels (B, L)
    when answers are given, and either pixel_values (N, 3, S, S) or image_features (N, T, C) for
    the N images of the batch in order (absent for a text-only batch).
    """

    supports_image_features = True
    supports_prefix_cache = True

    def __init__(
        self,
        vision: nn.Module,
        lm: nn.Module,
        tokenizer: Any,
        *,
        feature_dim: int,
        image_size: int = 224,
        projector_hidden: int | None = None,
        projector_norm: bool | str = False,
        global_token: bool = False,
        image_token: str = DEFAULT_IMAGE_TOKEN,
        system_prompt: str | None = None,
        model_type: str = "medqwen-mini",
        base_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.vision = vision.eval()
        self.lm = lm
        self.tokenizer = tokenizer
        self.model_type = model_type
        self.system_prompt = system_prompt
        self.base_config = base_config or {}
        self.image_size = image_size
        self.feature_dim = feature_dim
        hidden = lm.config.hidden_size
        self.projector_hidden = projector_hidden or hidden
        self.projector_norm = projector_norm
        # projector_norm: normalise the image features first. EfficientNet's post-activation features
        # share a large non-negative common component (pooled features of different images have cosine
        # ~0.5), which an unnormalised projector turns into nearly identical image tokens (cosine ~0.98).
        # "batchnorm" standardises each channel with running dataset statistics (as a linear probe
        # does); True / "layernorm" normalises each token across channels.
        if projector_norm not in (False, None, True, "layernorm", "batchnorm"):
            raise ValueError(f"projector_norm={projector_norm!r}; allowed: false, 'layernorm', 'batchnorm'")
        if projector_norm == "batchnorm":
            layers = [TokenBatchNorm(feature_dim)]
        else:
            layers = [nn.LayerNorm(feature_dim)] if projector_norm else []
        self.mm_projector = nn.Sequential(
            *layers, nn.Linear(feature_dim, self.projector_hidden), nn.GELU(), nn.Linear(self.projector_hidden, hidden)
        )
        token_id = tokenizer.convert_tokens_to_ids(image_token)
        if token_id is None or token_id == tokenizer.unk_token_id or len(self._encode_text(image_token)) != 1:
            raise ValueError(f"image token {image_token!r} must be a single special token of the tokenizer")
        self.image_token, self.image_token_id = image_token, int(token_id)
        with torch.no_grad():
            probe = self.vision.extract_features(torch.zeros(1, 3, image_size, image_size))
        if probe.shape[1] != feature_dim:
            raise ValueError(f"vision features have {probe.shape[1]} channels, expected {feature_dim}")
        self.global_token = bool(global_token)
        self.num_feature_tokens = int(probe.shape[2] * probe.shape[3])  # what encode_images returns per image
        self.num_image_tokens = self.num_feature_tokens + int(self.global_token)  # slots in the text
        self._record_base_params()
        self.set_trainable(["projector"])

    # ------------------------------------------------------------------ interface parts
    @property
    def language_model(self) -> nn.Module:
        return self.lm.model

    @property
    def vision_tower(self) -> nn.Module:
        return self.vision

    @property
    def projector(self) -> nn.Module:
        return self.mm_projector

    def _group_modules(self) -> dict[str, list[nn.Module]]:
        return {"projector": [self.mm_projector], "vision": [self.vision], "language": [self.lm]}

    def extra_config(self) -> dict[str, Any]:
        return {
            "projector": {
                "in_features": self.feature_dim,
                "hidden": self.projector_hidden,
                "norm": ("layernorm" if self.projector_norm is True else self.projector_norm) or None,
                "out_features": self.lm.config.hidden_size,
                "activation": "gelu",
            },
            "image_token": self.image_token,
            "num_image_tokens": self.num_image_tokens,
            "global_token": self.global_token,
            "image_size": self.image_size,
        }

    def train(self, mode: bool = True) -> MedQwenMini:
        super().train(mode)
        self.vision.eval()  # BatchNorm / drop-connect stay frozen: cached features stay valid
        return self

    def _image_span(self, n_tokens: int) -> list[int]:
        return [self.image_token_id] * n_tokens

    # ------------------------------------------------------------------ images
    def _vision_features(self, pixel_values: Tensor) -> Tensor:
        """(N, 3, S, S) -> (N, T, C) with T = 49 for 224x224 EfficientNet-Lite0."""
        trainable = any(p.requires_grad for p in self.vision.parameters())
        with torch.set_grad_enabled(trainable and torch.is_grad_enabled()):
            f = self.vision.extract_features(pixel_values.to(self.device, self.mm_projector[0].weight.dtype))
        return f.flatten(2).transpose(1, 2)

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> Tensor:
        """Frozen image features for caching: N PIL images -> (N, T, C) float32 on CPU."""
        chunks = []
        for i in range(0, len(images), batch_size):
            pixels = preprocess_images(images[i : i + batch_size], self.image_size)
            chunks.append(self._vision_features(pixels).float().cpu())
        if not chunks:
            return torch.zeros(0, self.num_feature_tokens, self.feature_dim)
        return torch.cat(chunks)

    def _prepare_images(
        self, per_sample: list[list[Image.Image]], image_features: FeaturesArg = None
    ) -> tuple[dict[str, Tensor], list[list[int]]]:
        t, t_features = self.num_image_tokens, self.num_feature_tokens
        if image_features is not None:
            if isinstance(image_features, Tensor):  # (B, T, C): one image per sample
                feats = [image_features[i : i + 1] for i in range(image_features.shape[0])]
            else:
                feats = [f if f is None or f.dim() == 3 else f.unsqueeze(0) for f in image_features]
            if len(feats) != len(per_sample):
                raise ValueError(f"image_features has {len(feats)} entries for {len(per_sample)} prompts")
            counts = [[t] * (0 if f is None else f.shape[0]) for f in feats]
            present = [f for f in feats if f is not None and f.shape[0] > 0]
            for f in present:
                if tuple(f.shape[1:]) != (t_features, self.feature_dim):
                    raise ValueError(f"image features must be (n, {t_features}, {self.feature_dim}), got {tuple(f.shape)}")
            return ({"image_features": torch.cat(present)} if present else {}), counts
        flat = [im for sample in per_sample for im in sample]
        counts = [[t] * len(sample) for sample in per_sample]
        return ({"pixel_values": preprocess_images(flat, self.image_size)} if flat else {}), counts

    def embed_inputs(
        self,
        input_ids: Tensor,
        pixel_values: Tensor | None = None,
        image_features: Tensor | None = None,
        blank_images: bool = False,
    ) -> Tensor:
        """(B, L) ids -> (B, L, H) embeddings with projected image features at image-token positions."""
        embeds = self.lm.get_input_embeddings()(input_ids)
        mask = input_ids == self.image_token_id
        n_slots = int(mask.sum())
        if n_slots == 0:
            return embeds
        if image_features is None:
            if pixel_values is None:
                raise ValueError("input has image tokens but neither pixel_values nor image_features")
            image_features = self._vision_features(pixel_values)
        feats = image_features.to(embeds.device, self.mm_projector[0].weight.dtype)  # (N, 49, C)
        if self.global_token:
            feats = torch.cat([feats, feats.mean(1, keepdim=True)], 1)  # (N, 50, C)
        if feats.shape[0] * feats.shape[1] != n_slots:
            raise ValueError(f"{n_slots} image-token positions but features for {feats.shape[0]} images")
        if blank_images:
            feats = torch.zeros_like(feats)
        proj = self.mm_projector(feats).reshape(-1, embeds.shape[-1]).to(embeds.dtype)
        return embeds.masked_scatter(mask.unsqueeze(-1), proj)

    # ------------------------------------------------------------------ forward / generate
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        labels: Tensor | None = None,
        pixel_values: Tensor | None = None,
        image_features: Tensor | None = None,
        blank_images: bool = False,
        full_logits: bool = False,
        logits_to_keep: int = 0,
        past_key_values: Any = None,
        use_cache: bool = False,
    ) -> VLMOutput:
        """Loss on labelled tokens; logits (B, L, V) only without labels or with ``full_logits``;
        ``logits_to_keep=n`` without labels: logits of the last n positions only (B, n, V).

        Prefix cache: ``use_cache=True`` returns the KV cache in ``past_key_values``; a call with
        ``past_key_values=cache`` continues it: ``input_ids`` (B, q) are new text tokens (no image
        tokens) and ``attention_mask`` (B, M + q) covers the M cached positions and the q new ones.
        """
        if past_key_values is not None:
            if (input_ids == self.image_token_id).any():
                raise ValueError("a continuation of a cached prefix cannot hold image tokens")
            embeds = self.embed_inputs(input_ids)
            position_ids = positions_from_mask(attention_mask)[:, -input_ids.shape[1]:]
        else:
            embeds = self.embed_inputs(input_ids, pixel_values, image_features, blank_images)
            position_ids = positions_from_mask(attention_mask)
        cached = {_cache_kwarg(self.lm.model): past_key_values} if past_key_values is not None else {}
        out = self.lm.model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache or past_key_values is not None,
            **cached,
        )
        result = lm_output(out.last_hidden_state, labels, self.lm.lm_head, full_logits, logits_to_keep)
        if use_cache or past_key_values is not None:
            result.past_key_values = out.cache if hasattr(out, "cache") else out.past_key_values
        return result

    def _generate(self, batch: dict[str, Tensor], config: Any, blank_images: bool) -> Tensor:
        """The LM decodes from the spliced embeddings with its KV cache (only new tokens come back)."""
        embeds = self.embed_inputs(
            batch["input_ids"], batch.get("pixel_values"), batch.get("image_features"), blank_images
        )
        return self.lm.generate(inputs_embeds=embeds, attention_mask=batch["attention_mask"], generation_config=config)


def _cache_kwarg(decoder: nn.Module) -> str:
    """The decoder's KV-cache argument: ``cache`` in recent transformers, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def medqwen_mini(
    *,
    cache_dir: str | Path | None = None,
    system_prompt: str | None = None,
    projector_hidden: int | None = None,
    projector_norm: bool = False,
    global_token: bool = False,
    seed: int = 0,
) -> MedQwenMini:
    """MedQwen-mini from the installed packages (first call converts SmolLM2's GGUF, ~30 s)."""
    from .pretrained import efficientnet_lite0, load_smollm2

    lm, tokenizer = load_smollm2(cache_dir)
    vision = efficientnet_lite0(cache_dir)
    with seeded(seed):
        return MedQwenMini(
            vision,
            lm,
            tokenizer,
            feature_dim=1280,
            projector_hidden=projector_hidden,
            projector_norm=projector_norm,
            global_token=global_token,
            system_prompt=system_prompt,
            model_type="medqwen-mini",
            base_config={"name": "medqwen-mini",
                         "kwargs": {"projector_hidden": projector_hidden, "projector_norm": projector_norm, "seed": seed,
                                    **({"global_token": True} if global_token else {})}},
        )


def tiny_mini(
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    feature_dim: int = 32,
    projector_hidden: int | None = None,
    projector_norm: bool = False,
    global_token: bool = False,
    system_prompt: str | None = None,
) -> MedQwenMini:
    """MedQwen-mini's architecture at toy size, random and deterministic in ``seed`` (builds in ms).

    Tiny Llama (``num_layers`` x ``hidden_size``, tied embeddings) + :class:`TinyConvEncoder`
    (224x224 -> feature_dim x 7 x 7 = 49 tokens) + an in-memory BPE tokenizer with ChatML and
    SmolLM2's special tokens (including the ``<empty_output>`` image token).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", DEFAULT_IMAGE_TOKEN],
        default_system="You are a helpful AI assistant.",
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    kwargs = {
        "seed": seed,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "feature_dim": feature_dim,
        "projector_hidden": projector_hidden,
        "projector_norm": projector_norm,
        **({"global_token": True} if global_token else {}),
    }
    with seeded(seed):
        vision = TinyConvEncoder(feature_dim)
        lm = LlamaForCausalLM(config)
        return MedQwenMini(
            vision,
            lm,
            tokenizer,
            feature_dim=feature_dim,
            projector_hidden=projector_hidden,
            projector_norm=projector_norm,
            global_token=global_token,
            system_prompt=system_prompt,
            model_type="tiny-mini",
            base_config={"name": "tiny-mini", "kwargs": kwargs},
        )
