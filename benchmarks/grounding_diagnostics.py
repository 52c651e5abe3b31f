"""Short grounding diagnostics: what lets MedQwen-mini answer modality questions from the image?

Trains for a few hundred steps on ROCOv2 *train* modality questions only (yes/no + multiple choice,
no captions), then measures, on held-out ROCOv2 *valid* images: yes/no accuracy (96 questions) and
its blank-image control, multiple-choice accuracy (all 97) and its control, yes/no accuracy on 96
training questions (does it even fit?), and the projected image tokens' mean norm and mean pairwise
cosine (do different images give different tokens?). One process, constant lr after 10 warm-up steps.

    # projector only (the LLaVA stage-1 recipe), variants of its input / output normalisation
    python benchmarks/grounding_diagnostics.py --data-root ../shared/data --tag A_base --steps 150
    python benchmarks/grounding_diagnostics.py --data-root ../shared/data --tag B_bn_rms --steps 150 --norm batchnorm --out-scale rms
    python benchmarks/grounding_diagnostics.py --data-root ../shared/data --tag E_bn_rms_global --steps 150 --norm batchnorm --out-scale rms --tokens spatial+global
    # a plain LoRA on the language model (the projector then stays at its seeded random init)
    python benchmarks/grounding_diagnostics.py --data-root ../shared/data --tag G_lora16 --steps 150 --lora 16 --lora-lr 5e-4
    python benchmarks/grounding_diagnostics.py --data-root ../shared/data --tag H_bn_lora16 --steps 150 --lora 16 --lora-lr 5e-4 --norm batchnorm
    python benchmarks/grounding_diagnostics.py --data-root ../shared/data --tag I_lora16_300 --steps 300 --lora 16 --lora-lr 1e-3
    # can the frozen language model answer at all when the modality is *written* in the question?
    python benchmarks/grounding_diagnostics.py --data-root ../shared/data --oracle
    # a trained model's modality yes/no on the valid images, names and question forms crossed
    # (alignment vs held-out probe phrasings): which part of a new wording does it fail on?
    python benchmarks/grounding_diagnostics.py --data-root ../shared/data --wording-split runs/.../final --tag split_default

Results: benchmarks/results/grounding_diagnostics/<tag>.json (oracle.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import time
from pathlib import Path

import torch
from torch import nn

OUT = Path(__file__).resolve().parent / "results" / "grounding_diagnostics"
SYSTEM = "Answer the question about the medical image briefly."


class OutputScale(nn.Module):
    """Projected tokens rescaled to the text embeddings' RMS ("rms") or a LayerNorm with that gain ("ln")."""

    def __init__(self, kind: str, hidden: int, text_rms: float):
        super().__init__()
        self.kind, self.text_rms = kind, text_rms
        self.norm = nn.LayerNorm(hidden) if kind == "ln" else None
        if self.norm is not None:
            with torch.no_grad():
                self.norm.weight.fill_(text_rms)

    def forward(self, x):
        if self.kind == "rms":
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.text_rms
        return self.norm(x)


def accuracy(model, samples, cache, blank=False) -> float:
    from medqwen.eval.ranking import rank_answers

    predicted = rank_answers(model, samples, cache=cache, blank_images=blank)
    return sum(p == s.answer for p, s in zip(predicted, samples)) / len(samples)


def oracle(args) -> dict:
    """The frozen model, image blanked, with "Image description: <true | a wrong modality>." prepended."""
    from medqwen.data.grounding import CHOICE_NAMES, read_roco_grounding
    from medqwen.models import load_model
    from medqwen.training.batches import FeatureCache

    model = load_model("medqwen-mini", system_prompt=SYSTEM)
    cache = FeatureCache(model)
    result = {}
    for style in ("yesno", "choice"):
        questions = list(read_roco_grounding(Path(args.data_root) / "rocov2_sample", "val", task="modality", style=style, wording="train"))
        questions = random.Random(0).sample(questions, min(args.eval_n, len(questions)))
        for hint in ("none", "true", "wrong"):
            asked = []
            for s in questions:
                label = s.extra["label"]
                named = label if hint == "true" else next(c for c in CHOICE_NAMES if c != label and c in ("ct", "x-ray", "mri", "ultrasound", "angiography"))
                text = s.question if hint == "none" else f"Image description: {CHOICE_NAMES[named]}. {s.question}"
                asked.append(dataclasses.replace(s, question=text))
            result[f"{style}/{hint}"] = accuracy(model, asked, cache, blank=True)
            print(f"{style} hint={hint}: {result[f'{style}/{hint}']:.3f}", flush=True)
    result["n"] = {"yesno": min(args.eval_n, 194), "choice": min(args.eval_n, 97)}
    return result


def train(args) -> dict:
    from medqwen.data.grounding import read_roco_grounding
    from medqwen.models import load_model
    from medqwen.training.batches import FeatureCache, make_batch

    torch.manual_seed(0)
    rng = random.Random(0)
    roco = Path(args.data_root) / "rocov2_sample"
    vlm = load_model("medqwen-mini", system_prompt=SYSTEM, projector_norm=False if args.norm == "none" else args.norm)
    text_rms = vlm.lm.get_input_embeddings().weight.float().pow(2).mean(-1).sqrt().mean().item()
    if args.out_scale != "none":
        vlm.mm_projector.append(OutputScale(args.out_scale, vlm.lm.config.hidden_size, text_rms))
    vlm.set_trainable(["projector"])
    cache = FeatureCache(vlm)
    if args.tokens != "spatial":  # + a mean-pooled global token (or that token alone)
        per_image = cache.get

        def with_global(samples):
            feats = torch.cat(per_image(samples))
            pooled = feats.mean(1, keepdim=True)
            return pooled if args.tokens == "global" else torch.cat([feats, pooled], 1)

        cache.get = with_global
        vlm.num_image_tokens = 1 if args.tokens == "global" else vlm.num_image_tokens + 1
    train_set = [*read_roco_grounding(roco, "train", task="modality", style="yesno"),
                 *read_roco_grounding(roco, "train", task="modality", style="choice")]
    val_yesno = rng.sample(list(read_roco_grounding(roco, "val", task="modality", style="yesno", wording="train")), args.eval_n)
    train_yesno = rng.sample([s for s in train_set if s.extra["candidates"] == ["yes", "no"]], args.eval_n)
    val_choice = list(read_roco_grounding(roco, "val", task="modality", style="choice", wording="train"))
    groups = [{"params": [p for p in vlm.parameters() if p.requires_grad], "peak": args.lr}]
    model = vlm
    if args.lora:  # get_sslora_model freezes everything else: the projector keeps its seeded init
        from sslora import get_sslora_model
        from medqwen.training.config import adapter_config

        model = get_sslora_model(vlm, adapter_config({"kind": "lora", "r": args.lora}))
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "peak": args.lora_lr}]
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    losses, began = [], time.perf_counter()
    model.train()
    for step in range(1, args.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = group["peak"] * min(1.0, step / 10)
        batch = make_batch(vlm, [rng.choice(train_set) for _ in range(8)], with_answers=True, cache=cache)
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 20 == 0:
            print(f"step {step} loss {statistics.mean(losses[-20:]):.3f} {(time.perf_counter() - began) / step:.2f}s/step", flush=True)
    with torch.no_grad():
        feats = cache.get(val_yesno[:32])
        proj = vlm.mm_projector(torch.cat(feats) if isinstance(feats, list) else feats)  # (32, T, H)
        means = torch.nn.functional.normalize(proj.mean(1), dim=-1)
        cosine = (means @ means.T)[~torch.eye(len(means), dtype=torch.bool)].mean().item()
    return {**{k: v for k, v in vars(args).items() if k not in ("data_root", "oracle")},
            "choice_acc": accuracy(model, val_choice, cache), "choice_blank": accuracy(model, val_choice, cache, blank=True),
            "train_acc": accuracy(model, train_yesno, cache), "val_acc": accuracy(model, val_yesno, cache),
            "val_blank": accuracy(model, val_yesno, cache, blank=True),
            "proj_norm": proj.norm(dim=-1).mean().item(), "cos": cosine, "final_loss": statistics.mean(losses[-20:]),
            "n": {"val_yesno": len(val_yesno), "val_choice": len(val_choice), "train_yesno": len(train_yesno)}}


def wording_split(args) -> dict:
    """Modality yes/no on the valid images with the names and question templates of the alignment
    data ("train") and of the held-out probe wording ("probe") crossed: acc / blank per combination."""
    from medqwen.data import grounding
    from medqwen.data.grounding import NAMES, YES_NO_TEMPLATES, read_roco_grounding
    from medqwen.models import load_model
    from medqwen.training.batches import FeatureCache

    model = load_model(str(Path(args.wording_split) / "model"))
    cache = FeatureCache(model)
    roco = Path(args.data_root) / "rocov2_sample"
    grounding.WORDINGS = (*grounding.WORDINGS, "split")
    result = {"model": args.wording_split}
    for names in ("train", "probe"):
        for templates in ("train", "probe"):
            NAMES["split"], YES_NO_TEMPLATES["split"] = NAMES[names], YES_NO_TEMPLATES[templates]
            questions = list(read_roco_grounding(roco, "val", task="modality", style="yesno", wording="split"))
            key = f"names_{names}+templates_{templates}"
            result[key] = {"acc": accuracy(model, questions, cache), "blank_acc": accuracy(model, questions, cache, blank=True),
                           "n": len(questions)}
            print(key, result[key], flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--tag", default="run")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=2e-3, help="projector lr")
    parser.add_argument("--norm", choices=["none", "layernorm", "batchnorm"], default="none", help="projector input norm")
    parser.add_argument("--out-scale", choices=["none", "rms", "ln"], default="none", help="projector output scaled to the text embeddings")
    parser.add_argument("--tokens", choices=["spatial", "spatial+global", "global"], default="spatial")
    parser.add_argument("--lora", type=int, default=0, help="rank of a plain LoRA on the language model (0: none)")
    parser.add_argument("--lora-lr", type=float, default=3e-4)
    parser.add_argument("--eval-n", type=int, default=96)
    parser.add_argument("--oracle", action="store_true", help="frozen model with the modality written in the question")
    parser.add_argument("--wording-split", metavar="MODEL_DIR", help="a trained model folder: names x templates (see wording_split)")
    args = parser.parse_args()
    result = oracle(args) if args.oracle else wording_split(args) if args.wording_split else train(args)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{'oracle' if args.oracle else args.tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
