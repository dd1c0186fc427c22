"""Help text for every option, each with its default, filled in once the parser is built.

Options defined without help get theirs from :data:`HELP`; every option that takes a value
and has a default gets ``(default: ...)`` appended unless its help already says it, so a
default shown in ``--help`` is the one argparse uses.
"""

from __future__ import annotations

import argparse
from pathlib import Path

#: (command, option) -> help; command None means every command that has the option
HELP: dict[tuple[str | None, str], str] = {
    (None, "--samples"): "rows of the generated logistic problem",
    (None, "--features"): "columns of the generated logistic problem",
    (None, "--seed"): "random seed of the generated problem",
    ("run", "--model"): "the model to fit",
    ("run", "--penalty"): "regularisation of --model logistic",
    ("scaling", "--workers"): "the worker counts M to measure",
    ("scaling", "--solver"): "optimizer",
    ("scaling", "--max-iter"): "iterations of each fit",
}


#: what an unset option (default None) means, per command or for all (None)
UNSET: dict[tuple[str | None, str], str] = {
    ("demo", "--trace-out"): "a new temporary folder, printed",
    ("run", "--trace-out"): "not saved",
    (None, "--latency"): "none added",
    (None, "--bandwidth"): "not limited",
    (None, "--straggler"): "no straggler",
    (None, "--fail"): "no failure",
    (None, "--emulated-compute"): "the real compute only",
}


def _value_taking(action: argparse.Action) -> bool:
    return action.nargs != 0 and action.option_strings != []


def _shown(default: object) -> str:
    if isinstance(default, (list, tuple)):
        return " ".join(map(str, default))
    if isinstance(default, Path):
        return str(default)
    return f"{default:g}" if isinstance(default, float) else str(default)


def fill_help(command: str, parser: argparse.ArgumentParser) -> None:
    """Give every option of ``parser`` (sub-command ``command``) help with its default."""
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        option = max(action.option_strings, key=len)
        text = action.help or HELP.get((command, option)) or HELP.get((None, option))
        if text is None:
            continue  # test_cli checks that none is left without help
        if _value_taking(action) and "default" not in text and not action.required:
            unset = UNSET.get((command, option)) or UNSET.get((None, option))
            if action.default is not None:
                text = f"{text} (default: {_shown(action.default)})"
            elif unset is not None:
                text = f"{text} (default: {unset})"
        action.help = text


def fill_all(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, subparser in action.choices.items():
                fill_help(command, subparser)
