"""End-to-end CPU runs through the CLI: tiny random Qwen2.5-VL, and MedQwen-mini on a few VQA-RAD samples."""

import json
from pathlib import Path

import pytest

from medqwen.cli import main

REPO = Path(__file__).resolve().parents[2]
VQA_RAD = REPO.parent / "shared" / "data" / "vqa_rad"


def _experiment(tmp_path, model, target, data, eval_data, steps=3):
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
    lr: 1.0e-3
    max_steps: {steps}
    batch_size: 2
  - name: stage3_sslora
    trainable: [adapter]
    adapter: {{kind: sslora, r: 8, num_experts: 4, top_k: 2, target_modules: {target}}}
    data: [{data}]
    lr: 1.0e-3
    max_steps: {steps}
    batch_size: 2
eval: [{eval_data}]
"""
    )
    return path


def _check_run(tmp_path, capsys):
    final = tmp_path / "run" / "final"
    assert (final / "adapter" / "adapter_model.safetensors").is_file()
    assert (final / "model" / "medqwen_vlm.json").is_file()
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    name, scores = next(iter(results["eval"].items()))
    assert 0.0 <= scores["closed_acc"] <= 1.0 and scores["n"] > 0
    assert "blank_image/closed_acc" in scores
    md = (tmp_path / "run" / "eval" / f"{name}.md").read_text()
    assert "closed_acc" in md
    # reload from disk and evaluate again: identical predictions
    main(["eval", "--model-dir", str(final), "--data", "synthetic", "--path", str(tmp_path / "syn"), "--split", "test", "--output", str(tmp_path / "re")])
    return final, scores


def test_tiny_qwen2_5_vl_train_save_reload_evaluate(tmp_path, capsys):
    data = f"{{format: synthetic, path: '{tmp_path / 'syn'}', split: train, options: {{n_images: 6}}}}"
    eval_data = (f"{{format: synthetic, path: '{tmp_path / 'syn'}', split: test, options: {{n_images: 6}}}}, "
                 f"{{format: synthetic, path: '{tmp_path / 'syn'}', split: train, options: {{n_images: 6}}, task: pope}}, "
                 f"{{format: synthetic, path: '{tmp_path / 'syn'}', split: test, options: {{n_images: 6}}, limit: 2, task: caption}}")
    main(["train", str(_experiment(tmp_path, "tiny-qwen2.5-vl", "qwen2_5_vl", data, eval_data))])
    final, scores = _check_run(tmp_path, capsys)
    results = json.loads((tmp_path / "run" / "results.json").read_text())["eval"]
    assert 0 <= results["synthetic_train_pope"]["yes_ratio"] <= 1 and results["synthetic_train_pope"]["n"] > 0
    assert 0 <= results["synthetic_test_caption"]["rouge_l"] <= 1
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
    _check_run(tmp_path, capsys)


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
