"""`medqwen predict` and `medqwen eval` behind the command line: load a trained model folder (checked)
and answer questions about images, from one --image/--question or a JSONL file.

A file is answered in batches of ``batch_size`` lines; each answer is printed as soon as its batch is
done, so a long file shows progress and a late failure loses nothing. A bad line (invalid JSON, an
empty field, an image that cannot be read, a question longer than the model's context) is reported
by its number and skipped; the others are answered, and the command then fails listing the bad ones.
Images go through :func:`medqwen.data.open_image`, the loader of training, evaluation and serve.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from medqwen.data.schema import ImageLoadError, open_image

MODEL_DIR_CONTENTS = ("model/medqwen_vlm.json (how to rebuild the base model), model/trainable.safetensors and, for "
                      "a model trained with an adapter, adapter/ (adapter_config.json + adapter_model.safetensors)")


def check_model_dir(model_dir: str | Path) -> bool:
    """A trained model folder is complete; returns whether it has an adapter to load.

    Refused (FileNotFoundError / ValueError): no folder, no ``model/medqwen_vlm.json``, an ``adapter``
    that is a file, or no ``adapter/`` although the saved run says the model was trained with one
    (answering without it would silently give the base model's answers)."""
    model_dir = Path(model_dir)
    expected = f"expected a trained model folder (the final/ of medqwen train) holding {MODEL_DIR_CONTENTS}"
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: no such folder; {expected}")
    if not (model_dir / "model" / "medqwen_vlm.json").is_file():
        raise FileNotFoundError(f"{model_dir}: {'model/medqwen_vlm.json is missing' if (model_dir / 'model').is_dir() else 'no model/ inside'}; {expected}")
    adapter = model_dir / "adapter"
    if adapter.exists() and not adapter.is_dir():
        raise ValueError(f"{adapter}: is a file, not a folder; {expected}")
    if not adapter.is_dir() and trained_with_adapter(model_dir):
        raise ValueError(f"{adapter}: missing, but the saved run says this model was trained with an adapter: without "
                         f"it the answers would be the base model's. Copy the whole final/ folder; {expected}")
    return adapter.is_dir()


def trained_with_adapter(model_dir: Path) -> bool:
    """What the saved run says: ``has_adapter`` in stage_done.json (written since it existed), else the
    stage's config, the run's stages or its results.json (folders saved before)."""
    def read(path: Path) -> dict[str, Any]:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    done = read(model_dir / "stage_done.json")
    if "has_adapter" in done:
        return bool(done["has_adapter"])
    stage = done.get("stage_config") or {}
    if stage.get("adapter") is not None or "adapter" in (stage.get("trainable") or []):
        return True
    run = model_dir.parent
    if any(trained_with_adapter(run / str(name) / "final") for name in done.get("stages") or [] if (run / str(name) / "final").is_dir()):
        return True
    return "adapter_parameters" in read(run / "results.json") and (run / "final") == model_dir


def load_trained(model_dir: str | Path):
    """A model saved by `medqwen train` (its `final/` folder): base + projector (+ SSLoRA adapter)."""
    from medqwen.models import load_model

    has_adapter = check_model_dir(model_dir)
    model = load_model(str(Path(model_dir) / "model"))
    if has_adapter:
        from sslora import SSLoRAModel

        model = SSLoRAModel.from_pretrained(model, Path(model_dir) / "adapter")
    return model.eval()


@dataclass
class Item:
    line: int  # 1-based line of the file (1 for --image/--question)
    image: str
    question: str
    row: dict[str, Any]


def read_items(path: Path) -> Iterator[Item | tuple[int, str]]:
    """The file's lines as Items, or (line number, what is wrong) for a bad line."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                yield number, f"not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1}); save the file as UTF-8"
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                yield number, f"invalid JSON: {err.msg}"
                continue
            if not isinstance(row, dict):
                yield number, f"expected a JSON object {{\"image\": ..., \"question\": ...}}, got {type(row).__name__}"
                continue
            missing = [k for k in ("image", "question") if not isinstance(row.get(k), str) or not row[k].strip()]
            if missing:
                yield number, f"field {missing[0]!r} is missing or empty (expected a non-empty string)"
                continue
            yield Item(number, row["image"], row["question"], row)


def check_question(model, question: str, image, max_new_tokens: int) -> None:
    """Refuse a question that does not fit the model's context with the image and the answer."""
    if not question.strip():
        raise ValueError("the question is empty")
    context = getattr(model, "context_length", None)
    if context is None:
        return
    used = int(model.build_inputs([[image]], [question])["attention_mask"].sum())
    if used + max_new_tokens > context:
        raise ValueError(f"the question is too long: {used} tokens with the image and chat template, plus up to "
                         f"{max_new_tokens} answer tokens, but the model reads at most {context} tokens; shorten it "
                         f"by at least {used + max_new_tokens - context} tokens")


def answer_items(model, items: list[Item], *, max_new_tokens: int, batch_size: int,
                 emit: Callable[[dict[str, Any]], None], report: Callable[[int, str], None]) -> list[str]:
    """Answer items batch by batch; each answer goes to ``emit`` as its batch finishes, each bad item
    to ``report(line, message)``. Returns the answers of the good items."""
    answers = []
    for start in range(0, len(items), batch_size):
        ready, images = [], []
        for item in items[start:start + batch_size]:
            try:
                image = open_image(item.image)
                check_question(model, item.question, image, max_new_tokens)
            except (ImageLoadError, ValueError) as err:
                report(item.line, str(err))
                continue
            ready.append(item)
            images.append([image])
        if not ready:
            continue
        for item, answer in zip(ready, model.generate(images, [i.question for i in ready], max_new_tokens)):
            emit({**item.row, "answer": answer})
            answers.append(answer)
    return answers


def predict(model_dir: Path, image: Path | None = None, question: str | None = None, file: Path | None = None,
            max_new_tokens: int = 24, batch_size: int = 8) -> list[str]:
    """See `medqwen predict --help`: prints one JSON line per answer; fails after listing bad lines."""
    if (image is None) != (question is None) or (file is None) == (image is None):
        raise ValueError("give either --image and --question, or --file")
    if question is not None and not question.strip():
        raise ValueError("--question is empty: ask something about the image")
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"--batch-size ({batch_size}) and --max-new-tokens ({max_new_tokens}) must be at least 1")
    where = str(file) if file is not None else "--image/--question"
    if file is None:
        entries: list[Item | tuple[int, str]] = [Item(1, str(image), str(question), {"image": str(image), "question": question})]
    else:
        entries = list(read_items(Path(file)))
    items = [e for e in entries if isinstance(e, Item)]
    bad = [e for e in entries if not isinstance(e, Item)]
    for line, message in bad:
        print(f"medqwen: {where}: line {line}: {message}", file=sys.stderr, flush=True)
    answers: list[str] = []
    if items:
        model = load_trained(model_dir)

        def report(line: int, message: str) -> None:
            bad.append((line, message))
            print(f"medqwen: {where}: line {line}: {message}", file=sys.stderr, flush=True)

        answers = answer_items(model, items, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               emit=lambda row: print(json.dumps(row), flush=True), report=report)
    if bad:
        if file is None:
            raise ValueError(bad[0][1])
        bad.sort()
        listed = "; ".join(f"line {line}: {message}" for line, message in bad[:10])
        raise ValueError(f"{where}: {len(bad)} of {len(entries)} lines could not be answered "
                         f"({len(answers)} answered above): {listed}" + (" ..." if len(bad) > 10 else ""))
    return answers
