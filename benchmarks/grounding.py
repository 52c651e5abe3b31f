"""Grounding: does MedQwen-mini answer from the image? Probe sets on images never trained on.

Four probe sets on the ROCOv2 valid images (modality yes/no, modality multiple choice, body region
yes/no in the alignment data's phrasings; modality yes/no in phrasings never trained on; see
medqwen.eval.grounding.PROBE_SETS): the model's accuracy
(candidates ranked by likelihood), the same with the image blanked, and a linear probe on the
frozen image features (the ceiling), with n.

    # the default recipe's model (shared with benchmarks/vqa_rad.py) -> results/grounding.json
    python benchmarks/grounding.py --data-root ../shared/data
    # train a recipe's stages (resumable) and evaluate the probe sets after each stage
    python benchmarks/grounding.py --data-root ../shared/data --recipe configs/grounding/labels_mix.yaml
    # evaluate any saved model (a `final/` or stage folder)
    python benchmarks/grounding.py --data-root ../shared/data --model-dir runs/demo/final [--adapter]

Recipe results go to benchmarks/results/grounding_recipes/<recipe>.json (one file per recipe, written
when it finishes; re-running skips finished stages).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECIPE_RESULTS = HERE / "results" / "grounding_recipes"
PROBE_NAMES = ("roco_modality_yesno", "roco_modality_choice", "roco_region_yesno", "roco_modality_yesno_new_wording")


def probe_scores(model, data_root: str, *, cache=None, seed: int = 0) -> dict:
    """{probe set: {acc, blank_acc, probe_acc, n, majority, ...}} for a model (VLM or adapter wrapper)."""
    from medqwen.eval.grounding import build_probe_sets, evaluate_probe_set

    out = {}
    for name, probe in build_probe_sets(data_root, seed=seed).items():
        scores = dict(evaluate_probe_set(model, probe, cache=cache))
        scores.pop("records")
        out[name] = scores
        print(f"  {name}: acc {scores['acc']:.3f}  blank {scores['blank_acc']:.3f}  probe {scores.get('probe_acc', float('nan')):.3f}  "
              f"n {scores['n']}", flush=True)
    return out


def _write_json(path: Path, data) -> None:
    from medqwen.continual.io import write_json  # atomic: temp file + rename

    write_json(path, data, indent=2)


def run_recipe(recipe: str, data_root: str, work: Path) -> dict:
    """Train the recipe's stages in order (resumable); probe after each stage."""
    from medqwen.training import Trainer, load_data, load_experiment
    from medqwen.training.pipeline import build_model

    config = load_experiment(recipe, {"data_root": data_root})
    name = Path(recipe).stem
    out_dir = work / name
    result_file = RECIPE_RESULTS / f"{name}.json"
    result = json.loads(result_file.read_text()) if result_file.is_file() else {"recipe": recipe, "stages": {}}
    model = build_model(config)
    trainer = Trainer(model, output_dir=out_dir, seed=config.seed)
    for stage in config.stages:
        samples = load_data(stage.data, config.seed)
        print(f"stage {stage.name}: {len(samples)} samples, {stage.max_steps} steps", flush=True)
        trainer.run_stage(stage, samples, resume=True)
        done = result["stages"].get(stage.name)
        if done is not None and set(PROBE_NAMES) <= set(done["probes"]):
            continue
        metrics = [json.loads(line) for line in open(out_dir / stage.name / "metrics.jsonl")]
        entry = {"steps": stage.max_steps, "lr": stage.lr, "trainable": stage.trainable, "samples": len(samples),
                 "final_loss": statistics.mean(m["loss"] for m in metrics[-20:]),
                 "s_per_step": statistics.median(m["s_per_step"] for m in metrics)}
        entry["probes"] = probe_scores(trainer.model, data_root, cache=trainer.feature_cache, seed=config.seed)
        result["stages"][stage.name] = entry
        _write_json(result_file, result)
    return result


def evaluate_model_dir(model_dir: str, data_root: str) -> dict:
    from medqwen.models import load_model

    model_dir = Path(model_dir)
    model = load_model(str(model_dir / "model"))
    if (model_dir / "adapter").is_dir():
        from sslora import SSLoRAModel

        model = SSLoRAModel.from_pretrained(model, model_dir / "adapter")
    return probe_scores(model, data_root)


def default_recipe(data_root: str, work: str) -> dict:
    """Probe the default recipe's model; keep the lora/sslora entries benchmarks/vqa_rad.py added."""
    sys.path.insert(0, str(HERE))
    from vqa_rad import prepare

    final = prepare(data_root, Path(work))
    path = HERE / "results" / "grounding.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    scores = evaluate_model_dir(str(final), data_root)
    for name, entry in scores.items():
        entry.update({k: v for k, v in old.get(name, {}).items() if k in ("lora", "sslora")})
    scores["_model"] = f"{work}/recipe (configs/experiments/recipe.yaml), seed 0"
    scores["_command"] = "python benchmarks/grounding.py --data-root ../shared/data"
    _write_json(path, scores)
    return scores


def recipe_table() -> str:
    """Markdown: one row per (recipe, stage) with the three probe sets' acc / blank / linear probe."""
    rows = ["| recipe | stage | steps | " + " | ".join(f"{n} acc / blank / probe" for n in PROBE_NAMES) + " |",
            "|---|---|---:|" + "---:|" * len(PROBE_NAMES)]
    for path in sorted(RECIPE_RESULTS.glob("*.json")):
        result = json.loads(path.read_text())
        for stage, entry in result["stages"].items():
            cells = []
            for name in PROBE_NAMES:
                p = entry["probes"].get(name)
                cells.append("—" if p is None else f"{100 * p['acc']:.1f} / {100 * p['blank_acc']:.1f} / {100 * p.get('probe_acc', float('nan')):.1f}")
            rows.append(f"| {path.stem} | {stage} | {entry['steps']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def diagnose(model_dir: str, data_root: str, n_images: int = 32) -> dict:
    """Does the projector tell images apart? Norms and cosine similarities of image tokens, and the
    model's accuracy on modality questions about its own training images."""
    import random

    import torch

    from medqwen.data import read_dataset
    from medqwen.eval import EvalSettings, evaluate_ranking
    from medqwen.models import load_model
    from medqwen.training.batches import FeatureCache

    model = load_model(str(Path(model_dir) / "model")).eval()
    cache = FeatureCache(model)
    val = list(read_dataset("roco_grounding", f"{data_root}/rocov2_sample", "val", task="modality", wording="train"))
    feats = torch.cat(cache.get(val[: 2 * n_images : 2]))  # (n, T, C): one question per image
    with torch.no_grad():
        tokens = model.projector(feats)
    def unit(x):
        return torch.nn.functional.normalize(x, dim=-1)

    pooled_cos = (unit(feats.mean(1)) @ unit(feats.mean(1)).T).mean().item()
    token_cos = (unit(tokens.mean(1)) @ unit(tokens.mean(1)).T).mean().item()
    train = list(read_dataset("roco_grounding", f"{data_root}/rocov2_sample", "train", task="modality"))
    random.Random(0).shuffle(train)
    train = train[:120]
    train_acc = dict(evaluate_ranking(model, train, EvalSettings(batch_size=32, cache=cache)))["acc"]
    return {"image_token_norm": tokens.norm(dim=-1).mean().item(),
            "text_embedding_norm": model.lm.get_input_embeddings().weight.norm(dim=-1).mean().item(),
            "mean_image_token_cosine_between_images": token_cos, "pooled_feature_cosine_between_images": pooled_cos,
            "train_image_modality_yesno_acc": train_acc, "n_images": len(feats)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--recipe", help="experiment YAML whose stages are trained and probed")
    parser.add_argument("--model-dir", help="a saved model folder (with model/ and optionally adapter/)")
    parser.add_argument("--work", default="runs/grounding")
    parser.add_argument("--out", help="write the probe scores of --model-dir to this JSON file")
    parser.add_argument("--table", action="store_true", help="print the recipe-search table (Markdown) and exit")
    parser.add_argument("--diagnose", metavar="STAGE_DIR", help="projector diagnostics of a saved stage (e.g. runs/grounding/labels_roco/stage1_alignment/final)")
    args = parser.parse_args()
    if args.table:
        print(recipe_table())
    elif args.diagnose:
        print(json.dumps(diagnose(args.diagnose, args.data_root), indent=1))
    elif args.recipe:
        print(json.dumps(run_recipe(args.recipe, args.data_root, Path(args.work)), indent=1))
    elif args.model_dir:
        scores = evaluate_model_dir(args.model_dir, args.data_root)
        if args.out:
            _write_json(Path(args.out), scores)
        print(json.dumps(scores, indent=1))
    else:
        print(json.dumps(default_recipe(args.data_root, "runs/bench_vqa_rad"), indent=1))


if __name__ == "__main__":
    main()
