import json

import numpy as np
import pytest

from medqwen.eval.report import flatten, format_value, is_rate, markdown_table, write_results


@pytest.mark.parametrize("name, value, expected", [
    ("closed_acc", 0.8512, "85.12%"),
    ("closed_acc/by_qtype/pres", 0.5, "50.00%"),
    ("vqa/open_recall", 1.0, "100.00%"),
    ("pope/f1", np.float64(0.25), "25.00%"),
    ("yes_ratio", 0.5, "50.00%"),
    ("n_closed", 12, "12"),
    ("n/by_qtype/pres", 3, "3"),
    ("unparsed", np.int64(2), "2"),
    ("bleu_4", 0.123456, "0.1235"),
    ("cider_d", 1.5, "1.5000"),
    ("open_recall", float("nan"), "n/a"),
    ("f1", None, "n/a"),
    ("run", "baseline", "baseline"),
])
def test_format_value(name, value, expected):
    assert format_value(name, value) == expected


def test_is_rate():
    assert is_rate("accuracy") and is_rate("exact_match/by_atype/open")
    assert not is_rate("bleu_1") and not is_rate("meteor") and not is_rate("n_open")


def test_flatten_nested():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a/b": 1, "a/c/d": 2, "e": 3}


def test_write_results_json_and_markdown(tmp_path):
    results = {"closed_acc": 0.75, "open_recall": float("nan"), "n_closed": 4,
               "caption": {"bleu_4": np.float64(0.25), "cider_d": 1.25}}
    jp, mp = write_results(results, tmp_path / "out", "vqa_rad")
    assert jp == tmp_path / "out" / "vqa_rad.json" and mp.name == "vqa_rad.md"
    data = json.loads(jp.read_text())
    assert data == {"closed_acc": 0.75, "open_recall": None, "n_closed": 4,
                    "caption": {"bleu_4": 0.25, "cider_d": 1.25}}
    md = mp.read_text()
    assert "| closed_acc | 75.00% |" in md
    assert "| open_recall | n/a |" in md
    assert "| n_closed | 4 |" in md
    assert "| caption/bleu_4 | 0.2500 |" in md
    assert md.startswith("# vqa_rad\n")
    # no temporary files left behind
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["vqa_rad.json", "vqa_rad.md"]


def test_write_results_overwrites(tmp_path):
    write_results({"accuracy": 0.1}, tmp_path, "r")
    jp, _ = write_results({"accuracy": 0.9}, tmp_path, "r")
    assert json.loads(jp.read_text()) == {"accuracy": 0.9}
    assert len(list(tmp_path.iterdir())) == 2


def test_write_results_failure_leaves_previous_file(tmp_path):
    jp, _ = write_results({"accuracy": 0.1}, tmp_path, "r")
    with pytest.raises(TypeError):
        write_results({"accuracy": object()}, tmp_path, "r")  # not JSON-serialisable
    assert json.loads(jp.read_text()) == {"accuracy": 0.1}


def test_markdown_table_compares_runs():
    rows = [{"run": "base", "vqa": {"closed_acc": 0.5}, "cider_d": 0.3},
            {"run": "sslora|r8", "vqa": {"closed_acc": 0.625}}]
    md = markdown_table(rows, ["run", "vqa/closed_acc", "cider_d"])
    lines = md.strip().split("\n")
    assert lines[0] == "| run | vqa/closed_acc | cider_d |"
    assert lines[1] == "|---|---|---|"
    assert lines[2] == "| base | 50.00% | 0.3000 |"
    assert lines[3] == "| sslora\\|r8 | 62.50% | n/a |"
    assert len(lines) == 4
