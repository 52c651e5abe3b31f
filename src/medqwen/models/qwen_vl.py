"""Qwen2.5-VL behind the medqwen VLM interface (transformers ``Qwen2_5_VLForConditionalGeneration``).

Images go through the processor's image processor (``Qwen2VLImageProcessorPil`` without
torchvision): an image becomes ``pixel_values`` (patches, 1176) and ``image_grid_thw`` (3,), and
``prod(grid) / merge_size**2`` tokens (64 for 224x224). Each ``<image>`` marker becomes
``<|vision_start|>`` + that many ``<|image_pad|>`` + ``<|vision_end|>``; we expand the markers
ourselves (as the processor would) so labels and padding stay in our hands.

``forward`` computes the image embeddings with ``get_image_features`` (zeroed for
``blank_images``), hands them to the model as ``mm_encoder_outputs``, computes the 3-D M-RoPE
position ids with ``get_rope_index`` from ``mm_token_type_ids`` (required in transformers 5) and
the attention mask, and applies the LM head only at labelled positions when labels are given
(``logits`` is then None). The patch merger (``visual.merger``) is the projector: it is the
"projector" group and is excluded from the "vision" group.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from .base import ImagesArg, VisionLanguageModel
from .outputs import VLMOutput, lm_output
from .tiny import build_tokenizer, seeded

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


@functools.cache
def _image_only_processor_class() -> type:
    """``Qwen2_5_VLProcessor`` without the video processor.

    transformers 5 validates every sub-processor's class, and the video processor's base class is
    a torchvision-only dummy here, so even ``video_processor=None`` fails to construct the stock
    processor without torchvision. Images and text work the same.
    """
    from transformers import Qwen2_5_VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
        def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kw: Any):
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImageOnlyQwen2_5_VLProcessor


def load_qwen_processor(name_or_path: str, local_files_only: bool = True) -> Any:
    """``AutoProcessor``, or (without torchvision) the image-only processor from the same files."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        return AutoProcessor.from_pretrained(name_or_path, local_files_only=local_files_only)
    except (AttributeError, ImportError, TypeError, ValueError):
        image_processor = AutoImageProcessor.from_pretrained(name_or_path, local_files_only=local_files_only)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local_files_only)
        template = _read_chat_template(name_or_path) or tokenizer.chat_template
        return _image_only_processor_class()(image_processor, tokenizer, chat_template=template)


def _read_chat_template(name_or_path: str) -> str | None:
    """The processor chat template of a local checkpoint (``chat_template.json`` or ``.jinja``)."""
    d = Path(name_or_path)
    if (d / "chat_template.jinja").exists():
        return (d / "chat_template.jinja").read_text()
    if (d / "chat_template.json").exists():
        return json.loads((d / "chat_template.json").read_text()).get("chat_template")
    return None


class QwenVL(VisionLanguageModel):
    """A Qwen2.5-VL model + processor. Only the merger ("projector") is trainable after construction.

    Batch keys: input_ids (B, L), attention_mask (B, L), mm_token_type_ids (B, L) (1 at image
    tokens), labels (B, L) with answers, and for image batches pixel_values (P, 1176) and
    image_grid_thw (N, 3) for the N images in order.
    """

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        *,
        system_prompt: str | None = None,
        image_size: int | None = None,
        model_type: str = "qwen2.5-vl",
        base_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.hf = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.chat_template = getattr(processor, "chat_template", None) or self.tokenizer.chat_template
        self.system_prompt = system_prompt
        self.image_size = image_size
        self.model_type = model_type
        self.base_config = base_config or {}
        cfg = model.config
        self.image_token_id = int(cfg.image_token_id)
        self.vision_start_id = int(cfg.vision_start_token_id)
        self.vision_end_id = int(cfg.vision_end_token_id)
        self.merge_size = int(cfg.vision_config.spatial_merge_size)
        self._record_base_params()
        self.set_trainable(["projector"])

    # ------------------------------------------------------------------ interface parts
    @property
    def language_model(self) -> nn.Module:
        return self.hf.model.language_model

    @property
    def vision_tower(self) -> nn.Module:
        return self.hf.model.visual

    @property
    def projector(self) -> nn.Module:
        return self.hf.model.visual.merger

    def _group_modules(self) -> dict[str, list[nn.Module]]:
        visual = self.hf.model.visual
        vision_parts = [m for name, m in visual.named_children() if name != "merger"]
        return {
            "projector": [visual.merger],
            "vision": vision_parts,
            "language": [self.hf.model.language_model, self.hf.lm_head],
        }

    def extra_config(self) -> dict[str, Any]:
        return {"image_size": self.image_size}

    def _image_span(self, n_tokens: int) -> list[int]:
        return [self.vision_start_id] + [self.image_token_id] * n_tokens + [self.vision_end_id]

    def _prepare_images(
        self, per_sample: list[list[Image.Image]], image_features: None = None
    ) -> tuple[dict[str, Tensor], list[list[int]]]:
        flat = [im.convert("RGB") for sample in per_sample for im in sample]
        if not flat:
            return {}, [[] for _ in per_sample]
        if self.image_size is not None:
            size = (self.image_size, self.image_size)
            flat = [im.resize(size, Image.Resampling.BICUBIC) for im in flat]
        out = self.processor.image_processor(images=flat, return_tensors="pt")
        grid = out["image_grid_thw"]
        tokens = (grid.prod(-1) // self.merge_size**2).tolist()
        counts, i = [], 0
        for sample in per_sample:
            counts.append(tokens[i : i + len(sample)])
            i += len(sample)
        return {"pixel_values": out["pixel_values"], "image_grid_thw": grid}, counts

    def build_inputs(
        self,
        images: ImagesArg,
        prompts: list[str],
        answers: list[str] | None = None,
        *,
        padding_side: str | None = None,
        image_features: None = None,
    ) -> dict[str, Tensor]:
        batch = super().build_inputs(images, prompts, answers, padding_side=padding_side, image_features=image_features)
        batch["mm_token_type_ids"] = (batch["input_ids"] == self.image_token_id).long()
        return batch

    # ------------------------------------------------------------------ forward / generate
    def _image_outputs(self, pixel_values: Tensor, image_grid_thw: Tensor, blank: bool) -> dict[str, Any]:
        """Vision tower + merger -> ``mm_encoder_outputs`` (pooler_output: per-image (n_i, H))."""
        feats = self.hf.model.get_image_features(pixel_values, image_grid_thw, return_dict=True)
        if blank:
            feats.pooler_output = tuple(torch.zeros_like(f) for f in feats.pooler_output)
        return {"image": feats}

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        labels: Tensor | None = None,
        pixel_values: Tensor | None = None,
        image_grid_thw: Tensor | None = None,
        mm_token_type_ids: Tensor | None = None,
        blank_images: bool = False,
        full_logits: bool = False,
        logits_to_keep: int = 0,
    ) -> VLMOutput:
        """Loss on labelled tokens; logits (B, L, V) only without labels or with ``full_logits``;
        ``logits_to_keep=n`` without labels: logits of the last n positions only (B, n, V)."""
        if mm_token_type_ids is None:
            mm_token_type_ids = (input_ids == self.image_token_id).long()
        mm_outputs = None
        if pixel_values is not None:
            mm_outputs = self._image_outputs(pixel_values, image_grid_thw, blank_images)
        position_ids, _ = self.hf.model.get_rope_index(
            input_ids, mm_token_type_ids, image_grid_thw=image_grid_thw, attention_mask=attention_mask
        )
        out = self.hf.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            mm_token_type_ids=mm_token_type_ids,
            image_grid_thw=image_grid_thw,
            mm_encoder_outputs=mm_outputs,
            use_cache=False,
        )
        return lm_output(out.last_hidden_state, labels, self.hf.lm_head, full_logits, logits_to_keep)

    def _generate(self, batch: dict[str, Tensor], config: Any, blank_images: bool) -> Tensor:
        """Through ``Qwen2_5_VLForConditionalGeneration.generate``, image embeddings computed here so
        that ``blank_images`` can zero them."""
        pixel_values = batch.pop("pixel_values", None)
        if pixel_values is not None:
            batch["mm_encoder_outputs"] = self._image_outputs(pixel_values, batch["image_grid_thw"], blank_images)
        self.hf.model.rope_deltas = None  # never reuse M-RoPE deltas from an earlier batch
        out = self.hf.generate(**batch, generation_config=config)
        return out[:, batch["input_ids"].shape[1] :]


def load_qwen2_5_vl(
    name_or_path: str,
    *,
    allow_download: bool = False,
    dtype: torch.dtype = torch.float32,
    system_prompt: str | None = None,
    image_size: int | None = None,
) -> QwenVL:
    """Qwen2.5-VL from a local directory or hub id (``local_files_only`` unless ``allow_download``)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    local_only = not allow_download
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(name_or_path, dtype=dtype, local_files_only=local_only)
    processor = load_qwen_processor(name_or_path, local_files_only=local_only)
    base = str(Path(name_or_path).resolve()) if Path(name_or_path).exists() else name_or_path
    return QwenVL(
        model,
        processor,
        system_prompt=system_prompt,
        image_size=image_size,
        base_config={"name": base, "kwargs": {"image_size": image_size}},
    )


def tiny_qwen2_5_vl(
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    vision_depth: int = 2,
    system_prompt: str | None = None,
    image_size: int | None = None,
) -> QwenVL:
    """A random Qwen2.5-VL built in code: tiny text model, 2-block vision tower, local tokenizer.

    Uses the real architecture (window attention, 2x2 patch merger, 3-D M-RoPE) at toy sizes;
    the tokenizer is an in-memory BPE with Qwen's special tokens and a ChatML template.
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

    tokenizer = build_tokenizer(QWEN_SPECIAL_TOKENS, default_system="You are a helpful assistant.")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    heads = 4
    head_dim = hidden_size // heads
    half = head_dim // 2
    mrope = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]  # (t, h, w) split of head_dim/2
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": num_layers,
            "num_attention_heads": heads,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": vision_depth,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": hidden_size,
            "fullatt_block_indexes": [vision_depth - 1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    processor = _image_only_processor_class()(
        Qwen2VLImageProcessorPil(), tokenizer, chat_template=tokenizer.chat_template
    )
    kwargs = {
        "seed": seed,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "vision_depth": vision_depth,
        "image_size": image_size,
    }
    with seeded(seed):
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
        return QwenVL(
            model,
            processor,
            system_prompt=system_prompt,
            image_size=image_size,
            model_type="tiny-qwen2.5-vl",
            base_config={"name": "tiny-qwen2.5-vl", "kwargs": kwargs},
        )
