"""End-to-end CPU runs through the CLI: tiny random Qwen2.5-VL, and MedQwen-mini on a few VQA-RAD samples."""

import json
from pathlib import Path

import pytest

from medqwen.cli import main
from medqwen.eval import caption_scores, pope_scores, predict, vqa_scores
from medqwen.predict import load_trained
from medqwen.training import DataSpec, load_data

REPO = Path(__file__).resolve().parents[2]
VQA_RAD = REPO.parent / "shared" / "data" / "vqa_rad"


def _experiment(tmp_path, model, target, data, eval_data, steps=3, lr=1.0e-3):
    path = tmp_path / "experiment.yaml"
    path.write_text(
        f"""
model: {model}
seed: 0
output_dir: {tmp_path / 'run'}
eval_batch_size: 4
max_new_tokens: 4
stages:
  - name: stage1_alignment
    trainable: [projector]
    data: [{data}]
    lr: {lr}
    max_steps: {steps}
    batch_size: 2
  - name: stage3_sslora
    trainable: [adapter]
    adapter: {{kind: sslora, r: 8, num_experts: 4, top_k: 2, target_modules: {target}}}
    data: [{data}]
    lr: {lr}
    max_steps: {steps}
    batch_size: 2
eval: [{eval_data}]
"""
    )
    return path


def _predictions(tmp_path, name):
    return [json.loads(line) for line in (tmp_path / "run" / "eval" / f"{name}_predictions.jsonl").open()]


def _check_run(tmp_path, capsys, eval_spec: DataSpec):
    final = tmp_path / "run" / "final"
    assert (final / "adapter" / "adapter_model.safetensors").is_file()
    assert (final / "model" / "medqwen_vlm.json").is_file()
    card = (final / "adapter" / "README.md").read_text()  # the adapter describes itself
    assert "library_name: sslora" in card and "steps:" in card and "datasets:" in card and "closed_acc" in card
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    name, scores = next(iter(results["eval"].items()))
    records = _predictions(tmp_path, name)
    expected = {k: (None if v != v else v) for k, v in vqa_scores(records).items()}  # NaN is saved as null
    assert {k: scores[k] for k in expected} == expected and scores["n"] == len(records) > 0
    assert "blank_image/closed_acc" in scores
    md = (tmp_path / "run" / "eval" / f"{name}.md").read_text()
    assert "closed_acc" in md
    # reload from disk and answer the same questions again: identical predictions
    samples = load_data([eval_spec], 0)
    assert [s.question for s in samples] == [r["question"] for r in records]
    reloaded = predict(load_trained(final), samples, batch_size=4, max_new_tokens=4)
    assert reloaded == [r["pred"] for r in records]
    main(["eval", "--model-dir", str(final), "--data", "synthetic", "--path", str(tmp_path / "syn"), "--split", "test", "--output", str(tmp_path / "re")])
    assert json.loads((tmp_path / "re" / "synthetic_test.json").read_text())["n"] > 0
    return final, scores


def test_tiny_qwen2_5_vl_train_save_reload_evaluate(tmp_path, capsys):
    data = f"{{format: synthetic, path: '{tmp_path / 'syn'}', split: train, options: {{n_images: 6}}}}"
    eval_data = (f"{{format: synthetic, path: '{tmp_path / 'syn'}', split: test, options: {{n_images: 6}}}}, "
                 f"{{format: synthetic, path: '{tmp_path / 'syn'}', split: train, options: {{n_images: 6}}, task: pope}}, "
                 f"{{format: synthetic, path: '{tmp_path / 'syn'}', split: test, options: {{n_images: 6}}, limit: 2, task: caption}}")
    # a large learning rate: the toy model's answers must depend on the trained weights, so that a
    # reload that lost them would answer differently
    main(["train", str(_experiment(tmp_path, "tiny-qwen2.5-vl", "qwen2_5_vl", data, eval_data, lr=0.01))])
    spec = DataSpec(format="synthetic", path=str(tmp_path / "syn"), split="test", options={"n_images": 6})
    final, scores = _check_run(tmp_path, capsys, spec)
    results = json.loads((tmp_path / "run" / "results.json").read_text())["eval"]
    pope = _predictions(tmp_path, "synthetic_train_pope")
    assert results["synthetic_train_pope"] == {**pope_scores([r["pred"] for r in pope], [r["answer"] for r in pope]),
                                               "seconds": results["synthetic_train_pope"]["seconds"]}
    assert len(pope) > 0 and sorted({r["answer"] for r in pope}) == ["no", "yes"]
    captions = _predictions(tmp_path, "synthetic_test_caption")
    expected = caption_scores([r["pred"] for r in captions], [[r["answer"]] for r in captions])
    assert {k: results["synthetic_test_caption"][k] for k in expected} == pytest.approx(expected)
    assert results["synthetic_test_caption"]["n"] == len(captions) == 2
    image = next((tmp_path / "syn" / "images").glob("*.png"))
    main(["predict", "--model-dir", str(final), "--image", str(image), "--question", "Is there a lesion?"])
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert answer["question"] == "Is there a lesion?" and isinstance(answer["answer"], str)


@pytest.mark.skipif(not VQA_RAD.is_dir(), reason="../shared/data/vqa_rad not present")
def test_medqwen_mini_on_a_handful_of_vqa_rad(tmp_path, capsys):
    data = f"{{format: vqa_rad, path: '{VQA_RAD}', split: train, limit: 8}}"
    eval_data = f"{{format: vqa_rad, path: '{VQA_RAD}', split: test, limit: 6}}"
    (tmp_path / "syn").mkdir()
    from medqwen.data.synthetic import make_synthetic_vqa

    make_synthetic_vqa(tmp_path / "syn", n_images=4)
    main(["train", str(_experiment(tmp_path, "medqwen-mini", "llama", data, eval_data, steps=2))])
    _check_run(tmp_path, capsys, DataSpec(format="vqa_rad", path=str(VQA_RAD), split="test", limit=6))


def test_cli_help_for_every_command(capsys):
    for command in ("train", "eval", "predict", "demo"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: medqwen " + command in capsys.readouterr().out


def test_cli_bad_input_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"image": "x.png"}\n')
    with pytest.raises(SystemExit):
        main(["predict", "--model-dir", str(tmp_path), "--file", str(bad)])
    assert f"{bad}: line 1: field 'question' is missing or empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", "--model-dir", str(tmp_path), "--image", "x.png", "--question", "Is it?"])
    assert "expected a trained model folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", "--model-dir", str(tmp_path), "--image", "x.png"])
    assert "give either --image and --question, or --file" in capsys.readouterr().err
