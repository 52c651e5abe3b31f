"""benchmarks/zero_shot.py: the results layout issue 12 asks for, from fake runs."""

from __future__ import annotations

import importlib.util
import json

import pytest

from ...conftest import REPO


@pytest.fixture(scope="module")
def driver():
    spec = importlib.util.spec_from_file_location("zero_shot_driver", REPO / "benchmarks" / "zero_shot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(method, seed, acc):
    datasets = {d: {"acc": acc, "balanced_acc": acc / 2, "auc": 0.5 + acc / 4, "n": 10} for d in ("a", "b")}
    datasets["b"]["acc"] = acc / 2
    return {"method": method, "seed": seed, "trainable_params": 7, "trainable_pct": 0.5, "datasets": datasets,
            "steps": 3, "s_per_step": 1.0, "lr": 3e-4, "peak_mem_mb": 100.0}


def test_summary_layout(driver):
    summary = driver.summarize([_run("lora", 0, 0.8), _run("lora", 1, 0.6), _run("aligned", 0, 0.4)])
    assert list(summary) == ["aligned", "lora"]
    lora = summary["lora"]
    assert set(lora) == {"a", "b", "average", "_run"}
    for entry in (lora["a"], lora["b"], lora["average"]):
        assert {"acc", "balanced_acc", "auc", "trainable_params", "trainable_pct", "seeds"} <= set(entry)
        assert entry["seeds"] == [0, 1] and entry["trainable_params"] == 7
    assert lora["a"]["acc"] == pytest.approx(0.7) and lora["a"]["acc_std"] == pytest.approx(0.1414, abs=1e-4)
    assert lora["average"]["acc"] == pytest.approx((0.7 + 0.35) / 2)  # mean over datasets of the seed means
    assert "| lora |" in driver.markdown(summary)


def test_write_summary_reads_every_finished_run(driver, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for run in (_run("lora", 0, 0.8), _run("lora", 1, 0.6), _run("sslora", 0, 0.5)):
        (runs / f"{run['method']}_seed{run['seed']}.json").write_text(json.dumps(run))
    results = tmp_path / "zero_shot.json"
    driver.write_summary(results, runs, {"steps": 3}, {"rows": []})
    written = json.loads(results.read_text())
    assert written["lora"]["average"]["seeds"] == [0, 1] and written["sslora"]["average"]["seeds"] == [0]
    assert written["_setup"]["steps"] == 3 and written["param_table"] == {"rows": []}
