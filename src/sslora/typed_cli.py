"""Typed functions as the sub-commands of one command line, parsed by jsonargparse.

The `sslora` and `medqwen` commands are built with this module (public, so that `medqwen` needs no
private import from `sslora`). Each parameter of a command function becomes a `--kebab-case` flag (a
required parameter may instead be declared positional); its help text is its whole entry in the
docstring's `Args:` section. jsonargparse converts and checks each value against the type hint
(`int`, `int | None`, `Optional[X]`, `list[X]`, `Path`, `Literal[...]`, ...), so a wrong value is
refused, naming the flag, before the command runs.

What the parser adds:

- `--config FILE.yaml` on every command that has no parameter named `config` of its own: the
  command's arguments from a YAML file, keyed by parameter name (`model_dir: runs/demo/final`);
  flags given after it override it, and `--print-config` prints one.
- environment variables when `JSONARGPARSE_DEFAULT_ENV=true` is set (off by default, so that no
  stray variable changes a run): `MEDQWEN_EVAL__BATCH_SIZE=4 medqwen eval ...`.

Flag shapes are those of argparse, as users know them: a `bool` is `--flag` / `--no-flag` without a
value, and a list takes its values after one flag (`--var a=1 b=2`); for `X | None` the value
`null` gives None.
"""

from __future__ import annotations

import argparse
import inspect
import typing
from typing import Callable, Iterable

import docstring_parser  # installed by jsonargparse[signatures]; jsonargparse reads docstrings with it too
from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser, DefaultHelpFormatter

__all__ = ["KebabArgumentParser", "add_function", "build_parser", "run"]

_CONFIG_HELP = ("a YAML file of this command's arguments, keyed by parameter name (e.g. model_dir: DIR); "
                "flags after it override it")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help (type and default of each flag) with the docstring's line breaks kept."""


class KebabArgumentParser(ArgumentParser):
    """jsonargparse's ArgumentParser with `--kebab-case` option names.

    jsonargparse names options after their destination (`--print_config`); renaming them in
    `add_argument` is the maintainer's suggestion for dashes (jsonargparse issue #301, with the
    fixes for dashed names in 4.41). Destinations keep their underscores, so config-file keys and
    the function's keyword arguments are the parameter names."""

    def __init__(self, *args, print_config: str | None = "--print-config", allow_abbrev: bool = True, **kwargs):
        # allow_abbrev: argparse's default, which the commands always had (`--batch` for `--batch-size`);
        # jsonargparse 4.5x warns about it and 5.0 turns it off unless asked for
        super().__init__(*args, print_config=print_config, allow_abbrev=allow_abbrev, **kwargs)

    def add_argument(self, *args, **kwargs):
        args = tuple("--" + a[2:].replace("_", "-") if a.startswith("--") else a for a in args)
        return super().add_argument(*args, **kwargs)


def _list_item(hint) -> type | None:
    """The item type of `list[X]`, `list[X] | None` or `Optional[list[X]]`; None for other hints."""
    for candidate in (hint, *typing.get_args(hint)):
        if typing.get_origin(candidate) is list:
            return (typing.get_args(candidate) or (str,))[0]
    return None


def add_function(parser: ArgumentParser, func: Callable, positional: Iterable[str] = ()) -> None:
    """Add one argument per parameter of `func` to `parser` (see the module docstring); the
    parameters named in `positional` are taken by position."""
    doc = docstring_parser.parse(inspect.getdoc(func) or "")
    helps = {p.arg_name: " ".join((p.description or "").split()) for p in doc.params}
    hints = typing.get_type_hints(func)
    for name, param in inspect.signature(func).parameters.items():
        if name not in hints:
            raise TypeError(f"{func.__qualname__}: parameter {name!r} has no type hint, so the command line cannot check it")
        hint = hints[name]
        kwargs: dict = {"dest": name, "help": helps.get(name, "")}  # jsonargparse expands only %(name)s in help
        if name in positional:
            kwargs.pop("dest")  # argparse takes a positional's dest from its name
            parser.add_argument(name, type=hint, metavar=name.upper(), **kwargs)
            continue
        if param.default is inspect.Parameter.empty:
            kwargs["required"] = True
        else:
            kwargs["default"] = param.default
        if hint is bool:  # a flag without a value, as argparse's BooleanOptionalAction
            kwargs["action"] = ActionYesNo(no_prefix="no-")
        elif (item := _list_item(hint)) is not None:  # jsonargparse checks each item of nargs against `type`
            kwargs.update(type=item, nargs="+")
        else:
            kwargs["type"] = hint
        parser.add_argument("--" + name, **kwargs)


def _description(func: Callable) -> tuple[str, str]:
    """(first paragraph on one line, whole text before the Args section) of the function's docstring."""
    text = docstring_parser.parse(inspect.getdoc(func) or "").description or ""
    return " ".join(text.split("\n\n")[0].split()), text


def build_parser(prog: str, description: str, commands: dict[str, Callable],
                 positional: dict[str, list[str]] | None = None) -> ArgumentParser:
    """One sub-command per function of `commands`; `positional` names, per command, the required
    parameters taken by position instead of as flags."""
    parser = KebabArgumentParser(prog=prog, description=description, formatter_class=_HelpFormatter)
    subcommands = parser.add_subcommands(required=True)
    for name, func in commands.items():
        summary, text = _description(func)
        sub = KebabArgumentParser(description=text)
        if "config" not in inspect.signature(func).parameters:  # else `config` is the command's own
            sub.add_argument("--config", action=ActionConfigFile, help=_CONFIG_HELP)
        add_function(sub, func, (positional or {}).get(name, ()))
        subcommands.add_subcommand(name, sub, help=summary)
        sub.prog = f"{prog} {name}"  # argparse's usage line; jsonargparse writes "prog [options] name"
    return parser


def run(parser: ArgumentParser, commands: dict[str, Callable], argv: list[str] | None = None):
    """Parse `argv` (default: sys.argv[1:]) with a parser of :func:`build_parser` and call the chosen
    command with its arguments; a value that does not fit its type hint exits with status 2 and a
    message naming the flag, before the command runs."""
    cfg = parser.parse_args(argv)
    name = cfg["subcommand"]
    func, values = commands[name], cfg[name]
    return func(**{key: values[key] for key in inspect.signature(func).parameters})
