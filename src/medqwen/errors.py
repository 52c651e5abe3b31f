"""Exceptions the command line reports as one-line errors (no heavy imports here)."""


class ConfigError(ValueError):
    """An invalid configuration (experiment / stage / continual YAML, a DataSpec, an adapter or method
    spec): the one error type medqwen raises for settings, naming the file and field."""


class TrainingDiverged(RuntimeError):
    """Several optimizer steps in a row had a non-finite loss or gradient."""


def did_you_mean(word: object, choices, aliases: dict[str, str] | None = None) -> str:
    """' (did you mean 'r'?)' for a close match of `word` among `choices`, or among the keys of
    `aliases` (other libraries' names, e.g. 'rank' -> 'r'), else ''."""
    import difflib

    aliases = aliases or {}
    close = difflib.get_close_matches(str(word), [str(c) for c in choices] + list(aliases), n=1, cutoff=0.6)
    return f" (did you mean {aliases.get(close[0], close[0])!r}?)" if close else ""


def unknown_keys(kind: str, unknown, allowed, aliases: dict[str, str] | None = None) -> str:
    """"unknown option(s) ['rnak'] (did you mean 'r'?); allowed: [...]" for an error message."""
    unknown, allowed = sorted(map(str, unknown)), sorted(map(str, allowed))
    hints = "".join(did_you_mean(u, allowed, aliases) for u in unknown[:3])
    return f"unknown {kind}(s) {unknown}{hints}; allowed: {allowed}"
