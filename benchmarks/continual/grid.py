"""The continual-learning grid of issue 7: (method, seed) runs of one sequence, each in its own process.

    # headline methods x 3 seeds, then the other baselines x 1 seed (hours on 2 CPU cores; resumable)
    OMP_WAIT_POLICY=PASSIVE nohup python benchmarks/continual/grid.py --data-root ../shared/data \\
        --base-model-dir runs/<recipe>/final > logs/continual_grid.log 2>&1 &
    # the ablations (1 seed each), after the headline grid
    python benchmarks/continual/grid.py --data-root ../shared/data --base-model-dir ... --group ablations
    # a quick smoke run of the whole machinery (2 steps per task, 8 eval questions per task, own folders)
    python benchmarks/continual/grid.py --data-root ../shared/data --smoke --methods lora sslora --seeds 0

Every run is `medqwen continual <sequence> --method M --seed S --output-dir <work>/<M>/seed<S>` in a
subprocess (log: <run dir>/log.txt). A run whose results.json exists is skipped, and so is one recorded in the
records folder (default benchmarks/results/continual_runs/<method>_seed<k>.json: each finished run's results.json
is copied there, so a committed record outlives the scratch run folder); an unfinished one resumes where it
stopped (finished tasks are not redone, a task resumes from its newest checkpoint).
A run holds <run dir>/grid.lock (the grid's pid) while it trains: a second grid command started beside
the first (one per core) skips the runs the first holds and takes the next ones; a lock whose process
is gone is taken over.
After each run, and with --aggregate-only, every finished run is aggregated into the results file
(default benchmarks/results/continual.json; smoke: continual_smoke.json; a .md table and a .png bar chart
beside it): per method forgetting_mean / _std, final_avg_mean / _std, bwt_mean, trainable_params,
s_per_step, seeds, each run's R; the sequence.
Re-running the command after an interruption continues the grid. The runs of one records folder start from one
recipe build (the base model's sha256): a rebuilt base model is refused there and given its own folders.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from medqwen.continual.io import pid_alive, take_lock
from medqwen.continual.summary import markdown, method_entries, summarize_method, write

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RESULTS = REPO / "benchmarks" / "results"
SEQUENCE = HERE / "sequence.yaml"
HEADLINE = ("lora", "sslora", "moelora")  # the comparison users ask about first: a partial grid answers it
BASELINES = ("pissa", "milora", "full_ft")
ABLATION_REFERENCES = ("sslora", "moelora")  # rows of the ablation table that the headline grid already runs
SMOKE = {"max_steps": 2, "max_train": 16, "max_eval": 8}


# Single-seed runs (baselines, ablations) use seed 1: their references are the headline runs of the same seed, and
# seed 1 is the first seed whose headline runs start from recipe build a70cbf0b (seed 0 started from a first build
# that was lost), so each comparison is paired by seed and build. The recipe trained again on another machine is
# another build: its runs go to their own folders (check_build), with the SSLoRA reference run again there.
SINGLE_SEED = 1
# Ablations with a hypothesis behind them first: what separates SSLoRA from MoELoRA (forgets less on every seed:
# the init or the scale), why the experts do not separate the tasks (the balance loss), the scale's size, the
# paper's own setting; then the rest of the paper's init and expert-count table.
ABLATION_PRIORITY = ("init_zero", "init_spectral_fixed_scale", "no_balance_loss", "scaling_expert_rank", "paper_setting",
                     "init_random", "init_principal", "init_minor")


# The paper's ablation table (issue 7, point 5) as sections of the ablations (and the reference methods) by name.
ABLATION_TABLE = (
    ("init (2-of-8, total rank 32)", ("scaling rule", "fixed scale 2"), (
        ("spectral", ("sslora", "init_spectral_fixed_scale")),
        ("principal", ("init_principal", "init_principal_fixed_scale")),
        ("minor", ("init_minor", "init_minor_fixed_scale")),
        ("random", ("init_random", "init_random_fixed_scale")),
        ("zero", ("init_zero", "moelora")))),
    ("experts at total rank 32 (spectral, scaling rule)", ("seed-1 run",), (
        ("1-of-8", ("experts_1of8",)), ("2-of-8", ("sslora",)), ("4-of-8", ("experts_4of8",)), ("2-of-4", ("experts_2of4",)))),
    ("total rank (spectral, 2-of-8, scaling rule)", ("seed-1 run",), (("8", ("rank8",)), ("32", ("sslora",)))),
    ("what separates the tasks, the scale's size", ("seed-1 run",), (
        ("SSLoRA (reference)", ("sslora",)), ("no balance loss", ("no_balance_loss",)),
        ("s from the per-expert rank", ("scaling_expert_rank",)), ("both (the paper's setting)", ("paper_setting",)))),
)


def ablation_names() -> list[str]:
    """Every ablations/*.yaml, in the order they run: ABLATION_PRIORITY, then the rest alphabetically."""
    names = sorted(p.stem for p in (HERE / "ablations").glob("*.yaml"))
    return [n for n in ABLATION_PRIORITY if n in names] + [n for n in names if n not in ABLATION_PRIORITY]


def plan(group: str, methods: list[str] | None, seeds: list[int] | None) -> list[tuple[str, int]]:
    """(method, seed) runs in the order they run: headline seeds interleaved (a partial grid stays comparable)."""
    if methods:
        return [(m, s) for s in (seeds or [0]) for m in methods]
    runs: list[tuple[str, int]] = []
    if group in ("headline", "main", "all"):
        runs += [(m, s) for s in (seeds or [0, 1, 2]) for m in HEADLINE]
    if group in ("baselines", "main", "all"):
        runs += [(m, s) for s in (seeds or [SINGLE_SEED]) for m in BASELINES]
    if group in ("ablations", "all"):
        runs += [(m, s) for s in (seeds or [SINGLE_SEED]) for m in ablation_names()]
    return runs


def expected_fingerprint(args, method: str, seed: int) -> str:
    """The fingerprint `medqwen continual` will give this run (a results file of another config is refused)."""
    from medqwen.continual import apply_limits, load_sequence, parse_overrides

    config = load_sequence(args.sequence, data_root=args.data_root, method=method, overrides=parse_overrides(args.var))
    changes = {"seed": seed, **({"start_from": str(args.base_model_dir)} if args.base_model_dir else {})}
    return apply_limits(dataclasses.replace(config, **changes), **limits(args)).fingerprint()


def limits(args) -> dict:
    caps = dict(SMOKE) if args.smoke else {}
    for key in ("max_steps", "max_train", "max_eval"):
        if getattr(args, key) is not None:
            caps[key] = getattr(args, key)
    return caps


def command(args, method: str, seed: int, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "medqwen.cli", "continual", str(args.sequence), "--method", method, "--seed", str(seed),
           "--data-root", str(args.data_root), "--output-dir", str(out)]
    if args.base_model_dir:
        cmd += ["--start-from", str(args.base_model_dir)]
    if args.var:
        cmd += ["--var", *args.var]
    for key, value in limits(args).items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    return cmd


def run_name(method: str) -> str:
    """A method given as a YAML path runs and is recorded under the file's stem."""
    return Path(method).stem if method.endswith((".yaml", ".yml")) else method


def record_path(args, method: str, seed: int) -> Path:
    return args.records / f"{run_name(method)}_seed{seed}.json"


def check_done(args, method: str, seed: int, result: Path) -> bool:
    if not result.is_file():
        return False
    found = json.loads(result.read_text()).get("fingerprint")
    if found != expected_fingerprint(args, method, seed):
        raise SystemExit(f"{result} is a run of another configuration (fingerprint {found}): use another --work "
                         "and --records folder")
    return True


def keep_record(args, method: str, seed: int) -> None:
    """Copy a finished run's results.json into the records folder (the run folder is scratch)."""
    from medqwen.continual.io import write_json

    finished = args.work / run_name(method) / f"seed{seed}" / "results.json"
    if finished.is_file():
        write_json(record_path(args, method, seed), json.loads(finished.read_text()))


def run_one(args, method: str, seed: int) -> str:
    """'done' (skipped), 'ok', 'running in pid N' (another grid holds it) or 'failed (exit N)'."""
    out = args.work / run_name(method) / f"seed{seed}"
    if check_done(args, method, seed, out / "results.json"):
        if not args.dry_run and not record_path(args, method, seed).is_file():
            keep_record(args, method, seed)
        return "done"
    if check_done(args, method, seed, record_path(args, method, seed)):
        return "done (recorded)"
    cmd = command(args, method, seed, out)
    print(f"[{datetime.datetime.now():%H:%M:%S}] run {method} seed {seed}: {' '.join(cmd)}", flush=True)
    if args.dry_run:
        return "dry run"
    out.mkdir(parents=True, exist_ok=True)
    holder = take_lock(out)
    if holder is not None:
        print(f"  skipped: another grid (pid {holder}) is running it", flush=True)
        return f"running in pid {holder}"
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), "TOKENIZERS_PARALLELISM": "false"}
    try:
        with open(out / "log.txt", "a", encoding="utf-8") as log:
            code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    finally:
        (out / "grid.lock").unlink(missing_ok=True)
    if code == 0:
        keep_record(args, method, seed)
    return "ok" if code == 0 else f"failed (exit {code}, see {out / 'log.txt'})"


def check_build(args) -> None:
    """Refuse to add runs from one recipe build to a records folder of another: single-seed comparisons are paired
    by seed and build, and a rebuilt recipe model (another machine) moves results as much as a seed does."""
    from medqwen.continual.runner import start_model_sha256

    if args.base_model_dir is None or args.mixed_builds:
        return
    builds = {json.loads(p.read_text()).get("model_sha256") for p in args.records.glob("*_seed*.json")} - {None}
    sha = start_model_sha256(str(args.base_model_dir))
    if builds and sha not in builds:
        tag = (sha or "unknown")[:8]
        raise SystemExit(
            f"{args.base_model_dir} is recipe build {tag}, but the runs in {args.records} started from build(s) "
            f"{', '.join(sorted(b[:8] for b in builds))}: new runs would not be paired with them. Give this build its own "
            f"folders (--work runs/continual_build{tag} --records benchmarks/results/continual_runs_build{tag} --results "
            f"benchmarks/results/continual_build{tag}.json) and run the reference there first (--methods sslora --seeds "
            f"{SINGLE_SEED}), or pass --mixed-builds")


def run_status(args, method: str, seed: int) -> str:
    """Where a planned run stands, read from disk (nothing is started): for --status."""
    out = args.work / run_name(method) / f"seed{seed}"
    if (out / "results.json").is_file() or record_path(args, method, seed).is_file():
        return "done"
    if not out.is_dir():
        return "pending"
    rows = list((out / "eval").glob("row_??.json"))
    lock = out / "grid.lock"
    holder = lock.read_text().strip() if lock.is_file() else ""
    running = f"running (pid {holder})" if holder.isdigit() and pid_alive(int(holder)) else "stopped (resumes)"
    tasks = sorted(p.name for p in (out / "train").glob("task*"))
    from medqwen.training.checkpoint import latest_checkpoint  # the one resume continues from

    ckpt = latest_checkpoint(out / "train" / tasks[-1] / "checkpoints") if tasks else None
    step = f" (checkpoint at step {int(ckpt.name.split('-')[1])})" if ckpt else ""
    return f"{running}: {len(rows)} rows of R on disk, last task folder {tasks[-1] if tasks else '-'}{step}"


def run_hours(record: dict) -> float:
    """One finished run's compute, in core-hours: its training steps at its measured s/step, plus its evaluation."""
    steps = sum(int(task.get("steps") or 0) for task in record["tasks"])
    return (steps * float(record["s_per_step"]) + float(record["eval_seconds"])) / 3600


def hours_left(args, unfinished: list[tuple[str, int]]) -> float | None:
    """Core-hours the unfinished runs still need: each counted as the median finished run, less the share of its
    rows of R already on disk; None when no run has finished to measure from."""
    finished = [json.loads(p.read_text()) for p in sorted(args.records.glob("*_seed*.json"))]
    costs = [run_hours(r) for r in finished if r.get("s_per_step") and r.get("eval_seconds") is not None]
    if not costs:
        return None
    median, n_rows = statistics.median(costs), 1 + len(finished[0]["tasks"])
    rows = [len(list((args.work / run_name(m) / f"seed{s}" / "eval").glob("row_??.json"))) for m, s in unfinished]
    return sum((1 - min(r, n_rows) / n_rows) * median for r in rows)


# ------------------------------------------------------------------------------------------- aggregation
def aggregate(args, runs_planned: list[tuple[str, int]]) -> dict:
    planned: dict[str, list[int]] = {}
    given = {run_name(method): method for method, _ in runs_planned}  # a run's name -> the method as given
    for method, seed in runs_planned:
        planned.setdefault(run_name(method), []).append(seed)
    found: dict[str, dict[int, dict]] = {}
    # records first, then run folders: a run folder's results.json is the same run, or a newer one not yet recorded
    for result in sorted(args.records.glob("*_seed*.json")) + sorted(args.work.glob("*/seed*/results.json")):
        data = json.loads(result.read_text())
        method, seed = data["method"]["name"], int(data["seed"])
        try:
            expected = expected_fingerprint(args, given.get(method, method), seed)
        except Exception as err:  # a method file that no longer exists, ...
            expected = f"unknown ({err})"
        if data.get("fingerprint") != expected:
            print(f"note: {result} left out: a run of another configuration (fingerprint {data.get('fingerprint')}, "
                  f"expected {expected})", flush=True)
            continue
        found.setdefault(method, {})[seed] = data
    if not found:
        return {}
    first = next(iter(next(iter(found.values())).values()))
    out = {
        "sequence": {"name": first["sequence"], "file": str(Path(first["source"]).resolve().relative_to(REPO))
                     if Path(first["source"]).resolve().is_relative_to(REPO) else first["source"],
                     "tasks": first["tasks"], "variables": first.get("variables"), "R_rows": first["R_rows"]},
        "base_model": first["model"],  # each run's own (and its weights' sha256): runs[seed]["start_model*"]
        "scorers": {t["name"]: t["scorer"] for t in first["tasks"]},
        "smoke": bool(args.smoke), "limits": limits(args),
        "generated": datetime.datetime.now().isoformat(timespec="seconds"),
        "definitions": "forgetting = mean over tasks 1..T-1 of (best earlier - final) / best earlier (best earlier = max "
                       "after the task's own training, before the last task); final_avg = GEM ACC; bwt = GEM BWT; fwt = GEM "
                       "FWT against the starting model (row 0); std = sample std over seeds. See medqwen/continual/metrics.py.",
    }
    ablations = set(ablation_names())
    for method, runs in sorted(found.items()):
        entry = summarize_method(runs, planned.get(method, sorted(runs)))
        if method in ablations:
            out.setdefault("ablations", {})[method] = entry
        else:
            out[method] = entry
    if "ablations" in out:
        out["ablations"]["references"] = {m: "see the method of the same name" for m in ABLATION_REFERENCES if m in out}
    return out


def print_status(args, runs: list[tuple[str, int]]) -> None:
    """Where each planned run stands, and the hours left at the median finished run's pace."""
    unfinished = []
    for method, seed in runs:
        state = run_status(args, method, seed)
        print(f"{run_name(method)}/seed{seed}: {state}")
        unfinished += [] if state == "done" else [(method, seed)]
    hours = hours_left(args, unfinished)
    if unfinished and hours is not None:
        print(f"{len(unfinished)} runs to go: about {hours:.0f} core-hours (the median finished run, less rows on disk); "
              f"one grid per core on 2 cores: about {hours / 2:.0f} h")


def write_aggregates(args, runs: list[tuple[str, int]]) -> dict:
    """Aggregate every finished run into the results file (and the paired chart); returns the aggregate."""
    results = aggregate(args, runs)
    if results and not args.dry_run:
        write(results, args.results, ABLATION_TABLE, SINGLE_SEED)
        write_paired_if_committed(args)
    return results


def write_paired_if_committed(args) -> None:
    """After the committed aggregates change (continual.json, continual_build<sha8>.json), refresh the chart of every
    seed-1 run minus the SSLoRA run of its build (benchmarks/continual/paired.py); smoke and scratch grids leave it."""
    if args.smoke or args.results.resolve().parent != RESULTS:
        return
    write_paired()


def write_paired() -> None:
    """benchmarks/continual/paired.py into the committed results (loaded at call time: a long grid picks up edits)."""
    spec = importlib.util.spec_from_file_location("continual_paired", HERE / "paired.py")
    paired = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(paired)
    paired.write_paired(RESULTS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, required=True, help="e.g. ../shared/data")
    parser.add_argument("--base-model-dir", type=Path, help="the starting model (stage-2 final/ of the grounding recipe); "
                        "default: the sequence's model (MedQwen-mini before stages 1-2)")
    parser.add_argument("--sequence", type=Path, default=SEQUENCE)
    parser.add_argument("--group", choices=["headline", "baselines", "main", "ablations", "all"], default="main",
                        help="main = headline (lora, moelora, sslora x 3 seeds) + baselines (pissa, milora, full_ft x 1 seed)")
    parser.add_argument("--methods", nargs="+", help="run these methods instead of a group")
    parser.add_argument("--seeds", nargs="+", type=int, help=f"seeds (default: 0 1 2 for headline methods, {SINGLE_SEED} otherwise)")
    parser.add_argument("--var", nargs="+", help="NAME=VALUE overrides of the sequence's variables (subset sizes, steps)")
    parser.add_argument("--smoke", action="store_true", help=f"tiny budgets {SMOKE}, own work folder and results file")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--max-train", type=int)
    parser.add_argument("--max-eval", type=int)
    parser.add_argument("--work", type=Path, help="run folders (default runs/continual, smoke: runs/continual_smoke)")
    parser.add_argument("--records", type=Path, help="one results.json per finished run, kept (default "
                        "benchmarks/results/continual_runs for the default --work, else <work>/records)")
    parser.add_argument("--results", type=Path, help="aggregate file (default benchmarks/results/continual.json; smoke: "
                        "continual_smoke.json; another --work: <work>/continual.json)")
    parser.add_argument("--aggregate-only", action="store_true", help="only aggregate the finished runs")
    parser.add_argument("--mixed-builds", action="store_true", help="run even if the base model is another recipe build "
                        "than the records folder's runs started from (their comparisons would not be paired)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--status", action="store_true", help="print where each planned run stands, run nothing")
    args = parser.parse_args(argv)
    default_work = args.work is None and not args.smoke
    args.work = (args.work or REPO / "runs" / ("continual_smoke" if args.smoke else "continual")).resolve()
    # the committed records belong to the default grid; another --work (other variables) keeps its own
    args.records = (args.records or (RESULTS / "continual_runs" if default_work else args.work / "records")).resolve()
    # absolute paths: the runs start in the repository folder, and the fingerprint includes the data paths
    args.data_root, args.sequence = args.data_root.resolve(), args.sequence.resolve()
    args.base_model_dir = args.base_model_dir.resolve() if args.base_model_dir else None
    args.results = args.results or (RESULTS / "continual.json" if default_work else
                                    RESULTS / "continual_smoke.json" if args.smoke else args.work / "continual.json")
    runs = plan(args.group, args.methods, args.seeds)
    if args.status:
        print_status(args, runs)
        return 0
    status = {}
    if not args.aggregate_only:
        check_build(args)
        for method, seed in runs:
            status[f"{method}/seed{seed}"] = run_one(args, method, seed)
            write_aggregates(args, runs)
    results = write_aggregates(args, runs)
    if results and not args.dry_run:
        print(markdown(results))
        print(f"aggregated {sum(len(m['seeds']) for _, m in method_entries(results))} runs -> {args.results}")
    failed = {k: v for k, v in status.items() if v.startswith("failed")}
    for key, value in status.items():
        print(f"{key}: {value}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
