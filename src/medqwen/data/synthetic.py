"""A small synthetic radiology-style VQA set, generated offline and deterministically.

Used by the demo when no data root is given. Every image is a 224x224 grayscale
"scan" of one of three clearly different looking modalities, with or without a
large high-contrast "lesion" on the left or right half of the image. "Left" and
"right" always mean the viewer's left/right of the *image* (not the patient's
side, unlike the radiological convention). The answers depend only on what the
image shows, at a scale that coarse CNN features capture.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from .schema import Sample, SampleList

SIZE = 224
MODALITIES = ("ct", "x-ray", "mri")
_VERSION = 1  # bump when the rendering or the questions change
_MANIFEST = "manifest.json"
_CLOSED_MODALITY_Q = {"ct": "Is this a CT scan?", "x-ray": "Is this an X-ray?", "mri": "Is this an MRI?"}
_PRES_Q = ("Is there a lesion in this image?", "Is there an abnormality in this image?")
_MODALITY_Q = ("What imaging modality is this?", "What type of scan is this?")
_POS_Q = "Which side of the image is the abnormality on?"


def describe_synthetic() -> str:
    """One plain paragraph for the demo output saying what the synthetic data is."""
    return (
        "NOTE: no data root was given, so this demo uses a SYNTHETIC toy dataset generated "
        "on the fly, not real medical images. Each 224x224 grayscale picture is a cartoon "
        "'scan' of one of three made-up modalities (ct: a round body with a bright rim; "
        "x-ray: a bright thorax with two dark lung fields; mri: a textured gray oval), with "
        "or without one large bright or dark blob ('lesion') on the left or right half of the "
        "image. The questions ask whether a lesion is present (yes/no), about the modality "
        "(yes/no and open), and on which side of the image the lesion is (left/right, seen "
        "from the viewer). Results on this data say nothing about clinical performance."
    )


def _plan(n_images: int, seed: int, test_fraction: float) -> list[dict]:
    """Per-image attributes, balanced by construction, plus a stratified split."""
    rng = np.random.default_rng([seed, 7919])
    n = n_images
    mods = rng.permutation(np.arange(n) % 3)
    lesion = rng.permutation(np.arange(n) % 2 == 0)
    side = rng.permutation(np.arange(n) % 2)
    ask_true = rng.permutation(np.arange(n) % 2 == 1)
    wrong = rng.integers(1, 3, size=n)
    phr = rng.integers(0, 2, size=(n, 2))
    order = sorted(range(n), key=lambda i: (int(mods[i]), bool(lesion[i]), float(rng.random())))
    test = {i for j, i in enumerate(order)
            if np.floor((j + 1) * test_fraction) > np.floor(j * test_fraction)}
    if test_fraction > 0 and not test and n > 1:
        test = {order[0]}
    if len(test) == n:  # keep at least one training image
        test.discard(order[-1])
    return [dict(image_id=f"syn{i:04d}", modality=MODALITIES[int(mods[i])], lesion=bool(lesion[i]),
                 side=("left", "right")[int(side[i])], ask=MODALITIES[int(mods[i]) if ask_true[i]
                                                                   else (int(mods[i]) + int(wrong[i])) % 3],
                 phrasing=[int(p) for p in phr[i]], split="test" if i in test else "train")
            for i in range(n)]


def _ellipse(yy, xx, cy, cx, b, a, edge: float = 1.5) -> np.ndarray:
    """Soft (anti-aliased) mask of an axis-aligned ellipse, values in [0, 1]."""
    d = np.sqrt(((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2)
    return np.clip((1.0 - d) * min(a, b) / edge, 0.0, 1.0)


def _render(p: dict, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    c = SIZE / 2
    cy, cx = c + rng.uniform(-6, 6), c + rng.uniform(-6, 6)
    img = np.full((SIZE, SIZE), rng.uniform(5, 20), np.float32)

    def paint(mask, value):
        nonlocal img
        img = img * (1 - mask) + value * mask

    if p["modality"] == "ct":  # round axial slice: bright rim, gray body, bright spine
        a, b = rng.uniform(82, 95), rng.uniform(68, 80)
        paint(_ellipse(yy, xx, cy, cx, b, a), rng.uniform(215, 240))
        paint(_ellipse(yy, xx, cy, cx, b - 7, a - 7), rng.uniform(90, 115))
        paint(_ellipse(yy, xx, cy + b - 22, cx, 10, 10), 230)
        lx, ly, la = cx, cy - 5, a - 7
    elif p["modality"] == "x-ray":  # bright thorax, two dark lungs, bright mediastinum
        a, b = rng.uniform(95, 106), rng.uniform(100, 110)
        paint(_ellipse(yy, xx, cy + 10, cx, b, a, edge=6), rng.uniform(170, 195))
        for s in (-1, 1):
            paint(_ellipse(yy, xx, cy, cx + s * 45, 72, 34, edge=5), rng.uniform(35, 60))
        lx, ly, la = cx, cy, 45 / 0.55
    else:  # mri: taller textured gray oval with a darker core
        a, b = rng.uniform(66, 76), rng.uniform(88, 98)
        tex = np.asarray(Image.fromarray(rng.normal(0, 1, (14, 14)).astype(np.float32))
                         .resize((SIZE, SIZE), Image.BICUBIC))
        paint(_ellipse(yy, xx, cy, cx, b, a, edge=3), 125 + 22 * tex)
        paint(_ellipse(yy, xx, cy, cx, 22, 14, edge=3), 70)
        lx, ly, la = cx, cy, a
    if p["lesion"]:
        s = -1 if p["side"] == "left" else 1
        r = rng.uniform(15, 22)
        bx, by = lx + s * la * rng.uniform(0.5, 0.6), ly + rng.uniform(-25, 25)
        local = float(img[int(np.clip(by, 0, SIZE - 1)), int(np.clip(bx, 0, SIZE - 1))])
        bright = p["modality"] == "x-ray" or local < 100 or (local < 150 and rng.random() < 0.5)
        paint(_ellipse(yy, xx, by, bx, r, r * rng.uniform(0.8, 1.2), edge=3),
              rng.uniform(235, 255) if bright else rng.uniform(0, 15))
    img += rng.normal(0, 6, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _questions(p: dict) -> list[tuple[str, str, str, str]]:
    """(question_type, question, answer, answer_type) for one image."""
    qs = [("PRES", _PRES_Q[p["phrasing"][0]], "yes" if p["lesion"] else "no", "closed"),
          ("MODALITY", _CLOSED_MODALITY_Q[p["ask"]], "yes" if p["ask"] == p["modality"] else "no",
           "closed"),
          ("MODALITY", _MODALITY_Q[p["phrasing"][1]], p["modality"], "open")]
    if p["lesion"]:
        qs.append(("POS", _POS_Q, p["side"], "open"))
    return qs


def make_synthetic_vqa(root: str | Path, n_images: int = 120, seed: int = 0,
                       test_fraction: float = 0.25) -> dict[str, SampleList]:
    """Generate (or reuse) the synthetic VQA set under ``root`` and return its splits.

    Images are written as grayscale PNGs to ``root/images/`` together with a
    manifest; if the manifest matches the parameters and all files exist they
    are reused untouched, otherwise everything is regenerated. Returns
    ``{"train": SampleList, "test": SampleList}``, split by image (no image in
    both). About 3.5 questions per image; yes/no answers are ~50% each.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    img_dir = Path(root).resolve() / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    plan = _plan(n_images, seed, test_fraction)
    files = [f"{p['image_id']}.png" for p in plan]
    meta = {"version": _VERSION, "n_images": n_images, "seed": seed,
            "test_fraction": test_fraction, "files": files}
    man_path = img_dir / _MANIFEST
    try:
        old = json.loads(man_path.read_text())
    except (OSError, ValueError):
        old = None
    if old != meta or not all((img_dir / f).is_file() for f in files):
        man_path.unlink(missing_ok=True)  # an interrupted run must not look complete
        for f in set((old or {}).get("files", [])) - set(files):
            if isinstance(f, str) and "/" not in f and "\\" not in f:
                (img_dir / f).unlink(missing_ok=True)
        for i, (p, f) in enumerate(zip(plan, files)):
            Image.fromarray(_render(p, np.random.default_rng([seed, i, _VERSION])), "L").save(
                img_dir / f, optimize=False, compress_level=1)
        man_path.write_text(json.dumps(meta, indent=1))
    out = {"train": SampleList(), "test": SampleList()}
    for p, f in zip(plan, files):
        for k, (qtype, q, ans, atype) in enumerate(_questions(p)):
            out[p["split"]].append(Sample(
                images=[str(img_dir / f)], question=q, answer=ans, answer_type=atype,
                source="synthetic", split=p["split"],
                extra={"qid": f"{p['image_id']}_q{k}", "image_id": p["image_id"],
                       "question_type": qtype}))
    return out


def read_synthetic(root: str | Path, split: str = "train", **opts) -> SampleList:
    """Reader-registry entry: the `split` ("train"/"test") of make_synthetic_vqa(root, **opts)."""
    splits = make_synthetic_vqa(root, **opts)
    if split not in splits:
        raise ValueError(f"synthetic data has splits {sorted(splits)}, not {split!r}")
    return splits[split]
