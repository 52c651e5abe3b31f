"""The one vision-language-model interface of medqwen.

Every model (MedQwen-mini, Qwen2.5-VL, their tiny test variants) is a :class:`VisionLanguageModel`:
an ``nn.Module`` that turns (images, prompts[, answers]) into a batch with
:meth:`~VisionLanguageModel.build_inputs`, computes an answer-only loss with ``forward(**batch)``
and answers questions with :meth:`~VisionLanguageModel.generate`. Everything callers (trainer,
evaluators, server) use is declared here: a model that cannot do something optional says so
(``supports_image_features``) instead of callers probing for methods.

Prompt format. A prompt may contain the marker ``<image>`` once per image of its sample; where a
prompt has no marker, one ``<image>\\n`` per image is put in front of it. The user turn (prompt) and
the assistant turn (answer) are rendered with the tokenizer's chat template, then every marker is
replaced *at the token level* by the model's image span (e.g. 49 copies of a reserved token for
MedQwen-mini, ``<|vision_start|><|image_pad|>*n<|vision_end|>`` for Qwen2.5-VL). Text pieces are
tokenised separately around the markers, so the marker never depends on how the tokenizer splits it.

Labels. ``labels`` is -100 everywhere except the answer tokens and the end-of-turn token that
closes them (tokens the template puts after it, e.g. a trailing newline, are dropped), so the loss
is on answer tokens only. Answers are stripped of surrounding whitespace.

Padding. ``padding_side=None`` means right padding when answers are given (training) and left
padding otherwise (generation); both models compute position ids from ``attention_mask``, so either
side gives the same result for the real tokens.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from .outputs import IGNORE_INDEX, VLMOutput
from .saving import load_groups, save_groups

IMAGE_MARKER = "<image>"

ImagesArg = Sequence[Image.Image | Sequence[Image.Image] | None] | None


def normalize_images(images: ImagesArg, batch_size: int) -> list[list[Image.Image]]:
    """Turn ``None`` / ``[PIL|None, ...]`` / ``[[PIL, ...], ...]`` into one list of images per sample."""
    if images is None:
        return [[] for _ in range(batch_size)]
    if len(images) != batch_size:
        raise ValueError(f"got {len(images)} image entries for {batch_size} prompts")
    out: list[list[Image.Image]] = []
    for item in images:
        if item is None:
            out.append([])
        elif isinstance(item, Image.Image):
            out.append([item])
        else:
            out.append(list(item))
    return out


class VisionLanguageModel(nn.Module, ABC):
    """Interface + shared chat formatting, tokenisation, padding, trainable groups and saving.

    Subclasses set ``tokenizer``, ``model_type``, ``system_prompt``, ``base_config`` (how to rebuild
    the frozen base, saved in the JSON config) and implement the abstract members.
    ``system_prompt=None`` keeps the chat template's default system turn (SmolLM2's adds ~20 tokens
    per sample); a string replaces it.
    """

    tokenizer: Any
    model_type: str = "vlm"
    system_prompt: str | None = None
    base_config: dict[str, Any]
    chat_template: str | None = None

    # A model whose frozen image encoder output can be computed once and reused (FeatureCache): it
    # implements encode_images, and build_inputs / generate accept image_features=.
    supports_image_features: bool = False
    # forward(..., use_cache=True) returns the KV cache, and forward(continuation_ids, mask over
    # cache + continuation, past_key_values=cache) continues from it (see MedQwenMini.forward)
    supports_prefix_cache: bool = False

    # ---------------------------------------------------------------- abstract parts
    @abstractmethod
    def _prepare_images(
        self, per_sample: list[list[Image.Image]], image_features: Any = None
    ) -> tuple[dict[str, Tensor], list[list[int]]]:
        """Images (or, with ``supports_image_features``, their ``encode_images`` features instead) ->
        (tensors for ``forward``, number of image tokens per image per sample)."""

    @abstractmethod
    def _image_span(self, n_tokens: int) -> list[int]:
        """Token ids that replace one ``<image>`` marker whose image has ``n_tokens`` tokens."""

    @abstractmethod
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        labels: Tensor | None = None,
        *,
        blank_images: bool = False,
        full_logits: bool = False,
        logits_to_keep: int = 0,
        **image_inputs: Tensor,
    ) -> VLMOutput:
        """``forward(**build_inputs(...))``: answer-only loss with labels (see :class:`VLMOutput`).
        ``blank_images`` zeroes the image features (same sequence, no visual information);
        ``full_logits`` also returns (B, L, V) logits with labels; ``logits_to_keep=n`` without labels
        projects only the last n positions."""

    @abstractmethod
    def _generate(self, batch: dict[str, Tensor], config: Any, blank_images: bool) -> Tensor:
        """Greedy new tokens (B, T) for a left-padded ``build_inputs`` batch on the model's device."""

    @property
    @abstractmethod
    def language_model(self) -> nn.Module:
        """The transformer decoder stack (no LM head): where PEFT adapters are injected, in place."""

    @property
    @abstractmethod
    def vision_tower(self) -> nn.Module: ...

    @property
    @abstractmethod
    def projector(self) -> nn.Module | None: ...

    @abstractmethod
    def _group_modules(self) -> dict[str, list[nn.Module]]:
        """Group name -> modules whose parameters form the group (groups must not overlap)."""

    # ---------------------------------------------------------------- optional parts
    def encode_images(self, images: Sequence[Image.Image]) -> Tensor:
        """Frozen image features for N images, (N, T, C) float32 on CPU, to pass back as
        ``image_features=`` (only with ``supports_image_features``)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its image features (supports_image_features is False)")

    # ---------------------------------------------------------------- shared helpers
    @property
    def context_length(self) -> int | None:
        """Most tokens the language model reads (prompt, image tokens and answer), from its config."""
        config = getattr(self.language_model, "config", None)
        for c in (config, getattr(config, "text_config", None)):
            n = getattr(c, "max_position_embeddings", None)
            if isinstance(n, int):
                return n
        return None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def eot_token_id(self) -> int:
        """End-of-turn token (``<|im_end|>`` for both SmolLM2 and Qwen): labelled, and stops generation."""
        return int(self.tokenizer.eos_token_id)

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    def _record_base_params(self) -> None:
        """Remember the model's own parameters, so adapters injected later belong to no group."""
        self._own_param_ids = {id(p) for p in self.parameters()}

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named parameter groups ("projector", "vision", "language"); adapters are in none."""
        own = getattr(self, "_own_param_ids", None)
        groups: dict[str, list[nn.Parameter]] = {}
        for name, modules in self._group_modules().items():
            seen: set[int] = set()
            params = []
            for m in modules:
                for p in m.parameters():
                    if id(p) not in seen and (own is None or id(p) in own):
                        seen.add(id(p))
                        params.append(p)
            groups[name] = params
        return groups

    def set_trainable(self, groups: Iterable[str]) -> None:
        """Freeze every own parameter, then unfreeze the named groups (adapters are left alone)."""
        wanted = set(groups)
        all_groups = self.trainable_groups()
        unknown = wanted - set(all_groups)
        if unknown:
            raise KeyError(f"unknown groups {sorted(unknown)}; known: {sorted(all_groups)}")
        for name, params in all_groups.items():
            for p in params:
                p.requires_grad_(name in wanted)

    def _chat(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        kw: dict[str, Any] = {}
        if self.chat_template is not None:
            kw["chat_template"] = self.chat_template
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kw
        )

    def _encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def tokenize_sample(
        self, prompt: str, answer: str | None, image_tokens: Sequence[int]
    ) -> tuple[list[int], list[int]]:
        """One sample -> (input_ids, labels), both length L; ``image_tokens`` = tokens per image."""
        n = len(image_tokens)
        k = prompt.count(IMAGE_MARKER)
        if k == 0:
            prompt = (IMAGE_MARKER + "\n") * n + prompt
        elif k != n:
            raise ValueError(f"prompt has {k} {IMAGE_MARKER} markers but the sample has {n} images")
        messages = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        messages.append({"role": "user", "content": prompt})
        prefix = self._chat(messages, add_generation_prompt=True)
        pieces = prefix.split(IMAGE_MARKER)
        if len(pieces) != n + 1:
            raise ValueError(f"{IMAGE_MARKER} must not appear in the system prompt or chat template")
        ids: list[int] = []
        for i, piece in enumerate(pieces):
            ids += self._encode_text(piece)
            if i < n:
                ids += self._image_span(int(image_tokens[i]))
        labels = [IGNORE_INDEX] * len(ids)
        if answer is not None:
            messages.append({"role": "assistant", "content": answer.strip()})
            full = self._chat(messages, add_generation_prompt=False)
            if not full.startswith(prefix):
                raise ValueError("chat template: the generation prompt is not a prefix of the full turn")
            ans = self._encode_text(full[len(prefix):])
            if self.eot_token_id in ans:
                ans = ans[: ans.index(self.eot_token_id) + 1]
            ids += ans
            labels += ans
        return ids, labels

    def pad_batch(
        self, ids: list[list[int]], labels: list[list[int]] | None, side: str
    ) -> dict[str, Tensor]:
        """Pad to the longest sample: input_ids / attention_mask / labels, each (B, L) long."""
        if side not in ("left", "right"):
            raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
        length = max(len(x) for x in ids)
        out_ids = torch.full((len(ids), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), length), dtype=torch.long)
        out_lab = torch.full((len(ids), length), IGNORE_INDEX, dtype=torch.long)
        for i, seq in enumerate(ids):
            sl = slice(length - len(seq), length) if side == "left" else slice(0, len(seq))
            out_ids[i, sl] = torch.tensor(seq, dtype=torch.long)
            mask[i, sl] = 1
            if labels is not None:
                out_lab[i, sl] = torch.tensor(labels[i], dtype=torch.long)
        batch = {"input_ids": out_ids, "attention_mask": mask}
        if labels is not None:
            batch["labels"] = out_lab
        return batch

    def build_inputs(
        self,
        images: ImagesArg,
        prompts: list[str],
        answers: list[str] | None = None,
        *,
        padding_side: str | None = None,
        image_features: Any = None,
    ) -> dict[str, Tensor]:
        """(images, prompts[, answers]) -> batch for ``forward(**batch)``.

        Returns input_ids (B, L), attention_mask (B, L), labels (B, L) when answers are given, and
        the model's image tensors (see the subclass). Tensors are on CPU; move them with ``.to``.
        ``image_features`` (instead of ``images``; ``supports_image_features`` models only): what
        :meth:`encode_images` returned, one (n_i, T, C) tensor or None per prompt.
        """
        if answers is not None and len(answers) != len(prompts):
            raise ValueError(f"{len(answers)} answers for {len(prompts)} prompts")
        if image_features is not None and not self.supports_image_features:
            raise ValueError(f"{type(self).__name__} takes images, not image_features (supports_image_features is False)")
        per_sample = normalize_images(images, len(prompts))
        image_inputs, counts = self._prepare_images(per_sample, image_features)
        all_ids, all_labels = [], []
        for i, prompt in enumerate(prompts):
            ids, lab = self.tokenize_sample(prompt, None if answers is None else answers[i], counts[i])
            all_ids.append(ids)
            all_labels.append(lab)
        side = padding_side or ("right" if answers is not None else "left")
        batch = self.pad_batch(all_ids, all_labels if answers is not None else None, side)
        batch.update(image_inputs)
        return batch

    def generation_config(self, max_new_tokens: int):
        """Greedy decoding that stops at the end of the assistant turn."""
        from transformers import GenerationConfig

        return GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=self.eot_token_id, pad_token_id=self.pad_token_id
        )

    @torch.no_grad()
    def generate(
        self,
        images: ImagesArg,
        prompts: list[str],
        max_new_tokens: int = 16,
        *,
        image_features: Any = None,
        blank_images: bool = False,
    ) -> list[str]:
        """Greedy answers, one per prompt (special tokens removed, stripped). ``image_features`` as in
        :meth:`build_inputs`; ``blank_images`` zeroes the image features (question-prior control)."""
        batch = self.build_inputs(images, prompts, padding_side="left", image_features=image_features)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        return self.decode(self._generate(batch, self.generation_config(max_new_tokens), blank_images))

    def decode(self, token_ids: Tensor) -> list[str]:
        """(B, T) generated ids -> stripped strings (special tokens and anything after EOT removed)."""
        texts = []
        for row in token_ids.tolist():
            if self.eot_token_id in row:
                row = row[: row.index(self.eot_token_id)]
            texts.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return texts

    # ---------------------------------------------------------------- saving (medqwen.models.saving)
    def extra_config(self) -> dict[str, Any]:
        """Subclass hook: architecture facts saved next to the weights (e.g. projector sizes)."""
        return {}

    def save_pretrained(self, save_dir: str | Path, groups: Sequence[str] = ("projector",)) -> Path:
        """Save the named non-adapter groups as safetensors + a JSON config (no pickle).

        Files: ``medqwen_vlm.json`` (model type, how to rebuild the base, system prompt, groups)
        and ``trainable.safetensors`` (parameters keyed by their name in this module). Adapters are
        saved by the PEFT library, not here.
        """
        return save_groups(self, save_dir, groups)

    def load_pretrained(self, load_dir: str | Path, strict: bool = True) -> dict[str, Any]:
        """Load what :meth:`save_pretrained` wrote into this (same-architecture) model; returns the config."""
        return load_groups(self, load_dir, strict)
