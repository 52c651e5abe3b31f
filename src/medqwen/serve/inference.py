"""What the web page does, without the web page: read an upload, answer, blank-image answer, routing.

Kept free of Gradio so it is tested directly. :class:`Answerer` wraps a loaded model (a
:class:`~medqwen.models.VisionLanguageModel`, optionally inside an :class:`~sslora.SSLoRAModel`).
Every problem a user can cause raises :class:`UserError` whose message is meant for the page.
"""
from __future__ import annotations

import io
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from medqwen.data.schema import MAX_IMAGE_PIXELS, ImageLoadError, open_image
from medqwen.models.base import IGNORE_INDEX, IMAGE_MARKER

log = logging.getLogger(__name__)

MAX_PIXELS = MAX_IMAGE_PIXELS  # the limit of every image path (training, predict, serve)
MAX_QUESTION_CHARS = 1000


class UserError(ValueError):
    """A problem with what the user gave (file, question); the message is shown on the page."""


@dataclass
class Routing:
    """Which experts the adapted layers chose for the tokens that produced the answer.

    share[l, j]: fraction of those tokens for which layer l chose expert j (top-k, so rows sum to k).
    """

    layers: list[str]
    share: np.ndarray
    top_k: int
    tokens: int
    init: str = "spectral"

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "share": self.share.round(4).tolist(), "top_k": self.top_k,
                "tokens": self.tokens, "init": self.init}


@dataclass
class Answer:
    answer: str
    blank_answer: str
    routing: Routing | None
    seconds: float
    notes: list[str] = field(default_factory=list)


class Answerer:
    """Answers questions about images with one loaded model (thread-safe: one question at a time)."""

    def __init__(self, model: torch.nn.Module, *, max_new_tokens: int = 24, max_pixels: int = MAX_PIXELS,
                 name: str = "model") -> None:
        self.model = model.eval()
        self.max_new_tokens = max_new_tokens
        self.max_pixels = max_pixels
        self.name = name
        self._lock = threading.Lock()

    @classmethod
    def from_dir(cls, model_dir: str | Path, **kw: Any) -> "Answerer":
        """Load a trained model folder (the `final/` of `medqwen train`)."""
        from medqwen.cli import load_trained

        return cls(load_trained(model_dir), name=str(model_dir), **kw)

    # ------------------------------------------------------------------ model facts
    @property
    def sslora(self):
        """The SSLoRAModel wrapper, or None for a model without an SSLoRA adapter."""
        from sslora import SSLoRAModel

        return self.model if isinstance(self.model, SSLoRAModel) else None

    @property
    def vlm(self):
        return self.sslora.base_model if self.sslora is not None else self.model

    def describe(self) -> str:
        """One line about the model: type and adapter settings."""
        kind = getattr(self.vlm, "model_type", type(self.vlm).__name__)
        if self.sslora is None:
            return f"{kind}, no SSLoRA adapter (routing is not shown)"
        config = self.sslora.sslora_config
        layers = len(self.sslora.sslora_layers())
        return (f"{kind} + SSLoRA adapter: {layers} adapted layers, {config.num_experts} experts of rank "
                f"{config.expert_rank} (r = {config.r}), top-{config.top_k} routing, init {config.init}")

    # ------------------------------------------------------------------ inputs
    def load_image(self, path: str | Path | None) -> Image.Image:
        """An uploaded file as the RGB image the model sees; UserError with the file's own name."""
        if path is None or str(path).strip() == "":
            raise UserError("Please upload an image (PNG, JPEG or DICOM).")
        path = Path(path)
        try:
            return open_image(path, max_pixels=self.max_pixels)
        except ImageLoadError as err:
            # Uploads live under a temporary folder: show the user's file name, not that path.
            raise UserError(str(err).replace(str(path), path.name)) from err

    @staticmethod
    def clean_question(question: str | None) -> str:
        text = " ".join((question or "").replace(IMAGE_MARKER, " ").split())
        if not text:
            raise UserError("Please type a question about the image.")
        if len(text) > MAX_QUESTION_CHARS:
            raise UserError(f"The question is too long ({len(text)} characters; at most {MAX_QUESTION_CHARS}).")
        return text

    # ------------------------------------------------------------------ answering
    def ask(self, image: Image.Image, question: str) -> Answer:
        """The answer, the answer with the image blanked, and the routing of the answer."""
        question = self.clean_question(question)
        start = time.perf_counter()
        with self._lock, torch.no_grad():
            answer = self.model.generate([[image]], [question], self.max_new_tokens)[0]
            blank = self.model.generate([[image]], [question], self.max_new_tokens, blank_images=True)[0]
            routing = self.answer_routing(image, question, answer)
        return Answer(answer, blank, routing, time.perf_counter() - start)

    def answer_routing(self, image: Image.Image, question: str, answer: str) -> Routing | None:
        """Routing of the positions that predict the answer tokens (and its end-of-turn token).

        Greedy decoding is deterministic, so one teacher-forced forward pass over prompt + answer
        routes those positions exactly as generation did; the adapter's padding mask limits the
        statistics to them (`SSLoRAModel.padding_mask`), reset before and after.
        """
        sslora = self.sslora
        if sslora is None:
            return None
        vlm = sslora.base_model
        batch = vlm.build_inputs([[image]], [question], [answer], padding_side="right")
        batch = {k: v.to(vlm.device) for k, v in batch.items()}
        labels = batch["labels"]
        predicting = torch.zeros_like(labels)
        predicting[:, :-1] = (labels[:, 1:] != IGNORE_INDEX).long()
        sslora.reset_routing_stats()
        try:
            with sslora.recording_routing():
                with sslora.padding_mask(predicting):
                    vlm(**batch)
                stats = sslora.routing_stats()
        finally:
            sslora.reset_routing_stats()
        config = sslora.sslora_config
        counts = np.array([layer["counts"] for layer in stats.values()], dtype=np.float64)
        # Each routed token picks exactly top_k experts, so a layer saw counts.sum() / top_k tokens
        # (the answer positions in the language model; every patch in an adapted vision tower).
        per_layer = counts.sum(axis=1, keepdims=True) / config.top_k
        share = counts / np.maximum(per_layer, 1)
        return Routing(list(stats), share, config.top_k, int(predicting.sum()), config.init)


def short_layer_name(name: str) -> str:
    """'model.layers.3.self_attn.q_proj' -> '3 q_proj'; 'visual.blocks.0.attn.qkv' -> 'vision 0 attn.qkv'."""
    match = re.search(r"(?:^|\.)(?:layers|blocks|layer|h)\.(\d+)\.(.+)$", name)
    if not match:
        return name
    rest = re.sub(r"^(self_attn|mlp)\.", "", match.group(2))
    prefix = "vision " if re.search(r"(^|\.)(visual|vision_tower|vision_model)(\.|$)", name) else ""
    return f"{prefix}{match.group(1)} {rest}"


def routing_heatmap(routing: Routing, max_height_in: float = 14.0) -> Image.Image:
    """Layers x experts heatmap of `routing.share` as a PIL image (matplotlib, no pyplot: thread-safe)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_layers, n_experts = routing.share.shape
    height = min(max_height_in, 1.6 + 0.2 * n_layers)
    fig = Figure(figsize=(max(4.2, 1.6 + 0.45 * n_experts), height), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(routing.share, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(n_experts))
    step = max(1, int(np.ceil(n_layers / 60)))
    ax.set_yticks(range(0, n_layers, step))
    ax.set_yticklabels([short_layer_name(routing.layers[i]) for i in range(0, n_layers, step)],
                       fontsize=7 if n_layers > 20 else 8)
    xlabel = "expert" + (" (spectral segment; 0 = largest singular values)" if routing.init == "spectral" else "")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("adapted layer", fontsize=8)
    ax.set_title(f"{routing.tokens} answer token{'s' if routing.tokens != 1 else ''}, top-{routing.top_k} "
                 f"of {n_experts} experts", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")
