"""The `medqwen` command line: every command's --help, and the flags that the README, the benchmark
scripts and the tests use, parsed to the values the commands receive (nothing is run)."""

import importlib.util
import inspect
from pathlib import Path

import docstring_parser
import pytest

from medqwen import cli

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("command", [None, *cli.COMMANDS])
def test_help_of_every_command(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping: each help text is found whole
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"] if command else ["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    if command is None:
        assert out.startswith("usage: medqwen ") and all(name in out for name in cli.COMMANDS)
        return
    assert out.startswith(f"usage: medqwen {command} ")
    text = " ".join(out.split())
    func = cli.COMMANDS[command]
    for doc in docstring_parser.parse(inspect.getdoc(func)).params:
        assert " ".join(doc.description.split()) in text, doc.arg_name
    for name in inspect.signature(func).parameters:
        assert (name.upper() if name == "config" else "--" + name.replace("_", "-")) in text


P = Path
COMPATIBLE = [  # (argv, the arguments the command receives; unnamed ones keep their defaults)
    (["train", "configs/experiments/demo_vqa_rad.yaml", "--data-root", "../shared/data", "--resume"],
     dict(config=P("configs/experiments/demo_vqa_rad.yaml"), data_root=P("../shared/data"), resume=True)),
    (["train", "--resume", "c.yaml", "--no-resume", "--output-dir", "o", "--overwrite"],
     dict(config=P("c.yaml"), output_dir=P("o"), resume=False, overwrite=True)),
    (["eval", "--model-dir", "runs/demo/final", "--data", "vqa_rad", "--path", "../shared/data/vqa_rad", "--split", "test",
      "--blank-control", "--limit", "4", "--output", "re", "--batch-size", "2"],
     dict(model_dir=P("runs/demo/final"), data="vqa_rad", path=P("../shared/data/vqa_rad"), split="test", blank_control=True,
          limit=4, output=P("re"), batch_size=2)),
    (["predict", "--model-dir", "runs/demo/final", "--image", "scan.png", "--question", "Is there a fracture?"],
     dict(model_dir=P("runs/demo/final"), image=P("scan.png"), question="Is there a fracture?")),
    (["predict", "--model-dir", "m", "--file", "q.jsonl", "--batch-size", "2", "--max-new-tokens", "2"],
     dict(model_dir=P("m"), file=P("q.jsonl"), batch_size=2, max_new_tokens=2)),
    (["serve", "--model-dir", "runs/tiny/final", "--port", "7862", "--host", "0.0.0.0", "--max-new-tokens", "8",
      "--max-pixels", "1000", "--examples-dir", "ex"],
     dict(model_dir=P("runs/tiny/final"), port=7862, host="0.0.0.0", max_new_tokens=8, max_pixels=1000, examples_dir=P("ex"))),
    (["demo"], dict()),
    (["demo", "--data-root", "../shared/data", "--output-dir", "runs/d", "--resume"],
     dict(data_root=P("../shared/data"), output_dir=P("runs/d"), resume=True)),
    (["continual", "seq.yaml", "--output-dir", "out", "--var", "steps=4"], dict(config=P("seq.yaml"), output_dir=P("out"), var=["steps=4"])),
]


def _received(argv: list[str]) -> dict:
    values = cli.parser().parse_args(argv)[argv[0]]
    return {name: values[name] for name in inspect.signature(cli.COMMANDS[argv[0]]).parameters}


def _defaults(command: str) -> dict:
    return {name: p.default for name, p in inspect.signature(cli.COMMANDS[command]).parameters.items()
            if p.default is not inspect.Parameter.empty}


@pytest.mark.parametrize("argv, expected", COMPATIBLE, ids=[" ".join(a[:2]) for a, _ in COMPATIBLE])
def test_flags_users_know(argv, expected):
    assert _received(argv) == {**_defaults(argv[0]), **expected}


def test_the_continual_grid_command_parses():
    """benchmarks/continual/grid.py runs `python -m medqwen.cli continual ...` with these flags."""
    spec = importlib.util.spec_from_file_location("continual_grid", REPO / "benchmarks" / "continual" / "grid.py")
    grid = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grid)
    args = grid.argparse.Namespace(sequence=Path("seq.yaml"), data_root=Path("D"), base_model_dir=Path("P"),
                                   var=["steps_brain=20", "eval_per_class=10"], smoke=True, max_steps=3, max_train=None,
                                   max_eval=None)
    command = grid.command(args, "sslora", 1, Path("O"))
    assert command[1:3] == ["-m", "medqwen.cli"]
    assert _received(command[3:]) == dict(
        config=P("seq.yaml"), method="sslora", seed=1, data_root=P("D"), output_dir=P("O"), start_from=P("P"),
        var=["steps_brain=20", "eval_per_class=10"], max_steps=3, max_train=grid.SMOKE["max_train"],
        max_eval=grid.SMOKE["max_eval"])


def test_int_or_none_is_an_int():
    """`limit: int | None` used to arrive as the string '4'."""
    limit = _received(["eval", "--model-dir", "m", "--data", "vqa_rad", "--path", "p", "--limit", "4"])["limit"]
    assert limit == 4 and type(limit) is int


def test_a_wrong_type_is_named_before_anything_loads(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--model-dir", str(tmp_path), "--data", "vqa_rad", "--path", "p", "--limit", "four"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert '"limit"' in err and "four" in err and "usage: medqwen eval" in err
    assert "expected a trained model folder" not in err  # refused by the parser, not by loading the model
