"""benchmarks/continual/grid.py without training: the plan, skipping finished runs, refusing runs of
another configuration, and the aggregate (mean / std over seeds, computed by hand here)."""

import importlib.util
import json
from pathlib import Path

import pytest

from medqwen.continual import load_sequence
from medqwen.continual.report import build_results
from medqwen.continual.runner import run_info

REPO = Path(__file__).resolve().parents[3]
spec = importlib.util.spec_from_file_location("continual_grid", REPO / "benchmarks" / "continual" / "grid.py")
grid = importlib.util.module_from_spec(spec)
spec.loader.exec_module(grid)

SEQUENCE = """
name: two
model: tiny-mini
tasks:
  - {name: a, train: [{format: synthetic, path: "${data_root}/x"}], eval: [{format: synthetic, path: "${data_root}/x", split: test}], steps: 2}
  - {name: b, train: [{format: synthetic, path: "${data_root}/x"}], eval: [{format: synthetic, path: "${data_root}/x", split: test}], steps: 2}
"""


def test_plan_orders_headline_seeds_first():
    main = grid.plan("main", None, None)
    assert main[:3] == [("lora", 0), ("sslora", 0), ("moelora", 0)] and len(main) == 3 * 3 + 3
    assert main[-3:] == [("pissa", 1), ("milora", 1), ("full_ft", 1)]  # paired with the headline's seed 1
    ablations = grid.plan("ablations", None, None)
    assert len(ablations) == 15 and {m for m, _ in ablations} == set(grid.ablation_names())
    assert {s for _, s in ablations} == {1} and ablations[:2] == [("init_zero", 1), ("init_spectral_fixed_scale", 1)]
    assert grid.plan("main", ["sslora"], [3, 4]) == [("sslora", 3), ("sslora", 4)]


@pytest.fixture
def setup(tmp_path):
    (tmp_path / "methods").mkdir()
    for name, kind in (("m1", "lora"), ("m2", "sslora")):
        (tmp_path / "methods" / f"{name}.yaml").write_text(
            f"name: {name}\ntrainable: [adapter]\nadapter: {{kind: {kind}, r: 8, num_experts: {1 if kind == 'lora' else 4}}}\n")
    sequence = tmp_path / "seq.yaml"
    sequence.write_text(SEQUENCE)
    args = grid.argparse.Namespace(sequence=sequence, data_root=tmp_path, var=None, base_model_dir=None, smoke=False,
                                   max_steps=None, max_train=None, max_eval=None, work=tmp_path / "work",
                                   records=tmp_path / "records", dry_run=True)
    return args


def _fake_run(args, method, seed, R, out=None, calibrated=None):
    """A finished run's results.json as the runner writes it (scores given, batch-calibrated ones too if given;
    no training)."""
    import dataclasses

    config = dataclasses.replace(load_sequence(args.sequence, data_root=str(args.data_root), method=method), seed=seed)
    calibrated = calibrated or [[None] * len(row) for row in R]
    rows = [{"scores": {t: {"score": v, "n": 10, "seconds": 1.0, **({"batch_calibrated": c} if c is not None else {})}
                        for t, v, c in zip(("a", "b"), row, crow)},
             "blank": {}, "train": {} if i == 0 else {"trainable_params": 100, "s_per_step": 2.0 + seed}} for i, (row, crow) in enumerate(zip(R, calibrated))]
    results = build_results(run_info(config), rows)
    out = out or args.work / method / f"seed{seed}"
    out.mkdir(parents=True)
    (out / "results.json").write_text(json.dumps(results))


def test_aggregate_mean_std_over_seeds(setup, tmp_path):
    args = setup
    _fake_run(args, "m1", 0, [[0.5, 0.5], [0.8, 0.5], [0.4, 0.9]])  # forgetting (0.8 - 0.4) / 0.8 = 0.5, BWT -0.4
    _fake_run(args, "m1", 1, [[0.5, 0.5], [1.0, 0.5], [0.7, 0.9]])  # forgetting 0.3, BWT -0.3
    _fake_run(args, "m2", 0, [[0.5, 0.5], [0.8, 0.5], [0.8, 0.7]],  # no forgetting
              calibrated=[[0.5, 0.5], [0.9, 0.5], [0.6, 0.8]])  # calibrated: (0.9 - 0.6) / 0.9, final avg 0.7
    results = grid.aggregate(args, [("m1", 0), ("m1", 1), ("m2", 0), ("m2", 1)])
    m1, m2 = results["m1"], results["m2"]
    assert m1["seeds"] == [0, 1] and m1["complete"] and not m2["complete"]
    assert m1["forgetting_mean"] == pytest.approx(0.4) and m1["forgetting_std"] == pytest.approx(0.1414213, rel=1e-5)
    assert m1["final_avg_mean"] == pytest.approx((0.65 + 0.8) / 2)
    assert m1["bwt_mean"] == pytest.approx(-0.35)
    assert m1["s_per_step"] == pytest.approx(2.5) and m1["trainable_params"] == 100
    assert m1["runs"]["1"]["R"] == [[0.5, 0.5], [1.0, 0.5], [0.7, 0.9]]
    assert m2["forgetting_mean"] == 0.0 and m2["forgetting_std"] is None
    assert [t["name"] for t in results["sequence"]["tasks"]] == ["a", "b"]
    table = grid.markdown(results)
    assert "| m1 | 0,1 | 40.0 ± 14.1 | 72.5 ± 10.6 | -35.0 ± 7.1 |" in table
    # per run: own = R[i+1][i], final = R[-1]; no start-model hash -> the first build; no blank control -> —
    assert "| m1 | 1 | first | 100.0 / 70.0 | 90.0 (—) | 30.0 | 80.0 | -30.0 | — / — |" in table
    calibrated = m2["runs"]["0"]["metrics_batch_calibrated"]
    assert calibrated["forgetting"] == pytest.approx(1 / 3) and calibrated["bwt"] == pytest.approx(-0.3)
    assert "| m2 | 0 | first | 80.0 / 80.0 | 70.0 (—) | 0.0 | 75.0 | 0.0 | 33.3 / 70.0 |" in table
    grid.write(results, tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text())["m1"]["bwt_mean"] == pytest.approx(-0.35)
    assert (tmp_path / "out.png").stat().st_size > 0 and (tmp_path / "out.md").is_file()


def test_finished_runs_are_skipped_and_foreign_runs_refused(setup, capsys):
    args = setup
    _fake_run(args, "m1", 0, [[0.5, 0.5], [0.8, 0.5], [0.4, 0.9]])
    assert grid.run_one(args, "m1", 0) == "done"
    assert grid.run_one(args, "m2", 0) == "dry run"  # not finished: would run (printed command)
    assert "--method m2 --seed 0" in capsys.readouterr().out
    args.var, args.max_steps = None, 1  # another budget = another configuration
    with pytest.raises(SystemExit, match="is a run of another configuration"):
        grid.run_one(args, "m1", 0)
    assert grid.aggregate(args, [("m1", 0)]) == {}  # left out of the aggregate too


def test_a_recorded_run_counts_without_its_run_folder(setup):
    """Run folders are scratch (lost with a machine); the records folder keeps each finished run."""
    args = setup
    _fake_run(args, "m1", 0, [[0.5, 0.5], [0.8, 0.5], [0.4, 0.9]])
    args.dry_run = False
    assert grid.run_one(args, "m1", 0) == "done" and grid.record_path(args, "m1", 0).is_file()  # recorded on the way
    import shutil

    shutil.rmtree(args.work)
    assert grid.run_one(args, "m1", 0) == "done (recorded)"
    assert grid.aggregate(args, [("m1", 0)])["m1"]["runs"]["0"]["R"] == [[0.5, 0.5], [0.8, 0.5], [0.4, 0.9]]
    args.max_steps = 1  # another configuration: a record of it is refused like a run folder
    with pytest.raises(SystemExit, match="is a run of another configuration"):
        grid.run_one(args, "m1", 0)


def test_the_start_model_counts_as_given_not_by_its_path(setup):
    """A rebuilt or moved recipe keeps the configuration; runs record the weights' sha256 instead."""
    args = setup
    args.base_model_dir = Path("/somewhere/final")
    first = grid.expected_fingerprint(args, "m1", 0)
    args.base_model_dir = Path("/elsewhere/final")
    assert grid.expected_fingerprint(args, "m1", 0) == first
    args.base_model_dir = None
    assert grid.expected_fingerprint(args, "m1", 0) != first


def test_a_base_model_of_another_build_is_refused_in_a_records_folder_of_one(setup, tmp_path):
    """Single-seed comparisons are paired by build: the runs of one records folder start from one recipe build."""
    from medqwen.models import weights_sha256

    args = setup
    args.mixed_builds = False
    base = tmp_path / "final" / "model"
    base.mkdir(parents=True)
    (base / "trainable.safetensors").write_bytes(b"build one")
    args.base_model_dir = base.parent
    grid.check_build(args)  # an empty records folder takes any build
    args.records.mkdir()
    record = {"fingerprint": "x", "model_sha256": weights_sha256(base)}
    (args.records / "m1_seed1.json").write_text(json.dumps(record))
    (args.records / "m1_seed0.json").write_text(json.dumps({"fingerprint": "x"}))  # the first build: no sha256
    grid.check_build(args)  # the same build
    (base / "trainable.safetensors").write_bytes(b"build two")
    with pytest.raises(SystemExit, match=f"recipe build {weights_sha256(base)[:8]}, but the runs in .* started from "
                                         f"build\\(s\\) {record['model_sha256'][:8]}: .*--records "
                                         f"benchmarks/results/continual_runs_build{weights_sha256(base)[:8]}"):
        grid.check_build(args)
    args.mixed_builds = True
    grid.check_build(args)
    args.mixed_builds, args.base_model_dir = False, None  # the sequence's own model: nothing to compare
    grid.check_build(args)


def test_a_run_held_by_a_live_grid_is_skipped_and_a_stale_lock_taken_over(setup, monkeypatch):
    import os
    import subprocess
    import sys

    args = setup
    args.dry_run = False
    out = args.work / "m2" / "seed0"
    out.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a live "other grid"
    try:
        (out / "grid.lock").write_text(str(other.pid))
        monkeypatch.setattr(grid.subprocess, "call", lambda *a, **k: pytest.fail("ran a run another grid holds"))
        assert grid.run_one(args, "m2", 0) == f"running in pid {other.pid}"
    finally:
        other.kill()
        other.wait()
    launched = []

    def fake_call(cmd, **kwargs):
        launched.append(cmd)
        assert (out / "grid.lock").read_text() == str(os.getpid())  # held while the run goes
        (out / "results.json").write_text(json.dumps({"fingerprint": "x", "R": [[0.5]]}))  # the run finished
        return 0

    monkeypatch.setattr(grid.subprocess, "call", fake_call)
    assert grid.run_one(args, "m2", 0) == "ok"  # the dead holder's lock is taken over
    assert len(launched) == 1 and not (out / "grid.lock").exists()  # released afterwards
    assert json.loads(grid.record_path(args, "m2", 0).read_text())["R"] == [[0.5]]  # and the finished run recorded


def test_status_reads_each_run_from_disk(setup):
    args = setup
    _fake_run(args, "m1", 0, [[0.5, 0.5], [0.8, 0.5], [0.4, 0.9]])
    partial = args.work / "m2" / "seed0"
    (partial / "eval").mkdir(parents=True)
    (partial / "eval" / "row_00.json").write_text("{}")
    (partial / "train" / "task1_a").mkdir(parents=True)
    (partial / "grid.lock").write_text("999999999")  # no such process: the run is stopped, not running
    assert grid.run_status(args, "m1", 0) == "done"
    assert grid.run_status(args, "m2", 0) == "stopped (resumes): 1 rows of R on disk, last task folder task1_a"
    assert grid.run_status(args, "m2", 1) == "pending"
    from medqwen.training.checkpoint import STATE_NAME

    for step in (50, 100):  # complete checkpoints; an interrupted save's folder has no state file
        (partial / "train" / "task1_a" / "checkpoints" / f"checkpoint-{step:07d}").mkdir(parents=True)
        (partial / "train" / "task1_a" / "checkpoints" / f"checkpoint-{step:07d}" / STATE_NAME).write_text("{}")
    (partial / "train" / "task1_a" / "checkpoints" / "checkpoint-0000150").mkdir()
    assert grid.run_status(args, "m2", 0).endswith("last task folder task1_a (checkpoint at step 100)")


def test_hours_left_counts_unfinished_runs_at_the_median_finished_run(setup):
    args = setup
    assert grid.hours_left(args, [("m1", 0)]) is None  # nothing finished: nothing to measure from
    for seed in (0, 1, 2):
        _fake_run(args, "m1", seed, [[0.5, 0.5], [0.8, 0.5], [0.4, 0.9]])
        grid.keep_record(args, "m1", seed)
    records = [json.loads(grid.record_path(args, "m1", s).read_text()) for s in (0, 1, 2)]
    # 2 tasks x 2 steps at the run's s/step, plus its evaluation
    costs = [(4 * r["s_per_step"] + r["eval_seconds"]) / 3600 for r in records]
    assert [grid.run_hours(r) for r in records] == pytest.approx(costs)
    partial = args.work / "m2" / "seed0" / "eval"
    partial.mkdir(parents=True)
    (partial / "row_00.json").write_text("{}")  # 1 of 3 rows of R on disk
    hours = grid.hours_left(args, [("m2", 0), ("m2", 1)])  # the runs --status found unfinished
    assert hours == pytest.approx(sorted(costs)[1] * (2 / 3 + 1))


def test_the_data_folder_is_not_part_of_the_configuration(setup, tmp_path):
    """A committed record made where the data lived in one folder is recognised where it lives in another."""
    args = setup
    first = grid.expected_fingerprint(args, "m1", 0)
    moved = tmp_path / "elsewhere"
    (moved / "methods").mkdir(parents=True)
    for name in ("m1.yaml", "m2.yaml"):
        (moved / "methods" / name).write_text((tmp_path / "methods" / name).read_text())
    (moved / "seq.yaml").write_text(SEQUENCE)
    args.sequence, args.data_root = moved / "seq.yaml", moved
    assert grid.expected_fingerprint(args, "m1", 0) == first
    args.var = None
    args.max_eval = 3  # while a real change still counts
    assert grid.expected_fingerprint(args, "m1", 0) != first


def test_ablation_table_names_every_ablation_once_and_only_known_methods():
    named = [n for _, _, rows in grid.ABLATION_TABLE for _, names in rows for n in names]
    methods = {p.stem for p in (REPO / "benchmarks" / "continual" / "methods").glob("*.yaml")}
    assert set(named) <= set(grid.ablation_names()) | methods
    ablations = [n for n in named if n in grid.ablation_names()]
    assert sorted(ablations) == sorted(grid.ablation_names())  # each ablation has exactly one cell


def test_the_paired_chart_is_refreshed_only_beside_the_committed_aggregates(tmp_path, monkeypatch):
    committed, scratch = tmp_path / "results", tmp_path / "work"
    committed.mkdir(), scratch.mkdir()
    monkeypatch.setattr(grid, "RESULTS", committed)
    reference = {"seeds": [1], "runs": {"1": {"metrics": {"forgetting": 0.2, "final_avg": 0.6, "learning_acc": 0.7},
                                              "start_model_sha256": "ab" * 32}}}
    other = json.loads(json.dumps(reference))
    other["runs"]["1"]["metrics"]["forgetting"] = 0.1
    (committed / "continual.json").write_text(json.dumps({"sslora": reference, "ablations": {"init_zero": other}}))
    for smoke, results in ((True, committed / "continual.json"), (False, scratch / "continual.json")):
        grid.write_paired_if_committed(grid.argparse.Namespace(smoke=smoke, results=results))
        assert not (committed / "continual_paired.md").exists()
    grid.write_paired_if_committed(grid.argparse.Namespace(smoke=False, results=committed / "continual.json"))
    assert "| init_zero | ablation | abababab | -10.0 |" in (committed / "continual_paired.md").read_text()
