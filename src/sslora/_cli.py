"""The typed function signature is the CLI: argparse sub-commands built from functions.

Each parameter becomes `--name-with-dashes` (a parameter without default is required; a few may be
declared positional); its type
hint (int, float, str, bool, pathlib.Path, list[...] , Optional[...], Literal[...]) drives parsing
and its `name: help` line in the docstring's Args section is the help text.
"""

from __future__ import annotations

import argparse
import inspect
import re
import typing
from pathlib import Path
from typing import Callable


def _param_help(func: Callable) -> dict[str, str]:
    doc = inspect.getdoc(func) or ""
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^[ \t]*(\w+):[ \t]*(.+)$", doc, re.MULTILINE)}


def _add_argument(
    parser: argparse.ArgumentParser, name: str, param: inspect.Parameter, hint, help_text: str, positional: bool = False
) -> None:
    flag = name if positional else "--" + name.replace("_", "-")
    required = param.default is inspect.Parameter.empty
    default = None if required else param.default
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union and type(None) in args:  # Optional[X]
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    kwargs: dict = {"help": f"{help_text} (default: {default})" if not required else help_text}
    if hint is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, **kwargs)
        return
    if origin is list:
        kwargs.update(nargs="+", type=args[0] if args else str)
    elif origin is typing.Literal:
        kwargs.update(choices=list(args), type=type(args[0]))
    elif hint in (int, float, str, Path):
        kwargs["type"] = hint
    elif origin is typing.Union:  # e.g. Union[float, str]: try the number first
        kwargs["type"] = _number_or_string
    if positional:
        parser.add_argument(flag, metavar=name.upper(), **kwargs)
    else:
        parser.add_argument(flag, required=required, default=default, **kwargs)


def _number_or_string(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def build_parser(
    prog: str, description: str, commands: dict[str, Callable], positional: dict[str, list[str]] | None = None
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    for command, func in commands.items():
        doc = inspect.getdoc(func) or ""
        summary = doc.split("\n\n")[0]
        cmd = sub.add_parser(command, help=summary, description=summary, formatter_class=argparse.RawDescriptionHelpFormatter)
        hints = typing.get_type_hints(func)
        helps = _param_help(func)
        for name, param in inspect.signature(func).parameters.items():
            is_positional = name in (positional or {}).get(command, [])
            _add_argument(cmd, name, param, hints.get(name, str), helps.get(name, ""), is_positional)
        cmd.set_defaults(_func=func)
    return parser


def run(
    prog: str, description: str, commands: dict[str, Callable], argv: list[str] | None = None,
    positional: dict[str, list[str]] | None = None,
):
    """Parse argv into the chosen command's arguments and call it. `positional` names, per command,
    the required parameters taken by position instead of as --flags."""
    args = vars(build_parser(prog, description, commands, positional).parse_args(argv))
    func = args.pop("_func")
    args.pop("command")
    return func(**args)
