"""benchmarks/continual/answers.py without a model: the forgetting table from a run's row files, as scored
and contextually calibrated (the scoring itself is checked in the end-to-end run of test_runner.py)."""

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
spec = importlib.util.spec_from_file_location("continual_answers", REPO / "benchmarks" / "continual" / "answers.py")
answers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(answers)


def test_calibration_summary_by_hand(tmp_path):
    """benchmarks/continual/answers.py --summary: forgetting from the rows of one run, as scored and calibrated."""
    def task(image, calibrated):
        return {"image": {"score": image}, "blank": {"score": 0.5}, "contextual": {"score": 0.4}, "batch": {"score": calibrated}}

    rows = {1: {"a": task(0.8, 0.8)},
            2: {"a": task(0.9, 0.85), "b": task(0.7, 0.7)},
            3: {"a": task(0.6, 0.8), "b": task(0.35, 0.7), "c": task(0.5, 0.6)}}
    for row, tasks in rows.items():
        (tmp_path / f"lora_seed1_row{row}.json").write_text(json.dumps({"method": "lora", "seed": 1, "row": row, "sequence": ["a", "b", "c"], "tasks": tasks}))
    for method, row in (("sslora", 3), ("moelora", 1)):  # runs without every row are left out
        (tmp_path / f"{method}_seed1_row{row}.json").write_text(json.dumps(
            {"method": method, "seed": 1, "row": row, "sequence": ["a", "b", "c"], "tasks": {k: rows[row][k] for k in list(rows[row])[:row]}}))
    [entry] = answers.summarize(tmp_path)
    assert entry["tasks"] == ["a", "b", "c"]
    # a: best after its training and before the last task = max(0.8, 0.9); b: 0.7
    assert entry["image"]["forgetting"] == pytest.approx([(0.9 - 0.6) / 0.9, (0.7 - 0.35) / 0.7])
    assert entry["image"]["forgetting_mean"] == pytest.approx(((0.9 - 0.6) / 0.9 + 0.5) / 2)
    assert entry["batch"]["forgetting"] == pytest.approx([(0.85 - 0.8) / 0.85, 0.0])
    assert entry["image"]["own"] == [0.8, 0.7, 0.5] and entry["batch"]["final_avg"] == pytest.approx(0.7)
    answers.write_md(tmp_path / "table.md", [entry])
    assert "| lora seed 1 | batch | a 80.0 -> 80.0; b 70.0 -> 70.0; c 60.0 -> 60.0 | 2.9% | 70.0 |" in (tmp_path / "table.md").read_text()
