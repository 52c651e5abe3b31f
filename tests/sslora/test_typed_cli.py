"""sslora.typed_cli: typed functions as jsonargparse sub-commands with the flags users know (kebab-case,
`--flag` / `--no-flag`, `--var a b`), values converted by their type hints, full help text."""

from pathlib import Path
from typing import Optional

import pytest

from sslora.typed_cli import build_parser, run


def fit(data_dir: Path, limit: int | None = None, rate: Optional[float] = None, tags: list[str] | None = None,
        blank_control: bool = False, name: str = "run") -> dict:
    """Fit a model on a folder.

    A second paragraph that the sub-command's description keeps.

    Args:
        data_dir: the folder holding the data, a description that goes on
            over a second line and ends here.
        limit: use at most this many samples.
        rate: learning rate, 100% of the default when omitted.
        tags: labels of the run.
        blank_control: also score with the image blanked.
        name: the run's name.
    """
    return dict(data_dir=data_dir, limit=limit, rate=rate, tags=tags, blank_control=blank_control, name=name)


def convert(config: Path, seeds: list[int] | None = None) -> dict:
    """Convert a config file.

    Args:
        config: the file to convert (taken by position).
        seeds: seeds to try.
    """
    return dict(config=config, seeds=seeds)


COMMANDS = {"fit": fit, "convert": convert}


def _run(argv):
    return run(build_parser("tool", "a test tool", COMMANDS, positional={"convert": ["config"]}), COMMANDS, argv)


def test_values_are_converted_by_their_type_hints():
    got = _run(["fit", "--data-dir", "d", "--limit", "4", "--rate", "0.5", "--tags", "a", "b", "--blank-control"])
    assert got == dict(data_dir=Path("d"), limit=4, rate=0.5, tags=["a", "b"], blank_control=True, name="run")
    assert type(got["limit"]) is int and isinstance(got["data_dir"], Path)


def test_defaults_null_and_no_flag():
    assert _run(["fit", "--data-dir", "d"]) == dict(data_dir=Path("d"), limit=None, rate=None, tags=None,
                                                   blank_control=False, name="run")
    got = _run(["fit", "--data-dir", "d", "--limit", "4", "--limit", "null", "--blank-control", "--no-blank-control"])
    assert got["limit"] is None and got["blank_control"] is False


def test_positional_parameter_and_list_of_int():
    assert _run(["convert", "c.yaml", "--seeds", "1", "2"]) == dict(config=Path("c.yaml"), seeds=[1, 2])
    assert _run(["convert", "--seeds", "3", "--", "c.yaml"]) == dict(config=Path("c.yaml"), seeds=[3])


@pytest.mark.parametrize("argv, flag, value", [
    (["fit", "--data-dir", "d", "--limit", "four"], "limit", "four"),
    (["fit", "--data-dir", "d", "--rate", "fast"], "rate", "fast"),
    (["convert", "c.yaml", "--seeds", "1", "two"], "seeds", "two"),
])
def test_a_wrong_type_is_refused_naming_the_flag_and_the_value(argv, flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _run(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f'"{flag}"' in err and value in err and "usage: tool " + argv[0] in err


def test_unambiguous_abbreviations_still_work():
    """argparse's allow_abbrev, which the commands always had (jsonargparse 5 would drop it by default)."""
    assert _run(["fit", "--data-dir", "d", "--lim", "3", "--blank"]) == dict(
        data_dir=Path("d"), limit=3, rate=None, tags=None, blank_control=True, name="run")


def test_flags_are_kebab_case_only(capsys):
    with pytest.raises(SystemExit):
        _run(["fit", "--data_dir", "d"])
    assert "--data_dir" in capsys.readouterr().err


def test_help_has_the_whole_docstring_entry_of_every_parameter(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _run(["fit", "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith("usage: tool fit ")
    assert "A second paragraph that the sub-command's description keeps." in out
    assert "the folder holding the data, a description that goes on over a second line and ends here." in out
    assert "learning rate, 100% of the default when omitted." in out
    for flag in ("--data-dir", "--limit", "--rate", "--tags", "--blank-control, --no-blank-control", "--name"):
        assert flag in out


def test_config_file_gives_arguments_and_flags_after_it_win(tmp_path):
    path = tmp_path / "fit.yaml"
    path.write_text("data_dir: from_file\nlimit: 3\ntags: [x, y]\nblank_control: true\n")
    got = _run(["fit", "--config", str(path), "--limit", "5"])
    assert got == dict(data_dir=Path("from_file"), limit=5, rate=None, tags=["x", "y"], blank_control=True, name="run")


def test_config_file_values_are_type_checked(tmp_path, capsys):
    path = tmp_path / "fit.yaml"
    path.write_text("data_dir: d\nlimit: many\n")
    with pytest.raises(SystemExit):
        _run(["fit", "--config", str(path)])
    assert '"limit"' in capsys.readouterr().err


def test_a_command_with_its_own_config_parameter_keeps_it(capsys):
    assert _run(["convert", "c.yaml"])["config"] == Path("c.yaml")
    with pytest.raises(SystemExit):
        _run(["convert", "--help"])
    assert "--config" not in capsys.readouterr().out  # no config-file option to clash with the parameter
    with pytest.raises(SystemExit):
        _run(["convert", "c.yaml", "--config", "other.yaml"])


def test_environment_variables_when_enabled(monkeypatch):
    monkeypatch.setenv("JSONARGPARSE_DEFAULT_ENV", "true")
    monkeypatch.setenv("TOOL_FIT__LIMIT", "7")
    assert _run(["fit", "--data-dir", "d"])["limit"] == 7
    monkeypatch.delenv("JSONARGPARSE_DEFAULT_ENV")
    assert _run(["fit", "--data-dir", "d"])["limit"] is None


def test_an_untyped_parameter_is_a_programming_error():
    def untyped(x):
        """Args:
            x: anything."""

    with pytest.raises(TypeError, match="'x' has no type hint"):
        build_parser("tool", "", {"untyped": untyped})
