"""VQADataset, collate, mix_datasets and the read_dataset registry."""
from __future__ import annotations

import sys
from collections import Counter

import pytest
from torch.utils.data import DataLoader

from medqwen.data import (
    READERS, Sample, SampleList, VQADataset, collate_samples, mix_datasets, read_dataset,
    register_reader,
)


def _samples(source: str, n: int) -> list[Sample]:
    return [Sample([], f"q{i}", f"a{i}", "open", source, "train", {"i": i}) for i in range(n)]


def test_vqa_dataset_and_loader():
    ds = VQADataset(_samples("a", 5))
    assert len(ds) == 5 and ds[2].question == "q2"
    batches = list(DataLoader(ds, batch_size=2, collate_fn=collate_samples))
    assert [len(b) for b in batches] == [2, 2, 1]
    assert all(isinstance(s, Sample) for b in batches for s in b)
    assert VQADataset.collate(batches[0]) == batches[0]


def test_mix_without_weights_is_a_seeded_shuffle():
    a, b = _samples("a", 10), _samples("b", 4)
    mixed = mix_datasets([a, b], seed=1)
    assert len(mixed) == 14 and Counter(s.source for s in mixed) == {"a": 10, "b": 4}
    assert mixed == mix_datasets([a, b], seed=1)
    assert mixed != mix_datasets([a, b], seed=2)
    assert mixed != a + b


def test_mix_with_weights():
    a, b = _samples("a", 10), _samples("b", 4)
    mixed = mix_datasets([a, b], weights=[1, 1], seed=0)
    assert Counter(s.source for s in mixed) == {"a": 7, "b": 7}
    # b is upsampled: every b sample appears once or twice, never three times.
    assert set(Counter(s.extra["i"] for s in mixed if s.source == "b").values()) <= {1, 2}
    # a is downsampled without repeats.
    assert max(Counter(s.extra["i"] for s in mixed if s.source == "a").values()) == 1
    small = mix_datasets([a, b], weights=[0.75, 0.25], total=8, seed=0)
    assert Counter(s.source for s in small) == {"a": 6, "b": 2}
    assert len(mix_datasets([a, b], weights=[0.5, 0.5], total=7)) == 7
    assert Counter(s.source for s in mix_datasets([a, b], weights=[1, 0])) == {"a": 14}


def test_mix_rejects_bad_weights():
    a = _samples("a", 3)
    with pytest.raises(ValueError, match="weights"):
        mix_datasets([a], weights=[1, 2])
    with pytest.raises(ValueError, match="weights"):
        mix_datasets([a], weights=[-1])
    with pytest.raises(ValueError, match="empty"):
        mix_datasets([a, []], weights=[1, 1])


# ---------------------------------------------------------------- registry
def test_registry_names():
    assert set(READERS) >= {"vqa_rad", "slake", "pathvqa", "omnimedvqa", "llava_med", "roco",
                            "iu_xray", "medmnist"}


def test_read_dataset_dispatches_real_data(data_dir):
    assert len(read_dataset("vqa_rad", data_dir("vqa_rad"), "test")) == 451
    assert len(read_dataset("VQA-RAD", data_dir("vqa_rad"), "test")) == 451
    slake = read_dataset("slake", data_dir("slake_annotations"), "val", check_images=False)
    assert len(slake) == 1053
    assert len(read_dataset("rocov2", data_dir("rocov2_sample"), "val")) == 100
    iu = read_dataset("iu_xray", data_dir("iu_xray_reports"), "all", skip_invalid=True)
    assert len(iu) == 3927
    npz = data_dir("pneumoniamnist") / "pneumoniamnist.npz"
    assert len(read_dataset("medmnist", npz, "val", mode="as_yes_no")) == 270


def test_read_dataset_fixture_formats(tmp_path, write_image, write_jsonl):
    write_image(tmp_path / "a.jpg")
    write_jsonl(tmp_path / "test.jsonl", [{"image": "a.jpg", "question": "q?", "answer": "no"}])
    assert read_dataset("pathvqa", tmp_path, "test")[0].answer_type == "closed"
    convo = [{"id": 1, "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>x"},
                                                          {"from": "gpt", "value": "y"}]}]
    f = write_jsonl(tmp_path / "llava.jsonl", convo)
    assert read_dataset("llava-med", f)[0].question == "x"


def test_read_dataset_errors_and_hf(monkeypatch):
    with pytest.raises(ValueError, match="unknown dataset 'mimic'"):
        read_dataset("mimic", "x")
    with pytest.raises(ValueError, match="needs a path"):
        read_dataset("vqa_rad")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match="datasets"):
        read_dataset("hf://org/x", split="test")
    with pytest.raises(ImportError, match="datasets"):
        read_dataset("hf", "org/x", "test")


def test_register_reader():
    def read_toy(path, split="train", **opts):
        return SampleList(_samples(str(path), 2))

    register_reader("toy-set", read_toy)
    try:
        assert len(read_dataset("toy_set", "p")) == 2
    finally:
        READERS.pop("toy_set")
