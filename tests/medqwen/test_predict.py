"""`medqwen predict` / `eval`: model folders checked, one image loader, batches, bad lines by number."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medqwen import predict as predict_module
from medqwen.cli import main
from medqwen.data import Sample, load_image
from medqwen.models import tiny_mini
from medqwen.predict import check_model_dir, load_trained


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    final = tmp_path_factory.mktemp("run") / "final"
    tiny_mini(seed=0).save_pretrained(final / "model", groups=["projector"])
    (final / "stage_done.json").write_text(json.dumps({"stages": ["s"], "has_adapter": False}))
    return final


def _copy(model_dir, tmp_path, done):
    import shutil

    final = tmp_path / "run" / "final"
    shutil.copytree(model_dir / "model", final / "model")
    (final / "stage_done.json").write_text(json.dumps(done))
    return final


def test_a_model_folder_without_its_adapter_is_refused(model_dir, tmp_path):
    final = _copy(model_dir, tmp_path, {"stages": ["s"], "has_adapter": True})
    with pytest.raises(ValueError, match=r"adapter: missing, but the saved run says this model was trained with an adapter"):
        load_trained(final)
    (final / "adapter").write_text("not a folder")
    with pytest.raises(ValueError, match=r"adapter: is a file, not a folder; expected a trained model folder"):
        check_model_dir(final)


def test_folders_saved_before_has_adapter_are_judged_by_their_stages(model_dir, tmp_path):
    final = _copy(model_dir, tmp_path, {"stages": ["one", "two"]})
    (tmp_path / "run" / "two" / "final").mkdir(parents=True)
    stage = {"stage_config": {"name": "two", "trainable": ["adapter"], "adapter": None}}
    (tmp_path / "run" / "two" / "final" / "stage_done.json").write_text(json.dumps(stage))
    with pytest.raises(ValueError, match="trained with an adapter"):
        check_model_dir(final)
    assert check_model_dir(model_dir) is False


def test_a_model_folder_without_its_config_names_what_it_must_hold(model_dir, tmp_path):
    final = _copy(model_dir, tmp_path, {"has_adapter": False})
    (final / "model" / "medqwen_vlm.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"model/medqwen_vlm.json is missing; expected a trained model folder .* "
                                                r"holding model/medqwen_vlm.json \(how to rebuild the base model\)"):
        load_trained(final)


def test_an_empty_question_is_refused(model_dir, capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--model-dir", str(model_dir), "--image", "x.png", "--question", "  "])
    assert "--question is empty" in capsys.readouterr().err


def test_a_file_is_answered_in_batches_and_bad_lines_are_reported_by_number(model_dir, tmp_path, monkeypatch, capsys):
    Image.new("RGB", (32, 32), (90, 20, 20)).save(tmp_path / "a.png")
    Image.fromarray(np.arange(1024, dtype=np.uint16).reshape(32, 32) * 60).save(tmp_path / "ct16.png")
    lines = [
        {"image": str(tmp_path / "a.png"), "question": "Is there a lesion?"},
        "{not json",
        {"image": str(tmp_path / "ct16.png"), "question": "Which organ?", "id": 3},
        {"image": str(tmp_path / "missing.png"), "question": "Is it?"},
        {"image": str(tmp_path / "a.png"), "question": ""},
        {"image": str(tmp_path / "a.png"), "question": "word " * 3000},  # tiny-mini reads 2048 tokens
        {"image": str(tmp_path / "a.png"), "question": "Is it normal?"},
    ]
    file = tmp_path / "questions.jsonl"
    file.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    calls = []

    def load(directory):
        model = load_trained(directory)
        generate = model.generate

        def recording(images, prompts, max_new_tokens):
            calls.append((images, prompts))
            return generate(images, prompts, max_new_tokens)

        model.generate = recording
        return model

    monkeypatch.setattr(predict_module, "load_trained", load)
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--model-dir", str(model_dir), "--file", str(file), "--batch-size", "2", "--max-new-tokens", "2"])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    answered = [json.loads(line) for line in out.splitlines()]
    assert [a["question"] for a in answered] == ["Is there a lesion?", "Which organ?", "Is it normal?"]
    assert answered[1]["id"] == 3 and all(isinstance(a["answer"], str) for a in answered)
    assert [prompts for _, prompts in calls] == [["Is there a lesion?", "Which organ?"], ["Is it normal?"]]  # 2 per batch
    assert f"{file}: line 2: invalid JSON" in err
    assert f"{file}: line 4: " in err and "missing.png: no such file" in err
    assert f"{file}: line 5: field 'question' is missing or empty" in err
    assert f"{file}: line 6: the question is too long" in err and "the model reads at most 2048 tokens" in err
    assert "4 of 7 lines could not be answered (3 answered above): line 2:" in err
    # the 16-bit scan reaches the model as training reads it: rescaled, not clipped to white
    sixteen = calls[0][0][1][0]
    expected = load_image(Sample([str(tmp_path / "ct16.png")], "q", "a", "open", "t", "train"))
    assert np.array_equal(np.asarray(sixteen), np.asarray(expected)) and np.asarray(sixteen).min() < 255
