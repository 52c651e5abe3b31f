"""One tiny end-to-end continual run (tiny random MedQwen-mini, two tiny tasks, a few steps) through the
CLI: R's shape, an evaluation after each task, blank controls, routing, reports, and resume."""

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from medqwen.cli import main
from medqwen.continual import metrics
from medqwen.data.synthetic import make_synthetic_vqa

SEQUENCE = """
name: tiny
model: tiny-mini
seed: 0
eval_batch_size: 8
max_new_tokens: 4
method:
  name: tiny_sslora
  trainable: [adapter]
  adapter: {{kind: sslora, r: 8, num_experts: 4, top_k: 2, init: spectral, scaling: optimal, aux_loss_coef: 0.01, target_modules: llama}}
variables: {{steps: 3}}
tasks:
  - name: colours
    train: [{{format: image_folder, path: "{colours}", split: train}}]
    eval: [{{format: image_folder, path: "{colours}", split: test, options: {{question: "What colour is it: {{options}}?"}}}}]
    metric: closed_rank
    steps: "${{steps}}"
    lr: 1.0e-3
    batch_size: 2
    checkpoint_every: 2
  - name: synthetic
    train: [{{format: synthetic, path: "{syn}", split: train, limit: 8}}]
    eval: [{{format: synthetic, path: "{syn}", split: test, limit: 4}}]
    metric: vqa
    score: closed_acc
    answer_type: closed
    steps: 2
    batch_size: 2
"""


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    root = tmp_path_factory.mktemp("continual")
    colours = root / "colours"
    for split, n in (("train", 3), ("test", 2)):
        for cls, rgb in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
            (colours / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (16, 16), rgb).save(colours / split / cls / f"{i}.png")
    make_synthetic_vqa(root / "syn", n_images=4)
    path = root / "sequence.yaml"
    path.write_text(SEQUENCE.format(colours=colours, syn=root / "syn"))
    return path


def _rows(out: Path) -> list[dict]:
    return [json.loads((out / "eval" / f"row_{i:02d}.json").read_text()) for i in range(3)]


def test_tiny_sequence_end_to_end_and_resume(sequence, tmp_path, capsys):
    out = tmp_path / "run"
    main(["continual", str(sequence), "--output-dir", str(out)])
    assert "results: " in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())

    # R: T + 1 rows (start, after each task) x T tasks, every score a rate
    R = results["R"]
    assert len(R) == 3 and all(len(row) == 2 for row in R)
    assert all(0.0 <= v <= 1.0 for row in R for v in row)
    assert results["R_rows"] == ["start", "after colours", "after synthetic"]
    assert [t["scorer"] for t in results["tasks"]] == ["closed_rank", "vqa:closed_acc"]
    assert [t["n_eval"] for t in results["tasks"]] == [4, 4]

    # an evaluation of every task after each task, written before the next task's training ended
    rows = _rows(out)
    assert [r["after"] for r in rows] == [None, "colours", "synthetic"]
    assert all(set(r["scores"]) == {"colours", "synthetic"} for r in rows)
    assert set(rows[0]["blank"]) == {"colours", "synthetic"} and set(rows[1]["blank"]) == {"colours"}
    assert set(rows[2]["blank"]) == {"synthetic"}
    assert rows[1]["train"]["steps"] == 3 and rows[2]["train"]["steps"] == 2
    assert rows[1]["train"]["trainable_params"] > 0 and rows[1]["train"]["s_per_step"] > 0
    done_task2 = out / "train" / "task2_synthetic" / "final" / "stage_done.json"
    assert (out / "eval" / "row_01.json").stat().st_mtime_ns <= done_task2.stat().st_mtime_ns
    assert not (out / "train" / "task1_colours" / "checkpoints").exists()  # removed once the row was on disk
    assert json.loads((out / "train" / "task1_colours" / "final" / "stage_done.json").read_text())["steps"] == 3

    # metrics are the pure functions of R; blank controls and figures are reported
    expected = metrics.summarize(R, ["colours", "synthetic"])
    for key in ("forgetting", "final_avg", "bwt", "fwt", "learning_acc"):
        assert results["metrics"][key] == expected[key], key
    for name in ("colours", "synthetic"):
        got = results["metrics"]["per_task"][name]
        assert {k: got[k] for k in expected["per_task"][name]} == expected["per_task"][name]
    assert results["metrics"]["bwt"] == pytest.approx(R[2][0] - R[1][0])
    colours = rows[2]["scores"]["colours"]  # the answer breakdown agrees with the accuracy it explains
    assert sum(colours["pred_share"].values()) == pytest.approx(1.0)
    assert set(colours["acc_by_answer"]) == {"red", "blue"}  # 2 test images each: accuracy = mean recall
    assert sum(colours["acc_by_answer"].values()) / 2 == pytest.approx(colours["score"])
    assert 0.0 <= colours["rank_auc"] <= 1.0 and 0.0 <= colours["batch_calibrated"] <= 1.0
    assert "R_batch_calibrated" not in results  # the synthetic task is generated, not ranked: no calibrated R
    assert results["R_rank_auc"][2][0] == colours["rank_auc"] and results["R_pred_share"][2][0] == colours["pred_share"]
    assert results["R_rank_auc"][2][1] is None  # a generated task has no ranking
    assert results["blank_own"]["colours"] == rows[1]["blank"]["colours"]["score"]
    assert results["trainable_params"] == rows[1]["train"]["trainable_params"]
    for name in ("results.md", "R_heatmap.png", "R_lines.png", "routing.png"):
        assert (out / name).stat().st_size > 0, name
    assert "| after colours |" in (out / "results.md").read_text()
    routing = json.loads((out / "eval" / "row_02_routing.json").read_text())
    layer_shares = next(iter(routing["colours"].values()))
    assert len(layer_shares) == 4 and sum(layer_shares) == pytest.approx(1.0)
    assert set(results["routing"]["after synthetic"]["js_between_tasks"]) == {"colours|synthetic"}

    # resume: delete the last task's result; the re-run reloads task 2's final weights (no retraining)
    # and reproduces the row exactly
    steps_logged = (out / "train" / "task2_synthetic" / "metrics.jsonl").read_text()
    for name in ("eval/row_02.json", "eval/row_02_routing.json", "results.json"):
        os.remove(out / name)
    main(["continual", str(sequence), "--output-dir", str(out)])
    again = json.loads((out / "results.json").read_text())
    assert again["R"] == R
    # the continuous log-likelihood shows the same weights were reloaded, not just the same accuracy
    assert _rows(out)[2]["scores"]["colours"]["gold_logprob"] == rows[2]["scores"]["colours"]["gold_logprob"]
    assert rows[2]["scores"]["colours"]["gold_logprob"] != rows[0]["scores"]["colours"]["gold_logprob"]  # training moved it
    assert _rows(out)[2]["scores"] == {k: {**v, "seconds": _rows(out)[2]["scores"][k]["seconds"]} for k, v in rows[2]["scores"].items()}
    assert (out / "train" / "task2_synthetic" / "metrics.jsonl").read_text() == steps_logged

    # a finished run is not recomputed; another configuration in the same folder is refused
    main(["continual", str(sequence), "--output-dir", str(out)])
    with pytest.raises(SystemExit):
        main(["continual", str(sequence), "--output-dir", str(out), "--var", "steps=4"])
    assert "holds a run of another configuration" in capsys.readouterr().err
    _check_answers(out, sequence, rows, R)
    _check_update_analysis(out)


def _check_answers(out: Path, sequence: Path, rows: list[dict], R: list[list[float]]) -> None:
    """benchmarks/continual/answers.py rebuilds the model after task 1 and reproduces its recorded scores."""
    import importlib.util

    from medqwen.continual import load_sequence

    spec = importlib.util.spec_from_file_location("answers", Path(__file__).resolve().parents[3] / "benchmarks" / "continual" / "answers.py")
    answers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(answers)
    scored = answers.score_row(load_sequence(sequence), out, 1, None)
    assert scored["after"] == "colours" and scored["sequence"] == ["colours", "synthetic"]
    assert list(scored["tasks"]) == ["colours"]  # the untrained task is not scored
    colours = scored["tasks"]["colours"]
    assert colours["image"]["score"] == R[1][0]
    assert colours["image"]["gold_logprob"] == pytest.approx(rows[1]["scores"]["colours"]["gold_logprob"], abs=1e-6)
    assert colours["blank"]["score"] == rows[1]["blank"]["colours"]["score"]
    # the runner's batch-calibrated score is the calibration of the same likelihoods answers.py keeps
    assert colours["batch"]["score"] == pytest.approx(rows[1]["scores"]["colours"]["batch_calibrated"])
    for kind in ("contextual", "batch"):
        calibrated = colours[kind]
        assert calibrated["n"] == 4 and sum(calibrated["pred_share"].values()) == pytest.approx(1.0)
        assert sum(calibrated["acc_by_answer"].values()) / 2 == pytest.approx(calibrated["score"])  # 2 images per colour
    records = colours["records"]
    assert len(records["answer"]) == len(records["image"]) == len(records["blank"]) == 4
    assert set(records["image"][0]) == {"red", "blue"}


def _check_update_analysis(out: Path) -> None:
    """benchmarks/continual/updates.py on the finished run, against a direct computation."""
    import importlib.util

    from safetensors.torch import load_file, save_file

    spec = importlib.util.spec_from_file_location("updates", Path(__file__).resolve().parents[3] / "benchmarks" / "continual" / "updates.py")
    updates = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(updates)
    result = updates.analyse(out)
    assert result["tasks"] == ["colours", "synthetic"] and result["num_experts"] == 4
    assert all(sum(share) == pytest.approx(1.0) for share in result["energy_share"])

    # task 2's update, summed directly over layers and experts: || s (B2 A2 - B1 A1) ||_F
    folders = [out / "train" / name / "final" / "adapter" for name in ("task1_colours", "task2_synthetic")]
    config = json.loads((folders[0] / "adapter_config.json").read_text())
    first, second = (load_file(str(f / "adapter_model.safetensors")) for f in folders)
    total = 0.0
    for layer, info in config["layers"].items():
        a1, b1, a2, b2 = (t[f"{layer}.experts.lora_{x}"].double() for t in (first, second) for x in "AB")
        for j in range(4):
            cols = slice(2 * j, 2 * j + 2)
            total += float(((b2[:, cols] @ a2[cols] - b1[:, cols] @ a1[cols]) * info["scaling"]).pow(2).sum())
    assert result["update_norm"][1] == pytest.approx(total ** 0.5, rel=1e-9)
    assert result["undone"]["synthetic on colours"] == pytest.approx(result["undone_first_task_by_all_later"])

    # another start model than the run's is detected through the frozen residual
    weights = folders[0] / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    name = next(k for k in tensors if k.endswith("res_A"))
    tensors[name] = tensors[name] * 1.5
    save_file(tensors, str(weights))
    with pytest.raises(RuntimeError, match="not the same start"):
        updates.analyse(out)


def test_cli_help_and_bad_config(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["continual", "--help"])
    assert exit_info.value.code == 0
    assert "usage: medqwen continual" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: s\ntasks: []\n")
    with pytest.raises(SystemExit):
        main(["continual", str(bad)])
    assert f"{bad}: field 'tasks' is empty or missing" in capsys.readouterr().err


def test_start_from_a_saved_model_folder(tmp_path):
    import dataclasses

    from medqwen.continual.config import MethodConfig, SequenceConfig
    from medqwen.continual.runner import build_model
    from medqwen.models import tiny_mini

    saved = tiny_mini(seed=3)
    saved.save_pretrained(tmp_path / "final" / "model")
    config = SequenceConfig(name="s", tasks=[], method=MethodConfig(name="m", trainable=["projector"]), start_from=str(tmp_path / "final"))
    model = build_model(config)
    assert all((a == b).all() for a, b in zip(model.trainable_groups()["projector"], saved.trainable_groups()["projector"]))
    from medqwen.continual.runner import run_info
    from medqwen.models import weights_sha256

    sha = run_info(config)["model_sha256"]  # which build of the starting model the run used
    assert sha == weights_sha256(tmp_path / "final" / "model") and len(sha) == 64
    tiny_mini(seed=4).save_pretrained(tmp_path / "other")
    assert weights_sha256(tmp_path / "other") != sha
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        weights_sha256(tmp_path)
    (tmp_path / "final" / "adapter").mkdir()
    with pytest.raises(ValueError, match="holds an adapter"):
        build_model(config)
    with pytest.raises(FileNotFoundError, match="not a saved model folder"):
        build_model(dataclasses.replace(config, start_from=str(tmp_path)))
