"""`medqwen serve` without a browser: the Answerer (upload checks, answer, blank answer, routing of the
answer), the heatmap, the examples, `predict` on DICOM, and the Gradio page's handlers."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from medqwen.cli import main
from medqwen.data import open_image
from medqwen.models import tiny_mini
from medqwen.serve import Answerer, UserError, routing_heatmap
from medqwen.serve.inference import short_layer_name
from sslora import SSLoRAConfig, get_sslora_model


@pytest.fixture(scope="module")
def answerer():
    torch.manual_seed(0)
    model = get_sslora_model(tiny_mini(), SSLoRAConfig(r=8, num_experts=4, top_k=2, target_modules="llama"),
                             use_cache=False)
    return Answerer(model.eval(), max_new_tokens=4, max_pixels=100_000)


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    pytest.importorskip("pydicom")
    from medqwen.serve.app import prepare_examples

    return prepare_examples(tmp_path_factory.mktemp("examples"))


def test_examples_cover_the_modalities_and_a_dicom_copy(examples):
    labels = [e["label"] for e in examples]
    assert any(label.startswith("CT:") for label in labels) and any(label.startswith("MRI:") for label in labels)
    assert labels[-1].startswith("CT as DICOM")
    png, dicom = Image.open(examples[0]["file"]).convert("L"), open_image(examples[-1]["file"])
    assert dicom.info["dicom"]["rescale"] == [0.25, -1000.0] and dicom.info["dicom"]["window_source"] == "file"
    assert np.abs(np.asarray(dicom)[..., 0].astype(int) - np.asarray(png).astype(int)).max() <= 1


def test_answer_blank_answer_and_routing_of_the_answer(answerer, examples):
    image = answerer.load_image(examples[0]["file"])
    result = answerer.ask(image, "  Is there a lesion <image> in this image?  ")
    assert isinstance(result.answer, str) and isinstance(result.blank_answer, str)
    expected = answerer.model.generate([[image]], ["Is there a lesion in this image?"], 4)[0]
    assert result.answer == expected
    assert result.blank_answer == answerer.model.generate([[image]], ["Is there a lesion in this image?"], 4,
                                                          blank_images=True)[0]
    routing = result.routing
    layers = answerer.sslora.sslora_layers()
    assert routing.layers == list(layers) and routing.share.shape == (len(layers), 4)
    # every routed position picks exactly top_k = 2 experts; the positions are those predicting the answer
    assert np.allclose(routing.share.sum(axis=1), 2.0) and routing.tokens >= 1
    for layer in layers.values():  # reset afterwards, and recording back off
        assert not layer.expert_counts.any() and not getattr(layer, "record_stats", False)
    heatmap = routing_heatmap(routing)
    assert heatmap.mode == "RGB" and heatmap.width > 200 and heatmap.height > 150


def test_routing_counts_only_the_positions_that_predict_the_answer(answerer, examples):
    image = answerer.load_image(examples[0]["file"])
    short = answerer.answer_routing(image, "Is it?", "yes")
    longer = answerer.answer_routing(image, "Is it?", "yes it is on the left side")
    assert short.tokens < longer.tokens
    ids, _ = answerer.vlm.tokenize_sample("Is it?", "yes", [49])
    prompt_ids, _ = answerer.vlm.tokenize_sample("Is it?", None, [49])
    assert short.tokens == len(ids) - len(prompt_ids)  # answer tokens + end of turn


def test_user_errors(answerer, tmp_path):
    with pytest.raises(UserError, match="Please upload an image"):
        answerer.load_image(None)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(UserError, match=r"^notes.txt: not an image file") as info:
        answerer.load_image(str(text))
    assert str(tmp_path) not in str(info.value)  # the upload folder is not shown, only the name
    big = tmp_path / "big.png"
    Image.new("1", (400, 300)).save(big)
    with pytest.raises(UserError, match="400 x 300 = 120,000 pixels, more than the limit of 100,000 pixels"):
        answerer.load_image(str(big))
    with pytest.raises(UserError, match="Please type a question"):
        answerer.ask(Image.new("RGB", (64, 64)), "  <image> ")
    with pytest.raises(UserError, match="too long"):
        answerer.ask(Image.new("RGB", (64, 64)), "why " * 400)


def test_short_layer_names():
    assert short_layer_name("base_model.lm.model.layers.3.self_attn.q_proj") == "3 q_proj"
    assert short_layer_name("hf.model.visual.blocks.0.attn.qkv") == "vision 0 attn.qkv"
    assert short_layer_name("head") == "head"


def test_page_handlers_show_errors_not_tracebacks(answerer, examples, tmp_path):
    gr = pytest.importorskip("gradio")
    from medqwen.serve.app import build_app

    demo = build_app(answerer, examples)
    assert isinstance(demo, gr.Blocks)
    handlers = {fn.name: fn.fn for fn in demo.fns.values()}
    on_upload, on_ask = handlers["on_upload"], handlers["on_ask"]
    text = tmp_path / "notes.txt"
    text.write_text("x")
    preview, answer, blank, heatmap, status = on_upload(str(text))
    assert preview is None and "Error:" in status and "notes.txt: not an image file" in status
    assert (answer, blank, heatmap) == ("", "", None)  # a new file clears the last answer
    preview, *_, status = on_upload(examples[-1]["file"])
    assert preview.size == (224, 224) and "DICOM MONOCHROME2" in status and "rescale slope 0.25" in status
    *_, status = on_ask(examples[0]["file"], "")
    assert "Please type a question" in status
    preview, answer, blank, heatmap, status = on_ask(examples[0]["file"], examples[0]["question"])
    assert "Answered in" in status and "Traceback" not in status and heatmap is not None

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    original = answerer.ask
    answerer.ask = broken
    try:
        *_, status = on_ask(examples[0]["file"], "Is it?")
    finally:
        answerer.ask = original
    assert "Internal error while answering (RuntimeError)" in status and "Traceback" not in status


def test_predict_reads_dicom(tmp_path, capsys):
    """`medqwen predict` on a .dcm file, with a saved tiny model folder (model/ + adapter/)."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    vlm = tiny_mini()
    adapter = get_sslora_model(vlm, SSLoRAConfig(r=8, num_experts=4, top_k=2, target_modules="llama"), use_cache=False)
    vlm.save_pretrained(tmp_path / "final" / "model")
    adapter.save_pretrained(tmp_path / "final" / "adapter")
    path = get_testdata_file("CT_small.dcm", download=False)
    assert path is not None and pydicom
    main(["predict", "--model-dir", str(tmp_path / "final"), "--image", path, "--question", "Is there a lesion?"])
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert answer["image"] == path and isinstance(answer["answer"], str)
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"nope" * 50)
    with pytest.raises(SystemExit):
        main(["predict", "--model-dir", str(tmp_path / "final"), "--image", str(bad), "--question", "Is it?"])
    assert f"{bad}: not a readable DICOM file" in capsys.readouterr().err


def test_serve_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: medqwen serve" in out and "--port" in out and "127.0.0.1" in out
