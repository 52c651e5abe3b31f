"""medqwen.continual.summary: the ablation table picks each cell's run of the given seed, by name."""

import pytest

from medqwen.continual.summary import ablation_builds, ablation_markdown, ablation_values, find_entry


def _entry(runs: dict[int, tuple[float, float, float]]) -> dict:
    return {"seeds": sorted(runs), "runs": {str(s): {"metrics": {"forgetting": f, "final_avg": a, "learning_acc": learned}}
                                            for s, (f, a, learned) in runs.items()}}


RESULTS = {
    "sslora": _entry({0: (0.5, 0.5, 0.5), 1: (0.136, 0.664, 0.75)}),  # a headline method: seed 1 is used
    "ablations": {"init_zero": _entry({1: (0.2, 0.6, 0.7)}), "references": {"sslora": "see the method"}},
}
LAYOUT = (("init", ("scaling rule", "fixed"), (("spectral", ("sslora", "spectral_fixed")), ("zero", ("init_zero", "moelora")))),)


def test_ablation_table_cells_are_the_seed_runs():
    table = ablation_markdown(RESULTS, LAYOUT, seed=1)
    assert "| init | scaling rule | fixed |" in table
    assert "| spectral | 13.6 / 66.4 / 75.0 (sslora) | pending (spectral_fixed) |" in table
    assert "| zero | 20.0 / 60.0 / 70.0 (init_zero) | pending (moelora) |" in table
    assert "50.0" not in table  # seed 0 of the reference is not the paired run


def test_find_entry_skips_the_references_note():
    assert find_entry(RESULTS, "references") is None and find_entry(RESULTS, "init_zero")["seeds"] == [1]


def test_layout_row_of_the_wrong_width_is_refused():
    with pytest.raises(ValueError, match="row 'spectral': 1 methods for 2 columns"):
        ablation_markdown(RESULTS, (("init", ("a", "b"), (("spectral", ("sslora",)),)),), seed=1)


def test_write_appends_the_ablation_table_only_when_ablations_ran(tmp_path):
    import copy

    from medqwen.continual.summary import write

    sslora, init_zero = copy.deepcopy(RESULTS["sslora"]), copy.deepcopy(RESULTS["ablations"]["init_zero"])
    results = {"sequence": {"name": "s", "tasks": [{"name": "a"}, {"name": "b"}]}, "scorers": {"a": "closed_rank", "b": "closed_rank"}}
    for entry in (sslora, init_zero):
        for run in entry["runs"].values():  # the fields the per-method and per-run tables read
            run.update({"R": [[0.5, 0.5], [0.8, 0.5], [0.7, 0.9]], "blank_own": {"a": 0.5, "b": 0.5}})
            run["metrics"]["bwt"] = -0.1
        entry.update({f"{k}_{s}": 0.1 for k in ("forgetting", "final_avg", "bwt") for s in ("mean", "std")})
        entry["per_task"] = {t: {f"{k}_mean": 0.5 for k in ("after_own_training", "blank_after_own_training", "final")} for t in "ab"}
    with_ablations = {**results, "sslora": sslora, "ablations": {"init_zero": init_zero}}
    write(with_ablations, tmp_path / "x.json", LAYOUT, 1)
    assert "| zero | 20.0 / 60.0 / 70.0 (init_zero) |" in (tmp_path / "x.md").read_text()
    assert (tmp_path / "x_ablations.png").stat().st_size > 0
    write({**results, "sslora": sslora}, tmp_path / "y.json", LAYOUT, 1)
    assert "Ablations" not in (tmp_path / "y.md").read_text() and (tmp_path / "y.png").stat().st_size > 0
    assert not (tmp_path / "y_ablations.png").exists()


def test_ablation_values_are_the_seed_runs_metrics_and_none_while_pending():
    (title, columns, rows), = ablation_values(RESULTS, LAYOUT, seed=1)
    assert (title, columns) == ("init", ("scaling rule", "fixed"))
    assert rows == [("spectral", [{"forgetting": 0.136, "final_avg": 0.664, "learning_acc": 0.75}, None]),
                    ("zero", [{"forgetting": 0.2, "final_avg": 0.6, "learning_acc": 0.7}, None])]


def test_two_column_sections_rank_the_first_column_and_difference_the_columns():
    results = {"sslora": _entry({1: (0.16, 0.639, 0.72)}), "moelora": _entry({1: (0.25, 0.583, 0.70)}),
               "ablations": {"init_zero": _entry({1: (0.2, 0.60, 0.7)}), "spectral_fixed": _entry({1: (0.2, 0.631, 0.7)})}}
    table = ablation_markdown(results, LAYOUT, seed=1)
    # ranked by final avg with the scaling rule: 63.9 (spectral) > 60.0 (zero)
    assert "- init, scaling rule, by final avg: spectral 63.9 > zero 60.0" in table
    # scaling rule minus fixed, in points: spectral 63.9 - 63.1 = +0.8, zero 60.0 - 58.3 = +1.7
    assert "- scaling rule minus fixed, final avg points: spectral +0.8, zero +1.7" in table
    partial = ablation_markdown(RESULTS, LAYOUT, seed=1)  # zero's fixed-scale run (moelora) not in: no difference
    assert "by final avg: spectral 66.4 > zero 60.0" in partial and "minus" not in partial


def test_ablation_builds_name_the_start_models_of_the_finished_cells():
    import copy

    results = copy.deepcopy(RESULTS)
    assert ablation_builds(results, LAYOUT, seed=1) == ["first"]  # no sha256 recorded
    results["sslora"]["runs"]["1"]["start_model_sha256"] = "429c3f7a" + "0" * 56
    results["sslora"]["runs"]["0"]["start_model_sha256"] = "ffffffff" + "0" * 56  # seed 0: not in the seed-1 table
    results["ablations"]["init_zero"]["runs"]["1"]["start_model_sha256"] = "429c3f7a" + "1" * 56
    assert ablation_builds(results, LAYOUT, seed=1) == ["429c3f7a"]
