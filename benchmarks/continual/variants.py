"""Point 7 of issue 7: what moves SSLoRA's forgetting? One run per variant of variants.yaml, then one table.

    python benchmarks/continual/variants.py --data-root ../shared/data --base-model-dir <recipe final/>
    python benchmarks/continual/variants.py --data-root ../shared/data --base-model-dir ... --only lora_lr1e-3
    python benchmarks/continual/variants.py --data-root ../shared/data --table-only
    python benchmarks/continual/variants.py --data-root ../shared/data --base-model-dir ... --only sslora_rho1 --seed 2

Each variant runs through grid.py (its own run folder runs/continual_variants/<name>/, resumable, locked like
the grid's runs) and its finished results.json is kept in benchmarks/results/continual_variants/<name>/. The
table (benchmarks/results/continual_variants.md and .json) puts every finished variant beside the reference
rows of the same seed and recipe build: the grid's headline runs, then its baselines and ablations, from
benchmarks/results/continual_runs/ and continual_runs_build<sha>/; as scored, learned and batch-calibrated. It
also refreshes paired.py's chart, where each variant is drawn minus the SSLoRA run of its build. --seed runs a
variant at another seed than the file's (a second seed of one that moved forgetting); that seed's table is
continual_variants_seed<k>.md beside the references of seed k, which the grid runs first.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RESULTS = REPO / "benchmarks" / "results"
VARIANTS = HERE / "variants.yaml"
_spec = importlib.util.spec_from_file_location("continual_grid", HERE / "grid.py")
grid = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(grid)


def load_variants(path: Path) -> dict:
    """{seed, variables, variants: [{name, method, var}]}, checked; errors name the file and the field."""
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("variants"), list):
        raise SystemExit(f"{path}: expected a mapping with a list field 'variants'")
    if not isinstance(data.get("seed", 0), int):
        raise SystemExit(f"{path}: field 'seed' = {data.get('seed')!r} must be an integer")
    shared = data.get("variables") or {}
    if not isinstance(shared, dict):
        raise SystemExit(f"{path}: field 'variables' must be a mapping NAME: VALUE")
    seen, variants = set(), []
    for i, entry in enumerate(data["variants"]):
        where = f"{path}: variants[{i}]"
        if not isinstance(entry, dict) or not {"name", "method"} <= set(entry) or set(entry) - {"name", "method", "var"}:
            raise SystemExit(f"{where}: expected {{name, method, var (optional)}}, got {entry!r}")
        if entry["name"] in seen:
            raise SystemExit(f"{where}: name {entry['name']!r} used twice")
        if not isinstance(entry.get("var") or {}, dict):
            raise SystemExit(f"{where}: field 'var' must be a mapping NAME: VALUE")
        seen.add(entry["name"])
        method = str(entry["method"])
        if method.endswith((".yaml", ".yml")):
            method = str(HERE / method)
        variants.append({"name": entry["name"], "method": method, "var": {**shared, **(entry.get("var") or {})}})
    return {"seed": data.get("seed", 0), "variants": variants}


def grid_argv(args, variant: dict, seed: int) -> list[str]:
    argv = ["--data-root", str(args.data_root), "--methods", variant["method"], "--seeds", str(seed),
            "--work", str(REPO / "runs" / "continual_variants" / variant["name"]),
            "--records", str(RESULTS / "continual_variants" / variant["name"])]
    if args.base_model_dir:
        argv += ["--base-model-dir", str(args.base_model_dir)]
    if variant["var"]:
        argv += ["--var", *(f"{k}={v}" for k, v in variant["var"].items())]
    if args.dry_run:
        argv.append("--dry-run")
    return argv


# ---------------------------------------------------------------------------------------------- the table
def row(name: str, kind: str, run: dict) -> dict:
    names = [t["name"] for t in run["tasks"]]
    per = run["metrics"]["per_task"]
    return {"name": name, "kind": kind, "method": run["method"].get("description") or run["method"]["name"],
            "lr": sorted({t["lr"] for t in run["tasks"]}), "seed": run["seed"], "start_model_sha256": run.get("model_sha256"),
            **{k: run["metrics"][k] for k in ("forgetting", "final_avg", "bwt")},
            "learned": run["metrics"].get("learning_acc"),
            "calibrated": {k: (run.get("metrics_batch_calibrated") or {}).get(k) for k in ("forgetting", "final_avg")},
            "tasks": {t: {"own": per[t]["after_own_training"], "blank": per[t]["blank_after_own_training"],
                          "final": per[t]["final"], "train_loss": (run.get("train") or {}).get(t, {}).get("final_loss")}
                      for t in names}}


def collect(seed: int, variants: list[dict]) -> list[dict]:
    """The grid's runs of `seed` (every records folder: continual_runs/ and one continual_runs_build<sha>/ per later
    recipe build), then the variants; grouped by the build they started from, so a variant sits beside the
    references of its own build."""
    rows = []
    for folder in [RESULTS / "continual_runs", *sorted(RESULTS.glob("continual_runs_build*"))]:
        for path in sorted(folder.glob(f"*_seed{seed}.json")):
            run = json.loads(path.read_text())
            rows.append(row(run["method"]["name"], "reference" if run["method"]["name"] in grid.HEADLINE else "grid", run))
    for variant in variants:
        for path in sorted((RESULTS / "continual_variants" / variant["name"]).glob(f"*_seed{seed}.json")):
            rows.append(row(variant["name"], "variant", json.loads(path.read_text())))
    builds = list(dict.fromkeys(r["start_model_sha256"] for r in rows))  # in order of first appearance
    kinds = ("reference", "grid", "variant")
    return sorted(rows, key=lambda r: (builds.index(r["start_model_sha256"]), kinds.index(r["kind"])))


def markdown(rows: list[dict]) -> str:
    if not rows:
        return "no finished runs\n"
    tasks = list(rows[0]["tasks"])

    def pct(v):
        return "—" if v is None else f"{100 * v:.1f}"

    lines = ["| run | method | lr | rel. forgetting % | final avg % | BWT | learned % | batch-calibrated forgetting / final avg % | " +
             " | ".join(f"{t}: own (blank) / final" for t in tasks) + " | start model |",
             "|---|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(tasks) + "---|"]
    for r in rows:
        cells = " | ".join(f"{pct(r['tasks'][t]['own'])} ({pct(r['tasks'][t]['blank'])}) / {pct(r['tasks'][t]['final'])}"
                           for t in tasks)
        sha = (r["start_model_sha256"] or "first build (not kept)")[:12]
        cal = r.get("calibrated") or {}
        calibrated = "—" if cal.get("forgetting") is None else f"{pct(cal['forgetting'])} / {pct(cal['final_avg'])}"
        lines.append(f"| {r['name']} | {r['method']} | {', '.join(f'{x:g}' for x in r['lr'])} | {pct(r['forgetting'])} | "
                     f"{pct(r['final_avg'])} | {pct(r['bwt'])} | {pct(r.get('learned'))} | {calibrated} | {cells} | {sha} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, required=True, help="e.g. ../shared/data")
    parser.add_argument("--base-model-dir", type=Path, help="the starting model (the recipe's final/), as for grid.py")
    parser.add_argument("--variants", type=Path, default=VARIANTS)
    parser.add_argument("--only", nargs="+", help="run these variants (names in the file)")
    parser.add_argument("--table-only", action="store_true", help="only rebuild the table from the finished runs")
    parser.add_argument("--seed", type=int, help="run and tabulate this seed instead of the file's "
                        "(table: continual_variants_seed<k>.md)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    spec = load_variants(args.variants)
    seed = spec["seed"] if args.seed is None else args.seed
    stem = "continual_variants" if seed == spec["seed"] else f"continual_variants_seed{seed}"
    chosen = spec["variants"]
    if args.only:
        unknown = set(args.only) - {v["name"] for v in chosen}
        if unknown:
            raise SystemExit(f"--only {sorted(unknown)}: not in {args.variants} ({[v['name'] for v in chosen]})")
        chosen = [v for v in chosen if v["name"] in args.only]
    failed = []
    if not args.table_only:
        for variant in chosen:
            print(f"== variant {variant['name']}", flush=True)
            if grid.main(grid_argv(args, variant, seed)) != 0:
                failed.append(variant["name"])
    if args.dry_run:
        return 0
    from medqwen.continual.io import write_json, write_text

    rows = collect(seed, spec["variants"])
    source = args.variants.resolve()
    source = source.relative_to(REPO) if source.is_relative_to(REPO) else source
    write_json(RESULTS / f"{stem}.json", {"seed": seed, "file": str(source), "rows": rows})
    table = markdown(rows)
    write_text(RESULTS / f"{stem}.md", table)
    print(table)
    grid.write_paired()  # the variants' rows in the chart of every seed-1 run minus the SSLoRA run of its build
    print(f"-> {RESULTS / f'{stem}.md'}, {RESULTS / 'continual_paired.md'} (.png)")
    if failed:
        print(f"failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
