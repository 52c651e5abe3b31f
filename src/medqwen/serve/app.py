"""The Gradio page of `medqwen serve`: upload, question, answer, blank-image answer, routing heatmap."""
from __future__ import annotations

import html
import logging
import os
from pathlib import Path
from typing import Any

from PIL import Image

from .inference import Answerer, UserError, routing_heatmap

log = logging.getLogger(__name__)

MAX_UPLOAD_MB = 256
PREVIEW_SIZE = 512
DEFAULT_EXAMPLES_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medqwen" / "serve_examples"
CSS = """
#status .mq-error {border: 2px solid #d32f2f; background: #fdecea; color: #8b1a1a; padding: 8px 12px; border-radius: 6px;}
#status .mq-info {border: 1px solid #90a4ae; background: #f1f5f8; padding: 8px 12px; border-radius: 6px;}
"""


# ---------------------------------------------------------------------- examples
def prepare_examples(directory: str | Path) -> list[dict[str, str]]:
    """Clickable examples from the bundled synthetic set (written under `directory` once, reused).

    Returns [{"file", "question", "label"}]: a CT with a lesion, an X-ray with a lesion (side), an MRI
    (modality), an X-ray without a lesion, and the first CT again as a 16-bit DICOM file (rescale
    slope/intercept and a window stored, which the reader undoes).
    """
    import numpy as np

    from medqwen.data.dicom import save_dicom
    from medqwen.data.synthetic import make_synthetic_vqa

    directory = Path(directory)
    splits = make_synthetic_vqa(directory / "synthetic", n_images=12, seed=0)
    by_image: dict[str, dict[str, Any]] = {}
    for sample in [*splits["test"], *splits["train"]]:
        entry = by_image.setdefault(sample.extra["image_id"], {"file": sample.images[0], "questions": {}})
        key = sample.extra["question_type"] + ("_open" if sample.answer_type == "open" else "")
        entry["questions"][key] = sample
        if key == "MODALITY_open":
            entry["modality"] = sample.answer
        if key == "PRES":
            entry["lesion"] = sample.answer == "yes"
    wanted = [("ct", True, "PRES"), ("x-ray", True, "POS_open"), ("mri", None, "MODALITY_open"), ("x-ray", False, "PRES")]
    examples: list[dict[str, str]] = []
    for modality, lesion, key in wanted:
        for entry in by_image.values():
            if entry.get("modality") == modality and (lesion is None or entry.get("lesion") == lesion) \
                    and key in entry["questions"] and all(e["file"] != entry["file"] for e in examples):
                examples.append({"file": entry["file"], "question": entry["questions"][key].question,
                                 "label": f"{modality.upper()}: {entry['questions'][key].question}"})
                break
    if examples:
        first = examples[0]
        dicom_path = directory / "dicom" / (Path(first["file"]).stem + ".dcm")
        if not dicom_path.is_file():
            pixels = np.asarray(Image.open(first["file"]).convert("L"), dtype=np.float64)
            stored = np.rint((pixels + 1000.0) * 4.0).astype(np.uint16)  # value = 0.25 * stored - 1000
            save_dicom(dicom_path, stored, rescale=(0.25, -1000.0), window=(127.5, 256.0), modality="CT")
        examples.append({"file": str(dicom_path), "question": first["question"],
                         "label": f"CT as DICOM: {first['question']}"})
    return examples


# ---------------------------------------------------------------------- messages
def _box(kind: str, text: str) -> str:
    return f'<div class="mq-{kind}">{text}</div>'


def error_html(message: str) -> str:
    return _box("error", "<b>Error:</b> " + html.escape(message))


def image_notes(image: Image.Image) -> list[str]:
    """What was done to show the file (DICOM windowing, frames, inversion)."""
    info = image.info.get("dicom")
    if not info:
        return [f"Image {image.width} x {image.height}."]
    parts = [f"DICOM {info['photometric']}, {info['size'][0]} x {info['size'][1]}"]
    if info.get("rescale") is not None:
        rescale = info["rescale"]
        parts.append("modality LUT applied" if isinstance(rescale, str) else
                     f"rescale slope {rescale[0]:g}, intercept {rescale[1]:g}")
    if info.get("window") is not None:
        center, width = info["window"]
        parts.append(f"window center {center:g} / width {width:g} ({info['window_source']})")
    if info.get("inverted"):
        parts.append("MONOCHROME1 inverted")
    return ["; ".join(parts) + "."] + [note[0].upper() + note[1:] + "." for note in info.get("notes", [])]


def _preview(image: Image.Image) -> Image.Image:
    preview = image.copy()
    preview.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
    return preview


# ---------------------------------------------------------------------- the page
def build_app(answerer: Answerer, examples: list[dict[str, str]] | None = None):
    """The gr.Blocks page for one loaded model."""
    import gradio as gr

    limit = answerer.max_pixels
    side = int(limit ** 0.5)

    def on_upload(path: str | None):
        """A new file clears the last answer and shows what the model will see (or the error)."""
        cleared = ("", "", None)
        if not path:
            return (None, *cleared, "")
        try:
            image = answerer.load_image(path)
        except UserError as err:
            return (None, *cleared, error_html(str(err)))
        except Exception as err:  # never a stack trace on the page
            log.exception("reading the upload failed")
            return (None, *cleared, error_html(f"Could not read the file ({type(err).__name__}); "
                                               "details are in the server log."))
        return (_preview(image), *cleared, _box("info", html.escape(" ".join(image_notes(image)))))

    def on_ask(path: str | None, question: str | None):
        empty = (None, "", "", None)
        try:
            image = answerer.load_image(path)
            result = answerer.ask(image, question or "")
            heatmap = routing_heatmap(result.routing) if result.routing is not None else None
        except UserError as err:
            return (*empty, error_html(str(err)))
        except Exception as err:  # never a stack trace on the page
            log.exception("answering failed")
            return (*empty, error_html(f"Internal error while answering ({type(err).__name__}); details are in the server log."))
        if result.answer == result.blank_answer:
            verdict = "Same answer with the image blanked: this answer does not depend on the image."
        else:
            verdict = "The image changed the answer (see the blank-image answer)."
        lines = [verdict, *image_notes(image), f"Answered in {result.seconds:.1f} s."]
        if not result.answer or not result.blank_answer:
            lines.insert(1, "An empty box means the model ended its answer at once (an empty answer).")
        if result.routing is None:
            lines.append("This model has no SSLoRA adapter, so there is no routing to show.")
        status = _box("info", "<br>".join(html.escape(line) for line in lines))
        return _preview(image), result.answer, result.blank_answer, heatmap, status

    with gr.Blocks(title="MedQwen: ask about an image", analytics_enabled=False) as demo:
        gr.Markdown(
            "## MedQwen: ask the model about an image\n"
            f"Model: `{answerer.name}` ({answerer.describe()}).  \n"
            f"Upload a PNG, JPEG or DICOM file (at most {limit:,} pixels, e.g. {side} x {side}, and "
            f"{MAX_UPLOAD_MB} MB), type a question and press **Ask**. Beside the answer is the answer the "
            "same model gives with the image blanked, and which experts each adapted layer chose for the "
            "answer. A research demo, not a medical device."
        )
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Image file (PNG, JPEG or DICOM)", elem_id="image-file", type="filepath")
                preview = gr.Image(label="What the model sees", type="pil", interactive=False, elem_id="preview",
                                   height=280)
                question = gr.Textbox(label="Question", elem_id="question", lines=2,
                                      placeholder="e.g. Is there a lesion in this image?")
                ask = gr.Button("Ask", variant="primary", elem_id="ask")
            with gr.Column(scale=1):
                status = gr.HTML(elem_id="status")
                answer = gr.Textbox(label="Answer", elem_id="answer", interactive=False)
                blank = gr.Textbox(label="Answer with the image blanked", elem_id="blank-answer", interactive=False)
                gr.Markdown("**Routing of the answer**: for each adapted layer, the share of the positions "
                            "that produced the answer for which the router chose each expert.")
                heatmap = gr.Image(label="Routing of the answer", show_label=False, type="pil",
                                   interactive=False, elem_id="routing")
        if examples:
            gr.Examples(
                examples=[[e["file"], e["question"]] for e in examples],
                inputs=[upload, question],
                example_labels=[e["label"] for e in examples],
                label="Examples (synthetic scans, not real patients): click one, then Ask",
                elem_id="examples",
            )
        outputs = [preview, answer, blank, heatmap, status]
        upload.change(on_upload, [upload], outputs)
        ask.click(on_ask, [upload, question], outputs)
        question.submit(on_ask, [upload, question], outputs)
    return demo


def launch(model_dir: str | Path, *, host: str = "127.0.0.1", port: int = 7860, max_new_tokens: int = 24,
           max_pixels: int | None = None, examples_dir: str | Path | None = None, block: bool = True):
    """Load the model, write the examples, and serve the page (blocks until interrupted)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from .inference import MAX_PIXELS

    answerer = Answerer.from_dir(model_dir, max_new_tokens=max_new_tokens, max_pixels=max_pixels or MAX_PIXELS)
    examples_dir = Path(examples_dir or DEFAULT_EXAMPLES_DIR).resolve()
    examples = prepare_examples(examples_dir)
    demo = build_app(answerer, examples)
    demo.queue(default_concurrency_limit=1)
    print(f"medqwen serve: {answerer.describe()}", flush=True)
    try:
        return demo.launch(
            server_name=host, server_port=port, share=False, inbrowser=False, show_error=False,
            allowed_paths=[str(examples_dir)], max_file_size=f"{MAX_UPLOAD_MB}mb", ssr_mode=False,
            prevent_thread_lock=not block, css=CSS,
        )
    except OSError as err:
        raise ValueError(f"cannot serve on {host}:{port} ({err}); is the port in use? choose another with --port") from err
