"""benchmarks/continual/variants.py without training: the commands it hands to grid.py and the table of
finished variants beside the grid's reference runs of the same seed."""

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

from medqwen.continual.report import build_results

REPO = Path(__file__).resolve().parents[3]
spec = importlib.util.spec_from_file_location("continual_variants", REPO / "benchmarks" / "continual" / "variants.py")
variants = importlib.util.module_from_spec(spec)
spec.loader.exec_module(variants)


def _record(path: Path, method: str, seed: int, lr: float, R: list, sha: str = "ab" * 32, calibrated: list | None = None) -> None:
    run = {"sequence": "two", "method": {"name": method, "description": f"{method} desc"}, "seed": seed,
           "model_sha256": sha, "tasks": [{"name": "a", "lr": lr}, {"name": "b", "lr": lr}]}
    calibrated = calibrated or [[None] * len(row) for row in R]
    rows = [{"scores": {t: {"score": v, "n": 10, "seconds": 1.0, **({"batch_calibrated": c} if c is not None else {})}
                        for t, v, c in zip("ab", row, cal)},
             "blank": {} if i == 0 else {"ab"[i - 1]: {"score": 0.5}}, "train": {} if i == 0 else {"final_loss": 0.1 * i}}
            for i, (row, cal) in enumerate(zip(R, calibrated))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(build_results(run, rows)))


def test_grid_command_of_a_variant_names_its_own_folders():
    args = argparse.Namespace(data_root=Path("/data"), base_model_dir=Path("/m/final"), dry_run=False)
    argv = variants.grid_argv(args, {"name": "x_lr", "method": "sslora", "var": {"lr": 0.001}}, 1)
    assert argv[argv.index("--work") + 1].endswith("runs/continual_variants/x_lr")
    assert argv[argv.index("--records") + 1].endswith("benchmarks/results/continual_variants/x_lr")
    assert argv[argv.index("--var") + 1:] == ["lr=0.001"] and argv[argv.index("--seeds") + 1] == "1"


def test_table_puts_variants_beside_the_references_of_the_same_seed(tmp_path, monkeypatch):
    monkeypatch.setattr(variants, "RESULTS", tmp_path)
    _record(tmp_path / "continual_runs" / "sslora_seed1.json", "sslora", 1, 3e-4, [[0.5, 0.5], [0.8, 0.5], [0.6, 0.9]])
    _record(tmp_path / "continual_runs" / "sslora_seed0.json", "sslora", 0, 3e-4, [[0.5, 0.5], [0.9, 0.5], [0.9, 0.9]])
    _record(tmp_path / "continual_variants" / "sslora_lr" / "sslora_seed1.json", "sslora", 1, 1e-3,
            [[0.5, 0.5], [1.0, 0.5], [0.9, 0.8]])
    rows = variants.collect(1, [{"name": "sslora_lr", "method": "sslora", "var": {"lr": 1e-3}}])
    assert [(r["name"], r["kind"], r["lr"]) for r in rows] == [("sslora", "reference", [3e-4]), ("sslora_lr", "variant", [1e-3])]
    assert rows[0]["forgetting"] == pytest.approx(0.25) and rows[1]["forgetting"] == pytest.approx(0.1)  # (0.8 - 0.6) / 0.8, (1.0 - 0.9) / 1.0
    assert rows[1]["tasks"]["a"] == {"own": 1.0, "blank": 0.5, "final": 0.9, "train_loss": 0.1}
    table = variants.markdown(rows)
    # learned = mean own-task score (1.0 + 0.8) / 2; no batch-calibrated scores in these records
    assert "| sslora_lr | sslora desc | 0.001 | 10.0 | 85.0 | -10.0 | 90.0 | — | 100.0 (50.0) / 90.0 | 80.0 (50.0) / 80.0 | abababababab |" in table


def test_each_variant_sits_beside_the_references_of_its_own_build(tmp_path, monkeypatch):
    """A rebuilt recipe model is another build: its runs are recorded in continual_runs_build<sha>/."""
    monkeypatch.setattr(variants, "RESULTS", tmp_path)
    R = [[0.5, 0.5], [0.8, 0.5], [0.6, 0.9]]
    _record(tmp_path / "continual_runs" / "sslora_seed1.json", "sslora", 1, 3e-4, R)
    _record(tmp_path / "continual_runs" / "lora_seed1.json", "lora", 1, 3e-4, R)
    _record(tmp_path / "continual_runs_buildcdcdcdcd" / "sslora_seed1.json", "sslora", 1, 3e-4, R, sha="cd" * 32)
    _record(tmp_path / "continual_variants" / "x" / "sslora_seed1.json", "sslora", 1, 1e-3, R, sha="cd" * 32)
    _record(tmp_path / "continual_variants" / "y" / "lora_seed1.json", "lora", 1, 1e-3, R)
    rows = variants.collect(1, [{"name": n, "method": "sslora", "var": {}} for n in ("x", "y")])
    assert [(r["name"], r["start_model_sha256"][:2]) for r in rows] == [
        ("lora", "ab"), ("sslora", "ab"), ("y", "ab"), ("sslora", "cd"), ("x", "cd")]


def test_table_gives_the_batch_calibrated_pair_when_the_run_recorded_it(tmp_path, monkeypatch):
    monkeypatch.setattr(variants, "RESULTS", tmp_path)
    _record(tmp_path / "continual_variants" / "x" / "sslora_seed1.json", "sslora", 1, 1e-3,
            [[0.5, 0.5], [0.8, 0.5], [0.6, 0.9]], calibrated=[[0.5, 0.5], [0.8, 0.5], [0.7, 0.9]])
    (row,) = variants.collect(1, [{"name": "x", "method": "sslora", "var": {}}])
    assert row["calibrated"]["forgetting"] == pytest.approx(0.125)  # (0.8 - 0.7) / 0.8
    assert row["calibrated"]["final_avg"] == pytest.approx(0.8)  # (0.7 + 0.9) / 2
    assert "| 25.0 | 75.0 | -20.0 | 85.0 | 12.5 / 80.0 |" in variants.markdown([row])


def test_another_seed_gets_its_own_table_beside_that_seeds_references(tmp_path, monkeypatch):
    """--seed 2 tabulates the seed-2 runs in continual_variants_seed2.md and leaves the file's seed-1 table alone."""
    monkeypatch.setattr(variants, "RESULTS", tmp_path)
    monkeypatch.setattr(variants.grid, "write_paired", lambda: None)
    R = [[0.5, 0.5], [0.8, 0.5], [0.6, 0.9]]
    _record(tmp_path / "continual_runs" / "sslora_seed1.json", "sslora", 1, 3e-4, R)
    _record(tmp_path / "continual_runs" / "sslora_seed2.json", "sslora", 2, 3e-4, [[0.5, 0.5], [1.0, 0.5], [0.5, 0.9]])
    _record(tmp_path / "continual_variants" / "x" / "sslora_seed1.json", "sslora", 1, 1e-3, R)
    _record(tmp_path / "continual_variants" / "x" / "sslora_seed2.json", "sslora", 2, 1e-3, R)
    spec_file = tmp_path / "variants.yaml"
    spec_file.write_text("seed: 1\nvariants:\n  - {name: x, method: sslora, var: {lr: 1.0e-3}}\n")
    assert variants.main(["--data-root", str(tmp_path), "--variants", str(spec_file), "--seed", "2", "--table-only"]) == 0
    assert not (tmp_path / "continual_variants.md").exists()
    table = json.loads((tmp_path / "continual_variants_seed2.json").read_text())
    assert table["seed"] == 2 and [(r["name"], r["seed"]) for r in table["rows"]] == [("sslora", 2), ("x", 2)]
    assert table["rows"][0]["forgetting"] == pytest.approx(0.5)  # (1.0 - 0.5) / 1.0: the seed-2 reference
    assert "| x | sslora desc | 0.001 | 25.0 |" in (tmp_path / "continual_variants_seed2.md").read_text()
